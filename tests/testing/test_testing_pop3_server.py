"""Tests for the in-process POP3 test server, driven by stdlib ``poplib`` and raw sockets."""

from __future__ import annotations

import base64
import contextlib
import poplib
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, cast

import pytest

from src.testing.pop3_server import POP3TestServer
from src.testing.tls import TestCertificates

MESSAGE_1 = b"From: a@example.com\r\nSubject: one\r\n\r\nfirst body\r\n.leading dot\r\n"
MESSAGE_2 = b"From: b@example.com\r\nSubject: two\r\n\r\nline 1\r\nline 2\r\nline 3\r\n"


@pytest.fixture
def server() -> Iterator[POP3TestServer]:
    with POP3TestServer() as srv:
        srv.add_message(MESSAGE_1)
        srv.add_message(MESSAGE_2)
        yield srv
    assert srv.errors == []


@contextlib.contextmanager
def pop(
    srv: POP3TestServer, *, login: bool = True, host: str | None = None
) -> Iterator[poplib.POP3]:
    """A poplib client that is closed whatever happens."""
    client = poplib.POP3(host or srv.host, srv.port, timeout=5)
    try:
        if login:
            client.user("user")
            client.pass_("password")
        yield client
    finally:
        client.close()


class RawClient:
    """A line-oriented socket client for what poplib cannot do."""

    def __init__(self, srv: POP3TestServer, timeout: float = 5.0) -> None:
        self.sock = socket.create_connection((srv.host, srv.port), timeout=timeout)
        self.file = self.sock.makefile("rb")

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def line(self) -> bytes:
        raw = self.file.readline()
        if not raw:
            raise EOFError
        return raw.removesuffix(b"\n").removesuffix(b"\r")

    def command(self, text: str) -> bytes:
        self.send(text.encode() + b"\r\n")
        return self.line()

    def body(self) -> list[bytes]:
        """The rest of a multi-line reply, dot-unstuffed."""
        lines = []
        while (line := self.line()) != b".":
            lines.append(line[1:] if line.startswith(b".") else line)
        return lines

    def close(self) -> None:
        self.file.close()
        self.sock.close()

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def plain(user: str, password: str) -> str:
    return base64.b64encode(f"\0{user}\0{password}".encode()).decode()


# -- basic protocol ----------------------------------------------------------------------


def test_login_stat_list_retr(server: POP3TestServer) -> None:
    with pop(server) as client:
        assert client.getwelcome().startswith(b"+OK")
        count, size = client.stat()
        assert count == 2
        assert size == len(MESSAGE_1) + len(MESSAGE_2)
        _, listing, _ = client.list()
        assert listing == [f"1 {len(MESSAGE_1)}".encode(), f"2 {len(MESSAGE_2)}".encode()]
        _, lines, _ = client.retr(1)
        # poplib undoes the dot-stuffing the server applied.
        assert b"\r\n".join(lines) + b"\r\n" == MESSAGE_1
        assert client.quit().startswith(b"+OK")
    assert server.commands == ["USER user", "PASS ***", "STAT", "LIST", "RETR 1", "QUIT"]
    assert server.sessions_started == 1


def test_bad_password_is_refused_with_auth_code(server: POP3TestServer) -> None:
    with pop(server, login=False) as client:
        client.user("user")
        with pytest.raises(poplib.error_proto, match=r"\[AUTH\]"):
            client.pass_("wrong")
        # The failed attempt leaves the session in AUTHORIZATION; a retry works.
        client.user("user")
        assert client.pass_("password").startswith(b"+OK")
    assert "PASS ***" in server.commands
    assert not any("wrong" in line for line in server.commands)


def test_capa_reflects_configuration() -> None:
    srv = POP3TestServer(uidl=False, top=False, pipelining=False, sasl_mechanisms=())
    with srv, pop(srv) as client:
        caps = client.capa()
        assert "UIDL" not in caps and "TOP" not in caps and "PIPELINING" not in caps
        assert "SASL" not in caps and "STLS" not in caps
        assert {"USER", "RESP-CODES", "AUTH-RESP-CODE"} <= caps.keys()
        with pytest.raises(poplib.error_proto):
            client.uidl()
        with pytest.raises(poplib.error_proto):
            client.top(1, 0)
    with POP3TestServer() as srv, pop(srv) as client:
        caps = client.capa()
        assert {"UIDL", "TOP", "PIPELINING"} <= caps.keys()
        assert caps["SASL"] == ["PLAIN"]


