"""Tests for the SMTP test servers, driven with the standard library's smtplib."""

from __future__ import annotations

import smtplib
import ssl
from collections.abc import Iterator

import pytest

from src.testing.smtp_server import SMTPTestServer

BODY = b"From: a@example.org\r\nTo: b@example.org\r\nSubject: Hello\r\n\r\nHi there.\r\n"


@pytest.fixture
def server() -> Iterator[SMTPTestServer]:
    with SMTPTestServer() as running:
        yield running


def test_plain_delivery_is_recorded(server: SMTPTestServer) -> None:
    with smtplib.SMTP(server.host, server.port, timeout=5) as client:
        refused = client.sendmail("a@example.org", ["b@example.org", "c@example.org"], BODY)
    assert refused == {}
    [message] = server.wait_for_messages(1)
    assert message.mail_from == "a@example.org"
    assert message.rcpt_tos == ["b@example.org", "c@example.org"]
    assert message.data == BODY
    assert message["Subject"] == "Hello"
    assert message["X-Missing"] is None
    assert not message.secure
    assert server.sessions == 1


def test_starttls_with_verified_certificate(
    server_ssl_context: ssl.SSLContext, client_ssl_context: ssl.SSLContext
) -> None:
    with (
        SMTPTestServer(
            tls="starttls", ssl_context=server_ssl_context, require_starttls=True
        ) as server,
        smtplib.SMTP("localhost", server.port, timeout=5) as client,
    ):
        client.ehlo()
        assert client.has_extn("starttls")
        code, _ = client.mail("a@example.org")
        assert code == 530
        client.rset()
        client.starttls(context=client_ssl_context)
        client.sendmail("a@example.org", ["b@example.org"], BODY)
        [message] = server.wait_for_messages(1)
    assert message.secure


def test_implicit_tls_with_verified_certificate(
    server_ssl_context: ssl.SSLContext, client_ssl_context: ssl.SSLContext
) -> None:
    with SMTPTestServer(tls="implicit", ssl_context=server_ssl_context) as server:
        with smtplib.SMTP_SSL(
            "localhost", server.port, timeout=5, context=client_ssl_context
        ) as client:
            client.sendmail("a@example.org", ["b@example.org"], BODY)
        [message] = server.wait_for_messages(1)
    assert message.secure
