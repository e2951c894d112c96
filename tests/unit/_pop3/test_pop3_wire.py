"""Tests for the bytes-level POP3 helpers and the poplib client subclasses."""

from __future__ import annotations

import gc
import io
import poplib
import tracemalloc
from collections.abc import Callable
from unittest.mock import patch

import pytest
from hypothesis import given
from hypothesis import strategies as st

from src.handlers._pop3.client import FastPOP3
from src.handlers._pop3.listing import UIDListing, parse_capabilities
from src.handlers._pop3.wire import (
    ResponseTooLargeError,
    error_for_reply,
    parse_error_reply,
    parse_scan_line,
    read_dot_terminated,
    split_lines,
    strip_ok,
)
from src.handlers.errors import (
    POP3AuthenticationError,
    POP3ConnectionError,
    POP3MailboxBusyError,
    POP3ProtocolError,
    POP3ResponseError,
)
from src.handlers.pop3 import POP3ProtocolHandler
from src.handlers.retry import is_retryable
from src.testing.scripted_server import Conversation, ScriptedServer


class ChunkyStream:
    """A peekable stream that hands out at most ``chunk`` bytes per peek."""

    def __init__(self, data: bytes, chunk: int) -> None:
        self._data = data
        self._pos = 0
        self._chunk = chunk

    def peek(self, size: int = 0, /) -> bytes:
        return self._data[self._pos : self._pos + self._chunk]

    def read(self, size: int | None = None, /) -> bytes:
        end = len(self._data) if size is None else self._pos + size
        out = self._data[self._pos : end]
        self._pos += len(out)
        return out

    def rest(self) -> bytes:
        return self._data[self._pos :]


def stuffed(lines: list[bytes]) -> bytes:
    body = b"".join((b"." + line if line.startswith(b".") else line) + b"\r\n" for line in lines)
    return body + b".\r\n"


# -- the multi-line reader ---------------------------------------------------------


def test_reader_returns_data_with_crlf_and_stops_after_terminator() -> None:
    stream = io.BufferedReader(io.BytesIO(b"one\r\ntwo\r\n.\r\n+OK next reply\r\n"))
    assert read_dot_terminated(stream) == b"one\r\ntwo\r\n"
    assert stream.read() == b"+OK next reply\r\n"


def test_reader_handles_an_empty_reply() -> None:
    stream = io.BufferedReader(io.BytesIO(b".\r\n"))
    assert read_dot_terminated(stream) == b""


def test_reader_unstuffs_leading_dots_including_the_first_line() -> None:
    data = stuffed([b".first", b"middle", b"..two dots", b"."])
    assert read_dot_terminated(io.BufferedReader(io.BytesIO(data))) == (
        b".first\r\nmiddle\r\n..two dots\r\n.\r\n"
    )


def test_reader_finds_a_terminator_split_across_chunks() -> None:
    data = b"abc\r\n.\r\nTAIL"
    for chunk in range(1, 8):
        stream = ChunkyStream(data, chunk)
        assert read_dot_terminated(stream) == b"abc\r\n"
        assert stream.rest() == b"TAIL"


def test_reader_accepts_bare_lf_servers() -> None:
    stream = io.BufferedReader(io.BytesIO(b"a\n..b\n.\n"))
    data = read_dot_terminated(stream)
    assert split_lines(data) == [b"a", b".b"]


def test_reader_refuses_more_than_the_limit() -> None:
    stream = io.BufferedReader(io.BytesIO(b"x" * 10_000 + b"\r\n.\r\n"))
    with pytest.raises(ResponseTooLargeError) as caught:
        read_dot_terminated(stream, max_bytes=1000)
    assert caught.value.limit == 1000


def test_reader_reports_end_of_stream_as_connection_error() -> None:
    with pytest.raises(POP3ConnectionError):
        read_dot_terminated(io.BufferedReader(io.BytesIO(b"partial line\r\nno end")))


def test_reader_keeps_very_long_lines() -> None:
    line = b"z" * 300_000
    assert read_dot_terminated(io.BufferedReader(io.BytesIO(line + b"\r\n.\r\n"))) == (
        line + b"\r\n"
    )


@given(
    st.lists(st.binary(max_size=40).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))),
    st.integers(min_value=1, max_value=64),
)
def test_reader_round_trips_any_stuffed_lines(lines: list[bytes], chunk: int) -> None:
    stream = ChunkyStream(stuffed(lines) + b"+OK", chunk)
    data = read_dot_terminated(stream)
    assert split_lines(data) == lines
    assert stream.rest() == b"+OK"


# -- replies -----------------------------------------------------------------------


