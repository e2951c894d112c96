"""Tests for the unique-ID stores and incremental POP3 sync."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Collection, Iterator
from pathlib import Path
from typing import Any

import pytest
from protocol_only import ProtocolOnly

from src.handlers._sync.sync import SyncResult, sync_mailbox
from src.handlers._sync.uid_store import (
    FileUIDStore,
    MemoryUIDStore,
    SQLiteUIDStore,
    UIDStore,
    are_valid_uids,
    check_uid,
)
from src.handlers.errors import POP3ConnectionError, POP3UnsupportedError
from src.handlers.pop3 import POP3ProtocolHandler
from src.testing.pop3_server import POP3TestServer

MESSAGES = [
    f"From: n{i}@example.com\r\nSubject: m{i}\r\n\r\nbody {i}\r\n".encode() for i in range(5)
]


class Crash(BaseException):
    """Stands in for the process dying (not an ordinary handler failure)."""


@pytest.fixture
def server() -> Iterator[POP3TestServer]:
    with POP3TestServer() as srv:
        for raw in MESSAGES:
            srv.add_message(raw)
        yield srv
    assert srv.errors == []


def handler_for(srv: POP3TestServer) -> POP3ProtocolHandler:
    return POP3ProtocolHandler(
        srv.host, srv.port, "user", "password", "none", 5, sleep=lambda seconds: None
    )


def collector(into: list[str], fail_on: Callable[[str], bool] = lambda s: False) -> Any:
    def handle(message: dict[str, Any]) -> None:
        if fail_on(message["subject"]):
            raise RuntimeError("could not save")
        into.append(message["subject"])

    return handle


# -- stores ------------------------------------------------------------------------


def test_check_uid_accepts_rfc_ids_only() -> None:
    assert check_uid("abc.123~!") == "abc.123~!"
    for bad in ("", "has space", "x" * 71, "tab\there", "é"):
        with pytest.raises(ValueError):
            check_uid(bad)


def test_uids_are_checked_in_bulk_as_one_by_one() -> None:
    good = ["abc.123~!", "x" * 70, "!"]
    assert are_valid_uids(good) and are_valid_uids([])
    for bad in ("", "has space", "x" * 71, "tab\there", "é", "two\nlines", None, 7):
        assert not are_valid_uids([*good, bad]), bad
        assert not are_valid_uids([bad, *good]), bad


def store_of(kind: str, tmp_path: Path) -> MemoryUIDStore | SQLiteUIDStore:
    """A new store of one kind: memory, file or sqlite."""
    if kind == "memory":
        return MemoryUIDStore()
    if kind == "file":
        return FileUIDStore(tmp_path / "seen.txt")
    return SQLiteUIDStore(tmp_path / "seen.db")


@pytest.mark.parametrize("kind", ["memory", "file", "sqlite"])
def test_stores_tell_the_recorded_among_many_in_one_step(kind: str, tmp_path: Path) -> None:
    store = store_of(kind, tmp_path)
    for uid in ("a", "b", "c"):
        store.add(uid)
    assert store.recorded_among(["b", "c", "d"]) == {"b", "c"}
    assert store.recorded_among([]) == set()
    if isinstance(store, SQLiteUIDStore):
        store.close()


class MinimalStore:
    """Only what the UIDStore protocol asks for: no bulk lookup."""

    def __init__(self) -> None:
        self.uids: set[str] = set()
        self.lookups = 0

    def __contains__(self, uid: object) -> bool:
        self.lookups += 1
        return uid in self.uids

    def add(self, uid: str) -> None:
        self.uids.add(uid)

    def retain(self, uids: Collection[str]) -> None:
        self.uids &= set(uids)


def test_a_store_with_only_the_protocol_is_asked_one_id_at_a_time(
    server: POP3TestServer,
) -> None:
    store = MinimalStore()
    assert isinstance(store, UIDStore)
    seen: list[str] = []
    first = handler_for(server).sync(store, collector(seen))
    second = handler_for(server).sync(store, collector(seen))
    assert first == SyncResult(fetched=5) and second == SyncResult(skipped=5)
    assert seen == [f"m{i}" for i in range(5)] and store.lookups > 0


@pytest.mark.parametrize("kind", ["memory", "file", "sqlite"])
def test_stores_add_contain_and_retain(kind: str, tmp_path: Path) -> None:
    store = store_of(kind, tmp_path)
    assert isinstance(store, UIDStore)
    store.add("a")
    store.add("b")
    store.add("a")
    assert "a" in store and "b" in store and "c" not in store and 5 not in store
    assert len(store) == 2
    store.retain(["b", "z"])
    assert "a" not in store and "b" in store and len(store) == 1
    if isinstance(store, SQLiteUIDStore):
        store.close()


def test_file_store_survives_reopening_and_is_private(tmp_path: Path) -> None:
    path = tmp_path / "seen.txt"
    FileUIDStore(path).add("uid-1")
    reopened = FileUIDStore(path)
    assert "uid-1" in reopened
    reopened.add("uid-2")
    assert sorted(os.listdir(tmp_path)) == ["seen.txt"]  # no temporary files left
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert "uid-2" in FileUIDStore(path)


def test_file_store_failed_write_keeps_the_previous_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "seen.txt"
    store = FileUIDStore(path)
    store.add("kept")

    def refuse(src: Any, dst: Any) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(OSError):
        store.add("lost")
    monkeypatch.undo()
    assert "lost" not in store
    assert "kept" in FileUIDStore(path) and "lost" not in FileUIDStore(path)
    assert sorted(os.listdir(tmp_path)) == ["seen.txt"]


def test_file_store_refuses_a_foreign_file(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("shopping list\n")
    with pytest.raises(ValueError):
        FileUIDStore(path)


def test_sqlite_store_survives_reopening(tmp_path: Path) -> None:
    with SQLiteUIDStore(tmp_path / "seen.db") as store:
        store.add("x1")
    with SQLiteUIDStore(tmp_path / "seen.db") as store:
        assert "x1" in store


# -- sync --------------------------------------------------------------------------


def test_sync_hands_over_every_new_message_once(server: POP3TestServer) -> None:
    store = MemoryUIDStore()
    seen: list[str] = []
    first = handler_for(server).sync(store, collector(seen))
    assert first == SyncResult(fetched=5)
    assert seen == ["m0", "m1", "m2", "m3", "m4"]
    server.add_message(b"Subject: m5\r\n\r\nlate\r\n")
    second = handler_for(server).sync(store, collector(seen))
    assert second == SyncResult(fetched=1, skipped=5)
    assert seen[-1] == "m5" and len(seen) == 6
    assert server.messages()[:5] == MESSAGES  # nothing deleted without delete_after


def test_sync_gives_each_message_its_uid(server: POP3TestServer) -> None:
    uids: list[str] = []
    handler_for(server).sync(MemoryUIDStore(), lambda message: uids.append(message["uid"]))
    assert uids == server.uids()


def test_interrupted_sync_resumes_without_duplicates_or_gaps(
    server: POP3TestServer, tmp_path: Path
) -> None:
    path = tmp_path / "seen.txt"
    seen: list[str] = []

    def crash_on_third(message: dict[str, Any]) -> None:
        if len(seen) == 2:
            raise Crash
        seen.append(message["subject"])

    with pytest.raises(Crash):
        handler_for(server).sync(FileUIDStore(path), crash_on_third, delete_after=True)
    assert server.wait_idle()
    assert server.messages() == MESSAGES  # the interrupted session committed nothing

    result = handler_for(server).sync(FileUIDStore(path), collector(seen), delete_after=True)
    assert seen == ["m0", "m1", "m2", "m3", "m4"]
    assert result == SyncResult(fetched=3, skipped=2, deleted=5)
    assert server.messages() == []


class FailingStore(MemoryUIDStore):
    """A store whose disk fills up after ``room`` records."""

    def __init__(self, room: int) -> None:
        super().__init__()
        self.room = room

    def add(self, uid: str) -> None:
        if len(self) >= self.room:
            raise OSError("disk full")
        super().add(uid)


def test_store_failure_stops_sync_committing_only_recorded_deletions(
    server: POP3TestServer,
) -> None:
    store = FailingStore(room=2)
    seen: list[str] = []
    with pytest.raises(OSError, match="disk full"):
        handler_for(server).sync(store, collector(seen), delete_after=True)
    assert server.messages() == MESSAGES[2:]  # the two recorded ones were deleted
    store.room = 100
    result = handler_for(server).sync(store, collector(seen), delete_after=True)
    # m2 was handed over before its record failed: the one documented repeat.
    assert seen == ["m0", "m1", "m2", "m2", "m3", "m4"]
    assert result == SyncResult(fetched=3, deleted=3)
    assert server.messages() == []


def test_connection_lost_mid_sync_then_resume() -> None:
    # Lock-step, each message is handed over as soon as it arrives, so a connection
    # lost at the third RETR leaves the first two handed over and recorded.
    store = MemoryUIDStore()
    seen: list[str] = []

    def drop_after_two(message: dict[str, Any]) -> None:
        seen.append(message["subject"])
        if len(seen) == 2:
            srv.faults.drop_after = "RETR"

    with POP3TestServer(pipelining=False) as srv:
        for raw in MESSAGES:
            srv.add_message(raw)
        with pytest.raises(POP3ConnectionError):
            handler_for(srv).sync(store, drop_after_two)
        srv.faults.reset()
        assert srv.wait_idle()
        result = handler_for(srv).sync(store, collector(seen))
    assert seen == ["m0", "m1", "m2", "m3", "m4"]
    assert result.fetched == 3 and result.skipped == 2


def test_connection_lost_during_a_pipelined_batch_hands_over_nothing_of_it(
    server: POP3TestServer,
) -> None:
    # A batch is handed over only once all of it has arrived: a connection lost
    # while it downloads hands over none of it, and the next run hands over each once.
    store = MemoryUIDStore()
    seen: list[str] = []
    server.faults.drop_mid_retr_after_bytes = 40
    with pytest.raises(POP3ConnectionError):
        handler_for(server).sync(store, collector(seen), delete_after=True)
    assert seen == [] and len(store) == 0
    server.faults.reset()
    assert server.wait_idle()
    assert server.messages() == MESSAGES
    result = handler_for(server).sync(store, collector(seen), delete_after=True)
    assert seen == ["m0", "m1", "m2", "m3", "m4"]
    assert result == SyncResult(fetched=5, deleted=5)
    assert server.messages() == []


def test_delete_after_only_deletes_what_the_handler_accepted(server: POP3TestServer) -> None:
    store = MemoryUIDStore()
    seen: list[str] = []
    uids = server.uids()
    result = handler_for(server).sync(
        store, collector(seen, fail_on=lambda subject: subject == "m2"), delete_after=True
    )
    assert result.fetched == 4 and result.deleted == 4 and result.failed == 1
    assert result.failed_uids == (uids[2],)
    assert server.messages() == [MESSAGES[2]]
    assert uids[2] not in store and uids[0] in store

    retry = handler_for(server).sync(store, collector(seen), delete_after=True)
    assert retry == SyncResult(fetched=1, deleted=1)
    assert server.messages() == []


def test_delete_after_without_quit_deletes_next_time(server: POP3TestServer) -> None:
    store = MemoryUIDStore()
    seen: list[str] = []
    server.faults.drop_after = "QUIT"
    with pytest.raises(POP3ConnectionError, match="QUIT"):
        handler_for(server).sync(store, collector(seen), delete_after=True)
    server.faults.reset()
    assert server.wait_idle()
    assert server.messages() == MESSAGES
    again = handler_for(server).sync(store, collector(seen), delete_after=True)
    assert again == SyncResult(skipped=5, deleted=5)
    assert len(seen) == 5 and server.messages() == []


@pytest.mark.parametrize("pipelining", [True, False], ids=["pipelined", "lock-step"])
def test_messages_handled_before_are_marked_for_deletion_together(
    pipelining: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = MemoryUIDStore()
    seen: list[str] = []
    with POP3TestServer(pipelining=pipelining) as srv:
        for raw in MESSAGES:
            srv.add_message(raw)
        handler_for(srv).sync(store, collector(seen))  # recorded, left on the server
        one_by_one: list[int] = []
        single = POP3ProtocolHandler.delete_message

        def counted(self: POP3ProtocolHandler, message_id: int) -> bool:
            one_by_one.append(message_id)
            return single(self, message_id)

        monkeypatch.setattr(POP3ProtocolHandler, "delete_message", counted)
        again = handler_for(srv).sync(store, collector(seen), delete_after=True)
        left = srv.messages()
        deletions = [command for command in srv.commands if command.startswith("DELE")]
    assert again == SyncResult(skipped=5, deleted=5)
    assert left == [] and len(seen) == 5
    assert one_by_one == [] and deletions == [f"DELE {n}" for n in range(1, 6)]


def test_sync_in_an_explicit_session_defers_deletion_to_disconnect(
    server: POP3TestServer,
) -> None:
    handler = handler_for(server)
    with handler:
        result = handler.sync(MemoryUIDStore(), lambda message: None, delete_after=True)
        assert result.deleted == 5 and handler.pending_deletions == 5
        assert server.messages() == MESSAGES
    assert server.messages() == []
    assert server.sessions_started == 1


def test_sync_prunes_ids_of_messages_gone_from_the_server(server: POP3TestServer) -> None:
    store = MemoryUIDStore(["gone-long-ago"])
    handler_for(server).sync(store, lambda message: None)
    assert store.snapshot() == frozenset(server.uids())
    kept = MemoryUIDStore(["gone-long-ago"])
    handler_for(server).sync(kept, lambda message: None, prune=False)
    assert "gone-long-ago" in kept


def test_sync_refuses_a_server_without_uidl() -> None:
    called: list[Any] = []
    with POP3TestServer(uidl=False) as srv:
        srv.add_message(MESSAGES[0])
        with pytest.raises(POP3UnsupportedError, match="UIDL"):
            handler_for(srv).sync(MemoryUIDStore(), called.append)
        assert "RETR" not in [c.split(" ")[0] for c in srv.commands]
    assert called == []


def test_sync_counts_a_refused_message_as_failed(server: POP3TestServer) -> None:
    server.faults.error_replies = {"RETR": "-ERR [SYS/TEMP] try later"}
    result = handler_for(server).sync(MemoryUIDStore(), lambda message: None)
    assert result.failed == 5 and result.fetched == 0


def test_sync_with_sqlite_store(server: POP3TestServer, tmp_path: Path) -> None:
    with SQLiteUIDStore(tmp_path / "seen.db") as store:
        assert handler_for(server).sync(store, lambda message: None).fetched == 5
    with SQLiteUIDStore(tmp_path / "seen.db") as store:
        assert handler_for(server).sync(store, lambda message: None).skipped == 5


# -- unique IDs a sync cannot trust -------------------------------------------------


def server_with_uids(uids: list[str]) -> POP3TestServer:
    srv = POP3TestServer()
    for index, uid in enumerate(uids):
        srv.add_message(f"Subject: m{index}\r\n\r\nbody\r\n".encode(), uid=uid)
    return srv


@pytest.mark.parametrize(
    "uids",
    [
        ["AAA", "AAA", "BBB"],  # shared by two messages
        ["abc def", "abc xyz", "BBB"],  # str.split() would cut both to "abc"
        ["abc\x0bdef", "abc\x1cxyz", "BBB"],  # and so would these separators
    ],
    ids=["shared", "spaces", "separators"],
)
def test_sync_never_deletes_a_message_it_did_not_hand_over(uids: list[str]) -> None:
    seen: list[str] = []
    store = MemoryUIDStore()
    with server_with_uids(uids) as srv:
        first = handler_for(srv).sync(store, collector(seen), delete_after=True)
        recorded = store.snapshot()
        second = handler_for(srv).sync(store, collector(seen), delete_after=True)
        left = srv.messages()
    assert seen == ["m2"]
    assert first == SyncResult(fetched=1, deleted=1, unsafe=2, unsafe_numbers=(1, 2))
    assert second == SyncResult(unsafe=2, unsafe_numbers=(1, 2))
    assert len(left) == 2  # the two messages with untrustworthy IDs stay on the server
    assert recorded == frozenset({"BBB"})


def test_a_uid_the_store_would_refuse_does_not_poison_later_syncs() -> None:
    uids = ["caf\u00e9", "x" * 71, "y" * 1_000_000, "good-1", "good-2"]
    seen: list[str] = []
    store = MemoryUIDStore()
    with server_with_uids(uids) as srv:
        results = [handler_for(srv).sync(store, collector(seen)) for _ in range(3)]
    assert seen == ["m3", "m4"]  # each good message once, the bad ones never
    assert results[0] == SyncResult(fetched=2, unsafe=3, unsafe_numbers=(1, 2, 3))
    assert results[2] == SyncResult(skipped=2, unsafe=3, unsafe_numbers=(1, 2, 3))


def test_stores_refuse_an_invalid_uid_with_a_library_error(tmp_path: Path) -> None:
    from src.handlers.errors import MailValidationError

    for store in (MemoryUIDStore(), FileUIDStore(tmp_path / "s.txt")):
        with pytest.raises(MailValidationError):
            store.add("caf\u00e9")
    with SQLiteUIDStore(tmp_path / "s.db") as sqlite_store, pytest.raises(MailValidationError):
        sqlite_store.add("x" * 71)


def test_a_mailbox_with_only_the_protocol_is_synced_one_message_at_a_time(
    server: POP3TestServer,
) -> None:
    store = MemoryUIDStore()
    seen: list[str] = []
    refused = server.uids()[2]
    mailbox = ProtocolOnly(handler_for(server))
    first = sync_mailbox(
        mailbox, store, collector(seen, fail_on=lambda s: s == "m2"), delete_after=True
    )
    assert first == SyncResult(fetched=4, deleted=4, failed=1, failed_uids=(refused,))
    commands = [c for c in server.commands if c.startswith(("RETR", "LIST", "DELE"))]
    # A size and a download per message, then the deletions after the last one.
    assert commands[:10] == [f"{verb} {n}" for n in range(1, 6) for verb in ("LIST", "RETR")]
    assert commands[10:] == [f"DELE {n}" for n in (1, 2, 4, 5)]
    assert server.messages() == [MESSAGES[2]]
    again = sync_mailbox(mailbox, store, collector(seen), delete_after=True)
    assert again == SyncResult(fetched=1, deleted=1)
    assert seen == ["m0", "m1", "m3", "m4", "m2"] and server.messages() == []
