"""Pipelined RETR (RFC 2449 PIPELINING): the client batch and the handler paths using it."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest
from pytest_mock import MockerFixture

from src.handlers._pop3.adapter import ClientAdapter
from src.handlers._pop3.client import FastPOP3
from src.handlers._pop3.listing import ScanListing
from src.handlers._pop3.wire import ResponseTooLargeError
from src.handlers.errors import POP3ConnectionError, POP3ProtocolError
from src.handlers.pop3 import POP3ProtocolHandler
from src.testing.pop3_server import POP3TestServer

SECRET = "pipelining-secret"
MESSAGES = [
    b"Subject: one\r\n\r\nfirst body\r\n",
    b"Subject: two\r\n\r\n.leading dot line\r\n..two dots\r\n",
    b".\r\n\r\nbody after a header line that is a single dot\r\n",
    b"Subject: four\r\n\r\n" + (b"x" * 70 + b"\r\n") * 3000,
] + [f"Subject: n{i}\r\n\r\nbody {i}\r\n".encode() for i in range(5, 81)]


@pytest.fixture(params=[True, False], ids=["pipelining", "no-pipelining"])
def server(request: pytest.FixtureRequest) -> Iterator[POP3TestServer]:
    with POP3TestServer(users={"user": SECRET}, pipelining=request.param) as srv:
        for raw in MESSAGES:
            srv.add_message(raw)
        yield srv
    assert srv.errors == []


def handler(srv: POP3TestServer, **options: Any) -> POP3ProtocolHandler:
    return POP3ProtocolHandler(
        srv.host, srv.port, "user", SECRET, encryption="none", timeout=5, **options
    )


def client(srv: POP3TestServer) -> FastPOP3:
    pop = FastPOP3(srv.host, srv.port, timeout=5)
    pop.user("user")
    pop.pass_(SECRET)
    return pop


def test_fetch_raw_messages_returns_every_message_byte_for_byte() -> None:
    with POP3TestServer(users={"user": SECRET}) as srv:
        for raw in MESSAGES:
            srv.add_message(raw)
        raws = handler(srv).fetch_raw_messages()
    assert raws == {number: raw for number, raw in enumerate(MESSAGES, start=1)}


def test_fetch_paths_agree_with_and_without_pipelining(server: POP3TestServer) -> None:
    fetched = handler(server).fetch_messages()
    assert [m["popId"] for m in fetched] == list(range(1, len(MESSAGES) + 1))
    assert fetched[0]["subject"] == "one"
    assert fetched[1]["textBody"].startswith(".leading dot line")
    assert handler(server).fetch_raw_messages([3, 1]) == {3: MESSAGES[2], 1: MESSAGES[0]}


def test_pipelining_is_used_only_when_offered(
    server: POP3TestServer, mocker: MockerFixture
) -> None:
    spy = mocker.spy(FastPOP3, "retr_many")
    handler(server).fetch_messages([1, 2, 3])
    assert spy.call_count == (1 if server.pipelining else 0)
    retrs = [command for command in server.commands if command.startswith("RETR")]
    assert retrs == ["RETR 1", "RETR 2", "RETR 3"]


def test_single_message_is_not_worth_a_capa(server: POP3TestServer) -> None:
    handler(server).fetch_messages([2])
    # The login's CAPA only: asking about PIPELINING would cost a round trip of its own.
    assert server.commands.count("CAPA") == 1


def test_capa_is_asked_once_per_session(server: POP3TestServer) -> None:
    pop3 = handler(server)
    with pop3.session():
        pop3.fetch_messages([1, 2])
        pop3.fetch_raw_messages([3, 4])
    # Asked once whether or not PIPELINING turns out to be offered.
    assert server.commands.count("CAPA") == 1


def test_retr_many_delivers_in_order_and_isolates_refusals() -> None:
    with POP3TestServer(users={"user": SECRET}) as srv:
        for raw in MESSAGES[:3]:
            srv.add_message(raw)
        pop = client(srv)
        seen: list[tuple[int, bool, bytes | None]] = []
        pop.retr_many(
            [2, 99, 1, 3],
            lambda number, status, raw: seen.append((number, status.startswith(b"+OK"), raw)),
            window=2,
        )
        assert seen == [
            (2, True, MESSAGES[1]),
            (99, False, None),
            (1, True, MESSAGES[0]),
            (3, True, MESSAGES[2]),
        ]
        assert pop.stat()[0] == 3  # still in step
        pop.quit()


def test_many_more_messages_than_the_window() -> None:
    with POP3TestServer(users={"user": SECRET}) as srv:
        for raw in MESSAGES:
            srv.add_message(raw)
        pop = client(srv)
        got: list[int] = []
        pop.retr_many(range(1, len(MESSAGES) + 1), lambda n, s, r: got.append(n), window=4)
        assert got == list(range(1, len(MESSAGES) + 1))
        pop.quit()


def test_a_failing_consumer_leaves_the_session_in_step() -> None:
    with POP3TestServer(users={"user": SECRET}) as srv:
        for raw in MESSAGES[:10]:
            srv.add_message(raw)
        pop = client(srv)

        def consumer(number: int, status: bytes, raw: bytes | None) -> None:
            if number == 3:
                raise RuntimeError("consumer failed")

        with pytest.raises(RuntimeError, match="consumer failed"):
            pop.retr_many(range(1, 11), consumer, window=8)
        assert pop.noop().startswith(b"+OK")
        assert pop.retr_bytes(4)[1] == MESSAGES[3]
        pop.quit()


def test_an_oversized_reply_names_its_message() -> None:
    with POP3TestServer(users={"user": SECRET}) as srv:
        for raw in MESSAGES[:5]:
            srv.add_message(raw)
        pop = client(srv)
        pop.message_limit = 1000
        delivered: list[int] = []
        with pytest.raises(ResponseTooLargeError) as raised:
            pop.retr_many([1, 2, 4, 5], lambda n, s, r: delivered.append(n))
        assert raised.value.number == 4
        assert raised.value.limit == 1000
        assert delivered == [1, 2]
        pop.close()


def test_refused_retrs_are_logged_and_skipped(
    server: POP3TestServer, caplog: pytest.LogCaptureFixture
) -> None:
    server.faults.error_replies = {"RETR": "-ERR [SYS/TEMP] try later"}
    pop3 = handler(server)
    with caplog.at_level(logging.WARNING, logger="src.handlers"), pop3.session():
        assert pop3.fetch_messages([1, 2, 3]) == []
        assert pop3.fetch_raw_messages([4, 5]) == {}
        server.faults.error_replies = {}
        assert pop3.fetch_raw_messages([6]) == {6: MESSAGES[5]}
    refused = [r for r in caplog.records if "refused message" in r.getMessage()]
    assert len(refused) == 5
    assert all("try later" in r.getMessage() for r in refused)


def test_too_large_messages_are_skipped_before_any_retr(server: POP3TestServer) -> None:
    pop3 = handler(server, max_message_size=10_000)
    fetched = pop3.fetch_raw_messages([3, 4, 5])
    assert sorted(fetched) == [3, 5]
    assert "RETR 4" not in server.commands


def test_message_lost_mid_batch_loses_the_session(server: POP3TestServer) -> None:
    server.faults.drop_mid_retr_after_bytes = 40
    pop3 = handler(server)
    with pytest.raises((POP3ConnectionError, POP3ProtocolError)):
        pop3.fetch_messages([1, 2, 3])
    assert pop3.state == "disconnected"


def test_message_larger_than_listed_loses_the_session_either_way(
    server: POP3TestServer, mocker: MockerFixture, caplog: pytest.LogCaptureFixture
) -> None:
    # A server that under-reports a size in LIST: the limit trips in the middle of the
    # reply, the rest of the stream is unusable, and both paths say so the same way.
    mocker.patch.object(
        ClientAdapter,
        "scan",
        return_value=ScanListing.parse(b"".join(b"%d 100\r\n" % n for n in range(1, 6))),
    )
    pop3 = handler(server, max_message_size=10_000)
    with (
        caplog.at_level(logging.WARNING, logger="src.handlers"),
        pytest.raises(POP3ConnectionError),
    ):
        pop3.fetch_messages()
    assert any("skipping POP3 message 4" in r.getMessage() for r in caplog.records)
    assert pop3.state == "disconnected"


def test_a_slow_pipelined_batch_is_bounded_per_reply_not_as_a_whole() -> None:
    # Each RETR reply takes 0.15 s, so the batch of eight takes about 1.2 s; with an
    # operation_timeout of 0.6 s every reply fits, the batch as a whole would not.
    with POP3TestServer(users={"user": SECRET}, pipelining=True) as srv:
        for raw in MESSAGES[:8]:
            srv.add_message(raw)
        with handler(srv, operation_timeout=0.6) as pop:
            srv.faults.reply_delay = 0.15
            fetched = pop.fetch_raw_messages()
    assert sorted(fetched) == list(range(1, 9))


def test_a_stalled_reply_in_a_pipelined_batch_still_times_out() -> None:
    from src.handlers.errors import POP3TimeoutError

    with POP3TestServer(users={"user": SECRET}, pipelining=True) as srv:
        for raw in MESSAGES[:4]:
            srv.add_message(raw)
        pop = handler(srv, operation_timeout=0.5)
        pop.connect()
        pop.authenticate()
        srv.faults.silent_on = "RETR"
        with pytest.raises(POP3TimeoutError):
            pop.fetch_raw_messages()
        pop.disconnect()


def test_dele_many_answers_in_order_and_isolates_refusals() -> None:
    with POP3TestServer(users={"user": SECRET}) as srv:
        for raw in MESSAGES[:4]:
            srv.add_message(raw)
        pop = client(srv)
        replies = pop.dele_many([2, 99, 4, 2, 1], window=2)
        assert [reply.startswith(b"+OK") for reply in replies] == [True, False, True, False, True]
        assert pop.stat()[0] == 1  # in step; three marked
        pop.quit()
        assert srv.messages() == [MESSAGES[2]]


def test_list_many_answers_in_order_and_isolates_refusals() -> None:
    with POP3TestServer(users={"user": SECRET}) as srv:
        for raw in MESSAGES[:4]:
            srv.add_message(raw)
        pop = client(srv)
        replies = pop.list_many([3, 99, 1, 4], window=3)
        assert replies[0] == b"+OK 3 %d" % len(MESSAGES[2])
        assert replies[1].startswith(b"-ERR")
        assert replies[2:] == [b"+OK 1 %d" % len(MESSAGES[0]), b"+OK 4 %d" % len(MESSAGES[3])]
        assert pop.stat()[0] == 4  # in step
        pop.quit()


def test_delete_messages_is_pipelined_only_when_offered(
    server: POP3TestServer, mocker: MockerFixture
) -> None:
    spy = mocker.spy(FastPOP3, "dele_many")
    pop3 = handler(server)
    with pop3.session():
        assert pop3.delete_messages([1, 3, 999_999, 5]) == (3, 1)
        assert pop3.pending_deletions == 3
    assert spy.call_count == (1 if server.pipelining else 0)
    deles = [command for command in server.commands if command.startswith("DELE")]
    assert deles == ["DELE 1", "DELE 3", "DELE 999999", "DELE 5"]
    assert len(server.messages()) == len(MESSAGES) - 3


def test_deleting_one_message_asks_for_no_capa(server: POP3TestServer) -> None:
    handler(server).delete_messages([2])
    assert server.commands.count("CAPA") == 1
