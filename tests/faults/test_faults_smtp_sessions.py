"""SMTP faults that depend on what a connection did before: reuse, logins, limits.

Each test names the outcome the caller is owed when a pooled connection is reused,
when a server loops or echoes credentials while logging in, when a deadline runs out
away from the socket, when a server sends values that do not parse, and when a server
limits the messages of one session. ``docs/reliability.md`` lists them in words.
"""

from __future__ import annotations

import base64
import logging
import pickle
import ssl
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from fake_sleep import Sleeps

from src.handlers.errors import MailHandlerError, MailProtocolError
from src.handlers.retry import RetryPolicy
from src.handlers.smtp import (
    DeliveryResult,
    SMTPConnectionPool,
    SMTPDeliveryStatus,
    SMTPProtocolHandler,
)
from src.testing.scripted_server import Conversation, ScriptedServer
from src.testing.smtp_scripts import SILENT, SMTPDialogue, send_reply

TIMEOUT = 5.0  # per socket operation: longer than every deadline below
OPERATION_TIMEOUT = 1.0
RETRY_DELAY = 0.25  # asked of the injected sleep, never waited for
SLACK = 2.0  # allowance on top of the deadlines: the bound proves "no hang"
USER = "alice"
PASSWORD = "session-fault-secret"
TOKEN = "ya29.session-fault-token"


@pytest.fixture
def handlers() -> Iterator[list[SMTPProtocolHandler]]:
    made: list[SMTPProtocolHandler] = []
    yield made
    for handler in made:
        handler.close()


def make_handler(
    server: ScriptedServer,
    made: list[SMTPProtocolHandler],
    sleeps: Sleeps,
    **options: Any,
) -> SMTPProtocolHandler:
    options.setdefault("encryption", "none")
    options.setdefault("allow_cleartext", True)
    options.setdefault("timeout", TIMEOUT)
    options.setdefault("operation_timeout", OPERATION_TIMEOUT)
    options.setdefault("pool", SMTPConnectionPool(max_connections=4))
    options.setdefault("retry", RetryPolicy(max_retries=1, delays=(RETRY_DELAY,)))
    handler = SMTPProtocolHandler(
        *server.address, from_address="alice@example.com", sleep=sleeps, **options
    )
    made.append(handler)
    return handler


def send(handler: SMTPProtocolHandler, subject: str) -> DeliveryResult:
    return handler.send_message(["bob@example.org"], subject, text_body="Hi Bob")


def bodies(server: ScriptedServer) -> tuple[int, ...]:
    return tuple(len(conv.blocks) for conv in server.conversations)


# ---------------------------------------------------------------------- reuse (item 1)


@pytest.mark.parametrize("pipelining", [False, True], ids=["lockstep", "pipelined"])
@pytest.mark.parametrize("verb", ["MAIL", "RCPT", "DATA"])
def test_deadline_cutting_a_reused_connection_before_its_body_is_retried(
    verb: str, pipelining: bool, sleeps: Sleeps, handlers: list[SMTPProtocolHandler]
) -> None:
    # The first message goes through; the second one's envelope gets no answer, so the
    # deadline (shorter than the socket timeout) cuts it before any body went out.
    extensions = ("8BITMIME", "PIPELINING") if pipelining else ("8BITMIME",)
    first = SMTPDialogue(extensions=extensions, replies={verb: [(250, "OK"), SILENT]})
    if verb == "DATA":
        first = SMTPDialogue(extensions=extensions, replies={verb: [(354, "go"), SILENT]})
    with ScriptedServer([first, SMTPDialogue(extensions=extensions)]) as server:
        handler = make_handler(server, handlers, sleeps)
        assert send(handler, "one").status is SMTPDeliveryStatus.SUCCESS
        started = time.monotonic()
        second = send(handler, "two")
        assert time.monotonic() - started < 2 * OPERATION_TIMEOUT + SLACK
    assert second.status is SMTPDeliveryStatus.SUCCESS, second.smtp_error
    assert second.outcome_unknown is False
    assert second.retry_count == 1 and sleeps == [RETRY_DELAY]
    assert bodies(server) == (1, 1)


# ---------------------------------------------------------------------- logins (items 4, 5/6, 10)


