"""Token providers for Google and Microsoft, against a local token endpoint over TLS.

Nothing here contacts a real provider: every provider is pointed at
:class:`TokenEndpointServer` on 127.0.0.1, with a certificate from the test CA. A
fake clock drives expiry. The last tests log in with the providers' tokens through
the SMTP and POP3 handlers, against the test servers that verify XOAUTH2.
"""

from __future__ import annotations

import logging
import os
import pickle
import signal
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlencode

import pytest
from fake_sleep import Sleeps

from src.handlers._auth.providers import (
    MICROSOFT_APP_SCOPE,
    MICROSOFT_POP_SCOPE,
    MICROSOFT_SMTP_SCOPE,
    MICROSOFT_TOKEN_URL,
    OAuth2TokenProvider,
    google_tokens,
    microsoft_app_tokens,
    microsoft_tokens,
)
from src.handlers._net.secret import Secret
from src.handlers.errors import (
    ConfigurationError,
    MailConnectionError,
    MailProtocolError,
    MailSecurityError,
    OAuth2EndpointError,
    OAuth2TokenError,
)
from src.handlers.pop3 import POP3ProtocolHandler
from src.handlers.retry import is_retryable
from src.handlers.smtp import SMTPConnectionPool, SMTPProtocolHandler
from src.testing.pop3_server import POP3TestServer
from src.testing.smtp_server import SMTPTestServer
from src.testing.tls import TestCertificates
from src.testing.token_endpoint import TokenEndpointServer

CLIENT_ID = "app-id.apps.example.test"
CLIENT_SECRET = "client-secret-Zq9"
REFRESH = "refresh-token-Xy7"
USER = "ada@example.org"

