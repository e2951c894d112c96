"""Fixes made after running the handlers against real Postfix and Dovecot (docs/interop.md),
checked here against scripted loopback servers so they hold without those servers.

* A refused password is one AUTH attempt, not one per mechanism; another mechanism is
  tried only when the server refuses the mechanism itself.
* 'none' with a password, against a server that lists AUTH only after STARTTLS, says
  so, sends nothing secret and logs no "credentials sent in clear" warning.
* The wrong encryption mode for a port is named in the error: implicit TLS meeting a
  plain-text greeting, and a plain start meeting a port that waits for a handshake.
"""

from __future__ import annotations

import logging
import ssl
from typing import Any

import pytest

from src.handlers.errors import POP3SecurityError, POP3TimeoutError
from src.handlers.pop3 import POP3ProtocolHandler
from src.handlers.retry import RetryPolicy
from src.handlers.smtp import SMTPConnectionPool, SMTPDeliveryStatus, SMTPProtocolHandler
from src.testing.scripted_server import Conversation, ScriptedServer
from src.testing.smtp_scripts import SMTPDialogue, no_greeting

PASSWORD = "s3cret-Pa55"
SENDER = "app@example.com"


def _handler(
    server: ScriptedServer, client_ssl_context: ssl.SSLContext, **options: Any
) -> SMTPProtocolHandler:
    options.setdefault("encryption", "tls")
    options.setdefault("timeout", 5.0)
    return SMTPProtocolHandler(
        *server.address,
        "app",
        PASSWORD,
        from_address=SENDER,
        ssl_context=client_ssl_context,
        pool=SMTPConnectionPool(),
        sleep=lambda seconds: None,
        **options,
    )


def _auth_lines(server: ScriptedServer) -> list[str]:
    return [
        line.decode().strip()
        for conversation in server.conversations
        for line in conversation.received
        if line.upper().startswith(b"AUTH")
    ]


def test_a_refused_password_is_one_auth_attempt(
    server_ssl_context: ssl.SSLContext, client_ssl_context: ssl.SSLContext
) -> None:
    script = SMTPDialogue(
        tls_context=server_ssl_context,
        auth_mechanisms=("PLAIN", "LOGIN", "CRAM-MD5"),
        replies={"AUTH": (535, "5.7.8 Authentication credentials invalid")},
    )
    with ScriptedServer(script) as server:
        handler = _handler(server, client_ssl_context)
        result = handler.send_message(["ada@example.org"], "x", text_body="y")
        handler.close()
    assert result.status is SMTPDeliveryStatus.FAILED
    assert (result.smtp_code, result.is_retryable) == (535, False)
    [line] = _auth_lines(server)
    assert line.startswith("AUTH PLAIN")


def test_an_unsupported_mechanism_lets_the_next_one_try(
    server_ssl_context: ssl.SSLContext, client_ssl_context: ssl.SSLContext
) -> None:
    script = SMTPDialogue(
        tls_context=server_ssl_context,
        auth_mechanisms=("LOGIN", "PLAIN"),
        replies={"AUTH": [(504, "5.5.4 not this one")]},
    )
    with ScriptedServer(script) as server:
        handler = _handler(server, client_ssl_context)
        result = handler.send_message(["ada@example.org"], "x", text_body="y")
        handler.close()
    assert result.status is SMTPDeliveryStatus.SUCCESS, result.to_dict()
    assert [line.split()[1] for line in _auth_lines(server)] == ["PLAIN", "LOGIN"]


@pytest.mark.parametrize("refusal", [534, 538])
def test_too_weak_or_needs_encryption_stops_the_login(
    server_ssl_context: ssl.SSLContext, client_ssl_context: ssl.SSLContext, refusal: int
) -> None:
    # The next candidate is weaker: no better for the server, worse for the password.
    script = SMTPDialogue(
        tls_context=server_ssl_context,
        auth_mechanisms=("LOGIN", "PLAIN"),
        replies={"AUTH": [(refusal, "5.7.0 not this one")]},
    )
    with ScriptedServer(script) as server:
        handler = _handler(server, client_ssl_context)
        result = handler.send_message(["ada@example.org"], "x", text_body="y")
        handler.close()
    assert result.status is SMTPDeliveryStatus.FAILED and result.smtp_code == refusal
    assert [line.split()[1] for line in _auth_lines(server)] == ["PLAIN"]


