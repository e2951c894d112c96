"""SMTP login through the shared SASL layer, against the aiosmtpd test server.

SCRAM is checked by ``scramp``'s server (with ``tls-server-end-point`` computed by
scramp from the server certificate for ``-PLUS``); CRAM-MD5, PLAIN, LOGIN, XOAUTH2 and
OAUTHBEARER by the test server's own checks. Each test asserts which mechanism the
server saw, so the default choice is proven, not assumed.
"""

from __future__ import annotations

import base64
import logging
import ssl
from collections.abc import Iterator
from typing import Any

import pytest
import trustme
from leaks import assert_no_secret, exception_texts, library_log_text

from src.handlers._net import trace as wire_log
from src.handlers._net.tls import client_certificate_context
from src.handlers._sasl import CleartextRefusedError, SASLServerVerificationError
from src.handlers._smtp.connection import SMTPConnection
from src.handlers._smtp.pool import SMTPConnectionPool
from src.handlers.errors import (
    ConfigurationError,
    MailAuthenticationError,
    MailConnectionError,
    ProxyError,
)
from src.handlers.smtp import SMTPDeliveryStatus, SMTPProtocolHandler
from src.testing.proxy_server import ProxyTestServer
from src.testing.smtp_server import SMTPTestServer
from src.testing.tls import TestCertificates

PASSWORD = "correct horse battery staple"
USERS = {"alice": PASSWORD}
TOKEN = "ya29.token-one"
WRONG = "wr0ng-" + "password"
BAD_TOKEN = "bad-" + "token-value"
ALL_PASSWORD = [
    "PLAIN",
    "LOGIN",
    "CRAM-MD5",
    "SCRAM-SHA-1",
    "SCRAM-SHA-256",
    "SCRAM-SHA-1-PLUS",
    "SCRAM-SHA-256-PLUS",
]
MODES = {"starttls": "tls", "implicit": "ssl", "none": "none"}


@pytest.fixture
def servers(certs: TestCertificates) -> Iterator[Any]:
    started: list[SMTPTestServer] = []

    def start(tls: str = "starttls", **options: Any) -> SMTPTestServer:
        options.setdefault("users", USERS)
        if tls != "none":
            options.setdefault("ssl_context", certs.server_context())
            options.setdefault("certificate_der", certs.server_certificate_der())
        else:
            options.setdefault("auth_require_tls", False)
        server = SMTPTestServer(tls=tls, **options)  # type: ignore[arg-type]
        server.start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def open_session(
    server: SMTPTestServer, client_ssl_context: ssl.SSLContext, **options: Any
) -> SMTPConnection:
    """Log in on a new connection; raise the library's error on failure."""
    options.setdefault("username", "alice")
    if "oauth2_token" not in options:
        options.setdefault("password", PASSWORD)
    pool = SMTPConnectionPool(max_connections=2)
    connection = pool.get_connection(
        server.host,
        server.port,
        encryption=MODES[server.tls],
        ssl_context=client_ssl_context,
        timeout=5.0,
        **options,
    )
    pool.release_connection(server.host, server.port, connection)
    pool.close_all()
    return connection


def mechanisms_seen(server: SMTPTestServer) -> list[str]:
    return [mechanism for mechanism, _ in server.auth_attempts]


# -- the default choice -------------------------------------------------------------


@pytest.mark.parametrize("tls", ["starttls", "implicit"])
def test_default_is_scram_sha_256_plus_on_tls(
    servers: Any, client_ssl_context: Any, tls: str
) -> None:
    server = servers(tls, mechanisms=ALL_PASSWORD)
    open_session(server, client_ssl_context)
    assert mechanisms_seen(server) == ["SCRAM-SHA-256-PLUS"]


def test_default_is_scram_sha_256_without_plus(servers: Any, client_ssl_context: Any) -> None:
    server = servers(mechanisms=[m for m in ALL_PASSWORD if not m.endswith("-PLUS")])
    open_session(server, client_ssl_context)
    assert mechanisms_seen(server) == ["SCRAM-SHA-256"]


@pytest.mark.parametrize("mechanism", ALL_PASSWORD)
def test_each_password_mechanism_logs_in_and_sends(
    servers: Any, client_ssl_context: Any, mechanism: str
) -> None:
    server = servers(mechanisms=ALL_PASSWORD, auth_required=True)
    handler = SMTPProtocolHandler(
        server.host,
        server.port,
        "alice",
        PASSWORD,
        "tls",
        "alice@example.com",
        ssl_context=client_ssl_context,
        pool=SMTPConnectionPool(),
        auth_mechanism=mechanism.lower(),
        timeout=5.0,
    )
    with handler:
        result = handler.send_message(["bob@example.org"], "Hi", "Hello")
    assert result.status is SMTPDeliveryStatus.SUCCESS, result.smtp_error
    assert mechanisms_seen(server) == [mechanism]
    assert server.messages[0].username == "alice"


