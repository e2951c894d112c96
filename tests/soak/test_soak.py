"""Soak: 5,000 messages from 8 threads through one SMTP handler, against a server that
fails on purpose, and every message accounted for exactly once.

The loopback server gives each connection a fate by its number: half are healthy and
close after a few dozen messages (so the pool keeps finding connections closed while
idle); the other half answer 421 in the middle of the session, drop at RCPT, drop in
the middle of a body, drop right after a body's final dot, refuse a recipient for
good, or refuse a message with 451 after reading it. The server keeps a ledger of
every Message-ID it received in full, and whether it accepted it.

At the end each message must be exactly one of: reported SUCCESS and confirmed once;
reported failed and never received in full; or reported ``outcome_unknown`` and
received at most once. The pool must never have had more connections open than its
bound. Every loop is bounded in count, and the whole run in time.

Run it with ``pytest -m soak``; the default run skips it.
"""

from __future__ import annotations

import collections
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

import pytest

from src.handlers._smtp.connection import SMTPConnection
from src.handlers.retry import RetryPolicy
from src.handlers.smtp import (
    DeliveryResult,
    SMTPConnectionPool,
    SMTPDeliveryStatus,
    SMTPProtocolHandler,
)
from src.testing.scripted_server import Conversation, ScriptedServer

pytestmark = pytest.mark.soak

THREADS = 8
MESSAGES = 5_000
POOL_BOUND = 4
SESSION_LIMIT = 40  # messages a healthy session takes before the server closes it
TIME_LIMIT = 240.0  # seconds for the whole run; the test fails rather than overrun
RETRY = RetryPolicy(max_retries=3, delays=(0.001,))
END_OF_DATA = b"\r\n.\r\n"
_MESSAGE_ID = re.compile(rb"^Message-ID:\s*(<[^>\r\n]+>)", re.IGNORECASE | re.MULTILINE)


@dataclass(frozen=True)
class Fate:
    """What a connection does: fail at ``step`` during its ``message``-th message."""

    step: str
    message: int = 0


# Connection n gets FATES[n % 12]: half of the connections misbehave once.
FATES = [Fate("")] * 6 + [
    Fate("421 at MAIL", 3),
    Fate("drop at RCPT", 2),
    Fate("drop mid-body", 2),
    Fate("drop after the dot", 4),
    Fate("550 at RCPT", 2),  # the one permanent refusal: reported failed, never resent
    Fate("451 after the dot", 3),  # refused after reading it: not delivered, resent
]


class Ledger:
    """What the server received in full, per Message-ID (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.confirmed: collections.Counter[str] = collections.Counter()
        self.unconfirmed: collections.Counter[str] = collections.Counter()
        self.sessions = 0
        self.open_sessions = 0
        self.max_open_sessions = 0

    def record(self, block: bytes, confirmed: bool) -> None:
        match = _MESSAGE_ID.search(block)
        message_id = match.group(1).decode("ascii") if match else "<missing>"
        with self._lock:
            (self.confirmed if confirmed else self.unconfirmed)[message_id] += 1

    def session(self, delta: int) -> None:
        with self._lock:
            self.open_sessions += delta
            self.sessions += max(delta, 0)
            self.max_open_sessions = max(self.max_open_sessions, self.open_sessions)


def soak_server(ledger: Ledger) -> Any:
    """The server side of one connection, failing as its :class:`Fate` says."""

    def script(conv: Conversation) -> None:
        ledger.session(+1)
        try:
            serve(conv, FATES[conv.index % len(FATES)], ledger)
        except (ConnectionError, TimeoutError):
            pass  # the client went away: nothing more to do
        finally:
            ledger.session(-1)

    return script


def serve(conv: Conversation, fate: Fate, ledger: Ledger) -> None:
    conv.send(b"220 soak ESMTP\r\n")
    messages = 0
    for _ in range(10 * SESSION_LIMIT):  # bounded: a session never outlives its limit
        line = conv.recv_line(timeout=30.0)
        if line is None or not line.endswith(b"\n"):
            return
        verb = line[:4].upper()
        failing = fate.message == messages + (verb == b"MAIL")
        step = fate.step if failing else ""
        if verb in (b"EHLO", b"HELO"):
            conv.send(b"250-soak\r\n250 8BITMIME\r\n")
        elif verb == b"MAIL":
            messages += 1
            if step == "421 at MAIL":
                conv.send(b"421 4.3.2 shutting down\r\n")
                return
            conv.send(b"250 2.1.0 OK\r\n")
        elif verb == b"RCPT":
            if step == "drop at RCPT":
                return
            refused = step == "550 at RCPT"
            conv.send(b"550 5.1.1 no such user\r\n" if refused else b"250 2.1.5 OK\r\n")
        elif verb == b"DATA":
            conv.send(b"354 go ahead\r\n")
            if step == "drop mid-body":
                conv.recv_line()
                return
            block = conv.recv_until(END_OF_DATA, timeout=30.0)
            if not block.endswith(END_OF_DATA):
                return
            if step == "451 after the dot":
                conv.send(b"451 4.3.0 try again\r\n")
                continue
            ledger.record(block, confirmed=step != "drop after the dot")
            if step == "drop after the dot":
                return
            conv.send(b"250 2.0.0 queued\r\n")
            if not fate.step and messages >= SESSION_LIMIT:
                return  # close while the client keeps the connection idle in its pool
        elif verb in (b"RSET", b"NOOP"):
            conv.send(b"250 2.0.0 OK\r\n")
        elif verb == b"QUIT":
            conv.send(b"221 2.0.0 bye\r\n")
            return
        else:
            conv.send(b"502 5.5.2 not here\r\n")


class CountingOpener:
    """Opens connections for the pool and tracks how many are open at once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.open = 0
        self.max_open = 0

    def __call__(self, *args: Any, **kwargs: Any) -> SMTPConnection:
        connection = SMTPConnection.open(*args, **kwargs)
        with self._lock:
            self.open += 1
            self.max_open = max(self.max_open, self.open)
        close = connection.close
        closed = threading.Event()

        def counted_close(polite: bool = True) -> None:
            if not closed.is_set():
                closed.set()
                with self._lock:
                    self.open -= 1
            close(polite)

        connection.close = counted_close  # type: ignore[method-assign]
        return connection