def test_top_returns_headers_and_requested_body_lines(server: POP3TestServer) -> None:
    with pop(server) as client:
        _, lines, _ = client.top(2, 2)
        assert lines == [b"From: b@example.com", b"Subject: two", b"", b"line 1", b"line 2"]
        _, lines, _ = client.top(2, 0)
        assert lines == [b"From: b@example.com", b"Subject: two", b""]


def test_commands_in_wrong_state_are_errors(server: POP3TestServer) -> None:
    with RawClient(server) as raw:
        raw.line()
        assert raw.command("STAT").startswith(b"-ERR")
        assert raw.command("PASS password").startswith(b"-ERR")  # no USER yet
        assert raw.command("FROB").startswith(b"-ERR")
        assert raw.command("USER user").startswith(b"+OK")
        assert raw.command("PASS password").startswith(b"+OK")
        assert raw.command("USER user").startswith(b"-ERR")
        assert raw.command("STLS").startswith(b"-ERR")
        assert raw.command("RETR 99").startswith(b"-ERR")
        assert raw.command("RETR x").startswith(b"-ERR")
        assert raw.command("NOOP") == b"+OK"
        assert raw.command("QUIT").startswith(b"+OK")


def test_auth_plain_initial_response_and_continuation(server: POP3TestServer) -> None:
    with RawClient(server) as raw:
        raw.line()
        assert raw.command("AUTH PLAIN " + plain("user", "nope")).startswith(b"-ERR [AUTH]")
        assert raw.command("AUTH PLAIN " + plain("user", "password")).startswith(b"+OK")
    with RawClient(server) as raw:
        raw.line()
        assert raw.command("AUTH PLAIN") == b"+ "
        assert raw.command(plain("user", "password")).startswith(b"+OK")
        assert raw.command("STAT") == f"+OK 2 {len(MESSAGE_1) + len(MESSAGE_2)}".encode()
    assert server.commands.count("AUTH PLAIN ***") == 2
    secret = plain("user", "password")
    assert not any(secret in line for line in server.commands)


