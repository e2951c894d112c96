"""The SMTP fault matrix: every way a server can misbehave, and what the handler must do.

Each row of :data:`FAULTS` is one misbehaving first connection followed by a healthy
one, and names the outcome the handler owes its caller:

* ``RETRIED``: nothing was delivered on the faulty connection, the send was retried
  once on a fresh connection and delivered there exactly once;
* ``UNKNOWN``: the whole message went out and no usable final reply came back, so the
  result is ``FAILED`` with ``outcome_unknown`` and the message is not resent;
* ``FAILED``: the server spoke something that is not SMTP; the send fails at once,
  without a retry, and nothing was delivered.

Every row also checks that the send ended within its time budget (so no fault can
hang it), and that the next send on the same handler works and never touches the
faulty connection again. ``docs/reliability.md`` lists the rows in words.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import logging
import ssl
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from src.handlers.retry import RetryPolicy
from src.handlers.smtp import (
    DeliveryResult,
    SMTPConnectionPool,
    SMTPDeliveryStatus,
    SMTPProtocolHandler,
)
from src.testing.scripted_server import Conversation, Script, ScriptedServer
from src.testing.smtp_scripts import DROP, SILENT, SMTPDialogue, no_greeting, send_reply

TIMEOUT = 0.5  # seconds per socket operation
OPERATION_TIMEOUT = 1.0  # seconds per attempt, however slowly the server answers
RETRY_DELAY = 0.25  # asked of the injected sleep, never waited for
SLACK = 2.0  # generous allowance on top of the timeouts: the bound proves "no hang"
PASSWORD = "fault-matrix-secret"
BIG_BODY = "line of text\n" * 400_000  # far more than a server reads before hanging up


class Outcome(enum.Enum):
    """What the caller must be told after a fault on the first connection."""

    RETRIED = "retried on a fresh connection and delivered once"
    UNKNOWN = "FAILED with outcome_unknown, not resent"
    FAILED = "FAILED at once, nothing delivered"


# ---------------------------------------------------------------------- scripts

Build = Callable[[SMTPDialogue], Script]


def dialogue(**changes: Any) -> Build:
    """The healthy dialogue of a row with ``changes`` applied."""
    return lambda healthy: dataclasses.replace(healthy, **changes)


def fixed(script: Script) -> Build:
    """A script that does not depend on the row's healthy dialogue."""
    return lambda healthy: script


def greet_then_close(conv: Conversation) -> None:
    send_reply(conv, 220, "localhost ESMTP closing at once")


_STEPS = (
    ("greeting", b"220 localhost ESMTP\r\n"),
    ("EHLO", b"250 localhost\r\n"),
    ("MAIL", b"250 2.1.0 OK\r\n"),
    ("RCPT", b"250 2.1.5 OK\r\n"),
    ("DATA", b"354 go ahead\r\n"),
    ("end of data", b"250 2.0.0 queued\r\n"),
)
_ENDLESS_FOR = 20.0  # seconds an endless reply may run at most, if nobody stops it


def endless_reply(conv: Conversation) -> None:
    """Continuation lines without a last line, until the client hangs up."""
    chunk = b"250-and there is more\r\n" * 500
    stop_at = time.monotonic() + _ENDLESS_FOR
    while not conv.closed and time.monotonic() < stop_at:
        conv.send(chunk)


def raw_reply_at(step: str, reply: bytes | Script) -> Build:
    """A lockstep ESMTP server (no extensions) that answers ``step`` with raw bytes.

    ``reply`` is sent in place of the normal reply at that step (or, if callable, run
    in its place); then the server only waits for the client to hang up.
    """

    def script(conv: Conversation) -> None:
        for name, normal in _STEPS:
            if name == "end of data":
                conv.recv_until(b"\r\n.\r\n")
            elif name != "greeting" and conv.recv_line() is None:
                return
            if name != step:
                conv.send(normal)
                continue
            with contextlib.suppress(OSError):  # the client may hang up mid-write
                if callable(reply):
                    reply(conv)
                else:
                    conv.send(reply)
                conv.wait_closed(_ENDLESS_FOR)
            return

    return fixed(script)


GARBAGE = b"\x00\xff\xfeHELLO? this is not SMTP\r\n"
MEGABYTE_LINE = b"250 " + b"x" * 1_000_000 + b"\r\n"
INVALID_CODE = b"999 what is this code\r\n"


# ---------------------------------------------------------------------- the matrix