def test_plain_comes_before_cram_md5_inside_tls(servers: Any, client_ssl_context: Any) -> None:
    server = servers(mechanisms=["CRAM-MD5", "PLAIN", "LOGIN"])
    open_session(server, client_ssl_context)
    assert mechanisms_seen(server) == ["PLAIN"]


def test_cram_md5_is_used_over_clear_text_without_consent(
    servers: Any, client_ssl_context: Any
) -> None:
    server = servers("none", mechanisms=["CRAM-MD5", "PLAIN", "LOGIN"])
    open_session(server, client_ssl_context, allow_cleartext=False)
    assert mechanisms_seen(server) == ["CRAM-MD5"]


def test_scram_over_clear_text_needs_no_consent(servers: Any, client_ssl_context: Any) -> None:
    server = servers("none", mechanisms=["SCRAM-SHA-256", "PLAIN"])
    open_session(server, client_ssl_context, allow_cleartext=False)
    assert mechanisms_seen(server) == ["SCRAM-SHA-256"]


# -- clear text ------------------------------------------------------------------------


def test_only_cleartext_mechanisms_without_tls_are_refused(
    servers: Any, client_ssl_context: Any
) -> None:
    server = servers("none", mechanisms=["PLAIN", "LOGIN"])
    with pytest.raises(CleartextRefusedError):
        open_session(server, client_ssl_context, allow_cleartext=False)
    assert server.auth_attempts == []


def test_choosing_no_encryption_is_consent_with_a_warning(
    servers: Any, client_ssl_context: Any, caplog: Any
) -> None:
    server = servers("none", mechanisms=["PLAIN", "LOGIN"])
    with caplog.at_level(logging.WARNING, logger="src.handlers"):
        open_session(server, client_ssl_context)
    assert mechanisms_seen(server) == ["PLAIN"]
    assert "without encryption" in caplog.text


def test_cleartext_with_consent_logs_in(servers: Any, client_ssl_context: Any, caplog: Any) -> None:
    server = servers("none", mechanisms=["PLAIN", "LOGIN"])
    with caplog.at_level(logging.WARNING, logger="src.handlers"):
        open_session(server, client_ssl_context, allow_cleartext=True)
    assert mechanisms_seen(server) == ["PLAIN"]
    assert "without encryption" in caplog.text


def test_tokens_over_clear_text_need_consent(servers: Any, client_ssl_context: Any) -> None:
    server = servers("none", mechanisms=["XOAUTH2", "OAUTHBEARER"], oauth2_tokens={"alice": TOKEN})
    with pytest.raises(CleartextRefusedError):
        open_session(server, client_ssl_context, oauth2_token=TOKEN, allow_cleartext=False)
    open_session(server, client_ssl_context, oauth2_token=TOKEN)
    assert mechanisms_seen(server) == ["OAUTHBEARER"]


# -- refusals --------------------------------------------------------------------------


def test_wrong_scram_signature_is_a_security_error_not_retried(
    servers: Any, client_ssl_context: Any
) -> None:
    server = servers(mechanisms=ALL_PASSWORD)
    server.faults.wrong_scram_signature = True
    with pytest.raises(SASLServerVerificationError):
        open_session(server, client_ssl_context)
    assert mechanisms_seen(server) == ["SCRAM-SHA-256-PLUS"]
    handler = SMTPProtocolHandler(
        server.host,
        server.port,
        "alice",
        PASSWORD,
        "tls",
        "alice@example.com",
        ssl_context=client_ssl_context,
        pool=SMTPConnectionPool(),
        timeout=5.0,
    )
    with handler:
        result = handler.send_message(["bob@example.org"], "Hi", "Hello")
    assert result.status is SMTPDeliveryStatus.FAILED
    assert not result.is_retryable and result.retry_count == 0
    assert mechanisms_seen(server) == ["SCRAM-SHA-256-PLUS"] * 2


def test_wrong_password_is_not_tried_with_a_weaker_mechanism(
    servers: Any, client_ssl_context: Any
) -> None:
    server = servers(mechanisms=ALL_PASSWORD)
    with pytest.raises(MailAuthenticationError) as caught:
        open_session(server, client_ssl_context, password="wrong")
    assert caught.value.code == 535
    assert mechanisms_seen(server) == ["SCRAM-SHA-256-PLUS"]


