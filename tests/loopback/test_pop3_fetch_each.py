"""``fetch_each``: messages handed over one at a time from bounded, pipelined batches,
and the sizes of a few messages asked with ``LIST n`` instead of a whole listing."""

from __future__ import annotations

import time
import tracemalloc
from collections.abc import Iterator
from typing import Any

import pytest

from src.handlers.errors import ConfigurationError
from src.handlers.pop3 import MemoryUIDStore, POP3ProtocolHandler, SyncResult
from src.testing.pop3_server import POP3TestServer

SECRET = "fetch-each-secret"
MESSAGES = [f"Subject: m{i}\r\n\r\nbody {i}\r\n".encode() + b"x" * 1000 for i in range(1, 9)]


@pytest.fixture(params=[True, False], ids=["pipelining", "no-pipelining"])
def server(request: pytest.FixtureRequest) -> Iterator[POP3TestServer]:
    with POP3TestServer(users={"user": SECRET}, pipelining=request.param) as srv:
        for raw in MESSAGES:
            srv.add_message(raw)
        yield srv
    assert srv.errors == []


def handler(srv: POP3TestServer, **options: Any) -> POP3ProtocolHandler:
    options.setdefault("timeout", 5)
    return POP3ProtocolHandler(srv.host, srv.port, "user", SECRET, encryption="none", **options)


def retrs_sent(srv: POP3TestServer) -> int:
    return sum(1 for command in srv.commands if command.startswith("RETR"))


def test_every_message_is_handed_over_in_order_and_matches_fetch_messages(
    server: POP3TestServer,
) -> None:
    handed: list[dict[str, Any]] = []
    missed = handler(server).fetch_each(None, handed.append)
    assert missed == []
    assert handed == handler(server).fetch_messages()
    assert [message["subject"] for message in handed] == [f"m{i}" for i in range(1, 9)]


def test_a_batch_is_one_pipelined_download_and_is_bounded_by_size(
    server: POP3TestServer,
) -> None:
    # Two messages (about 1 KB each) fit in 2,500 bytes: batches of two, each sent as
    # one pipelined write, each handed over before the next batch is asked for.
    sent_before: list[int] = []
    handler(server).fetch_each(
        None, lambda message: sent_before.append(retrs_sent(server)), batch_bytes=2500
    )
    if server.pipelining:
        assert sent_before == [2, 2, 4, 4, 6, 6, 8, 8]
    else:
        assert sent_before == [1, 2, 3, 4, 5, 6, 7, 8]


def test_one_message_larger_than_the_batch_is_a_batch_of_its_own(
    server: POP3TestServer,
) -> None:
    sent_before: list[int] = []
    handler(server).fetch_each(
        [1, 2, 3], lambda message: sent_before.append(retrs_sent(server)), batch_bytes=1
    )
    assert sent_before == [1, 2, 3]


def test_missing_and_too_large_messages_are_returned(server: POP3TestServer) -> None:
    handed: list[int] = []
    missed = handler(server).fetch_each([4, 99, 2], lambda m: handed.append(m["popId"]))
    assert handed == [4, 2] and missed == [99]
    small = handler(server, max_message_size=100)
    assert small.fetch_each([1, 2], lambda m: handed.append(m["popId"])) == [1, 2]
    assert handed == [4, 2]


def test_a_handler_that_raises_stops_the_fetch_and_leaves_the_session_usable(
    server: POP3TestServer,
) -> None:
    handed: list[int] = []

    def stop_at_three(message: dict[str, Any]) -> None:
        if message["popId"] == 3:
            raise LookupError("the application's own error")
        handed.append(message["popId"])

    pop = handler(server)
    with pop:
        with pytest.raises(LookupError, match="own error"):
            pop.fetch_each(None, stop_at_three)
        assert handed == [1, 2]
        # Any pipelined replies were read, so the session is still in step.
        assert pop.fetch_message(5) is not None


def test_the_handler_is_not_timed() -> None:
    # The operation's time limit (0.3 s) bounds each reply, not the application's
    # handling of a message, even while later messages of the batch wait unread.
    with POP3TestServer(users={"user": SECRET}) as srv:
        for raw in MESSAGES[:3]:
            srv.add_message(raw)
        handed: list[int] = []

        def slow(message: dict[str, Any]) -> None:
            time.sleep(0.5)
            handed.append(message["popId"])

        assert handler(srv, timeout=0.3).fetch_each(None, slow) == []
    assert handed == [1, 2, 3]


def test_memory_is_bounded_by_the_batch_not_the_mailbox() -> None:
    big = [b"Subject: big\r\n\r\n" + (b"y" * 76 + b"\r\n") * 3300 for _ in range(24)]
    with POP3TestServer(users={"user": SECRET}) as srv:
        for raw in big:
            srv.add_message(raw)
        pop = handler(srv)
        sizes: list[int] = []
        tracemalloc.start()
        try:
            pop.fetch_each(None, lambda m: sizes.append(m["size"]), batch_bytes=300_000)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert len(sizes) == 24
    total = sum(sizes)  # about 6 MB
    assert peak < total / 3, f"peak {peak} for {total} bytes of mail"


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "4096"])
def test_batch_bytes_must_be_a_positive_integer(bad: Any) -> None:
    pop = POP3ProtocolHandler("127.0.0.1", 110, "user", SECRET, encryption="none")
    with pytest.raises(ConfigurationError, match="batch_bytes"):
        pop.fetch_each(None, print, batch_bytes=bad)


def test_a_few_messages_are_sized_with_list_n_not_the_whole_listing(
    server: POP3TestServer,
) -> None:
    handler(server).fetch_messages([2, 5])
    lists = [command for command in server.commands if command.startswith("LIST")]
    assert lists == ["LIST 2", "LIST 5"]
    handler(server).fetch_messages(list(range(1, 40)))  # more than a few: listed whole
    assert [c for c in server.commands if c.startswith("LIST")][2:] == ["LIST"]


def test_the_plain_sync_downloads_new_messages_in_one_batch_and_deletes_them_together(
    server: POP3TestServer,
) -> None:
    store = MemoryUIDStore()
    seen: list[str] = []
    result = handler(server).sync(store, lambda m: seen.append(m["subject"]), delete_after=True)
    assert result == SyncResult(fetched=8, deleted=8)
    assert seen == [f"m{i}" for i in range(1, 9)]
    assert server.messages() == []
    commands = server.commands
    assert [c for c in commands if c.startswith("LIST")] == [f"LIST {n}" for n in range(1, 9)]
    retrs = [i for i, c in enumerate(commands) if c.startswith("RETR")]
    deletes = [i for i, c in enumerate(commands) if c.startswith("DELE")]
    # Marked for deletion once all were handed over and recorded.
    assert len(deletes) == 8 and min(deletes) > max(retrs)