@dataclass(frozen=True)
class Fault:
    """One row: a faulty first connection and the outcome it must lead to."""

    id: str
    build: Build
    outcome: Outcome
    blocks: tuple[int, ...]
    """Complete message bodies each connection received, faulty one first."""
    reason: str
    """Part of the error the handler reports (or logs before retrying)."""
    tls: bool = False
    auth: bool = False
    pipelining: bool = False
    big_body: bool = False
    socket_timeout: float = TIMEOUT

    def healthy(self, server_context: ssl.SSLContext) -> SMTPDialogue:
        extensions = ("8BITMIME", "ENHANCEDSTATUSCODES") + (
            ("PIPELINING",) if self.pipelining else ()
        )
        return SMTPDialogue(
            extensions=extensions,
            tls_context=server_context if self.tls else None,
            auth_mechanisms=("PLAIN", "LOGIN") if self.auth else (),
        )


R, U, F = Outcome.RETRIED, Outcome.UNKNOWN, Outcome.FAILED
SHUTDOWN = (421, "4.3.2 Service shutting down")

FAULTS = [
    # -- silence and slowness
    Fault("accepts, never greets", fixed(no_greeting), R, (0, 1), "timed out"),
    Fault("greets, silent at EHLO", dialogue(replies={"EHLO": SILENT}), R, (0, 1), "timed out"),
    Fault("silent at MAIL", dialogue(replies={"MAIL": SILENT}), R, (0, 1), "timed out"),
    Fault("silent at RCPT", dialogue(replies={"RCPT": SILENT}), R, (0, 1), "timed out"),
    Fault("silent at DATA", dialogue(replies={"DATA": SILENT}), R, (0, 1), "timed out"),
    Fault("silent after final dot", dialogue(end_of_data=SILENT), U, (1,), "may or may not"),
    Fault(
        "silent after final dot, socket timeout above the deadline",
        dialogue(end_of_data=SILENT),
        U,
        (1,),
        "may or may not",
        socket_timeout=5.0,
    ),
    Fault(
        "drips one byte a second",
        dialogue(drip_interval=1.0),
        R,
        (0, 1),
        "operation_timeout",
        socket_timeout=1.5,  # each byte comes sooner than this: only the deadline helps
    ),
    # -- the connection dropped at every step
    Fault("drop after greeting", fixed(greet_then_close), R, (0, 1), "connection lost"),
    Fault("drop at EHLO", dialogue(replies={"EHLO": DROP}), R, (0, 1), "connection lost"),
    Fault(
        "drop at STARTTLS",
        dialogue(replies={"STARTTLS": DROP}),
        R,
        (0, 1),
        "connection lost",
        tls=True,
        auth=True,
    ),
    Fault(
        "drop at AUTH",
        dialogue(replies={"AUTH": DROP}),
        R,
        (0, 1),
        "connection lost",
        tls=True,
        auth=True,
    ),
    Fault("drop at MAIL", dialogue(replies={"MAIL": DROP}), R, (0, 1), "connection lost"),
    Fault("drop at RCPT", dialogue(replies={"RCPT": DROP}), R, (0, 1), "connection lost"),
    Fault("drop at DATA", dialogue(replies={"DATA": DROP}), R, (0, 1), "connection lost"),
    Fault(
        "drop at MAIL, pipelined",
        dialogue(replies={"MAIL": DROP}),
        R,
        (0, 1),
        "connection lost",
        pipelining=True,
    ),
    Fault(
        "drop at DATA, pipelined",
        dialogue(replies={"DATA": DROP}),
        R,
        (0, 1),
        "connection lost",
        pipelining=True,
    ),
    Fault(
        "drop mid-body",
        dialogue(drop_after_body_lines=1),
        R,
        (0, 1),
        "connection",
        big_body=True,
    ),
    Fault("drop after final dot", dialogue(end_of_data=DROP), U, (1,), "may or may not"),
    # -- replies that are not SMTP
    Fault("garbage greeting", raw_reply_at("greeting", GARBAGE), F, (0,), "unintelligible"),
    Fault("garbage at EHLO", raw_reply_at("EHLO", GARBAGE), F, (0,), "unintelligible"),
    Fault("garbage at MAIL", raw_reply_at("MAIL", GARBAGE), F, (0,), "unintelligible"),
    Fault(
        "garbage after final dot",
        raw_reply_at("end of data", GARBAGE),
        U,
        (1,),
        "may or may not",
    ),
    Fault("1 MB greeting line", raw_reply_at("greeting", MEGABYTE_LINE), F, (0,), "too long"),
    Fault("1 MB line at EHLO", raw_reply_at("EHLO", MEGABYTE_LINE), F, (0,), "too long"),
    Fault("1 MB line at MAIL", raw_reply_at("MAIL", MEGABYTE_LINE), F, (0,), "too long"),
    Fault(
        "1 MB line after final dot",
        raw_reply_at("end of data", MEGABYTE_LINE),
        U,
        (1,),
        "may or may not",
    ),
    Fault("code 999 greeting", raw_reply_at("greeting", INVALID_CODE), F, (0,), "unintelligible"),
    Fault("code 999 at MAIL", raw_reply_at("MAIL", INVALID_CODE), F, (0,), "unintelligible"),
    Fault(
        "code 999 after final dot",
        raw_reply_at("end of data", INVALID_CODE),
        U,
        (1,),
        "may or may not",
    ),
    Fault("endless reply at EHLO", raw_reply_at("EHLO", endless_reply), F, (0,), "too long"),
    Fault("endless reply at MAIL", raw_reply_at("MAIL", endless_reply), F, (0,), "too long"),
    Fault(
        "endless reply after final dot",
        raw_reply_at("end of data", endless_reply),
        U,
        (1,),
        "may or may not",
    ),
    # -- the server gives up (421) in the middle of the session
    Fault("421 greeting", dialogue(greeting=SHUTDOWN), R, (0, 1), "421"),
    Fault("421 at MAIL", dialogue(replies={"MAIL": SHUTDOWN}), R, (0, 1), "shutting down"),
    Fault("421 at RCPT", dialogue(replies={"RCPT": SHUTDOWN}), R, (0, 1), "shutting down"),
    Fault("421 at DATA", dialogue(replies={"DATA": SHUTDOWN}), R, (0, 1), "shutting down"),
    Fault(
        "421 at MAIL, pipelined",
        dialogue(replies={"MAIL": SHUTDOWN}),
        R,
        (0, 1),
        "shutting down",
        pipelining=True,
    ),
    # The server read the body and refused it: not delivered, so resending is right.
    Fault("421 after final dot", dialogue(end_of_data=SHUTDOWN), R, (1, 1), "shutting down"),
]


