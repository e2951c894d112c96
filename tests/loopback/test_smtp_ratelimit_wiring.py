"""The SMTP handler with a RateLimiter, against the throttling loopback server.

The server, the limiter and the handler's retry sleep share one fake clock, so
nothing really waits: every wait moves the clock.
"""

from __future__ import annotations

import threading
from typing import Any

from src.handlers import RateLimit, RateLimiter
from src.handlers.smtp import SMTPConnectionPool, SMTPDeliveryStatus, SMTPProtocolHandler
from src.testing.throttling_server import ThrottlingSMTPServer


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []
        self._lock = threading.Lock()

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        with self._lock:
            self.slept.append(seconds)
            self.now += seconds


def _handler(server: ThrottlingSMTPServer, clock: FakeClock, **options: Any) -> SMTPProtocolHandler:
    return SMTPProtocolHandler(
        server.host,
        server.port,
        None,
        None,
        "none",
        "app@example.com",
        pool=SMTPConnectionPool(max_connections=4),
        sleep=clock.sleep,
        timeout=5.0,
        **options,
    )


def _send(handler: SMTPProtocolHandler, number: int) -> Any:
    return handler.send_message(["bob@example.org"], f"message {number}", "hello")


def test_the_limiter_learns_the_server_rate_and_then_gets_no_451() -> None:
    clock = FakeClock()
    limiter = RateLimiter(RateLimit(per_second=40, burst=1), clock=clock, sleep=clock.sleep)
    with ThrottlingSMTPServer(per_second=5, burst=1, clock=clock) as server:
        handler = _handler(server, clock, rate_limiter=limiter)
        results = [_send(handler, n) for n in range(10)]
        learned = server.throttled
        results += [_send(handler, n) for n in range(10, 40)]
        handler.close()
    assert all(r.status is SMTPDeliveryStatus.SUCCESS for r in results), results
    assert 1 <= learned <= 4  # a few 451s taught it: 40 -> 20 -> 10 -> 5 a second
    assert server.throttled == learned  # none once it had learned
    rate = limiter.current_rate(("127.0.0.1", server.port, ""))
    assert rate is not None and rate <= 5
    assert server.accepted == 40 and server.errors == []


def test_the_messages_per_connection_budget_opens_a_fresh_connection() -> None:
    clock = FakeClock()
    limiter = RateLimiter(RateLimit(messages_per_connection=3), clock=clock, sleep=clock.sleep)
    with ThrottlingSMTPServer(messages_per_connection=3, clock=clock) as server:
        handler = _handler(server, clock, rate_limiter=limiter)
        results = [_send(handler, n) for n in range(7)]
        handler.close()
        connections = len(server._server.conversations)
    assert all(r.status is SMTPDeliveryStatus.SUCCESS and r.retry_count == 0 for r in results)
    assert server.throttled == 0 and connections == 3
    assert handler.pool.get_stats()["retired"] == 2


def test_a_421_is_observed_and_the_message_goes_on_a_new_connection() -> None:
    clock = FakeClock()
    limiter = RateLimiter(clock=clock, sleep=clock.sleep)
    with ThrottlingSMTPServer(messages_per_connection=2, clock=clock) as server:
        handler = _handler(server, clock, rate_limiter=limiter)
        results = [_send(handler, n) for n in range(3)]
        handler.close()
    assert [r.status for r in results] == [SMTPDeliveryStatus.SUCCESS] * 3
    assert results[2].retry_count == 1 and server.throttled == 1
    assert limiter.current_rate(("127.0.0.1", server.port, "")) is not None  # slowed


def test_no_permit_within_the_deadline_is_temp_failed_with_retry_after() -> None:
    clock = FakeClock()
    limiter = RateLimiter(RateLimit(per_second=0.01, burst=1), clock=clock, sleep=clock.sleep)
    with ThrottlingSMTPServer(clock=clock) as server:
        handler = _handler(server, clock, rate_limiter=limiter, operation_timeout=10.0)
        first, second = _send(handler, 1), _send(handler, 2)
        handler.close()
    assert first.status is SMTPDeliveryStatus.SUCCESS
    assert second.status is SMTPDeliveryStatus.TEMP_FAILED and second.is_retryable
    assert second.retry_after == 100.0 and second.to_dict()["retry_after"] == 100.0
    assert second.message_id and second.retry_count == 0
    assert server.accepted == 1 and clock.slept == []  # never waited, never retried


def test_the_connection_cap_holds_across_threads() -> None:
    clock = FakeClock()
    limiter = RateLimiter(RateLimit(max_connections=1), clock=clock, sleep=clock.sleep)
    with ThrottlingSMTPServer(max_connections=1) as server:
        handler = _handler(server, clock, rate_limiter=limiter, pool_size=4)
        results: list[Any] = []

        def send_some(worker: int) -> None:
            for n in range(5):
                results.append(_send(handler, worker * 10 + n))

        threads = [threading.Thread(target=send_some, args=(w,)) for w in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        handler.close()
    assert len(results) == 20
    assert all(r.status is SMTPDeliveryStatus.SUCCESS and r.retry_count == 0 for r in results)
    assert server.throttled == 0  # never a second connection: no 421 greeting
