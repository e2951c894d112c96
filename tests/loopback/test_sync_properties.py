"""Properties of ``fetch_each`` and both syncs over random mailboxes (hypothesis).

Each example starts a POP3 test server with messages of random sizes, with and without
PIPELINING, and checks what must hold whatever the batch size: every message handed
over once and in order, no more downloaded ahead than the batch allows, nothing deleted
that was not recorded, and a failed message handed over on a later run.
"""

from __future__ import annotations

import sqlite3
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from src.handlers import DBUIDStore
from src.handlers.pop3 import MemoryUIDStore, POP3ProtocolHandler
from src.testing.pop3_server import POP3TestServer

SECRET = "property-secret"
EXAMPLES = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def message(index: int, length: int) -> bytes:
    return f"Subject: m{index}\r\n\r\n".encode() + b"x" * length + b"\r\n"


def handler(srv: POP3TestServer) -> POP3ProtocolHandler:
    return POP3ProtocolHandler(srv.host, srv.port, "user", SECRET, encryption="none", timeout=5)


mailboxes = st.lists(st.integers(min_value=0, max_value=3000), min_size=1, max_size=12)


@EXAMPLES
@given(lengths=mailboxes, pipelining=st.booleans(), budget=st.integers(1, 12_000))
def test_fetch_each_hands_each_message_over_once_in_order_within_its_batch(
    lengths: list[int], pipelining: bool, budget: int
) -> None:
    raws = [message(index, length) for index, length in enumerate(lengths)]
    with POP3TestServer(users={"user": SECRET}, pipelining=pipelining) as srv:
        for raw in raws:
            srv.add_message(raw)
        handed: list[int] = []
        ahead: list[int] = []

        def take(parsed: dict[str, Any]) -> None:
            number = parsed["popId"]
            sent = sum(1 for command in srv.commands if command.startswith("RETR"))
            # Downloaded but not handed over yet, this message included.
            ahead.append(sum(len(raws[n - 1]) for n in range(number, sent + 1)))
            assert ahead[-1] <= max(budget, len(raws[number - 1]))
            handed.append(number)

        missed = handler(srv).fetch_each(None, take, batch_bytes=budget)
    assert missed == []
    assert handed == list(range(1, len(raws) + 1))


@EXAMPLES
@given(
    lengths=mailboxes,
    pipelining=st.booleans(),
    failing=st.sets(st.integers(0, 11)),
    delete_after=st.booleans(),
)
def test_a_sync_hands_each_message_over_once_and_deletes_only_what_it_recorded(
    lengths: list[int], pipelining: bool, failing: set[int], delete_after: bool
) -> None:
    raws = [message(index, length) for index, length in enumerate(lengths)]
    subjects = [f"m{index}" for index in range(len(raws))]
    store = MemoryUIDStore()
    handed: list[str] = []

    def save(parsed: dict[str, Any], fail: set[str]) -> None:
        if parsed["subject"] in fail:
            raise RuntimeError("not now")
        assert parsed["uid"] not in store
        handed.append(parsed["subject"])

    with POP3TestServer(users={"user": SECRET}, pipelining=pipelining) as srv:
        for raw in raws:
            srv.add_message(raw)
        refused = {subjects[index] for index in failing if index < len(raws)}
        first = handler(srv).sync(store, lambda m: save(m, refused), delete_after=delete_after)
        assert first.fetched == len(raws) - len(refused) and first.failed == len(refused)
        left = srv.messages("user")
        assert len(left) == (len(refused) if delete_after else len(raws))
        assert sorted(handed) == sorted(set(subjects) - refused)

        second = handler(srv).sync(store, lambda m: save(m, set()), delete_after=delete_after)
        assert second.fetched == len(refused)
        assert srv.messages("user") == ([] if delete_after else raws)
    assert sorted(handed) == sorted(subjects)  # each exactly once, the refused ones later


class Crash(BaseException):
    """Stands in for the worker process dying in the middle of a message."""


@EXAMPLES
@given(
    lengths=mailboxes,
    pipelining=st.booleans(),
    batch_size=st.integers(1, 5),
    failing=st.sets(st.integers(0, 11)),
    crash_at=st.none() | st.integers(0, 11),
    delete_after=st.booleans(),
)
def test_a_transactional_sync_stores_each_message_exactly_once(
    lengths: list[int],
    pipelining: bool,
    batch_size: int,
    failing: set[int],
    crash_at: int | None,
    delete_after: bool,
) -> None:
    raws = [message(index, length) for index, length in enumerate(lengths)]
    subjects = [f"m{index}" for index in range(len(raws))]
    with tempfile.TemporaryDirectory() as folder:
        db = sqlite3.connect(Path(folder) / "app.db")
        db.execute("CREATE TABLE mail (uid TEXT, subject TEXT)")  # no key: duplicates show
        db.commit()
        store = DBUIDStore(db, account="acct", batch_size=batch_size)

        def save(parsed: dict[str, Any], cursor: Any, refuse: set[str], crash: str) -> None:
            cursor.execute("INSERT INTO mail VALUES (?, ?)", (parsed["uid"], parsed["subject"]))
            if parsed["subject"] == crash:
                raise Crash
            if parsed["subject"] in refuse:
                raise RuntimeError("not now")

        def stored() -> list[str]:
            rows = db.execute("SELECT subject FROM mail ORDER BY subject").fetchall()
            return [row[0] for row in rows]

        with POP3TestServer(users={"user": SECRET}, pipelining=pipelining) as srv:
            for raw in raws:
                srv.add_message(raw)
            refused = {subjects[index] for index in failing if index < len(raws)}
            crash = subjects[crash_at] if crash_at is not None and crash_at < len(raws) else ""

            def first_run() -> None:
                handler(srv).sync(
                    store, lambda m, c: save(m, c, refused, crash), delete_after=delete_after
                )

            if crash:
                with pytest.raises(Crash):
                    first_run()
            else:
                first_run()
                assert sorted(stored()) == sorted(set(subjects) - refused)
            # Nothing is deleted that was not stored; a crash commits no deletion.
            on_server = {raw.split(b"\r\n", 1)[0][9:].decode() for raw in srv.messages("user")}
            assert set(subjects) - on_server <= set(stored())
            assert srv.wait_idle()

            handler(srv).sync(store, lambda m, c: save(m, c, set(), ""), delete_after=delete_after)
            assert srv.messages("user") == ([] if delete_after else raws)
        assert stored() == sorted(subjects)  # each exactly once
        db.close()