# ---------------------------------------------------------------------- helpers


@pytest.fixture
def sleeps() -> list[float]:
    return []


@pytest.fixture
def handlers() -> Iterator[list[SMTPProtocolHandler]]:
    made: list[SMTPProtocolHandler] = []
    yield made
    for handler in made:
        handler.close()


def make_handler(
    server: ScriptedServer,
    made: list[SMTPProtocolHandler],
    sleeps: list[float],
    client_context: ssl.SSLContext,
    *,
    fault: Fault | None = None,
    **options: Any,
) -> SMTPProtocolHandler:
    if fault is not None:
        options.setdefault("encryption", "tls" if fault.tls else "none")
        options.setdefault("timeout", fault.socket_timeout)
        if fault.auth:
            options.update(username="alice", password=PASSWORD)
    options.setdefault("encryption", "none")
    options.setdefault("allow_cleartext", True)
    options.setdefault("timeout", TIMEOUT)
    handler = SMTPProtocolHandler(
        *server.address,
        from_address="alice@example.com",
        ssl_context=client_context,
        pool=SMTPConnectionPool(max_connections=4),
        operation_timeout=OPERATION_TIMEOUT,
        retry=RetryPolicy(max_retries=1, delays=(RETRY_DELAY,)),
        sleep=sleeps.append,
        **options,
    )
    made.append(handler)
    return handler


def send(handler: SMTPProtocolHandler, subject: str, body: str = "Hi Bob") -> DeliveryResult:
    return handler.send_message(["bob@example.org"], subject, text_body=body)


def bodies(server: ScriptedServer) -> tuple[int, ...]:
    return tuple(len(conv.blocks) for conv in server.conversations)


def verbs(conv: Conversation, verb: bytes) -> int:
    return sum(1 for line in conv.received if line.upper().startswith(verb))


def retry_reasons(caplog: pytest.LogCaptureFixture) -> str:
    return " | ".join(r.getMessage() for r in caplog.records if "; retry " in r.getMessage())


def check_outcome(
    fault: Fault,
    result: DeliveryResult,
    server: ScriptedServer,
    sleeps: list[float],
    caplog: pytest.LogCaptureFixture,
) -> None:
    assert bodies(server) == fault.blocks
    if fault.outcome is Outcome.RETRIED:
        assert result.status is SMTPDeliveryStatus.SUCCESS, result.smtp_error
        assert result.retry_count == 1
        assert sleeps == [RETRY_DELAY]
        assert fault.reason in retry_reasons(caplog)
        return
    assert result.status is SMTPDeliveryStatus.FAILED
    assert result.is_retryable is False
    assert result.outcome_unknown is (fault.outcome is Outcome.UNKNOWN)
    assert fault.reason in (result.smtp_error or "")
    assert sleeps == []
    assert server.connections == 1