def test_sasl_handler_extension_point() -> None:
    def xoauth2(response: bytes) -> str | None:
        return "user" if response == b"user=user\x01auth=Bearer token\x01\x01" else None

    with pytest.raises(ValueError, match="XOAUTH2"):
        POP3TestServer(sasl_mechanisms=("PLAIN", "XOAUTH2"))
    srv = POP3TestServer(sasl_mechanisms=("PLAIN", "XOAUTH2"), sasl_handlers={"XOAUTH2": xoauth2})
    with srv, RawClient(srv) as raw:
        raw.line()
        token = base64.b64encode(b"user=user\x01auth=Bearer token\x01\x01").decode()
        assert raw.command("CAPA") == b"+OK capability list follows"
        assert b"SASL PLAIN XOAUTH2" in raw.body()
        assert raw.command("AUTH XOAUTH2 " + token).startswith(b"+OK")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"host": "0.0.0.0"}, "loopback"),
        ({"tls": "implicit"}, "ssl_context"),
        ({"max_line_length": 0}, "max_line_length"),
    ],
)
def test_invalid_configuration_is_refused(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        POP3TestServer(**kwargs)


# -- maildrop semantics ------------------------------------------------------------------


def test_uidl_is_stable_and_unique(server: POP3TestServer) -> None:
    third = server.add_message(MESSAGE_1)  # same content, still a different ID
    with pop(server) as client:
        _, first_listing, _ = client.uidl()
        assert client.uidl(3).split()[-1].decode() == third
        client.quit()
    with pop(server) as client:
        _, second_listing, _ = client.uidl()
        client.quit()
    assert first_listing == second_listing
    uids = [line.split()[1].decode() for line in first_listing]
    assert uids == server.uids() and len(set(uids)) == 3


def test_deletion_is_committed_on_quit(server: POP3TestServer) -> None:
    uids_before = server.uids()
    with pop(server) as client:
        client.dele(1)
        assert client.quit().startswith(b"+OK")
    assert server.messages() == [MESSAGE_2]
    with pop(server) as client:
        # The surviving message keeps its ID and is renumbered 1.
        assert client.uidl(1).split()[-1].decode() == uids_before[1]
        client.quit()


def test_deleted_message_is_hidden_and_rset_restores_it(server: POP3TestServer) -> None:
    with pop(server) as client:
        client.dele(1)
        assert client.stat() == (1, len(MESSAGE_2))
        assert client.list()[1] == [f"2 {len(MESSAGE_2)}".encode()]
        assert [line.split()[0] for line in client.uidl()[1]] == [b"2"]
        for touch in (client.retr, client.dele, client.list):
            with pytest.raises(poplib.error_proto, match="deleted"):
                touch(1)
        client.rset()
        assert client.stat()[0] == 2
        client.quit()
    assert server.messages() == [MESSAGE_1, MESSAGE_2]


def test_dropped_session_deletes_nothing(server: POP3TestServer) -> None:
    with pop(server) as client:
        client.dele(1)
        client.dele(2)
    # The client vanished without QUIT.
    assert server.wait_idle(5)
    assert server.messages() == [MESSAGE_1, MESSAGE_2]


def test_concurrent_login_gets_in_use_until_first_session_ends(server: POP3TestServer) -> None:
    with pop(server) as first, pop(server, login=False) as second:
        second.user("user")
        with pytest.raises(poplib.error_proto, match=r"\[IN-USE\]"):
            second.pass_("password")
        first.quit()
        # The lock is released before QUIT is answered, so this cannot race.
        second.user("user")
        assert second.pass_("password").startswith(b"+OK")
        second.quit()


def test_messages_added_during_a_session_appear_in_the_next(server: POP3TestServer) -> None:
    with pop(server) as client:
        server.add_message(b"Subject: late\r\n\r\nx\r\n")
        assert client.stat()[0] == 2
        client.quit()
    with pop(server) as client:
        assert client.stat()[0] == 3
        client.quit()


def test_long_lines_round_trip() -> None:
    long_line = b"x" * 10_000
    raw_message = b"Subject: long\r\n\r\n" + long_line + b"\r\n." + long_line + b"\n"
    with POP3TestServer() as srv, RawClient(srv) as raw:
        srv.add_message(raw_message)
        raw.line()
        raw.command("USER user")
        raw.command("PASS password")
        expected_size = len(raw_message) + 1  # the bare LF goes out as CRLF
        assert raw.command("RETR 1") == f"+OK {expected_size} octets".encode()
        assert raw.body() == [b"Subject: long", b"", long_line, b"." + long_line]
        # A 10,000-byte command line is accepted by default ...
        assert raw.command("NOOP " + "y" * 10_000) == b"+OK"


def test_max_line_length_refuses_long_commands() -> None:
    with POP3TestServer(max_line_length=255) as srv, RawClient(srv) as raw:
        raw.line()
        assert raw.command("USER " + "u" * 300) == b"-ERR line too long"
        assert raw.command("USER user").startswith(b"+OK")  # still in step


def test_pipelined_commands_are_answered_in_order(server: POP3TestServer) -> None:
    with RawClient(server) as raw:
        raw.line()
        raw.send(
            b"CAPA\r\nUSER user\r\nPASS password\r\nSTAT\r\nUIDL\r\nRETR 2\r\nDELE 1\r\nQUIT\r\n"
        )
        assert raw.line().startswith(b"+OK")
        assert b"PIPELINING" in raw.body()
        assert raw.line() == b"+OK send PASS"
        assert raw.line().startswith(b"+OK user has 2 messages")
        assert raw.line() == f"+OK 2 {len(MESSAGE_1) + len(MESSAGE_2)}".encode()
        assert raw.line().startswith(b"+OK")
        assert len(raw.body()) == 2
        assert raw.line().startswith(b"+OK")
        assert b"\r\n".join(raw.body()) + b"\r\n" == MESSAGE_2
        assert raw.line() == b"+OK message 1 deleted"
        assert raw.line().startswith(b"+OK bye")
    assert server.messages() == [MESSAGE_2]


def test_many_concurrent_sessions() -> None:
    users = {f"user{i}": f"pw{i}" for i in range(24)}
    barrier = threading.Barrier(len(users), timeout=10)

    def session(name: str) -> int:
        client = poplib.POP3(srv.host, srv.port, timeout=10)
        try:
            client.user(name)
            client.pass_(users[name])
            barrier.wait()  # every session is logged in at the same moment
            count = client.stat()[0]
            client.quit()
            return count
        finally:
            client.close()

    with POP3TestServer(users=users) as srv:
        for name in users:
            srv.add_message(f"Subject: for {name}\r\n\r\nhi\r\n".encode(), user=name)
        with ThreadPoolExecutor(len(users)) as pool:
            assert list(pool.map(session, users)) == [1] * len(users)
        assert srv.sessions_started == len(users)
        assert srv.max_concurrent_sessions == len(users)
        assert srv.errors == []


# -- faults ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "code"),
    [("reject_login", "AUTH"), ("in_use", "IN-USE"), ("login_delay", "LOGIN-DELAY")],
)
def test_login_faults(server: POP3TestServer, fault: str, code: str) -> None:
    setattr(server.faults, fault, True)
    with pop(server, login=False) as client:
        client.user("user")
        with pytest.raises(poplib.error_proto, match=rf"^b'-ERR \[{code}\]"):
            client.pass_("password")
    with RawClient(server) as raw:
        raw.line()
        assert raw.command("AUTH PLAIN " + plain("user", "password")).startswith(
            f"-ERR [{code}]".encode()
        )
    server.faults.reset()
    with pop(server) as client:
        client.quit()


