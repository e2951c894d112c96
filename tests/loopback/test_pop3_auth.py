"""POP3 logins through the shared SASL layer, proven against the project's test server.

The server checks every mechanism for real: SCRAM through scramp's server side (with
the ``tls-server-end-point`` channel binding scramp computes from the server's
certificate), and PLAIN, LOGIN, CRAM-MD5, APOP, OAUTHBEARER and XOAUTH2 by hand. Its
``logins`` record says which mechanism a login used.
"""

from __future__ import annotations

import base64
import logging
import ssl
from collections.abc import Iterator
from typing import Any

import pytest
import trustme

from src.handlers._sasl import (
    CleartextRefusedError,
    NoMechanismError,
    SASLServerVerificationError,
)
from src.handlers.errors import ConfigurationError, MailHandlerError, POP3ResponseError, ProxyError
from src.handlers.pop3 import (
    POP3AuthenticationError,
    POP3ConnectionPool,
    POP3MailboxBusyError,
    POP3ProtocolHandler,
)
from src.handlers.retry import RetryPolicy
from src.testing.pop3_server import POP3TestServer
from src.testing.proxy_server import ProxyTestServer
from src.testing.tls import TestCertificates

USER = "ada@example.org"
PASSWORD = "correct horse battery staple"
TOKEN = "ya29.valid-token-0123456789"
MESSAGE = b"Subject: hi\r\n\r\nbody\r\n"
EVERY_PASSWORD_MECHANISM = (
    "SCRAM-SHA-256-PLUS",
    "SCRAM-SHA-1-PLUS",
    "SCRAM-SHA-256",
    "SCRAM-SHA-1",
    "CRAM-MD5",
    "PLAIN",
    "LOGIN",
)


def der_of(certs: TestCertificates) -> bytes:
    return ssl.PEM_cert_to_DER_cert(certs.server_cert.cert_chain_pems[0].bytes().decode())


@pytest.fixture
def tls_server(
    certs: TestCertificates, server_ssl_context: ssl.SSLContext, request: pytest.FixtureRequest
) -> Iterator[POP3TestServer]:
    options: dict[str, Any] = {
        "tls": "starttls",
        "sasl_mechanisms": EVERY_PASSWORD_MECHANISM,
        "apop": True,
    }
    options.update(getattr(request, "param", {}))
    with POP3TestServer(
        users={USER: PASSWORD},
        ssl_context=server_ssl_context,
        certificate=der_of(certs),
        **options,
    ) as server:
        server.add_message(MESSAGE, user=USER)
        yield server


def handler(
    server: POP3TestServer, encryption: str, context: ssl.SSLContext | None = None, **options: Any
) -> POP3ProtocolHandler:
    options.setdefault("password", PASSWORD)
    return POP3ProtocolHandler(
        server.host,
        server.port,
        USER,
        encryption=encryption,
        timeout=5,
        ssl_context=context,
        sleep=lambda seconds: None,
        **options,
    )


def verbs(server: POP3TestServer) -> list[str]:
    return [command.split(" ")[0].upper() for command in server.commands]


# -- choosing --------------------------------------------------------------------------


@pytest.mark.parametrize("tls", ["starttls", "implicit"])
def test_default_is_scram_sha_256_plus_bound_to_the_tls_connection(
    tls: str,
    certs: TestCertificates,
    server_ssl_context: ssl.SSLContext,
    client_ssl_context: ssl.SSLContext,
) -> None:
    with POP3TestServer(
        users={USER: PASSWORD},
        tls=tls,  # type: ignore[arg-type]
        ssl_context=server_ssl_context,
        certificate=der_of(certs),
        sasl_mechanisms=("PLAIN", "SCRAM-SHA-1", "SCRAM-SHA-256", "SCRAM-SHA-256-PLUS"),
    ) as server:
        server.add_message(MESSAGE, user=USER)
        pop3 = handler(server, "tls" if tls == "starttls" else "ssl", client_ssl_context)
        assert pop3.get_mailbox_stat()[0] == 1
    assert server.logins == [(USER, "SCRAM-SHA-256-PLUS")]


