"""The POP3 fault matrix: every way a server can misbehave, and what the handler must do.

Each row of :data:`FAULTS` switches on one fault of the loopback POP3 server and runs
the same session: list the mailbox, fetch each message, mark it for deletion once it
was fetched, and end with ``QUIT``. The row names the typed error the caller must get,
and whether the server carried out the ``QUIT`` (only then may messages be gone).
Every row also checks that the session ended within its time budget, that opening
faults were retried once and nothing else was, and that the next call works on a new
connection. ``docs/reliability.md`` lists the rows in words.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from src.handlers.errors import (
    POP3ConnectionError,
    POP3MessageTooLargeError,
    POP3ProtocolError,
    POP3TimeoutError,
)
from src.handlers.pop3 import POP3ConnectionPool, POP3ProtocolHandler
from src.handlers.retry import RetryPolicy
from src.testing.pop3_server import POP3TestServer
from src.testing.scripted_server import ScriptedServer

TIMEOUT = 0.5  # seconds per socket operation
OPERATION_TIMEOUT = 1.0  # seconds per exchange, however slowly the server answers
RETRY_DELAY = 0.25  # asked of the injected sleep, never waited for
SLACK = 2.0  # generous allowance on top of the timeouts: the bound proves "no hang"
MAX_MESSAGE_SIZE = 1_000_000
PASSWORD = "fault-matrix-secret"
MESSAGES = [b"Subject: first\r\n\r\nbody one\r\n", b"Subject: second\r\n\r\nbody two\r\n"]


@dataclass(frozen=True)
class Fault:
    """One row: the server's fault switches and the outcome they must lead to."""

    id: str
    switches: dict[str, Any]
    error: type[Exception] | tuple[type[Exception], ...] | None
    reason: str = ""
    """Part of the error message."""
    retried: bool = False
    """Opening the session was retried once (only opening is ever retried)."""
    committed: bool = False
    """The server carried out QUIT, so the fetched messages are gone."""
    tls: bool = False
    socket_timeout: float = TIMEOUT
    notes: dict[str, str] = field(default_factory=dict)


GARBAGE = b"\x00\xff\xfeHELLO? this is not POP3\r\n"
MEGABYTE_LINE = b"+OK " + b"x" * 1_000_000 + b"\r\n"
NOT_A_STATUS = b"200 OK\r\n"
LOST = "QUIT failed, so 2 deletion(s) may not have been committed"
TIMED_OUT = "operation_timeout"