def test_split_lines_of_crlf_and_mixed_data() -> None:
    assert split_lines(b"") == []
    assert split_lines(b"a\r\nb\r\n") == [b"a", b"b"]
    assert split_lines(b"a\r\nb\nc\r\n") == [b"a", b"b", b"c"]


def test_parse_error_reply_extracts_the_response_code() -> None:
    parsed = parse_error_reply(b"-ERR [IN-USE] locked")
    assert parsed is not None and parsed.code == "IN-USE" and parsed.text == "[IN-USE] locked"
    assert parse_error_reply(b"+OK fine") is None
    assert parse_error_reply("-ERR plain").code is None  # type: ignore[union-attr]


@pytest.mark.parametrize("code", ["IN-USE", "LOGIN-DELAY"])
def test_busy_codes_become_a_retryable_busy_error(code: str) -> None:
    error = error_for_reply(f"-ERR [{code}] try later".encode(), during_login=True)
    assert type(error) is POP3MailboxBusyError
    assert error.enhanced_code == code
    assert is_retryable(error)


def test_login_refusal_is_an_authentication_error_but_sys_codes_are_not() -> None:
    assert type(error_for_reply(b"-ERR [AUTH] bad", during_login=True)) is (POP3AuthenticationError)
    assert type(error_for_reply(b"-ERR bad", during_login=True)) is POP3AuthenticationError
    system = error_for_reply(b"-ERR [SYS/TEMP] backend down", during_login=True)
    assert type(system) is POP3ResponseError
    assert type(error_for_reply(b"-ERR no such message")) is POP3ResponseError


def test_garbage_reply_is_a_protocol_error() -> None:
    assert isinstance(error_for_reply(b"HELLO THERE"), POP3ProtocolError)


def test_secret_echoed_by_server_is_masked() -> None:
    error = error_for_reply(b"-ERR wrong password hunter2", during_login=True, secrets=["hunter2"])
    assert isinstance(error, POP3ResponseError)
    assert "hunter2" not in str(error) and "hunter2" not in error.text


def test_listing_lines_parse_and_malformed_ones_raise() -> None:
    assert parse_scan_line(b"3 1200") == (3, 1200)
    assert parse_scan_line(strip_ok(b"+OK 2 99")) == (2, 99)
    assert list(UIDListing.parse(b"1 abc.def\r\n")) == [(1, "abc.def")]
    for bad in (b"", b"x 1", b"1", b"0 10", b"1 -5"):
        with pytest.raises(POP3ProtocolError):
            parse_scan_line(bad)
    with pytest.raises(POP3ProtocolError):
        UIDListing.parse(b"7\r\n")


def test_uid_lines_are_parsed_as_rfc_1939_says() -> None:
    data = (
        b"1 AAA\r\n2 abc def\r\n3 abc\x0bdef\r\n4 " + b"x" * 71 + b"\r\n5 caf\xc3\xa9\r\n6 ~!\n7 "
    )
    listing = UIDListing.parse(data)
    assert list(listing) == [
        (1, "AAA"),
        (2, None),
        (3, None),
        (4, None),
        (5, None),
        (6, "~!"),
        (7, None),
    ]
    assert listing.invalid == (2, 3, 4, 5, 7)


UID_TEXT = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=70)


@given(
    st.lists(st.tuples(st.integers(1, 9), UID_TEXT), max_size=60),
    st.sampled_from([b"\r\n", b"\n"]),
    st.integers(1, 300),
)
def test_a_plain_uid_listing_reads_as_line_by_line_parsing_would(
    lines: list[tuple[int, str]], ending: bytes, chunk: int
) -> None:
    import src.handlers._pop3.listing as listing_module

    numbers, number = [], 0
    for step, _ in lines:
        number += step
        numbers.append(number)
    expected = list(zip(numbers, [uid for _, uid in lines], strict=True))
    data = b"".join(b"%d %s" % (n, uid.encode()) + ending for n, uid in expected)
    # Small chunks: the listing is cut into many, at every kind of line.
    with patch.object(listing_module, "_WORDS_CHUNK", chunk):
        listing = UIDListing.parse(data)
        assert list(listing) == expected and list(listing) == expected  # iterable twice
    assert listing.invalid == () and list(listing.numbers) == numbers


def test_a_plain_looking_listing_out_of_order_is_still_refused() -> None:
    for data, words in (
        (b"1 a\r\n3 b\r\n2 c\r\n", "message 2 after 3"),
        (b"1 a\r\n1 b\r\n", "message 1 after 1"),
        (b"0 a\r\n", "message number 0"),
    ):
        with pytest.raises(POP3ProtocolError, match=words):
            UIDListing.parse(data)