def test_no_greeting_stays_silent(server: POP3TestServer) -> None:
    server.faults.no_greeting = True
    with RawClient(server, timeout=0.2) as raw, pytest.raises(socket.timeout):
        raw.sock.recv(100)


def test_delays_still_produce_correct_replies(server: POP3TestServer) -> None:
    server.faults.greeting_delay = 0.05
    server.faults.reply_delay = 0.01
    with pop(server) as client:
        assert client.stat()[0] == 2
        client.quit()


def test_drip_interval_sends_one_byte_at_a_time(server: POP3TestServer) -> None:
    server.faults.drip_interval = 0.01
    with RawClient(server) as raw:
        first = raw.sock.recv(1000)
        assert 0 < len(first) < len(b"+OK mailhandlers POP3 test server ready\r\n")
        raw.file.close()
        raw.file = raw.sock.makefile("rb")
        rest = raw.line()
        assert (first + rest).startswith(b"+OK mailhandlers")


@pytest.mark.parametrize("verb", ["USER", "PASS", "LIST"])
def test_drop_after_closes_instead_of_replying(server: POP3TestServer, verb: str) -> None:
    server.faults.drop_after = verb.lower()
    with RawClient(server) as raw:
        raw.line()
        with pytest.raises(EOFError):
            for command in ("USER user", "PASS password", "LIST"):
                assert raw.command(command).startswith(b"+OK")
            raw.body()
    assert server.commands[-1].split()[0] == verb


@pytest.mark.parametrize(("processing", "expected"), [(False, 2), (True, 1)])
def test_drop_after_quit(server: POP3TestServer, processing: bool, expected: int) -> None:
    server.faults.drop_after = "QUIT"
    server.faults.drop_after_processing = processing
    with pop(server) as client:
        client.dele(1)
        with pytest.raises(poplib.error_proto, match="EOF"):
            client.quit()
    assert server.wait_idle(5)
    assert len(server.messages()) == expected


def test_drop_mid_retr(server: POP3TestServer) -> None:
    server.faults.drop_mid_retr_after_bytes = 20
    with RawClient(server) as raw:
        raw.line()
        raw.command("USER user")
        raw.command("PASS password")
        raw.send(b"RETR 1\r\n")
        reply = f"+OK {len(MESSAGE_1)} octets\r\n".encode() + MESSAGE_1
        assert raw.file.read() == reply[:20]


def test_error_replies_replace_processing(server: POP3TestServer) -> None:
    server.faults.error_replies = {"dele": "-ERR [SYS/TEMP] try later"}
    with pop(server) as client:
        with pytest.raises(poplib.error_proto, match=r"\[SYS/TEMP\] try later"):
            client.dele(1)
        client.quit()
    assert len(server.messages()) == 2


def test_garbage_reply_on_greeting_and_on_one_verb(server: POP3TestServer) -> None:
    server.faults.garbage_reply = b"\x00\xffHELLO?\r\n"
    with RawClient(server) as raw:
        assert raw.line() == b"\x00\xffHELLO?"
    server.faults.garbage_on = "stat"
    with pop(server) as client:
        with pytest.raises(poplib.error_proto):
            client.stat()
        assert client.noop().startswith(b"+OK")


# -- TLS ---------------------------------------------------------------------------------


def test_stls_upgrades_with_verified_certificate(
    server_ssl_context: ssl.SSLContext, client_ssl_context: ssl.SSLContext
) -> None:
    srv = POP3TestServer(tls="starttls", ssl_context=server_ssl_context)
    with srv, pop(srv, login=False, host="localhost") as client:
        assert "STLS" in client.capa()
        client.stls(context=client_ssl_context)
        assert isinstance(client.sock, ssl.SSLSocket)
        assert "STLS" not in client.capa()
        client.user("user")
        client.pass_("password")
        with pytest.raises(poplib.error_proto, match="not valid"):
            client._shortcmd("STLS")  # type: ignore[attr-defined]
        client.quit()
    assert srv.errors == []