FAULTS = [
    # -- silence and slowness
    Fault("accepts, never greets", {"no_greeting": True}, POP3TimeoutError, "connect", True),
    Fault("greets, silent at USER", {"silent_on": "USER"}, POP3TimeoutError, "USER", True),
    Fault("silent at LIST", {"silent_on": "LIST"}, POP3TimeoutError, "LIST"),
    Fault("silent at RETR", {"silent_on": "RETR"}, POP3TimeoutError, "RETR"),
    Fault("silent at DELE", {"silent_on": "DELE"}, POP3TimeoutError, "DELE"),
    Fault("silent at QUIT", {"silent_on": "QUIT"}, POP3ConnectionError, LOST),
    Fault(
        "drips every reply, one byte a second",
        {"drip_interval": 1.0},
        POP3TimeoutError,
        TIMED_OUT,
        retried=True,
        socket_timeout=1.5,  # each byte comes sooner than this: only the deadline helps
    ),
    Fault(
        "drips the RETR reply, one byte a second",
        {"drip_interval": 1.0, "drip_on": "RETR"},
        POP3TimeoutError,
        TIMED_OUT,
        socket_timeout=1.5,
    ),
    # -- the connection dropped at every step
    Fault("drop at USER", {"drop_after": "USER"}, POP3ConnectionError, "closed", True),
    Fault("drop at PASS", {"drop_after": "PASS"}, POP3ConnectionError, "closed", True),
    Fault("drop at STLS", {"drop_after": "STLS"}, POP3ConnectionError, "closed", True, tls=True),
    Fault("drop at LIST", {"drop_after": "LIST"}, POP3ConnectionError, "closed"),
    Fault("drop at RETR", {"drop_after": "RETR"}, POP3ConnectionError, "closed"),
    Fault(
        "drop mid-RETR", {"drop_mid_retr_after_bytes": 30}, POP3ConnectionError, "middle of a reply"
    ),
    Fault("drop at DELE", {"drop_after": "DELE"}, POP3ConnectionError, "closed"),
    Fault(
        "drop after DELE was carried out",
        {"drop_after": "DELE", "drop_after_processing": True},
        POP3ConnectionError,
        "closed",
    ),
    Fault("drop at QUIT", {"drop_after": "QUIT"}, POP3ConnectionError, LOST),
    Fault(
        "drop before QUIT's reply (QUIT carried out)",
        {"drop_after": "QUIT", "drop_after_processing": True},
        POP3ConnectionError,
        LOST,
        committed=True,
    ),
    # -- replies that are not POP3
    Fault("garbage greeting", {"garbage_reply": GARBAGE}, POP3ProtocolError, "unexpected reply"),
    Fault(
        "garbage at PASS",
        {"garbage_reply": GARBAGE, "garbage_on": "PASS"},
        POP3ProtocolError,
        "unexpected reply",
    ),
    Fault(
        "garbage at LIST",
        {"garbage_reply": GARBAGE, "garbage_on": "LIST"},
        POP3ProtocolError,
        "unexpected reply",
    ),
    Fault(
        "garbage at RETR",
        {"garbage_reply": GARBAGE, "garbage_on": "RETR"},
        POP3ProtocolError,
        "unexpected reply",
    ),
    Fault(
        "garbage at QUIT (QUIT carried out)",
        {"garbage_reply": GARBAGE, "garbage_on": "QUIT"},
        POP3ConnectionError,
        LOST,
        committed=True,
    ),
    Fault(
        "1 MB line at USER",
        {"garbage_reply": MEGABYTE_LINE, "garbage_on": "USER"},
        POP3ProtocolError,
        "line too long",
    ),
    Fault(
        "1 MB line at LIST",
        {"garbage_reply": MEGABYTE_LINE, "garbage_on": "LIST"},
        POP3ProtocolError,
        "line too long",
    ),
    Fault(
        "1 MB line at RETR",
        {"garbage_reply": MEGABYTE_LINE, "garbage_on": "RETR"},
        POP3ProtocolError,
        "line too long",
    ),
    Fault(
        "invalid status at USER",
        {"garbage_reply": NOT_A_STATUS, "garbage_on": "USER"},
        POP3ProtocolError,
        "200 OK",
    ),
    Fault(
        "invalid status at DELE",
        {"garbage_reply": NOT_A_STATUS, "garbage_on": "DELE"},
        POP3ProtocolError,
        "200 OK",
    ),
    Fault(
        "endless multi-line reply at LIST",
        {"endless_on": "LIST"},
        (POP3ProtocolError, POP3TimeoutError),  # whichever bound comes first: size or time
        "LIST",
    ),
    Fault(
        "endless multi-line reply at RETR",
        {"endless_on": "RETR"},
        POP3MessageTooLargeError,
        f"over the limit of {MAX_MESSAGE_SIZE} bytes",
    ),
    # -- refusals are not faults of the connection: the session goes on
    Fault(
        "RETR refused with -ERR [SYS/TEMP]",
        {"error_replies": {"RETR": "-ERR [SYS/TEMP] try again later"}},
        None,
    ),
]


# ---------------------------------------------------------------------- helpers


@pytest.fixture
def sleeps() -> list[float]:
    return []


def make_handler(
    server: POP3TestServer | ScriptedServer,
    sleeps: list[float],
    client_context: ssl.SSLContext,
    *,
    encryption: str = "none",
    timeout: float = TIMEOUT,
) -> POP3ProtocolHandler:
    host, port = (server.host, server.port)
    return POP3ProtocolHandler(
        host,
        port,
        "user",
        PASSWORD,
        encryption,
        timeout,
        ssl_context=client_context,
        retry=RetryPolicy(max_retries=1, delays=(RETRY_DELAY,)),
        sleep=sleeps.append,
        operation_timeout=OPERATION_TIMEOUT,
        max_message_size=MAX_MESSAGE_SIZE,
        # The faults at USER and PASS need that login; the server also offers PLAIN.
        auth_mechanism="USER",
    )


@pytest.fixture
def mailbox(server_ssl_context: ssl.SSLContext, request: pytest.FixtureRequest) -> Iterator[Any]:
    def start(tls: bool) -> POP3TestServer:
        server = POP3TestServer(
            users={"user": PASSWORD},
            tls="starttls" if tls else "none",
            ssl_context=server_ssl_context if tls else None,
        )
        server.start()
        request.addfinalizer(server.stop)
        for raw in MESSAGES:
            server.add_message(raw)
        return server

    yield start