def test_unsupported_mechanism_falls_back_to_the_next(
    servers: Any, client_ssl_context: Any
) -> None:
    server = servers(mechanisms=ALL_PASSWORD)
    server.faults.auth_replies["SCRAM-SHA-256-PLUS"] = (504, "5.5.4 Unrecognized mechanism")
    open_session(server, client_ssl_context)
    assert mechanisms_seen(server) == ["SCRAM-SHA-1-PLUS"]


@pytest.mark.parametrize("code", [534, 538])
def test_too_weak_or_needs_encryption_does_not_fall_back(
    servers: Any, client_ssl_context: Any, code: int
) -> None:
    server = servers(mechanisms=["PLAIN", "LOGIN"])
    server.faults.auth_replies["PLAIN"] = (code, "5.7.9 not this one")
    with pytest.raises(MailAuthenticationError) as caught:
        open_session(server, client_ssl_context)
    assert caught.value.code == code
    assert server.auth_attempts == []


def test_pinned_mechanism_not_offered_sends_nothing(servers: Any, client_ssl_context: Any) -> None:
    server = servers(mechanisms=["PLAIN"])
    with pytest.raises(MailAuthenticationError, match="no usable"):
        open_session(server, client_ssl_context, auth_mechanism="SCRAM-SHA-256")
    assert server.auth_attempts == []


def test_pinning_a_mechanism_the_credentials_cannot_use_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError):
        SMTPProtocolHandler("localhost", 587, "alice", PASSWORD, auth_mechanism="XOAUTH2")
    with pytest.raises(ConfigurationError):
        SMTPProtocolHandler("localhost", 587, "alice", PASSWORD, auth_mechanism="NTLM")


def test_external_with_a_client_certificate(certs: TestCertificates, servers: Any) -> None:
    client_ca = trustme.CA()
    client_cert = client_ca.issue_cert("ada@example.org", common_name="ada")
    server_context = certs.server_context()
    server_context.verify_mode = ssl.CERT_REQUIRED
    client_ca.configure_trust(server_context)
    server = servers(mechanisms=["EXTERNAL", "PLAIN"], ssl_context=server_context)
    context = client_certificate_context(
        b"".join(blob.bytes() for blob in client_cert.cert_chain_pems),
        client_cert.private_key_pem.bytes(),
        context=certs.client_context(),
    )
    handler = SMTPProtocolHandler(
        server.host,
        server.port,
        encryption="tls",
        from_address="ada@example.org",
        ssl_context=context,
        pool=SMTPConnectionPool(),
        auth_mechanism="EXTERNAL",
        timeout=5.0,
    )
    with handler:
        result = handler.send_message(["bob@example.org"], "Hi", "Hello")
    assert result.status is SMTPDeliveryStatus.SUCCESS, result.smtp_error
    assert server.auth_attempts == [("EXTERNAL", "ada")]


# -- tokens ----------------------------------------------------------------------------


def test_oauthbearer_is_preferred_over_xoauth2(servers: Any, client_ssl_context: Any) -> None:
    server = servers(mechanisms=["XOAUTH2", "OAUTHBEARER"], oauth2_tokens={"alice": TOKEN})
    open_session(server, client_ssl_context, oauth2_token=TOKEN)
    assert mechanisms_seen(server) == ["OAUTHBEARER"]


@pytest.mark.parametrize("mechanism", ["OAUTHBEARER", "XOAUTH2"])
def test_wrong_token_is_refused(servers: Any, client_ssl_context: Any, mechanism: str) -> None:
    server = servers(mechanisms=["XOAUTH2", "OAUTHBEARER"], oauth2_tokens={"alice": TOKEN})
    with pytest.raises(MailAuthenticationError) as caught:
        open_session(server, client_ssl_context, oauth2_token="wrong-token")
    assert caught.value.code == 535
    assert "status 401" in str(caught.value)
    assert mechanisms_seen(server) == ["OAUTHBEARER"]


@pytest.mark.parametrize("mechanism", ["OAUTHBEARER", "XOAUTH2"])
def test_expired_token_is_refreshed_once(
    servers: Any, client_ssl_context: Any, mechanism: str
) -> None:
    server = servers(mechanisms=[mechanism], oauth2_tokens={"alice": "fresh-token"})
    assert server.oauth2 is not None
    server.oauth2.expire("old-token")
    given = iter(["old-token", "fresh-token"])
    invalidated: list[str] = []

    class Provider:
        def __call__(self) -> str:
            return next(given)

        def invalidate(self, token: str) -> None:
            invalidated.append(token)

    open_session(server, client_ssl_context, oauth2_token=Provider())
    assert mechanisms_seen(server) == [mechanism, mechanism]
    assert invalidated == ["old-token"]


# -- the transport ---------------------------------------------------------------------