def test_none_mode_names_starttls_when_auth_waits_for_it(
    server_ssl_context: ssl.SSLContext,
    client_ssl_context: ssl.SSLContext,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    # STARTTLS offered, AUTH not (yet): how Postfix's smtpd_tls_auth_only looks.
    script = SMTPDialogue(tls_context=server_ssl_context)
    with ScriptedServer(script) as server:
        handler = _handler(server, client_ssl_context, encryption="none")
        result = handler.send_message(["ada@example.org"], "x", text_body="y")
        handler.close()
    assert result.status is SMTPDeliveryStatus.FAILED and not result.is_retryable
    assert "STARTTLS" in (result.smtp_error or "")
    assert "encryption='tls'" in (result.smtp_error or "")
    assert _auth_lines(server) == []
    assert "without encryption" not in caplog.text


def test_none_mode_still_warns_when_it_does_send_the_password(
    client_ssl_context: ssl.SSLContext, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    with ScriptedServer(SMTPDialogue(auth_mechanisms=("PLAIN",))) as server:
        handler = _handler(server, client_ssl_context, encryption="none", allow_cleartext=True)
        assert handler.send_message(["ada@example.org"], "x", text_body="y").success
        handler.close()
    assert "without encryption" in caplog.text
    assert PASSWORD not in caplog.text


def test_implicit_tls_against_a_plain_greeting_names_the_mode(
    client_ssl_context: ssl.SSLContext,
) -> None:
    with ScriptedServer(SMTPDialogue()) as server:
        handler = _handler(server, client_ssl_context, encryption="ssl")
        result = handler.send_message(["ada@example.org"], "x", text_body="y")
        handler.close()
    assert result.status is SMTPDeliveryStatus.FAILED and not result.is_retryable
    assert "plain text" in (result.smtp_error or "")
    assert "encryption='tls'" in (result.smtp_error or "")


def test_smtp_silent_port_names_implicit_tls(client_ssl_context: ssl.SSLContext) -> None:
    with ScriptedServer(no_greeting) as server:
        handler = _handler(server, client_ssl_context, timeout=0.3)
        result = handler.send_message(["ada@example.org"], "x", text_body="y", retry=False)
        handler.close()
    assert result.status is SMTPDeliveryStatus.RETRY
    assert "timed out" in (result.smtp_error or "")
    assert "encryption='ssl'" in (result.smtp_error or "")


def _pop3(server: ScriptedServer, mode: str, context: ssl.SSLContext) -> POP3ProtocolHandler:
    return POP3ProtocolHandler(
        *server.address,
        "ada",
        PASSWORD,
        mode,
        0.3,
        ssl_context=context,
        retry=RetryPolicy.never(),
    )


def _pop3_greeting(conversation: Conversation) -> None:
    conversation.send(b"+OK ready\r\n")
    conversation.recv_line(2.0)


@pytest.mark.parametrize("mode", ["tls", "none"])
def test_pop3_silent_port_names_implicit_tls(client_ssl_context: ssl.SSLContext, mode: str) -> None:
    with ScriptedServer(no_greeting) as server, pytest.raises(POP3TimeoutError) as silent:
        _pop3(server, mode, client_ssl_context).get_mailbox_stat()
    assert "encryption='ssl'" in str(silent.value)


def test_pop3_silent_port_in_ssl_mode_has_no_such_hint(
    client_ssl_context: ssl.SSLContext,
) -> None:
    with ScriptedServer(no_greeting) as server, pytest.raises(Exception) as failed:
        _pop3(server, "ssl", client_ssl_context).get_mailbox_stat()
    assert "encryption='ssl'" not in str(failed.value)


def test_pop3_implicit_tls_against_a_plain_greeting_names_the_mode(
    client_ssl_context: ssl.SSLContext,
) -> None:
    with ScriptedServer(_pop3_greeting) as server, pytest.raises(POP3SecurityError) as failed:
        _pop3(server, "ssl", client_ssl_context).get_mailbox_stat()
    assert "plain text" in str(failed.value) and "encryption='tls'" in str(failed.value)