def test_default_without_plus_is_scram_sha_256(
    tls_server: POP3TestServer, client_ssl_context: ssl.SSLContext
) -> None:
    tls_server.sasl_mechanisms = ("PLAIN", "LOGIN", "CRAM-MD5", "SCRAM-SHA-1", "SCRAM-SHA-256")
    assert handler(tls_server, "tls", client_ssl_context).get_mailbox_stat()[0] == 1
    assert tls_server.logins == [(USER, "SCRAM-SHA-256")]


def test_default_over_cleartext_prefers_scram_and_needs_no_consent() -> None:
    with POP3TestServer(
        users={USER: PASSWORD}, sasl_mechanisms=("PLAIN", "SCRAM-SHA-1", "SCRAM-SHA-256")
    ) as server:
        assert handler(server, "none", allow_cleartext=False).get_mailbox_stat() == (0, 0)
    assert server.logins == [(USER, "SCRAM-SHA-256")]


@pytest.mark.parametrize("mechanism", [*EVERY_PASSWORD_MECHANISM, "APOP", "USER"])
def test_each_pinned_mechanism_logs_in_for_real(
    mechanism: str, tls_server: POP3TestServer, client_ssl_context: ssl.SSLContext
) -> None:
    pop3 = handler(tls_server, "tls", client_ssl_context, auth_mechanism=mechanism.lower())
    assert pop3.authenticated_with is None
    assert pop3.get_mailbox_stat()[0] == 1
    assert tls_server.logins == [(USER, mechanism)]
    assert pop3.authenticated_with == mechanism


def test_apop_is_used_when_it_is_the_best_available() -> None:
    with POP3TestServer(users={USER: PASSWORD}, sasl_mechanisms=("PLAIN",), apop=True) as server:
        pop3 = handler(server, "none", allow_cleartext=False)
        assert pop3.get_mailbox_stat() == (0, 0)
        assert server.logins == [(USER, "APOP")]
        assert "PASS" not in verbs(server) and "AUTH" not in verbs(server)
        # With cleartext allowed, a timestamp alone does not make the client use APOP:
        # many servers greet with one without being able to check it.
        assert handler(server, "none").get_mailbox_stat() == (0, 0)
    assert server.logins[-1] == (USER, "PLAIN")


def test_usable_over_cleartext_only_when_opted_in(caplog: pytest.LogCaptureFixture) -> None:
    with POP3TestServer(users={USER: PASSWORD}, sasl_mechanisms=("PLAIN", "LOGIN")) as server:
        with pytest.raises(CleartextRefusedError):
            handler(server, "none", allow_cleartext=False).get_mailbox_stat()
        assert "AUTH" not in verbs(server) and "USER" not in verbs(server)
        assert "PASS" not in verbs(server)
        # encryption='none' is the documented consent, with a warning.
        caplog.set_level(logging.WARNING)
        assert handler(server, "none").get_mailbox_stat() == (0, 0)
    assert server.logins == [(USER, "PLAIN")]


def test_no_fallback_after_the_credentials_were_refused(
    tls_server: POP3TestServer, client_ssl_context: ssl.SSLContext
) -> None:
    pop3 = handler(tls_server, "tls", client_ssl_context, password="wrong password")
    with pytest.raises(POP3AuthenticationError) as caught:
        pop3.get_mailbox_stat()
    assert "wrong password" not in str(caught.value)
    assert verbs(tls_server).count("AUTH") == 1
    assert tls_server.commands[verbs(tls_server).index("AUTH")] == "AUTH SCRAM-SHA-256-PLUS ***"
    assert "USER" not in verbs(tls_server) and "APOP" not in verbs(tls_server)
    assert tls_server.logins == []


def test_an_unsupported_mechanism_falls_back_to_the_next() -> None:
    with POP3TestServer(users={USER: PASSWORD}, sasl_mechanisms=()) as server:
        # Listed, but the server does not know it: "-ERR unsupported mechanism".
        server.extra_capabilities = [b"SASL SCRAM-SHA-256"]
        assert handler(server, "none").get_mailbox_stat() == (0, 0)
    assert server.logins == [(USER, "USER")]
    assert verbs(server)[:4] == ["CAPA", "AUTH", "USER", "PASS"]