def _soak_selected(config: pytest.Config) -> bool:
    expression = str(config.getoption("markexpr") or "")
    return "soak" in expression and "not soak" not in expression


def send_share(handler: SMTPProtocolHandler, thread: int, stop_at: float) -> list[DeliveryResult]:
    results = []
    for number in range(thread, MESSAGES, THREADS):  # bounded by count...
        if time.monotonic() > stop_at:  # ...and by time
            break
        results.append(
            handler.send_message(["bob@example.org"], f"soak {number}", text_body=f"n={number}")
        )
    return results


def test_every_message_is_accounted_for_exactly_once(request: pytest.FixtureRequest) -> None:
    if not _soak_selected(request.config):
        pytest.skip("soak test: run it with -m soak")
    ledger, opener = Ledger(), CountingOpener()
    pool = SMTPConnectionPool(max_connections=POOL_BOUND, opener=opener)
    started = time.monotonic()
    with ScriptedServer(soak_server(ledger)) as server:
        handler = SMTPProtocolHandler(
            *server.address,
            encryption="none",
            from_address="soak@example.com",
            pool_size=POOL_BOUND,
            pool=pool,
            timeout=10.0,
            retry=RETRY,
            sleep=lambda seconds: time.sleep(min(seconds, 0.001)),
        )
        with handler, ThreadPoolExecutor(max_workers=THREADS) as workers:
            stop_at = started + TIME_LIMIT
            futures = [workers.submit(send_share, handler, n, stop_at) for n in range(THREADS)]
            done, pending = wait(futures, timeout=TIME_LIMIT + 30.0)
            assert not pending, "the soak run did not finish in time"
            results = [result for future in done for result in future.result()]
    elapsed = time.monotonic() - started
    assert len(results) == MESSAGES, "the soak run was cut short by its time limit"

    outcomes = check_accounting(results, ledger)
    assert opener.max_open <= POOL_BOUND
    assert pool.get_stats()["open"] == 0
    stats = pool.get_stats()
    summary = (
        f"soak: {MESSAGES} messages in {elapsed:.1f}s; delivered {outcomes['success']}, "
        f"failed {outcomes['failed']}, unknown {outcomes['unknown']}; "
        f"retried sends {outcomes['retried']}; server sessions {ledger.sessions}; "
        f"pool max open {opener.max_open} of {POOL_BOUND}, created {stats['created']}, "
        f"dropped while idle {stats['dropped']}, discarded {stats['discarded']}"
    )
    print(summary)
    request.node.user_properties.append(("soak", summary))
    assert not server.errors


def check_accounting(results: list[DeliveryResult], ledger: Ledger) -> dict[str, int]:
    """Each message in exactly one class; returns how many fell in each."""
    ids = [result.message_id for result in results]
    assert None not in ids and len(set(ids)) == len(ids)  # one report per message
    outcomes = collections.Counter[str]()
    for result in results:
        message_id = str(result.message_id)
        confirmed, unconfirmed = ledger.confirmed[message_id], ledger.unconfirmed[message_id]
        if result.status is SMTPDeliveryStatus.SUCCESS:
            assert (confirmed, unconfirmed) == (1, 0), result
            outcomes["success"] += 1
        elif result.outcome_unknown:
            assert confirmed + unconfirmed <= 1, result
            outcomes["unknown"] += 1
        else:
            assert (confirmed, unconfirmed) == (0, 0), result
            outcomes["failed"] += 1
        outcomes["retried"] += result.retry_count > 0
    seen = set(ledger.confirmed) | set(ledger.unconfirmed)
    assert seen <= set(ids)  # nothing reached the server that was not sent
    assert sum(ledger.confirmed.values()) == outcomes["success"]
    return {name: outcomes[name] for name in ("success", "failed", "unknown", "retried")}