def test_login_through_a_socks5_proxy(servers: Any, client_ssl_context: Any) -> None:
    server = servers(mechanisms=ALL_PASSWORD)
    with ProxyTestServer(hosts={"localhost": server.port}) as proxy:
        pool = SMTPConnectionPool()
        connection = pool.get_connection(
            "localhost",
            587,
            "alice",
            PASSWORD,
            "tls",
            ssl_context=client_ssl_context,
            timeout=5.0,
            proxy=proxy.url("socks5"),
        )
        pool.release_connection("localhost", 587, connection)
        pool.close_all()
        assert [request.host for request in proxy.requests] == ["localhost"]
    assert mechanisms_seen(server) == ["SCRAM-SHA-256-PLUS"]


@pytest.mark.parametrize("misbehaviour", ["refuse", "drop"])
def test_a_proxy_that_refuses_or_drops_is_a_connection_error(
    servers: Any, client_ssl_context: Any, misbehaviour: str
) -> None:
    server = servers(mechanisms=ALL_PASSWORD)
    with ProxyTestServer(hosts={"localhost": server.port}) as proxy:
        if misbehaviour == "refuse":
            proxy.refuse = True
        else:
            proxy.drop_after = "request"
        handler = SMTPProtocolHandler(
            "localhost",
            587,
            "alice",
            PASSWORD,
            "tls",
            "alice@example.com",
            ssl_context=client_ssl_context,
            pool=SMTPConnectionPool(),
            timeout=5.0,
            proxy=proxy.url("http"),
        )
        with pytest.raises(MailConnectionError) as caught:
            open_session_through(handler)
        assert isinstance(caught.value, ProxyError)
    assert server.auth_attempts == []


def open_session_through(handler: SMTPProtocolHandler) -> None:
    assert handler.proxy is not None
    connection = SMTPConnection.open(handler._settings)
    connection.close()


def test_proxy_mechanism_and_cleartext_consent_are_part_of_the_pool_key() -> None:
    plain = SMTPProtocolHandler("localhost", 587, "alice", PASSWORD)
    pinned = SMTPProtocolHandler("localhost", 587, "alice", PASSWORD, auth_mechanism="PLAIN")
    proxied = SMTPProtocolHandler(
        "localhost", 587, "alice", PASSWORD, proxy="socks5://127.0.0.1:1080"
    )
    # A session logged in with PLAIN in clear must not go to a handler that refused that.
    consenting = SMTPProtocolHandler("localhost", 587, "alice", PASSWORD, allow_cleartext=True)
    assert len({plain._key, pinned._key, proxied._key, consenting._key}) == 4


@pytest.mark.parametrize("timeout", [0, -1.0])
def test_timeout_must_be_positive(timeout: float) -> None:
    with pytest.raises(ConfigurationError):
        SMTPProtocolHandler("localhost", 587, timeout=timeout)


# -- secrets ---------------------------------------------------------------------------


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-256-PLUS", "PLAIN", "LOGIN", "CRAM-MD5"])
def test_no_secret_in_logs_trace_or_errors(
    servers: Any, client_ssl_context: Any, caplog: Any, mechanism: str
) -> None:

    server = servers(mechanisms=ALL_PASSWORD)
    caplog.set_level(logging.DEBUG, logger="src.handlers")
    with wire_log.tracing(True):
        open_session(server, client_ssl_context, auth_mechanism=mechanism)
        with pytest.raises(MailAuthenticationError) as caught:
            open_session(server, client_ssl_context, auth_mechanism=mechanism, password=WRONG)
    text = library_log_text(caplog)
    assert "AUTH" in text  # the trace was on
    forms = [PASSWORD, WRONG, base64.b64encode(PASSWORD.encode()).decode()]
    forms += [base64.b64encode(f"\0alice\0{PASSWORD}".encode()).decode()]
    assert_no_secret([text, *exception_texts(caught.value)], forms)
    # SCRAM's proof travels as "p=..." inside the base64 client-final: masked as a whole.
    assert ",p=" not in text


def test_no_token_in_logs_trace_or_errors(
    servers: Any, client_ssl_context: Any, caplog: Any
) -> None:

    server = servers(mechanisms=["OAUTHBEARER"], oauth2_tokens={"alice": TOKEN})
    caplog.set_level(logging.DEBUG, logger="src.handlers")
    with wire_log.tracing(True):
        open_session(server, client_ssl_context, oauth2_token=TOKEN)
        with pytest.raises(MailAuthenticationError) as caught:
            open_session(server, client_ssl_context, oauth2_token=BAD_TOKEN)
    text = library_log_text(caplog)
    assert "AUTH" in text
    assert_no_secret([text, *exception_texts(caught.value)], [TOKEN, BAD_TOKEN])
