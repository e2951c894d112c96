"""The throttling loopback SMTP server, and a client that slows down to its pace."""

from __future__ import annotations

import smtplib

import pytest

from src.handlers._net.ratelimit import RateLimit, RateLimiter
from src.testing.throttling_server import ThrottlingSMTPServer


class FakeClock:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def _mail(smtp: smtplib.SMTP) -> tuple[int, bytes]:
    code, text = smtp.mail("alice@example.test")
    if code == 250:
        smtp.rcpt("bob@example.test")
        smtp.data(b"Subject: hi\r\n\r\nhello\r\n")
    return code, text


def test_rate_above_the_bucket_gets_451() -> None:
    clock = FakeClock()
    with ThrottlingSMTPServer(per_second=1, burst=2, clock=clock) as server:
        with smtplib.SMTP(server.host, server.port, timeout=5) as smtp:
            assert _mail(smtp)[0] == 250
            assert _mail(smtp)[0] == 250
            code, text = _mail(smtp)
            assert (code, text[:5]) == (451, b"4.7.0")
            smtp.rset()
            clock.now += 1
            assert _mail(smtp)[0] == 250
        assert (server.accepted, server.throttled) == (3, 1)
        assert server.errors == []


def test_too_many_connections_get_421() -> None:
    with ThrottlingSMTPServer(max_connections=1) as server:
        with smtplib.SMTP(server.host, server.port, timeout=5):
            with pytest.raises(smtplib.SMTPConnectError) as caught:
                smtplib.SMTP(server.host, server.port, timeout=5)
            assert caught.value.smtp_code == 421
        assert server.throttled == 1


def test_too_many_messages_on_one_connection_get_421_and_a_hang_up() -> None:
    with ThrottlingSMTPServer(messages_per_connection=2) as server:
        smtp = smtplib.SMTP(server.host, server.port, timeout=5)
        try:
            assert _mail(smtp)[0] == 250
            assert _mail(smtp)[0] == 250
            assert _mail(smtp)[0] == 421
            with pytest.raises(smtplib.SMTPServerDisconnected):
                smtp.noop()
        finally:
            smtp.close()
        with smtplib.SMTP(server.host, server.port, timeout=5) as fresh:
            assert _mail(fresh)[0] == 250


def test_a_limited_client_settles_at_the_server_rate() -> None:
    """The limiter starts at 20/s against a server taking 4/s; throttling replies slow it
    down, and every message gets through with few refusals. Time is fake throughout."""
    clock = FakeClock()
    limiter = RateLimiter(
        RateLimit(per_second=20, burst=1, cool_down=3600), clock=clock, sleep=clock.sleep
    )
    key = ("throttling", "alice")
    with ThrottlingSMTPServer(per_second=4, burst=1, clock=clock) as server:
        with smtplib.SMTP(server.host, server.port, timeout=5) as smtp:
            sent = 0
            for _ in range(200):  # bounded: 40 messages need far fewer attempts
                if sent == 40:
                    break
                limiter.acquire(key)
                code, text = _mail(smtp)
                if code == 250:
                    sent += 1
                else:
                    limiter.observe_reply(key, code, text.decode().split(" ")[0])
                    smtp.rset()
        assert sent == 40
        assert server.accepted == 40
        assert server.throttled <= 5
        rate = limiter.current_rate(key)
        assert rate is not None and rate <= 4