def test_stls_discards_commands_pipelined_before_handshake(
    server_ssl_context: ssl.SSLContext, client_ssl_context: ssl.SSLContext
) -> None:
    srv = POP3TestServer(tls="starttls", ssl_context=server_ssl_context)
    with srv, RawClient(srv) as raw:
        raw.line()
        raw.send(b"STLS\r\nUSER injected\r\n")
        assert raw.line().startswith(b"+OK")
        raw.file.close()
        with client_ssl_context.wrap_socket(raw.sock, server_hostname="127.0.0.1") as tls:
            tls.sendall(b"NOOP\r\n")
            assert tls.recv(100).startswith(b"-ERR")  # not logged in, so NOOP is refused
    assert "USER injected" not in srv.commands


def test_stls_faults(server_ssl_context: ssl.SSLContext) -> None:
    srv = POP3TestServer(tls="starttls", ssl_context=server_ssl_context)
    with srv:
        srv.faults.advertise_stls = False
        with pop(srv, login=False) as client:
            assert "STLS" not in client.capa()
        srv.faults.advertise_stls = True
        srv.faults.stls_error = True
        with pop(srv, login=False) as client, pytest.raises(poplib.error_proto):
            client.stls(context=ssl.create_default_context())
    assert srv.commands.count("STLS") == 1
    assert srv.errors == []


def test_implicit_tls(
    certs: TestCertificates,
    server_ssl_context: ssl.SSLContext,
    client_ssl_context: ssl.SSLContext,
) -> None:
    srv = POP3TestServer(tls="implicit", ssl_context=server_ssl_context)
    with srv:
        srv.add_message(MESSAGE_1)
        client = poplib.POP3_SSL("localhost", srv.port, context=client_ssl_context, timeout=5)
        try:
            assert cast(ssl.SSLSocket, client.sock).getpeercert() is not None
            client.user("user")
            client.pass_("password")
            assert client.retr(1)[1][-1] == b".leading dot"
            assert "STLS" not in client.capa()
            client.quit()
        finally:
            client.close()
        # A client that does not trust the test CA refuses the server.
        untrusting = ssl.create_default_context()
        with pytest.raises(ssl.SSLCertVerificationError):
            poplib.POP3_SSL("localhost", srv.port, context=untrusting, timeout=5)
    assert srv.errors == []


# -- lifecycle ---------------------------------------------------------------------------


def test_stop_is_fast_and_closes_everything(server_ssl_context: ssl.SSLContext) -> None:
    srv = POP3TestServer(tls="starttls", ssl_context=server_ssl_context).start()
    srv.add_message(b"Subject: big\r\n\r\n" + b"z" * 5000 + b"\r\n")
    clients = [RawClient(srv) for _ in range(6)]
    try:
        for raw in clients:
            raw.line()
        # One client is stuck before its TLS handshake, one is reading a dripped reply.
        assert clients[0].command("STLS").startswith(b"+OK")
        clients[1].command("USER user")
        clients[1].command("PASS password")
        srv.faults.drip_interval = 0.05
        clients[1].send(b"RETR 1\r\n")
        assert srv.active_sessions == 6
        started = time.monotonic()
        srv.stop()
        assert time.monotonic() - started < 2.0
        assert srv.active_sessions == 0
        for raw in clients[2:]:
            assert raw.file.read() == b""  # end of stream, promptly
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((srv.host, srv.port), timeout=1).close()
        assert not [t for t in threading.enumerate() if t.name.startswith("pop3-test")]
    finally:
        for raw in clients:
            raw.close()
    assert srv.errors == []


def test_max_sessions_refuses_extra_connections() -> None:
    with POP3TestServer(max_sessions=2) as srv:
        with RawClient(srv) as first, RawClient(srv) as second:
            assert first.line().startswith(b"+OK")
            assert second.line().startswith(b"+OK")
            with RawClient(srv) as third:
                assert third.line() == b"-ERR [SYS/TEMP] too many sessions"
                assert third.file.read() == b""
        assert srv.wait_idle(5)
        with pop(srv) as client:
            client.quit()
        assert srv.sessions_started == 3
        assert srv.max_concurrent_sessions == 2


def test_drop_connections_simulates_server_crash(server: POP3TestServer) -> None:
    with pop(server) as client:
        client.dele(1)
        assert server.drop_connections() == 1
        with pytest.raises((poplib.error_proto, OSError)):
            client.quit()
    assert server.wait_idle(5)
    assert len(server.messages()) == 2
