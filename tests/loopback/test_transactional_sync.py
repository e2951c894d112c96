"""Exactly-once sync: UID stores in the application's transaction, leases and fencing.

The store tests run on SQLite and on a private PostgreSQL (``connect`` is parametrized).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from protocol_only import ProtocolOnly

from src.handlers import (
    AccountBusyError,
    DBUIDStore,
    Lease,
    LeaseLostError,
    SQLiteUIDStore,
    SyncResult,
    TransactionalUIDStore,
)
from src.handlers._pop3.client import FastPOP3
from src.handlers._sync.dbapi import Dialect
from src.handlers._sync.transactional import sync_transactional
from src.handlers.pop3 import POP3ProtocolHandler
from src.testing.pop3_server import POP3TestServer

pytest_plugins = ["services.fixtures"]

MESSAGES = [
    f"From: n{i}@example.com\r\nSubject: m{i}\r\n\r\nbody {i}\r\n".encode() for i in range(5)
]


class Crash(BaseException):
    """Stands in for the process dying mid-message."""


@pytest.fixture
def server() -> Iterator[POP3TestServer]:
    with POP3TestServer() as srv:
        for raw in MESSAGES:
            srv.add_message(raw)
        yield srv


@pytest.fixture(params=[1, 3], ids=["batch1", "batch3"])
def batch(request: pytest.FixtureRequest) -> int:
    """Messages per transaction."""
    return int(request.param)


@pytest.fixture(params=[False, True], ids=["in-turn", "sent-ahead"])
def pipelined(request: pytest.FixtureRequest) -> bool:
    """Whether the store sends a batch's statements ahead (PostgreSQL only)."""
    return bool(request.param)


def handler_for(srv: POP3TestServer) -> POP3ProtocolHandler:
    return POP3ProtocolHandler(
        srv.host, srv.port, "user", "password", "none", 5, sleep=lambda seconds: None
    )


def make_app_table(connection: Any) -> None:
    cursor = connection.cursor()
    cursor.execute("CREATE TABLE IF NOT EXISTS mail (uid TEXT PRIMARY KEY, subject TEXT)")
    connection.commit()


def saver(sql_placeholder: str, crash_on: str | None = None, fail_on: str | None = None) -> Any:
    insert = f"INSERT INTO mail (uid, subject) VALUES ({sql_placeholder}, {sql_placeholder})"

    def save(message: dict[str, Any], cursor: Any) -> None:
        cursor.execute(insert, (message["uid"], message["subject"]))
        if message["subject"] == crash_on:
            raise Crash
        if message["subject"] == fail_on:
            raise RuntimeError("could not save")

    return save


def placeholder(connection: Any) -> str:
    return "?" if isinstance(connection, sqlite3.Connection) else "%s"


def saved(connection: Any) -> list[str]:
    cursor = connection.cursor()
    cursor.execute("SELECT subject FROM mail ORDER BY subject")
    rows = [row[0] for row in cursor.fetchall()]
    connection.rollback()
    return rows


def record_commits(
    store: DBUIDStore,
    events: list[str],
    monkeypatch: pytest.MonkeyPatch,
    fail_at: int | None = None,
) -> None:
    """Append "commit" to ``events`` at each of the store's commits; the ``fail_at``-th
    (from 1) rolls back instead and raises OSError, as a database that went away."""
    commit = store.commit
    count = 0

    def recording_commit() -> None:
        nonlocal count
        count += 1
        if count == fail_at:
            store.rollback()
            raise OSError("the database went away")
        commit()
        events.append("commit")

    monkeypatch.setattr(store, "commit", recording_commit)


# -- the transactional path ---------------------------------------------------------


def test_save_and_uid_commit_together_then_delete(
    server: POP3TestServer, connect: Any, batch: int
) -> None:
    conn = connect()
    make_app_table(conn)
    store = DBUIDStore(conn, account="alice", batch_size=batch)
    assert isinstance(store, TransactionalUIDStore)
    result = handler_for(server).sync(store, saver(placeholder(conn)), delete_after=True)
    assert result == SyncResult(fetched=5, deleted=5)
    assert saved(conn) == [f"m{i}" for i in range(5)]
    assert server.messages() == []
    assert len(store) == 5
    assert handler_for(server).sync(store, saver(placeholder(conn))) == SyncResult()
    assert len(store) == 0  # pruned: the messages are gone from the server