def test_a_wrong_scram_server_signature_is_refused(
    tls_server: POP3TestServer, client_ssl_context: ssl.SSLContext
) -> None:
    tls_server.faults.bad_scram_signature = True
    pop3 = handler(tls_server, "tls", client_ssl_context, auth_mechanism="SCRAM-SHA-256")
    with pytest.raises(SASLServerVerificationError, match="impostor"):
        pop3.authenticate()
    assert pop3.state == "disconnected"
    assert tls_server.wait_idle()
    assert tls_server.logins == []  # the client cancelled with "*"


def test_scram_secrets_stay_out_of_logs_and_errors(
    tls_server: POP3TestServer, client_ssl_context: ssl.SSLContext, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    pop3 = handler(tls_server, "tls", client_ssl_context, trace=True, password="wrong secret!")
    with pytest.raises(MailHandlerError) as caught:
        pop3.authenticate()
    texts = [caplog.text, str(caught.value), repr(caught.value), repr(pop3)]
    for form in ("wrong secret!", base64.b64encode(b"wrong secret!").decode()):
        assert all(form not in text for text in texts)
    # The trace shows no SCRAM message the client sent (the client-final carries the
    # proof): every line after AUTH is masked whole.
    sent = [line.split(" >> ", 1)[1] for line in caplog.text.splitlines() if " >> " in line]
    after_auth = sent[[line.split(" ")[0] for line in sent].index("AUTH") :]
    assert after_auth[0] == "AUTH SCRAM-SHA-256-PLUS ***"
    assert all(line in ("***", "QUIT") for line in after_auth[1:])


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"auth_mechanism": "BOGUS"}, "auth_mechanism"),
        ({"auth_mechanism": "XOAUTH2"}, "auth_mechanism"),
        ({"allow_cleartext": "yes"}, "allow_cleartext"),
        ({"language": "en\r\nDELE 1"}, "language"),
    ],
)
def test_bad_login_options_are_refused_before_any_io(options: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        POP3ProtocolHandler("127.0.0.1", 1, USER, PASSWORD, "none", **options)
    assert caught.value.field == field


def test_the_pool_takes_the_login_options(
    tls_server: POP3TestServer, client_ssl_context: ssl.SSLContext
) -> None:
    with POP3ConnectionPool(
        tls_server.host,
        tls_server.port,
        USER,
        PASSWORD,
        encryption="tls",
        ssl_context=client_ssl_context,
        auth_mechanism="CRAM-MD5",
    ) as pool:
        pop3 = pool.acquire()
        assert pop3 is not None and pop3.get_mailbox_stat()[0] == 1
        pool.release(pop3)
    assert tls_server.logins == [(USER, "CRAM-MD5")]


# -- OAuth2 ------------------------------------------------------------------------------


class Provider:
    """Hands out ``tokens`` in turn; records ``invalidate`` calls."""

    def __init__(self, *tokens: str) -> None:
        self.tokens = list(tokens)
        self.calls = 0
        self.invalidated: list[str] = []

    def __call__(self) -> str:
        self.calls += 1
        return self.tokens[0]

    def invalidate(self, token: str) -> None:
        self.invalidated.append(token)
        self.tokens.pop(0)


@pytest.fixture
def oauth_server(
    server_ssl_context: ssl.SSLContext,
) -> Iterator[POP3TestServer]:
    with POP3TestServer(
        tls="implicit",
        ssl_context=server_ssl_context,
        sasl_mechanisms=("PLAIN", "OAUTHBEARER"),
        oauth2_tokens={USER: TOKEN},
    ) as server:
        yield server


def test_oauthbearer_is_preferred_over_xoauth2(
    oauth_server: POP3TestServer, client_ssl_context: ssl.SSLContext
) -> None:
    pop3 = handler(oauth_server, "ssl", client_ssl_context, password=None, oauth2_token=TOKEN)
    assert pop3.get_mailbox_stat() == (0, 0)
    assert oauth_server.logins == [(USER, "OAUTHBEARER")]


def test_xoauth2_when_pinned(
    oauth_server: POP3TestServer, client_ssl_context: ssl.SSLContext
) -> None:
    pop3 = handler(
        oauth_server,
        "ssl",
        client_ssl_context,
        password=None,
        oauth2_token=TOKEN,
        auth_mechanism="XOAUTH2",
    )
    assert pop3.get_mailbox_stat() == (0, 0)
    assert oauth_server.logins == [(USER, "XOAUTH2")]


def test_a_wrong_token_is_refused_with_the_servers_reason(
    oauth_server: POP3TestServer, client_ssl_context: ssl.SSLContext
) -> None:
    wrong = "ya29.wrong-token-9876543210"
    pop3 = handler(oauth_server, "ssl", client_ssl_context, password=None, oauth2_token=wrong)
    with pytest.raises(POP3AuthenticationError, match="OAUTHBEARER: status 401") as caught:
        pop3.get_mailbox_stat()
    assert wrong not in str(caught.value)
    assert verbs(oauth_server).count("AUTH") == 1  # no fallback to XOAUTH2


def test_an_expired_token_is_refreshed_once(
    oauth_server: POP3TestServer, client_ssl_context: ssl.SSLContext
) -> None:
    assert oauth_server.oauth2 is not None
    oauth_server.oauth2.expire("ya29.expired")
    provider = Provider("ya29.expired", TOKEN)
    pop3 = handler(oauth_server, "ssl", client_ssl_context, password=None, oauth2_token=provider)
    assert pop3.get_mailbox_stat() == (0, 0)
    assert provider.invalidated == ["ya29.expired"] and provider.calls == 2
    assert oauth_server.logins == [(USER, "OAUTHBEARER")]
    assert oauth_server.sessions_started == 1  # refreshed on the same connection


# -- UTF8 and LANG (RFC 6856) -------------------------------------------------------------


def test_utf8_before_login_and_lang_when_asked() -> None:
    with POP3TestServer(
        users={"jürgen": "pässword"},
        sasl_mechanisms=("SCRAM-SHA-256",),
        utf8=True,
        languages=("en", "fr"),
    ) as server:
        pop3 = POP3ProtocolHandler(
            server.host, server.port, "jürgen", "pässword", "none", 5, language="fr"
        )
        assert pop3.get_mailbox_stat() == (0, 0)
    assert verbs(server)[:4] == ["CAPA", "UTF8", "AUTH", "LANG"]
    assert "LANG fr" in server.commands
    assert server.logins == [("jürgen", "SCRAM-SHA-256")]


def test_lang_is_not_sent_unless_asked() -> None:
    with POP3TestServer(users={USER: PASSWORD}, utf8=True, languages=("en",)) as server:
        assert handler(server, "none").get_mailbox_stat() == (0, 0)
    assert "LANG" not in verbs(server)


# -- the transport ------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["socks5", "http"])
def test_through_a_proxy(
    scheme: str, tls_server: POP3TestServer, client_ssl_context: ssl.SSLContext
) -> None:
    # The proxy knows "localhost", which the test certificate names; it never resolves.
    with ProxyTestServer({"localhost": tls_server.port}) as proxy:
        pop3 = POP3ProtocolHandler(
            "localhost",
            110,
            USER,
            PASSWORD,
            "tls",
            5,
            ssl_context=client_ssl_context,
            proxy=proxy.url(scheme),
        )
        assert pop3.get_mailbox_stat()[0] == 1
    [request] = proxy.requests
    assert request.host == "localhost" and request.granted
    assert tls_server.logins == [(USER, "SCRAM-SHA-256-PLUS")]


def test_implicit_tls_through_a_proxy(
    certs: TestCertificates, server_ssl_context: ssl.SSLContext, client_ssl_context: ssl.SSLContext
) -> None:
    with (
        POP3TestServer(
            users={USER: PASSWORD},
            tls="implicit",
            ssl_context=server_ssl_context,
            certificate=der_of(certs),
            sasl_mechanisms=("SCRAM-SHA-256-PLUS",),
        ) as server,
        ProxyTestServer({"localhost": server.port}) as proxy,
    ):
        pop3 = POP3ProtocolHandler(
            "localhost",
            995,
            USER,
            PASSWORD,
            "ssl",
            5,
            ssl_context=client_ssl_context,
            proxy=proxy.url("socks5"),
        )
        assert pop3.get_mailbox_stat() == (0, 0)
    assert server.logins == [(USER, "SCRAM-SHA-256-PLUS")]


@pytest.mark.parametrize("misbehaviour", ["refuse", "drop"])
def test_a_proxy_that_refuses_or_drops(misbehaviour: str, tls_server: POP3TestServer) -> None:
    with ProxyTestServer({"pop.example.test": tls_server.port}) as proxy:
        if misbehaviour == "refuse":
            proxy.refuse = True
        else:
            proxy.drop_after = "request"
        pop3 = POP3ProtocolHandler(
            "pop.example.test",
            110,
            USER,
            PASSWORD,
            "tls",
            5,
            proxy=proxy.url("socks5"),
            sleep=lambda seconds: None,
        )
        with pytest.raises(ProxyError):
            pop3.get_mailbox_stat()
    assert tls_server.sessions_started == 0


# -- more refusals ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "error", "code"),
    [
        ("in_use", POP3MailboxBusyError, "IN-USE"),
        ("login_delay", POP3MailboxBusyError, "LOGIN-DELAY"),
    ],
)
def test_a_busy_mailbox_at_auth_is_not_a_reason_to_fall_back(
    fault: str,
    error: type[Exception],
    code: str,
    tls_server: POP3TestServer,
    client_ssl_context: ssl.SSLContext,
) -> None:
    setattr(tls_server.faults, fault, True)
    with pytest.raises(error) as caught:
        handler(
            tls_server, "tls", client_ssl_context, retry=RetryPolicy(max_retries=0)
        ).authenticate()
    assert getattr(caught.value, "enhanced_code", None) == code
    assert verbs(tls_server).count("AUTH") == 1 and "USER" not in verbs(tls_server)