# ---------------------------------------------------------------------- tests


@pytest.mark.parametrize("fault", FAULTS, ids=lambda fault: fault.id)
def test_fault_leads_to_its_outcome(
    fault: Fault,
    server_ssl_context: ssl.SSLContext,
    client_ssl_context: ssl.SSLContext,
    sleeps: list[float],
    handlers: list[SMTPProtocolHandler],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="src.handlers.smtp")
    healthy = fault.healthy(server_ssl_context)
    with ScriptedServer([fault.build(healthy), healthy]) as server:
        handler = make_handler(server, handlers, sleeps, client_ssl_context, fault=fault)
        started = time.monotonic()
        result = send(handler, "the faulty send", BIG_BODY if fault.big_body else "Hi Bob")
        elapsed = time.monotonic() - started
        attempts = 2 if fault.outcome is Outcome.RETRIED else 1
        assert elapsed < attempts * OPERATION_TIMEOUT + SLACK
        check_outcome(fault, result, server, sleeps, caplog)

        # The next send works, and the faulty connection is never used again.
        follow_up = send(handler, "the next send")
        assert follow_up.status is SMTPDeliveryStatus.SUCCESS, follow_up.smtp_error
        assert follow_up.retry_count == 0
        assert server.connections == 2
        faulty = server.conversations[0]
        assert len(faulty.blocks) == fault.blocks[0]
        assert verbs(faulty, b"MAIL") <= 1
        assert handler.pool.get_stats()["open"] == 1
    assert PASSWORD not in (result.smtp_error or "")


def test_refused_connection_is_retried_then_temp_failed(
    client_ssl_context: ssl.SSLContext, sleeps: list[float], handlers: list[SMTPProtocolHandler]
) -> None:
    server = ScriptedServer(no_greeting)
    server.start()
    server.stop()  # the port is now closed: connecting is refused
    handler = make_handler(server, handlers, sleeps, client_ssl_context)
    started = time.monotonic()
    result = send(handler, "nobody listens")
    assert time.monotonic() - started < SLACK
    assert result.status is SMTPDeliveryStatus.TEMP_FAILED
    assert result.is_retryable is True
    assert result.outcome_unknown is False
    assert result.retry_count == 1
    assert sleeps == [RETRY_DELAY]
    assert "could not connect" in (result.smtp_error or "")
    assert handler.pool.get_stats()["open"] == 0


def test_421_mid_session_retires_the_pooled_connection(
    client_ssl_context: ssl.SSLContext, sleeps: list[float], handlers: list[SMTPProtocolHandler]
) -> None:
    # The first message goes through; the second MAIL on the same connection gets 421.
    first = SMTPDialogue(replies={"MAIL": [(250, "2.1.0 OK"), SHUTDOWN]})
    with ScriptedServer([first, SMTPDialogue()]) as server:
        handler = make_handler(server, handlers, sleeps, client_ssl_context)
        assert send(handler, "one").status is SMTPDeliveryStatus.SUCCESS
        second = send(handler, "two")
        third = send(handler, "three")
    assert second.status is SMTPDeliveryStatus.SUCCESS and second.retry_count == 1
    assert third.status is SMTPDeliveryStatus.SUCCESS and third.retry_count == 0
    assert sleeps == [RETRY_DELAY]
    assert bodies(server) == (1, 2)
    assert verbs(server.conversations[0], b"MAIL") == 2  # nothing after the 421


@pytest.mark.parametrize("goodbye", [None, SHUTDOWN], ids=["silent close", "421 then close"])
def test_pooled_connection_closed_while_idle_is_replaced_without_a_retry(
    goodbye: tuple[int, str] | None,
    client_ssl_context: ssl.SSLContext,
    sleeps: list[float],
    handlers: list[SMTPProtocolHandler],
) -> None:
    with ScriptedServer([SMTPDialogue(), SMTPDialogue()]) as server:
        handler = make_handler(server, handlers, sleeps, client_ssl_context)
        assert send(handler, "one").status is SMTPDeliveryStatus.SUCCESS
        assert handler.pool.get_stats()["idle"] == 1
        idle = server.conversations[0]
        if goodbye is not None:
            send_reply(idle, *goodbye)
        idle.abort()  # the server hangs up on the idle connection
        assert server.join(timeout=5.0)
        result = send(handler, "two")
    assert result.status is SMTPDeliveryStatus.SUCCESS
    assert result.retry_count == 0 and sleeps == []
    assert bodies(server) == (1, 1)
    stats = handler.pool.get_stats()
    assert stats["dropped"] == 1 and stats["created"] == 2 and stats["open"] == 1