def test_capability_lines_that_cannot_be_capabilities_are_skipped() -> None:
    data = b"TOP\r\n\r\nX-CAF\xc3\xa9 yes\r\nsasl PLAIN LOGIN\r\nSTLS\r\n"
    assert parse_capabilities(data) == {"TOP": [], "SASL": ["PLAIN", "LOGIN"], "STLS": []}


# -- the poplib subclasses on real sockets ------------------------------------------


def _greet_with_garbage(conv: Conversation) -> None:
    conv.send("HELLO I AM NOT POP3")
    conv.wait_closed(5)


def test_failed_greeting_closes_the_socket() -> None:
    with ScriptedServer(_greet_with_garbage) as server:
        with pytest.raises(poplib.error_proto):
            FastPOP3(server.host, server.port, 5)
        # An unclosed socket would surface as a ResourceWarning (an error here).
        gc.collect()
        assert server.conversations[0].wait_closed(5)
    assert server.errors == []


def _long_line_session(conv: Conversation) -> None:
    conv.send("+OK ready")
    conv.recv_line()
    conv.send(b"+OK here\r\n" + b"y" * 100_000 + b"\r\n.\r\n")
    conv.recv_line()
    conv.send("+OK bye")


def test_long_lines_do_not_change_poplib_for_everyone_else() -> None:
    limit_before = poplib._MAXLINE  # type: ignore[attr-defined]
    with ScriptedServer(_long_line_session) as server:
        client = FastPOP3(server.host, server.port, 5)
        try:
            _, lines, octets = client.list()
            client.quit()
        finally:
            client.close()
    assert lines == [b"y" * 100_000]
    assert octets == 100_002
    assert limit_before == poplib._MAXLINE  # type: ignore[attr-defined]
    assert server.errors == []


# -- listings: bounded memory, refused duplicates -----------------------------------


def canned_pop3(replies: dict[str, bytes]) -> Callable[[Conversation], None]:
    """A logged-in-at-once POP3 server answering each verb with a canned reply."""

    def script(conv: Conversation) -> None:
        conv.send("+OK ready")
        while True:
            line = conv.recv_line()
            if line is None:
                return
            verb = line.split(b" ", 1)[0].strip().upper().decode("ascii")
            # No CAPA: the login then goes straight to USER/PASS.
            default = b"-ERR no CAPA\r\n" if verb == "CAPA" else b"+OK\r\n"
            conv.send(replies.get(verb, default))
            if verb == "QUIT":
                return

    return script


def listing(lines: list[bytes]) -> bytes:
    return b"+OK\r\n" + b"".join(line + b"\r\n" for line in lines) + b".\r\n"


def plain_handler(server: ScriptedServer) -> POP3ProtocolHandler:
    return POP3ProtocolHandler(
        *server.address, "user", "password", "none", 5, sleep=lambda seconds: None
    )


def test_a_large_listing_costs_a_small_multiple_of_its_bytes() -> None:
    count = 200_000
    reply = listing([b"%d %d" % (number, 100_000 + number) for number in range(1, count + 1)])
    replies = {"LIST": reply, "RETR": b"+OK\r\nSubject: one\r\n\r\nbody\r\n.\r\n"}
    with ScriptedServer(canned_pop3(replies)) as server:
        handler = plain_handler(server)
        tracemalloc.start()
        try:
            # More messages than are sized one by one, so the whole mailbox is listed.
            raws = handler.fetch_raw_messages(list(range(1, 41)))
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert list(raws) == list(range(1, 41))
    assert peak < 3 * len(reply), f"peak {peak} for a {len(reply)}-byte listing"


def test_a_pipelined_list_n_answered_for_another_message_is_a_protocol_error() -> None:
    replies = {"CAPA": listing([b"PIPELINING", b"UIDL"]), "LIST": b"+OK 9 100\r\n"}
    with (
        ScriptedServer(canned_pop3(replies)) as server,
        pytest.raises(POP3ProtocolError, match="LIST 1 was answered for message 9"),
    ):
        plain_handler(server).fetch_raw_messages([1, 2])


@pytest.mark.parametrize(
    "verb, lines",
    [
        ("LIST", [b"1 10", b"1 10"]),
        ("LIST", [b"2 10", b"1 10"]),
        ("UIDL", [b"1 AAA", b"1 BBB"]),
        ("UIDL", [b"2 AAA", b"1 BBB"]),
    ],
    ids=["list-duplicate", "list-descending", "uidl-duplicate", "uidl-descending"],
)
def test_repeated_or_unordered_message_numbers_are_a_protocol_error(
    verb: str, lines: list[bytes]
) -> None:
    with ScriptedServer(canned_pop3({verb: listing(lines)})) as server:
        handler = plain_handler(server)
        with pytest.raises(POP3ProtocolError, match="ascending"):
            if verb == "LIST":
                handler.list_messages()
            else:
                handler.list_uids()