pytestmark = pytest.mark.filterwarnings(
    "ignore:This process .* is multi-threaded:DeprecationWarning"
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def endpoint(certs: TestCertificates) -> Iterator[TokenEndpointServer]:
    server = TokenEndpointServer(ssl_context=certs.server_context())
    server.add_client(CLIENT_ID, CLIENT_SECRET)
    server.add_refresh_token(REFRESH, client_id=CLIENT_ID)
    with server:
        yield server


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def google(
    endpoint: TokenEndpointServer, client_ssl_context: ssl.SSLContext, clock: FakeClock
) -> OAuth2TokenProvider:
    return google_tokens(
        CLIENT_ID,
        CLIENT_SECRET,
        REFRESH,
        account=USER,
        token_url=endpoint.url,
        ssl_context=client_ssl_context,
        clock=clock,
    )


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# -- the requests --------------------------------------------------------------------


def test_google_refresh_request_body(
    google: OAuth2TokenProvider, endpoint: TokenEndpointServer
) -> None:
    assert google() == "ya29.local-1"
    [request] = endpoint.requests
    assert request.path == "/token"
    assert request.content_type == "application/x-www-form-urlencoded"
    assert request.body == (
        b"grant_type=refresh_token&client_id=app-id.apps.example.test"
        b"&client_secret=client-secret-Zq9&refresh_token=refresh-token-Xy7"
    )


def test_microsoft_refresh_request_body(
    endpoint: TokenEndpointServer, client_ssl_context: ssl.SSLContext
) -> None:
    tokens = microsoft_tokens(
        CLIENT_ID,
        REFRESH,
        client_secret=CLIENT_SECRET,
        scopes=[MICROSOFT_SMTP_SCOPE, MICROSOFT_POP_SCOPE],
        token_url=endpoint.url,
        ssl_context=client_ssl_context,
    )
    assert tokens() == "ya29.local-1"
    expected = urlencode(
        {
            "grant_type": "refresh_token",
            "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET,
            "refresh_token": REFRESH,
            "scope": f"{MICROSOFT_SMTP_SCOPE} {MICROSOFT_POP_SCOPE} offline_access",
        }
    ).encode()
    assert endpoint.requests[0].body == expected


def test_microsoft_public_client_sends_no_secret(
    endpoint: TokenEndpointServer, client_ssl_context: ssl.SSLContext
) -> None:
    endpoint.add_client("public-app", None)
    endpoint.add_refresh_token("public-refresh", client_id="public-app")
    tokens = microsoft_tokens(
        "public-app", "public-refresh", token_url=endpoint.url, ssl_context=client_ssl_context
    )
    tokens()
    assert endpoint.requests[0].form == {
        "grant_type": "refresh_token",
        "client_id": "public-app",
        "refresh_token": "public-refresh",
        "scope": f"{MICROSOFT_SMTP_SCOPE} offline_access",
    }


def test_microsoft_client_credentials_request_body(
    endpoint: TokenEndpointServer, client_ssl_context: ssl.SSLContext
) -> None:
    tokens = microsoft_app_tokens(
        "contoso.example",
        CLIENT_ID,
        Secret(CLIENT_SECRET),
        token_url=endpoint.url,
        ssl_context=client_ssl_context,
    )
    assert tokens() == "ya29.local-1"
    assert (
        endpoint.requests[0].body
        == urlencode(
            {
                "grant_type": "client_credentials",
                "client_id": CLIENT_ID,
                "client_secret": CLIENT_SECRET,
                "scope": MICROSOFT_APP_SCOPE,
            }
        ).encode()
    )
    assert MICROSOFT_APP_SCOPE.endswith("/.default")


def test_microsoft_endpoint_is_per_tenant() -> None:
    # Built, never called: no request is made.
    tokens = microsoft_app_tokens("contoso.example", CLIENT_ID, CLIENT_SECRET)
    assert tokens.endpoint == MICROSOFT_TOKEN_URL.format(tenant="contoso.example")
    assert microsoft_tokens(CLIENT_ID, REFRESH, tenant="t-1").endpoint.endswith(
        "/t-1/oauth2/v2.0/token"
    )


# -- caching and refreshing ----------------------------------------------------------


def test_the_token_is_cached_until_shortly_before_expiry(
    google: OAuth2TokenProvider, endpoint: TokenEndpointServer, clock: FakeClock
) -> None:
    first = google()
    assert google() == first and len(endpoint.requests) == 1
    assert google.expires_in == 3599
    clock.now += 3599 - 60 - 1  # one second before the 60 s skew
    assert google() == first and len(endpoint.requests) == 1
    clock.now += 1
    second = google()
    assert second != first and len(endpoint.requests) == 2
    assert google.refreshes == 2


def test_refresh_skew_is_configurable_and_at_most_half_the_lifetime(
    endpoint: TokenEndpointServer, client_ssl_context: ssl.SSLContext, clock: FakeClock
) -> None:
    def provider(skew: float) -> OAuth2TokenProvider:
        return google_tokens(
            CLIENT_ID,
            CLIENT_SECRET,
            REFRESH,
            token_url=endpoint.url,
            ssl_context=client_ssl_context,
            clock=clock,
            refresh_skew=skew,
        )

    endpoint.expires_in = "100"  # as a string, as some endpoints send it
    early = provider(10)
    token = early()
    clock.now += 89
    assert early() == token
    clock.now += 1
    assert early() != token

    late = provider(600)  # more than the lifetime: refreshed at half of it instead
    token = late()
    clock.now += 49
    assert late() == token
    clock.now += 1
    assert late() != token


def test_invalidate_drops_the_refused_token_only(
    google: OAuth2TokenProvider, endpoint: TokenEndpointServer
) -> None:
    first = google()
    google.invalidate("some-older-token")
    assert google() == first
    google.invalidate(first)
    assert google.expires_in is None
    second = google()
    assert second != first and len(endpoint.requests) == 2
    google.invalidate(first)  # a late report about the old token changes nothing
    assert google() == second


def test_a_rotated_refresh_token_replaces_the_old_one(
    endpoint: TokenEndpointServer, client_ssl_context: ssl.SSLContext, clock: FakeClock
) -> None:
    endpoint.rotate_refresh_tokens = True
    stored: list[Secret] = []
    tokens = microsoft_tokens(
        CLIENT_ID,
        REFRESH,
        client_secret=CLIENT_SECRET,
        token_url=endpoint.url,
        ssl_context=client_ssl_context,
        clock=clock,
        on_refresh_token=stored.append,
    )
    tokens()
    clock.now += 4000
    tokens()  # the old refresh token is no longer valid at the endpoint
    assert [r.form["refresh_token"] for r in endpoint.requests] == [
        REFRESH,
        stored[0].reveal(),
    ]
    assert len(stored) == 2 and all(isinstance(s, Secret) for s in stored)


def test_a_failing_refresh_token_callback_does_not_lose_the_token(
    endpoint: TokenEndpointServer,
    client_ssl_context: ssl.SSLContext,
    caplog: pytest.LogCaptureFixture,
) -> None:
    endpoint.rotate_refresh_tokens = True

    def broken(token: Secret) -> None:
        raise OSError("disk full")

    tokens = microsoft_tokens(
        CLIENT_ID,
        REFRESH,
        client_secret=CLIENT_SECRET,
        token_url=endpoint.url,
        ssl_context=client_ssl_context,
        on_refresh_token=broken,
    )
    with caplog.at_level(logging.WARNING):
        assert tokens() == "ya29.local-2"
    assert "on_refresh_token for the account raised OSError" in caplog.text


# -- threads and processes -----------------------------------------------------------


def test_many_threads_one_refresh(
    google: OAuth2TokenProvider, endpoint: TokenEndpointServer
) -> None:
    endpoint.delay = 0.3
    barrier = threading.Barrier(8)
    results: list[str] = []

    def worker() -> None:
        barrier.wait(5)
        results.append(google())

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert results == ["ya29.local-1"] * 8
    assert len(endpoint.requests) == 1


def test_threads_waiting_on_a_failed_refresh_get_its_error(
    google: OAuth2TokenProvider, endpoint: TokenEndpointServer
) -> None:
    endpoint.delay = 0.3
    endpoint.fail_next(503, {"error": "server_error"})
    barrier = threading.Barrier(4)
    errors: list[BaseException] = []

    def worker() -> None:
        barrier.wait(5)
        try:
            google()
        except OAuth2EndpointError as error:
            errors.append(error)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert len(errors) == 4 and len({id(e) for e in errors}) == 4
    assert all(e.status == 503 for e in errors)  # type: ignore[attr-defined]
    assert len(endpoint.requests) == 1
    endpoint.delay = 0
    assert google() == "ya29.local-1"  # the next call tries again


def test_waiting_for_another_threads_refresh_is_bounded(
    endpoint: TokenEndpointServer, client_ssl_context: ssl.SSLContext
) -> None:
    tokens = google_tokens(
        CLIENT_ID,
        CLIENT_SECRET,
        REFRESH,
        token_url=endpoint.url,
        ssl_context=client_ssl_context,
        wait_timeout=0.2,
    )
    endpoint.delay = 1.0
    first = threading.Thread(target=tokens)
    first.start()
    try:
        for _ in range(100):  # until the first thread is refreshing
            if endpoint.requests:
                break
            threading.Event().wait(0.01)
        with pytest.raises(OAuth2EndpointError, match=r"gave up waiting 0\.2s"):
            tokens()
    finally:
        first.join(5)


def in_child(work: Callable[[], str]) -> str:
    """Run ``work`` in a forked child; return what it reported."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(read_end)
            signal.alarm(10)
            try:
                report = work()
            except BaseException as error:
                report = f"raised {type(error).__name__}: {error}"
            os.write(write_end, report.encode("utf-8", "replace"))
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        report = pipe.read().decode("utf-8", "replace")
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    return report


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_forgets_the_token_and_the_lock(
    google: OAuth2TokenProvider, endpoint: TokenEndpointServer
) -> None:
    parent_token = google()
    with google._lock:  # another thread is inside the provider at fork time
        child_token = in_child(google)
    assert child_token.startswith("ya29.local-") and child_token != parent_token
    assert len(endpoint.requests) == 2
    assert google() == parent_token  # the parent's cache is untouched


# -- errors --------------------------------------------------------------------------


def _no_secrets(error: BaseException) -> None:
    shown = f"{error} {error!r} {error.args!r} {vars(error)!r}"
    for secret in (CLIENT_SECRET, REFRESH, "ya29.local-"):
        assert secret not in shown


def test_a_revoked_refresh_token_is_a_permanent_authentication_error(
    google: OAuth2TokenProvider, endpoint: TokenEndpointServer
) -> None:
    endpoint.revoke(REFRESH)
    with pytest.raises(OAuth2TokenError) as caught:
        google()
    error = caught.value
    assert (error.provider, error.error, error.status) == ("Google", "invalid_grant", 400)
    assert str(error) == (
        "Google token endpoint refused the grant: invalid_grant "
        "(the refresh token is invalid, expired or revoked)"
    )
    assert error.code is None and not is_retryable(error)
    _no_secrets(error)
    assert pickle.loads(pickle.dumps(error)).error == "invalid_grant"


def test_a_wrong_client_secret(
    endpoint: TokenEndpointServer, client_ssl_context: ssl.SSLContext
) -> None:
    tokens = microsoft_app_tokens(
        "contoso.example",
        CLIENT_ID,
        "not-the-secret",
        token_url=endpoint.url,
        ssl_context=client_ssl_context,
    )
    with pytest.raises(OAuth2TokenError) as caught:
        tokens()
    assert (caught.value.error, caught.value.status) == ("invalid_client", 401)
    assert "not-the-secret" not in str(caught.value)


def test_a_description_that_echoes_a_secret_is_masked(
    google: OAuth2TokenProvider, endpoint: TokenEndpointServer
) -> None:
    endpoint.fail_next(
        400, {"error": "invalid_grant", "error_description": f"token {REFRESH} is revoked"}
    )
    with pytest.raises(OAuth2TokenError) as caught:
        google()
    assert caught.value.description == "token *** is revoked"
    _no_secrets(caught.value)


@pytest.mark.parametrize(
    ("status", "reply"),
    [
        (503, {"error": "server_error"}),
        (500, b"<html>oops</html>"),
        (429, {"error": "slow_down"}),
        (400, {"error": "temporarily_unavailable"}),
    ],
)
def test_endpoint_trouble_is_a_retryable_connection_error(
    google: OAuth2TokenProvider,
    endpoint: TokenEndpointServer,
    status: int,
    reply: dict[str, Any] | bytes,
) -> None:
    endpoint.fail_next(status, reply)
    with pytest.raises(OAuth2EndpointError) as caught:
        google()
    assert caught.value.status == status and caught.value.endpoint == endpoint.url
    assert is_retryable(caught.value)
    _no_secrets(caught.value)


def test_an_unreachable_endpoint(client_ssl_context: ssl.SSLContext) -> None:
    url = f"https://127.0.0.1:{_closed_port()}/token"
    tokens = google_tokens(CLIENT_ID, CLIENT_SECRET, REFRESH, token_url=url, timeout=2)
    with pytest.raises(OAuth2EndpointError, match="could not get a token from the Google") as e:
        tokens()
    assert e.value.status is None and is_retryable(e.value)
    assert e.value.__cause__ is None
    _no_secrets(e.value)


def test_a_slow_endpoint_times_out(
    endpoint: TokenEndpointServer, client_ssl_context: ssl.SSLContext
) -> None:
    endpoint.delay = 1.0
    tokens = google_tokens(
        CLIENT_ID,
        CLIENT_SECRET,
        REFRESH,
        token_url=endpoint.url,
        ssl_context=client_ssl_context,
        timeout=0.2,
    )
    with pytest.raises(OAuth2EndpointError, match="timed out"):
        tokens()


def test_an_untrusted_endpoint_certificate(endpoint: TokenEndpointServer) -> None:
    # No ssl_context: the shared default context, which does not trust the test CA.
    tokens = google_tokens(CLIENT_ID, CLIENT_SECRET, REFRESH, token_url=endpoint.url)
    with pytest.raises(MailSecurityError, match="could not be verified"):
        tokens()
    assert endpoint.requests == []


@pytest.mark.parametrize(
    "reply",
    [
        b"not json",
        {"token_type": "Bearer", "expires_in": 3600},
        {"access_token": "has space", "token_type": "Bearer"},
        {"access_token": "mac-token", "token_type": "mac"},
    ],
)
def test_a_malformed_success_is_a_protocol_error(
    google: OAuth2TokenProvider, endpoint: TokenEndpointServer, reply: dict[str, Any] | bytes
) -> None:
    endpoint.fail_next(200, reply)
    with pytest.raises(MailProtocolError):
        google()


def test_secrets_stay_out_of_repr_logs_and_pickles(
    google: OAuth2TokenProvider, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG, logger="src.handlers"):
        token = google()
        google.invalidate(token)
        google()
    text = caplog.text + repr(google) + repr(vars(google))
    for secret in (CLIENT_SECRET, REFRESH, token):
        assert secret not in text
    assert "refreshed" in caplog.text
    assert repr(google) == (
        "<OAuth2TokenProvider Google refresh_token account='ada@example.org' token=cached>"
    )
    with pytest.raises(TypeError):
        pickle.dumps(google)


@pytest.mark.parametrize(
    ("build", "field"),
    [
        (
            lambda: google_tokens(CLIENT_ID, CLIENT_SECRET, REFRESH, token_url="http://x/t"),
            "token_url",
        ),
        (lambda: google_tokens(CLIENT_ID, "", REFRESH), "client_secret"),
        (lambda: google_tokens(CLIENT_ID, CLIENT_SECRET, Secret("")), "refresh_token"),
        (lambda: google_tokens(" ", CLIENT_SECRET, REFRESH), "client_id"),
        (lambda: google_tokens(CLIENT_ID, CLIENT_SECRET, REFRESH, refresh_skew=-1), "refresh_skew"),
        (lambda: google_tokens(CLIENT_ID, CLIENT_SECRET, REFRESH, timeout=0), "timeout"),
        (lambda: microsoft_app_tokens("common", CLIENT_ID, CLIENT_SECRET), "tenant"),
        (lambda: microsoft_tokens(CLIENT_ID, REFRESH, tenant="a/b"), "tenant"),
        (lambda: microsoft_tokens(CLIENT_ID, REFRESH, scopes=[]), "scopes"),
    ],
)
def test_bad_settings_are_refused_at_once(build: Callable[[], object], field: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        build()
    assert caught.value.field == field
    assert CLIENT_SECRET not in str(caught.value)


# -- end to end: the handlers log in with the providers' tokens ----------------------


def test_smtp_handler_logs_in_and_recovers_from_a_refused_token(
    certs: TestCertificates, client_ssl_context: ssl.SSLContext
) -> None:
    smtp = SMTPTestServer(
        tls="starttls", ssl_context=certs.server_context(), oauth2_tokens={USER: "none-yet"}
    )
    assert smtp.oauth2 is not None
    verifier = smtp.oauth2
    with (
        TokenEndpointServer(
            ssl_context=certs.server_context(),
            on_issue=lambda token, grant: verifier.tokens.__setitem__(USER, token),
        ) as endpoint,
        smtp,
    ):
        endpoint.add_client(CLIENT_ID, CLIENT_SECRET)
        endpoint.add_refresh_token(REFRESH, client_id=CLIENT_ID)
        tokens = microsoft_tokens(
            CLIENT_ID,
            REFRESH,
            client_secret=CLIENT_SECRET,
            token_url=endpoint.url,
            ssl_context=client_ssl_context,
        )
        mailer = SMTPProtocolHandler(
            smtp.host,
            smtp.port,
            USER,
            encryption="tls",
            oauth2_token=tokens,
            pool=SMTPConnectionPool(),
            ssl_context=client_ssl_context,
        )
        try:
            assert mailer.send_message(["bob@example.com"], "1", text_body="first").success
            verifier.expire("ya29.local-1")  # the server stops accepting it early
            mailer.close()
            result = mailer.send_message(["bob@example.com"], "2", text_body="second")
            assert result.success, result.smtp_error
        finally:
            mailer.close()
        assert endpoint.issued == ["ya29.local-1", "ya29.local-2"]
        assert [a.status for a in verifier.attempts] == [None, "401", None]
        assert len(smtp.messages) == 2


def test_pop3_handler_logs_in_with_client_credentials(
    certs: TestCertificates, client_ssl_context: ssl.SSLContext
) -> None:
    pop3 = POP3TestServer(
        tls="implicit", ssl_context=certs.server_context(), oauth2_tokens={USER: "none-yet"}
    )
    assert pop3.oauth2 is not None
    verifier = pop3.oauth2
    with (
        TokenEndpointServer(
            ssl_context=certs.server_context(),
            on_issue=lambda token, grant: verifier.tokens.__setitem__(USER, token),
        ) as endpoint,
        pop3,
    ):
        pop3.add_message(b"From: bob@example.com\r\nSubject: Hi\r\n\r\nHello\r\n", user=USER)
        endpoint.add_client(CLIENT_ID, CLIENT_SECRET)
        tokens = microsoft_app_tokens(
            "contoso.example",
            CLIENT_ID,
            CLIENT_SECRET,
            token_url=endpoint.url,
            ssl_context=client_ssl_context,
        )
        inbox = POP3ProtocolHandler(
            pop3.host,
            pop3.port,
            USER,
            encryption="ssl",
            oauth2_token=tokens,
            ssl_context=client_ssl_context,
        )
        assert inbox.get_mailbox_stat()[0] == 1
        assert endpoint.requests[0].form["grant_type"] == "client_credentials"
        assert verifier.attempts[-1].accepted


def test_a_revoked_grant_fails_the_login_without_retrying(
    certs: TestCertificates, client_ssl_context: ssl.SSLContext
) -> None:
    with (
        TokenEndpointServer(ssl_context=certs.server_context()) as endpoint,
        SMTPTestServer(
            tls="starttls", ssl_context=certs.server_context(), oauth2_tokens={USER: "x"}
        ) as smtp,
    ):
        endpoint.add_client(CLIENT_ID, CLIENT_SECRET)  # REFRESH was never issued
        tokens = google_tokens(
            CLIENT_ID,
            CLIENT_SECRET,
            REFRESH,
            token_url=endpoint.url,
            ssl_context=client_ssl_context,
        )
        mailer = SMTPProtocolHandler(
            smtp.host,
            smtp.port,
            USER,
            encryption="tls",
            oauth2_token=tokens,
            pool=SMTPConnectionPool(),
            ssl_context=client_ssl_context,
        )
        try:
            result = mailer.send_message(["bob@example.com"], "1", text_body="first")
        finally:
            mailer.close()
        assert not result.success and not result.is_retryable
        assert len(endpoint.requests) == 1
        assert REFRESH not in str(result.to_dict()) and CLIENT_SECRET not in str(result.to_dict())


def test_an_unreachable_token_endpoint_is_retried_by_the_smtp_handler(
    certs: TestCertificates, client_ssl_context: ssl.SSLContext, sleeps: Sleeps
) -> None:
    smtp = SMTPTestServer(
        tls="starttls", ssl_context=certs.server_context(), oauth2_tokens={USER: "none-yet"}
    )
    assert smtp.oauth2 is not None
    verifier = smtp.oauth2
    with (
        TokenEndpointServer(
            ssl_context=certs.server_context(),
            on_issue=lambda token, grant: verifier.tokens.__setitem__(USER, token),
        ) as endpoint,
        smtp,
    ):
        endpoint.add_client(CLIENT_ID, CLIENT_SECRET)
        endpoint.add_refresh_token(REFRESH, client_id=CLIENT_ID)
        endpoint.fail_next(503, {"error": "server_error"})
        tokens = google_tokens(
            CLIENT_ID,
            CLIENT_SECRET,
            REFRESH,
            token_url=endpoint.url,
            ssl_context=client_ssl_context,
        )
        mailer = SMTPProtocolHandler(
            smtp.host,
            smtp.port,
            USER,
            encryption="tls",
            oauth2_token=tokens,
            pool=SMTPConnectionPool(),
            ssl_context=client_ssl_context,
            sleep=sleeps,
        )
        try:
            result = mailer.send_message(["bob@example.com"], "1", text_body="first")
        finally:
            mailer.close()
        assert result.success and result.retry_count == 1
        assert len(sleeps) == 1 and len(endpoint.requests) == 2


def test_an_unreachable_token_endpoint_reaches_the_pop3_caller_as_a_connection_error(
    certs: TestCertificates, client_ssl_context: ssl.SSLContext, sleeps: Sleeps
) -> None:
    url = f"https://127.0.0.1:{_closed_port()}/token"
    tokens = google_tokens(
        CLIENT_ID, CLIENT_SECRET, REFRESH, token_url=url, ssl_context=client_ssl_context
    )
    with POP3TestServer(
        tls="implicit", ssl_context=certs.server_context(), oauth2_tokens={USER: "x"}
    ) as pop3:
        inbox = POP3ProtocolHandler(
            pop3.host,
            pop3.port,
            USER,
            encryption="ssl",
            oauth2_token=tokens,
            ssl_context=client_ssl_context,
            sleep=sleeps,
        )
        with pytest.raises(MailConnectionError) as caught:
            inbox.get_mailbox_stat()
        assert is_retryable(caught.value)
        assert len(sleeps) >= 1  # the handler's own retries ran
        assert CLIENT_SECRET not in str(caught.value) and REFRESH not in str(caught.value)


def test_an_unreachable_endpoint_near_expiry_keeps_the_current_token(
    google: OAuth2TokenProvider,
    endpoint: TokenEndpointServer,
    clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    first = google()
    clock.now += 3599 - 30  # inside the 60 s skew, not expired yet
    endpoint.fail_next(503, {"error": "server_error"})
    with caplog.at_level(logging.WARNING):
        assert google() == first
    assert "using the current access token for ada@example.org" in caplog.text
    endpoint.fail_next(400, {"error": "invalid_grant"})
    with pytest.raises(OAuth2TokenError):  # a dead grant is reported at once
        google()
    clock.now += 30  # now expired
    endpoint.fail_next(503, {"error": "server_error"})
    with pytest.raises(OAuth2EndpointError):
        google()
    assert google() != first  # the endpoint is back