def _auth_looper(mechanisms: str) -> Any:
    """A server that answers every line after AUTH with ``334 <that line>``."""

    def script(conv: Conversation) -> None:
        send_reply(conv, 220, "localhost ESMTP")
        while True:
            line = conv.recv_line()
            if line is None:
                return
            text = line.rstrip(b"\r\n").decode()
            verb = text.split(" ", 1)[0].upper()
            if verb == "EHLO":
                send_reply(conv, 250, f"localhost\nAUTH {mechanisms}")
            elif verb == "QUIT":
                send_reply(conv, 221, "bye")
                return
            else:
                send_reply(conv, 334, text)

    return script


def _secret_forms(secret: str) -> list[str]:
    plain = base64.b64encode(f"\0{USER}\0{secret}".encode()).decode()
    return [secret, base64.b64encode(secret.encode()).decode(), plain]


def _assert_nowhere(secrets: list[str], *texts: str) -> None:
    for text in texts:
        for secret in secrets:
            assert secret not in text, (secret, text)


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_server_looping_on_auth_is_a_permanent_masked_failure(
    mechanism: str,
    sleeps: Sleeps,
    handlers: list[SMTPProtocolHandler],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    with ScriptedServer([_auth_looper(mechanism)] * 3) as server:
        handler = make_handler(server, handlers, sleeps, username=USER, password=PASSWORD)
        result = send(handler, "looping login")
        assert handler.connect() is False
        pool_error: BaseException | None = None
        try:
            handler.pool.get_connection(
                *server.address, USER, PASSWORD, "none", allow_cleartext=True
            )
        except MailHandlerError as error:
            pool_error = error
    assert result.status is SMTPDeliveryStatus.FAILED
    assert result.is_retryable is False and sleeps == []
    assert isinstance(pool_error, MailProtocolError)
    chain: list[str] = []
    cause: BaseException | None = pool_error
    while cause is not None:
        chain.append(repr(cause) + str(cause.args))
        cause = cause.__cause__ or cause.__context__
    _assert_nowhere(
        _secret_forms(PASSWORD),
        str(result.to_dict()),
        handler.last_error or "",
        *chain,
        repr(pickle.loads(pickle.dumps(pool_error)).args),
        caplog.text,
    )


def _xoauth2_refuser(conv: Conversation) -> None:
    """Refuses XOAUTH2, echoing the client's base64 response; later echoes the token at MAIL."""
    send_reply(conv, 220, "localhost ESMTP")
    while True:
        line = conv.recv_line()
        if line is None:
            return
        text = line.rstrip(b"\r\n").decode()
        verb = text.split(" ", 1)[0].upper()
        if verb == "EHLO":
            send_reply(conv, 250, "localhost\nAUTH XOAUTH2 PLAIN")
        elif verb == "AUTH":
            send_reply(conv, 535, f"5.7.8 bad credentials {text.split(' ')[-1]}")
        elif verb == "QUIT":
            send_reply(conv, 221, "bye")
            return
        else:
            send_reply(conv, 502, "no")


def test_refused_xoauth2_echo_is_masked_and_not_chained(
    sleeps: Sleeps, handlers: list[SMTPProtocolHandler], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    with ScriptedServer(_xoauth2_refuser) as server:
        handler = make_handler(server, handlers, sleeps, username=USER, oauth2_token=TOKEN)
        result = send(handler, "xoauth2")
        pool_error: BaseException | None = None
        try:
            handler.pool.get_connection(
                *server.address, USER, None, "none", oauth2_token=TOKEN, allow_cleartext=True
            )
        except MailHandlerError as error:
            pool_error = error
    assert result.status is SMTPDeliveryStatus.FAILED
    sasl = base64.b64encode(f"user={USER}\x01auth=Bearer {TOKEN}\x01\x01".encode()).decode()
    assert pool_error is not None
    assert pool_error.__context__ is None and pool_error.__cause__ is None
    _assert_nowhere([TOKEN, sasl, sasl[:40]], str(result.to_dict()), str(pool_error), caplog.text)


def test_password_echoed_in_a_later_reply_is_masked(
    sleeps: Sleeps, handlers: list[SMTPProtocolHandler], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    dialogue = SMTPDialogue(
        auth_mechanisms=("PLAIN",),
        replies={"MAIL": (550, f"5.7.1 sender refused for password {PASSWORD}")},
    )
    with ScriptedServer(dialogue) as server:
        handler = make_handler(
            server, handlers, sleeps, username=USER, password=PASSWORD, trace=True
        )
        result = send(handler, "echo")
    assert result.status is SMTPDeliveryStatus.REJECTED
    assert "***" in (result.smtp_error or "")
    _assert_nowhere([PASSWORD], str(result.to_dict()), caplog.text)


def _bad_login_challenge(conv: Conversation) -> None:
    send_reply(conv, 220, "localhost ESMTP")
    while (line := conv.recv_line()) is not None:
        verb = line.split(b" ", 1)[0].strip().upper()
        if verb == b"EHLO":
            send_reply(conv, 250, "localhost\nAUTH LOGIN")
        elif verb == b"AUTH":
            send_reply(conv, 334, "abc")
        elif verb == b"QUIT":
            send_reply(conv, 221, "bye")
            return
        else:
            send_reply(conv, 501, "what")


def test_undecodable_auth_challenge_is_a_library_error(
    sleeps: Sleeps, handlers: list[SMTPProtocolHandler]
) -> None:
    with ScriptedServer([_bad_login_challenge] * 5) as server:
        handler = make_handler(server, handlers, sleeps, username=USER, password=PASSWORD)
        assert handler.connect() is False
        assert handler.authenticate() is False
        assert handler.test_connection() is False
        assert "challenge" in (handler.last_error or "")
        result = send(handler, "bad challenge")
    assert result.status is SMTPDeliveryStatus.FAILED
    assert "unexpected error" not in (result.smtp_error or "")


def _odd_size(conv: Conversation) -> None:
    """Offers SIZE with a superscript two: str.isdigit() says yes, int() says no."""
    conv.send(b"220 localhost ESMTP\r\n")
    while (line := conv.recv_line()) is not None:
        verb = line.split(b" ", 1)[0].strip().upper()
        if verb == b"EHLO":
            conv.send(b"250-localhost\r\n250 SIZE \xb2\r\n")
        elif verb == b"DATA":
            conv.send(b"354 go ahead\r\n")
            conv.recv_until(b"\r\n.\r\n")
            conv.send(b"250 2.0.0 queued\r\n")
        elif verb == b"QUIT":
            conv.send(b"221 bye\r\n")
            return
        else:
            conv.send(b"250 OK\r\n")


def test_unparsable_size_limit_is_ignored(
    sleeps: Sleeps, handlers: list[SMTPProtocolHandler]
) -> None:
    with ScriptedServer(_odd_size) as server:
        handler = make_handler(server, handlers, sleeps)
        result = send(handler, "odd size")
    assert result.status is SMTPDeliveryStatus.SUCCESS, result.smtp_error
    assert bodies(server) == (1,)


# ---------------------------------------------------------------------- deadlines (item 7)


def test_deadline_bounds_the_wait_for_a_pool_slot(
    sleeps: Sleeps, handlers: list[SMTPProtocolHandler]
) -> None:
    pool = SMTPConnectionPool(max_connections=1)
    slow = SMTPDialogue(end_of_data=SILENT)
    with ScriptedServer(slow) as busy_server, ScriptedServer(SMTPDialogue()) as server:
        holder = make_handler(
            busy_server,
            handlers,
            sleeps,
            pool=pool,
            operation_timeout=5.0,
            retry=RetryPolicy.never(),
        )
        thread = threading.Thread(target=send, args=(holder, "holds the only slot"))
        thread.start()
        busy_server.wait_for_connections(1)
        time.sleep(0.2)  # let the holder reach its final reply
        waiter = make_handler(server, handlers, sleeps, pool=pool, pool_wait_timeout=30.0)
        started = time.monotonic()
        result = send(waiter, "waits")
        elapsed = time.monotonic() - started
        thread.join()
    assert elapsed < 2 * OPERATION_TIMEOUT + SLACK
    assert result.status is SMTPDeliveryStatus.TEMP_FAILED
    assert "operation_timeout" in (result.smtp_error or "")


def test_closing_an_expired_idle_connection_does_not_wait_for_its_goodbye(
    sleeps: Sleeps, handlers: list[SMTPProtocolHandler]
) -> None:
    now = [1000.0]
    pool = SMTPConnectionPool(max_connections=4, idle_timeout=60, clock=lambda: now[0])
    quiet_goodbye = SMTPDialogue(replies={"QUIT": SILENT})
    with ScriptedServer([quiet_goodbye, SMTPDialogue()]) as server:
        handler = make_handler(server, handlers, sleeps, pool=pool)
        assert send(handler, "one").status is SMTPDeliveryStatus.SUCCESS
        now[0] += 120  # the idle connection has expired
        started = time.monotonic()
        result = send(handler, "two")
        elapsed = time.monotonic() - started
        assert server.wait_for_connections(2)
        assert server.conversations[0].wait_closed(1.0)
    assert result.status is SMTPDeliveryStatus.SUCCESS and result.retry_count == 0
    assert elapsed < OPERATION_TIMEOUT
    assert any(line.startswith(b"QUIT") for line in server.conversations[0].received)


# ---------------------------------------------------------------------- message limit (item 12)

LIMIT = 5
TOO_MANY = (452, "4.5.3 Too many recipients: Too many messages sent")


@pytest.mark.parametrize(
    ("messages", "per_session", "mails", "retired"),
    [
        (13, (5, 5, 3), [6, 6, 3], 2),
        # Two sessions refused the sixth message: from then on the pool rolls over first.
        (18, (5, 5, 5, 3), [6, 6, 5, 3], 3),
    ],
)
def test_per_connection_message_limit_rolls_over_without_back_off(
    messages: int,
    per_session: tuple[int, ...],
    mails: list[int],
    retired: int,
    sleeps: Sleeps,
    handlers: list[SMTPProtocolHandler],
) -> None:
    limited = SMTPDialogue(replies={"MAIL": [(250, "2.1.0 OK")] * LIMIT + [TOO_MANY] * 10})
    with ScriptedServer([limited] * 6) as server:
        handler = make_handler(server, handlers, sleeps)
        results = [send(handler, f"message {n}") for n in range(messages)]
    assert [r.status for r in results] == [SMTPDeliveryStatus.SUCCESS] * messages
    assert all(r.retry_count == 0 for r in results)
    assert sleeps == []
    assert bodies(server) == per_session
    seen = [sum(1 for line in c.received if line.startswith(b"MAIL")) for c in server.conversations]
    assert seen == mails
    stats = handler.pool.get_stats()
    assert stats["retired"] == retired
    assert stats["created"] == len(per_session)


# ---------------------------------------------------------------------- wrong mode for the port


def test_starttls_against_an_implicit_tls_port_fails_at_once(
    server_ssl_context: ssl.SSLContext,
    client_ssl_context: ssl.SSLContext,
    sleeps: Sleeps,
    handlers: list[SMTPProtocolHandler],
) -> None:
    def implicit_tls(conv: Conversation) -> None:
        conv.start_tls(server_ssl_context)
        SMTPDialogue()(conv)

    with ScriptedServer(implicit_tls) as server:
        handler = make_handler(
            server, handlers, sleeps, encryption="tls", timeout=0.5, ssl_context=client_ssl_context
        )
        result = send(handler, "wrong mode")
        assert server.join(timeout=5.0)  # the server's side of the probe has finished
    assert result.status is SMTPDeliveryStatus.FAILED
    assert result.is_retryable is False and sleeps == []
    assert "encryption='ssl'" in (result.smtp_error or "")
    assert server.connections == 1


def test_implicit_tls_against_a_plain_port_fails_at_once(
    client_ssl_context: ssl.SSLContext, sleeps: Sleeps, handlers: list[SMTPProtocolHandler]
) -> None:
    with ScriptedServer(SMTPDialogue()) as server:
        handler = make_handler(
            server, handlers, sleeps, encryption="ssl", ssl_context=client_ssl_context
        )
        result = send(handler, "wrong mode")
    assert result.status is SMTPDeliveryStatus.FAILED
    assert result.is_retryable is False and sleeps == []
    assert "encryption='tls'" in (result.smtp_error or "")
    assert server.connections == 1