def fetch_and_delete(handler: POP3ProtocolHandler) -> int:
    """One session: fetch every message, delete each one fetched; QUIT commits."""
    fetched = 0
    with handler.session():
        numbers, _ = handler.list_messages()
        for number in numbers:
            if handler.fetch_message(number) is not None:
                fetched += 1
                handler.delete_message(number)
    return fetched


# ---------------------------------------------------------------------- tests


@pytest.mark.parametrize("fault", FAULTS, ids=lambda fault: fault.id)
def test_fault_leads_to_its_outcome(
    fault: Fault, mailbox: Any, client_ssl_context: ssl.SSLContext, sleeps: list[float]
) -> None:
    server = mailbox(fault.tls)
    for name, value in fault.switches.items():
        setattr(server.faults, name, value)
    handler = make_handler(
        server,
        sleeps,
        client_ssl_context,
        encryption="tls" if fault.tls else "none",
        timeout=fault.socket_timeout,
    )
    started = time.monotonic()
    if fault.error is None:
        assert fetch_and_delete(handler) == 0
    else:
        with pytest.raises(fault.error) as caught:
            fetch_and_delete(handler)
        assert fault.reason in str(caught.value)
        assert PASSWORD not in str(caught.value)
    attempts = 2 if fault.retried else 1
    assert time.monotonic() - started < attempts * OPERATION_TIMEOUT + SLACK
    assert sleeps == ([RETRY_DELAY] if fault.retried else [])
    assert server.wait_idle(timeout=5.0)
    # Nothing is deleted unless the server carried out QUIT.
    assert len(server.messages()) == (0 if fault.committed else len(MESSAGES))
    assert handler.state == "disconnected"

    # The next call works, over a new connection.
    server.faults.reset()
    sessions = server.sessions_started
    left = len(server.messages())
    assert handler.list_messages() == (list(range(1, left + 1)), sum(map(len, MESSAGES[:left])))
    assert server.sessions_started == sessions + 1
    if fault.tls:
        assert not any(c.startswith(("USER", "PASS")) for c in server.commands[:2])


def test_refused_connection_is_retried_then_raised(
    client_ssl_context: ssl.SSLContext, sleeps: list[float]
) -> None:
    server = ScriptedServer(lambda conv: None)
    server.start()
    server.stop()  # the port is now closed: connecting is refused
    handler = make_handler(server, sleeps, client_ssl_context)
    started = time.monotonic()
    with pytest.raises(POP3ConnectionError, match="connect"):
        handler.list_messages()
    assert time.monotonic() - started < SLACK
    assert sleeps == [RETRY_DELAY]
    assert handler.state == "disconnected"


def test_session_cut_by_the_server_is_never_reused(
    mailbox: Any, client_ssl_context: ssl.SSLContext, sleeps: list[float]
) -> None:
    server = mailbox(False)
    handler = make_handler(server, sleeps, client_ssl_context)
    handler.connect()
    handler.authenticate()
    assert handler.delete_message(1)
    assert server.drop_connections() == 1  # the server goes away mid-session
    with pytest.raises(POP3ConnectionError):
        handler.list_messages()
    assert handler.state == "broken"
    with pytest.raises(POP3ConnectionError, match="lost"):
        handler.list_messages()  # still refused: the session is gone, not silently replaced
    assert handler.disconnect() is False  # nothing was committed, and the handler says so
    assert len(server.messages()) == len(MESSAGES)
    assert handler.list_messages()[0] == [1, 2]
    # The cut session and one new one; on a loaded machine the 0.5 s socket timeout may
    # cost an attempt, and each retry (recorded in ``sleeps``) is one more session.
    assert server.sessions_started == 2 + len(sleeps)


def test_pooled_session_closed_while_idle_is_replaced(
    mailbox: Any, client_ssl_context: ssl.SSLContext, sleeps: list[float]
) -> None:
    server = mailbox(False)
    with POP3ConnectionPool(
        server.host,
        server.port,
        "user",
        PASSWORD,
        pool_size=1,
        encryption="none",
        timeout=TIMEOUT,
        ssl_context=client_ssl_context,
        operation_timeout=OPERATION_TIMEOUT,
        sleep=sleeps.append,
    ) as pool:
        first = pool.acquire()
        assert first is not None and first.list_messages()[0] == [1, 2]
        pool.release(first)
        assert server.drop_connections() == 1  # the idle session is cut by the server
        again = pool.acquire()
        assert again is not None
        assert again.list_messages()[0] == [1, 2]
        pool.release(again)
    assert server.sessions_started == 2
    assert sleeps == []