def test_committed_messages_are_deleted_in_one_pipelined_round_after_the_last_commit(
    server: POP3TestServer, connect: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    conn = connect()
    make_app_table(conn)
    store = DBUIDStore(conn, account="alice", batch_size=3)
    events: list[str] = []
    save = saver(placeholder(conn))

    def recording_save(message: dict[str, Any], cursor: Any) -> None:
        events.append(f"save {message['subject']}")
        save(message, cursor)

    record_commits(store, events, monkeypatch)
    dele_many = FastPOP3.dele_many

    def recording_dele_many(self: FastPOP3, numbers: Any, window: int = 128) -> list[bytes]:
        events.append(f"dele {list(numbers)}")
        return dele_many(self, numbers, window)

    monkeypatch.setattr(FastPOP3, "dele_many", recording_dele_many)
    result = handler_for(server).sync(store, recording_save, delete_after=True)
    assert result == SyncResult(fetched=5, deleted=5)
    assert events == [
        *("save m0", "save m1", "save m2", "commit"),
        *("save m3", "save m4", "commit", "dele [1, 2, 3, 4, 5]"),
    ]
    assert server.messages() == []


def test_a_run_that_fails_after_a_commit_still_deletes_what_was_committed(
    server: POP3TestServer, connect: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    conn = connect()
    make_app_table(conn)
    store = DBUIDStore(conn, account="alice", batch_size=3)
    record_commits(store, [], monkeypatch, fail_at=2)
    with pytest.raises(OSError, match="went away"):
        handler_for(server).sync(store, saver(placeholder(conn)), delete_after=True)
    assert saved(conn) == ["m0", "m1", "m2"]
    assert server.messages() == MESSAGES[3:]  # the committed batch, and only it, deleted


def test_one_message_per_transaction_still_downloads_in_one_pipelined_batch(
    server: POP3TestServer, connect: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    conn = connect()
    make_app_table(conn)
    store = DBUIDStore(conn, account="alice")  # batch_size 1: a commit per message
    retrs_before_save: list[int] = []
    commits: list[str] = []
    record_commits(store, commits, monkeypatch)
    save = saver(placeholder(conn))

    def counting_save(message: dict[str, Any], cursor: Any) -> None:
        retrs_before_save.append(sum(c.startswith("RETR") for c in server.commands))
        save(message, cursor)

    result = handler_for(server).sync(store, counting_save, delete_after=True)
    assert result == SyncResult(fetched=5, deleted=5)
    assert retrs_before_save == [5] * 5  # every RETR went out before the first save
    assert len(commits) == 5 and server.messages() == []


def test_a_mailbox_with_only_the_protocol_commits_each_message_once(
    server: POP3TestServer, connect: Any
) -> None:
    conn = connect()
    make_app_table(conn)
    store = DBUIDStore(conn, account="alice", batch_size=2)
    mailbox = ProtocolOnly(handler_for(server))
    result = sync_transactional(mailbox, store, saver(placeholder(conn)), delete_after=True)
    assert result == SyncResult(fetched=5, deleted=5)
    assert saved(conn) == [f"m{i}" for i in range(5)] and server.messages() == []
    commands = server.commands
    retrs = [i for i, command in enumerate(commands) if command.startswith("RETR")]
    deletes = [i for i, command in enumerate(commands) if command.startswith("DELE")]
    assert len(retrs) == 5 and len(deletes) == 5 and max(retrs) < min(deletes)


def test_messages_that_cannot_be_downloaded_are_failed_in_listing_order(
    server: POP3TestServer, connect: Any
) -> None:
    conn = connect()
    make_app_table(conn)
    store = DBUIDStore(conn, account="alice", batch_size=2)
    uids = server.uids()
    handler = POP3ProtocolHandler(
        server.host, server.port, "user", "password", "none", 5, max_message_size=40
    )
    # m0..m4 are all about 50 bytes: over the limit, none is downloaded.
    result = handler.sync(store, saver(placeholder(conn)), delete_after=True)
    assert result == SyncResult(failed=5, failed_uids=tuple(uids))
    assert saved(conn) == [] and len(server.messages()) == 5


@pytest.mark.parametrize(
    "uids",
    [["AAA", "AAA", "BBB"], ["abc def", "abc xyz", "BBB"], ["caf\u00e9", "x" * 71, "BBB"]],
    ids=["shared", "spaces", "invalid"],
)
def test_messages_with_unsafe_uids_are_left_alone_as_in_every_sync(
    connect: Any, uids: list[str]
) -> None:
    conn = connect()
    make_app_table(conn)
    store = DBUIDStore(conn, account="alice", batch_size=2)
    with POP3TestServer() as srv:
        for index, uid in enumerate(uids):
            srv.add_message(f"Subject: m{index}\r\n\r\nbody\r\n".encode(), uid=uid)
        first = handler_for(srv).sync(store, saver(placeholder(conn)), delete_after=True)
        second = handler_for(srv).sync(store, saver(placeholder(conn)), delete_after=True)
        left = srv.messages()
    assert saved(conn) == ["m2"]  # neither message of a shared or bad ID is handed over
    assert first == SyncResult(fetched=1, deleted=1, unsafe=2, unsafe_numbers=(1, 2))
    assert second == SyncResult(unsafe=2, unsafe_numbers=(1, 2))
    assert len(left) == 2  # the two messages with untrustworthy IDs stay on the server


def test_a_crash_after_the_save_commits_neither_and_the_message_comes_once(
    server: POP3TestServer, connect: Any, batch: int, pipelined: bool
) -> None:
    conn = connect()
    make_app_table(conn)
    store = DBUIDStore(conn, account="alice", batch_size=batch, lease_ttl=0.2, pipelined=pipelined)
    with pytest.raises(Crash):
        handler_for(server).sync(store, saver(placeholder(conn), crash_on="m2"), delete_after=True)
    committed = (2 // batch) * batch  # whole batches before the one holding m2
    # m2's row was rolled back with its UID, and with it the rest of its batch
    assert saved(conn) == [f"m{i}" for i in range(committed)]
    assert server.messages() == MESSAGES  # no QUIT: the marked deletions did not happen
    time.sleep(0.3)  # the lease was released; even if not, it has expired by now
    result = handler_for(server).sync(store, saver(placeholder(conn)), delete_after=True)
    assert result == SyncResult(fetched=5 - committed, skipped=committed, deleted=5)
    assert saved(conn) == [f"m{i}" for i in range(5)]
    assert server.messages() == []


def test_a_failing_save_is_rolled_back_and_retried(
    server: POP3TestServer, connect: Any, batch: int, pipelined: bool
) -> None:
    conn = connect()
    make_app_table(conn)
    store = DBUIDStore(conn, account="alice", batch_size=batch, pipelined=pipelined)
    result = handler_for(server).sync(store, saver(placeholder(conn), fail_on="m3"))
    assert result.fetched == 4 and result.failed == 1
    assert saved(conn) == ["m0", "m1", "m2", "m4"]
    assert handler_for(server).sync(store, saver(placeholder(conn))) == SyncResult(
        fetched=1, skipped=4
    )


def test_a_database_error_in_a_batch_is_found_message_by_message(
    server: POP3TestServer, connect: Any, pipelined: bool
) -> None:
    conn = connect()
    make_app_table(conn)
    taken = server.uids()[2]
    cursor = conn.cursor()
    # m2's row fails in the database (on PostgreSQL, sent ahead, only at the commit).
    cursor.execute(f"INSERT INTO mail VALUES ({placeholder(conn)}, 'older')", (taken,))
    conn.commit()
    store = DBUIDStore(conn, account="alice", batch_size=5, pipelined=pipelined)
    result = handler_for(server).sync(store, saver(placeholder(conn)), delete_after=True)
    assert result == SyncResult(fetched=4, deleted=4, failed=1, failed_uids=(taken,))
    assert saved(conn) == ["m0", "m1", "m3", "m4", "older"]
    assert [uid for uid in server.uids()] == [taken]  # only the unsaved message stays


@pytest.mark.parametrize("autocommit", [False, True], ids=["transaction", "autocommit"])
def test_on_postgresql_a_batch_is_sent_ahead_in_one_pipeline(
    server: POP3TestServer, connect: Any, autocommit: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    conn = connect()
    make_app_table(conn)
    if isinstance(conn, sqlite3.Connection):
        assert DBUIDStore(conn, account="alice", pipelined=True).pipeline() is None
        return
    conn.autocommit = autocommit  # with autocommit the store writes BEGIN and COMMIT itself
    assert DBUIDStore(conn, account="alice").pipeline() is None  # only when asked for
    store = DBUIDStore(conn, account="alice", batch_size=5, pipelined=True)
    save = saver(placeholder(conn))
    modes: list[bool] = []

    def watched(message: dict[str, Any], cursor: Any) -> None:
        modes.append(bool(conn.pgconn.pipeline_status))
        save(message, cursor)

    result = handler_for(server).sync(store, watched, delete_after=True)
    assert result == SyncResult(fetched=5, deleted=5)
    assert modes == [True] * 5
    assert saved(conn) == [f"m{i}" for i in range(5)] and len(store) == 5


def test_a_pipelined_batch_of_a_worker_that_lost_its_lease_commits_nothing(
    connect: Any,
) -> None:
    conn1, conn2 = connect(), connect()
    make_app_table(conn1)
    first = DBUIDStore(conn1, account="alice", holder="w1", lease_ttl=0.2, pipelined=True)
    second = DBUIDStore(conn2, account="alice", holder="w2", lease_ttl=30)
    ahead = first.pipeline() or contextlib.nullcontext()
    with first.run():
        time.sleep(0.4)
        with second.run(), pytest.raises(LeaseLostError), ahead:
            cursor = first.begin()
            for uid in ("u1", "u2"):
                cursor.execute(f"INSERT INTO mail VALUES ({placeholder(conn1)}, 'x')", (uid,))
                first.record(uid)
            first.commit()
    assert saved(conn1) == [] and len(first) == 0


def test_accounts_are_kept_apart(connect: Any) -> None:
    conn = connect()
    alice, bob = DBUIDStore(conn, account="alice"), DBUIDStore(conn, account="bob")
    for store in (alice, bob):
        with store.run():
            store.begin()
            store.record("u1" if store is alice else "u2")
            store.commit()
    assert "u1" in alice and "u1" not in bob and "u2" in bob


def test_hundreds_of_uids_are_recorded_and_pruned_in_one_transaction_each(
    connect: Any,
) -> None:
    store = DBUIDStore(connect(), account="alice")
    uids = [f"u{n}" for n in range(700)]  # more than one statement's worth of rows
    with store.run() as recorded:
        assert recorded == frozenset()
        store.begin()
        for uid in uids:
            store.record(uid)
        store.commit()
        assert store.recorded() == frozenset(uids)
        store.retain(uids[:50])
    assert store.recorded() == frozenset(uids[:50])
    with store.run() as recorded:
        assert recorded == frozenset(uids[:50])


def test_a_uid_recorded_twice_in_one_transaction_commits_nothing(connect: Any) -> None:
    store = DBUIDStore(connect(), account="alice")
    with store.run():
        store.begin()
        for uid in ("a", "b", "a"):
            store.record(uid)
        with pytest.raises(Exception, match=r"(?i)unique|duplicate"):
            store.commit()
        assert store.recorded() == frozenset()
        store.begin()
        store.record("a")
        store.commit()
    assert store.recorded() == frozenset({"a"})


def test_a_batch_costs_one_statement_for_its_uids_and_a_run_one_transaction_to_start(
    tmp_path: Path,
) -> None:
    connection = sqlite3.connect(tmp_path / "app.db")
    store = DBUIDStore(connection, account="alice")
    with store.run():  # the first run inserts the lease row
        pass
    statements: list[str] = []
    connection.set_trace_callback(statements.append)
    with store.run():
        started = list(statements)
        store.begin()
        for n in range(50):
            store.record(f"u{n}")
        store.commit()
        store.retain([f"u{n}" for n in range(10)])
    connection.set_trace_callback(None)
    # Taking the lease and reading the recorded UIDs share one transaction.
    assert sum(s.startswith("BEGIN") for s in started) == 1
    assert any("SELECT uid FROM" in s for s in started)
    assert not any(s.startswith("INSERT") for s in started)  # the lease row exists
    writes = [s.split(" (")[0] for s in statements if s.startswith(("INSERT", "DELETE"))]
    assert writes == [
        "INSERT INTO mailhandlers_pop3_uids",
        "DELETE FROM mailhandlers_pop3_uids WHERE account = 'alice' AND uid IN",
    ]


# -- leases and fencing -------------------------------------------------------------


def test_a_second_worker_is_refused_while_the_lease_is_held(connect: Any) -> None:
    first = DBUIDStore(connect(), account="alice", holder="w1")
    second = DBUIDStore(connect(), account="alice", holder="w2")
    with first.run():
        with pytest.raises(AccountBusyError) as caught, second.run():
            pass
        assert caught.value.account == "alice" and caught.value.retry_after > 0
    with second.run():  # released
        pass


def test_a_worker_that_lost_its_lease_cannot_commit(connect: Any) -> None:
    conn1, conn2 = connect(), connect()
    make_app_table(conn1)
    first = DBUIDStore(conn1, account="alice", holder="w1", lease_ttl=0.2)
    second = DBUIDStore(conn2, account="alice", holder="w2", lease_ttl=30)
    with first.run():
        time.sleep(0.4)  # first stalls past its lease; second takes over
        with second.run():
            cursor = first.begin()
            cursor.execute(f"INSERT INTO mail VALUES ({placeholder(conn1)}, 'x')", ("u1",))
            first.record("u1")
            with pytest.raises(LeaseLostError):
                first.commit()
            second.begin()
            second.record("u1")
            second.commit()
    assert saved(conn1) == []  # the stale worker's save was rolled back with its UID
    assert "u1" in second


def test_tokens_only_go_up(connect: Any) -> None:
    lease = Lease(connect(), "alice", ttl=5)
    tokens = [lease.acquire() for _ in range(3)]
    assert tokens == [1, 2, 3]
    lease.release()
    assert lease.acquire() == 4


def test_what_runs_with_the_lease_is_rolled_back_with_it(connect: Any) -> None:
    lease = Lease(connect(), "alice", ttl=5)

    def fail(cursor: Any) -> None:
        raise RuntimeError("read failed")

    with pytest.raises(RuntimeError):
        lease.acquire(then=fail)
    assert lease.token is None
    seen: list[Any] = []
    assert lease.acquire(then=seen.append) == 1  # the failed take left nothing behind
    assert len(seen) == 1
    other = Lease(connect(), "alice", ttl=5, holder="other")
    with pytest.raises(AccountBusyError):
        other.acquire(then=seen.append)
    assert len(seen) == 1  # only a won lease runs it


def test_a_dead_workers_lease_expires(connect: Any) -> None:
    dead = Lease(connect(), "alice", ttl=0.2, holder="dead")
    dead.acquire()  # never released: its worker "died"
    alive = Lease(connect(), "alice", ttl=5, holder="alive")
    with pytest.raises(AccountBusyError):
        alive.acquire()
    assert alive.acquire(wait=3, poll=0.05) > (dead.token or 0)


# -- paramstyles ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("style", "sql", "params"),
    [
        ("qmark", "a = ? AND b = ?", (1, 2)),
        ("format", "a = %s AND b = %s", (1, 2)),
        ("pyformat", "a = %s AND b = %s", (1, 2)),
        ("numeric", "a = :1 AND b = :2", (1, 2)),
        ("named", "a = :p1 AND b = :p2", {"p1": 1, "p2": 2}),
    ],
)
def test_placeholders_follow_the_paramstyle(style: str, sql: str, params: Any) -> None:
    dialect = Dialect(style, sqlite=False)
    assert dialect.sql("a = ? AND b = ?") == sql
    assert dialect.params([1, 2]) == params


# -- the plain SQLite store, shared by processes ---------------------------------------


def _sync_in_child(host: str, port: int, db: str, out: Any) -> None:
    handed: list[str] = []
    handler = POP3ProtocolHandler(host, port, "user", "password", "none", 5)
    with SQLiteUIDStore(db) as store:
        try:
            handler.sync(store, lambda message: handed.append(message["uid"]), lease_wait=20)
        except AccountBusyError:
            out.put(("busy", []))
            return
    out.put(("ok", handed))


def test_processes_sharing_one_sqlite_store_hand_each_message_over_once(
    server: POP3TestServer, tmp_path: Path
) -> None:
    for i in range(40):
        server.add_message(f"Subject: extra {i}\r\n\r\nx\r\n".encode())
    context = multiprocessing.get_context("fork")
    out = context.Queue()
    children = [
        context.Process(
            target=_sync_in_child, args=(server.host, server.port, str(tmp_path / "s.db"), out)
        )
        for _ in range(4)
    ]
    for child in children:
        child.start()
    results = [out.get(timeout=60) for _ in children]
    for child in children:
        child.join(timeout=30)
    handed = [uid for status, uids in results for uid in uids]
    assert sorted(handed) == sorted(server.uids())  # 45 messages, each exactly once
    assert all(status == "ok" for status, _ in results)


def test_the_sqlite_store_refuses_a_second_run_without_waiting(tmp_path: Path) -> None:
    with SQLiteUIDStore(tmp_path / "s.db") as first, SQLiteUIDStore(tmp_path / "s.db") as second:
        with first.exclusive():
            with pytest.raises(AccountBusyError), second.exclusive():
                pass
            first.add("a")
        with second.exclusive():
            second.add("b")
        assert "a" in second and "b" in first