def test_a_temporary_refusal_is_not_a_reason_to_fall_back(
    tls_server: POP3TestServer, client_ssl_context: ssl.SSLContext
) -> None:
    tls_server.faults.error_replies["AUTH"] = "-ERR [SYS/TEMP] try again later"
    with pytest.raises(POP3ResponseError) as caught:
        handler(
            tls_server, "tls", client_ssl_context, retry=RetryPolicy(max_retries=0)
        ).authenticate()
    assert not isinstance(caught.value, POP3AuthenticationError)
    assert caught.value.enhanced_code == "SYS/TEMP"
    assert verbs(tls_server).count("AUTH") == 1 and "USER" not in verbs(tls_server)


def test_a_pinned_mechanism_the_server_lacks_sends_nothing(
    tls_server: POP3TestServer, client_ssl_context: ssl.SSLContext
) -> None:
    tls_server.sasl_mechanisms = ("PLAIN",)
    with pytest.raises(NoMechanismError):
        handler(tls_server, "tls", client_ssl_context, auth_mechanism="SCRAM-SHA-1").authenticate()
    assert "AUTH" not in verbs(tls_server) and "USER" not in verbs(tls_server)


def test_external_logs_in_with_the_client_certificate(certs: TestCertificates) -> None:
    client_ca = trustme.CA()
    identity = "ada.example.org"
    server_context = certs.server_context()
    server_context.verify_mode = ssl.CERT_OPTIONAL
    client_ca.configure_trust(server_context)
    client_context = certs.client_context()
    client_ca.issue_cert(identity).configure_cert(client_context)
    with POP3TestServer(
        users={identity: "unused"},
        tls="implicit",
        ssl_context=server_context,
        sasl_mechanisms=("PLAIN", "EXTERNAL"),
    ) as server:
        pop3 = POP3ProtocolHandler(
            server.host,
            server.port,
            identity,
            encryption="ssl",
            timeout=5,
            ssl_context=client_context,
            auth_mechanism="EXTERNAL",
        )
        assert pop3.get_mailbox_stat() == (0, 0)
    assert server.logins == [(identity, "EXTERNAL")]
