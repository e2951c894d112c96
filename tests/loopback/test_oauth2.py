"""OAuth2 (SASL XOAUTH2) logins for SMTP and POP3.

Pure checks of the client response, the error challenge and token handling come
first; then both handlers log in against the in-process test servers, which verify
the mechanism (one step and two), refuse bad or expired tokens with the error
challenge, and record every attempt. Scripted servers pin the exact lines on the
wire where the order of the exchange matters.
"""

from __future__ import annotations

import base64
import json
import logging
import pickle
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from leaks import xoauth2_response

from src.handlers._auth.credentials import Credentials
from src.handlers._auth.oauth2 import TokenSource
from src.handlers._net.config import Endpoint
from src.handlers._smtp.settings import ConnectionKey, SessionSettings
from src.handlers.errors import (
    MailAuthenticationError,
    MailValidationError,
    POP3AuthenticationError,
)
from src.handlers.pop3 import POP3ConnectionPool, POP3ProtocolHandler
from src.handlers.retry import RetryPolicy
from src.handlers.smtp import (
    SMTPConnectionPool,
    SMTPDeliveryStatus,
    SMTPEncryption,
    SMTPProtocolHandler,
)
from src.testing.pop3_server import POP3TestServer
from src.testing.scripted_server import Conversation, ScriptedServer
from src.testing.smtp_server import SMTPTestServer

USER = "alice@example.com"
TOKEN = "token-abc.123"
FRESH = "token-fresh.456"
WRONG = "token-wrong.789"
# Long enough that "AUTH XOAUTH2 <base64>" exceeds SMTP's 512 octets (and POP3's 255).
LONG_TOKEN = "eyJ0eXAiOiJKV1Qi." + "x" * 440
MESSAGE = b"From: a@example.com\r\nSubject: hi\r\n\r\nbody\r\n"
ERROR_JSON = {"status": "401", "schemes": "Bearer", "scope": "https://mail.google.com/"}


class Provider:
    """A token provider that hands out ``tokens`` in turn and counts its calls."""

    def __init__(self, *tokens: str) -> None:
        self.tokens = list(tokens)
        self.calls = 0

    def __call__(self) -> str:
        token = self.tokens[min(self.calls, len(self.tokens) - 1)]
        self.calls += 1
        return token


class CachingProvider:
    """Like google-auth or MSAL: the cached token until told that it was refused."""

    def __init__(self, *tokens: str) -> None:
        self.tokens = list(tokens)
        self.calls = 0
        self.invalidated: list[str] = []

    def __call__(self) -> str:
        self.calls += 1
        return self.tokens[0]

    def invalidate(self, token: str) -> None:
        self.invalidated.append(token)
        if self.tokens[0] == token and len(self.tokens) > 1:
            self.tokens.pop(0)


def secret_forms(*tokens: str) -> list[str]:
    """Every form in which a token could leak: as is, and in the base64 response."""
    return [form for token in tokens for form in (token, xoauth2_response(USER, token))]


def assert_hidden(text: str, *tokens: str) -> None:
    for form in secret_forms(*tokens):
        assert form not in text


def test_token_source_never_shows_the_token() -> None:
    source = TokenSource(TOKEN)
    assert TOKEN not in repr(source) and TOKEN not in str(source)
    assert TOKEN not in repr(source.pool_identity())
    with pytest.raises(TypeError):
        pickle.dumps(source)
    assert not source.refreshable and TokenSource(Provider(TOKEN)).refreshable


@pytest.mark.parametrize("bad", ["", "two words", "line\r\nbreak", "soh\x01", "tökén", 42])
def test_unusable_tokens_are_refused_up_front(bad: Any) -> None:
    with pytest.raises(ValueError):
        TokenSource(bad)


def test_pool_key_tells_tokens_apart_but_not_a_providers_refreshes() -> None:
    def key(token: Any) -> ConnectionKey:
        endpoint = Endpoint("smtp.example.com", 587, SMTPEncryption.STARTTLS)
        return ConnectionKey.of(SessionSettings(endpoint, Credentials.of(USER, None, token)))

    class Vault:
        def token(self) -> str:
            return TOKEN

    creds = Vault()
    assert key(TOKEN) == key(TOKEN) and key(TOKEN) != key(WRONG)
    provider = Provider(TOKEN, FRESH)
    assert key(provider) == key(provider)  # whatever token it returns next
    assert key(creds.token) == key(creds.token)  # bound methods of one object
    assert key(Provider(TOKEN)) != key(Provider(TOKEN))
    assert key(provider) != key(TOKEN)
    assert TOKEN not in repr(key(TOKEN))


def test_handlers_check_the_credentials_pairing() -> None:
    with pytest.raises(ValueError, match="either password or oauth2_token"):
        SMTPProtocolHandler("127.0.0.1", 25, USER, "pw", oauth2_token=TOKEN)
    with pytest.raises(ValueError, match="username"):
        SMTPProtocolHandler("127.0.0.1", 25, None, oauth2_token=TOKEN)
    with pytest.raises(MailValidationError, match="either password or oauth2_token"):
        POP3ProtocolHandler("127.0.0.1", 995, USER, "pw", oauth2_token=TOKEN)
    with pytest.raises(MailValidationError, match="password is required"):
        POP3ProtocolHandler("127.0.0.1", 995, USER)
    with pytest.raises(MailValidationError, match="ASCII"):
        POP3ProtocolHandler("127.0.0.1", 995, "ålice@example.com", oauth2_token=TOKEN)
    handler = POP3ProtocolHandler("127.0.0.1", 995, USER, oauth2_token=TOKEN)
    with pytest.raises(MailValidationError, match="takes no password"):
        handler.authenticate(password="pw")
    assert TOKEN not in repr(handler) and TOKEN not in repr(vars(handler))


# ==================================================================================
# SMTP against the test server
# ==================================================================================


@pytest.fixture
def smtp_server() -> Iterator[SMTPTestServer]:
    with SMTPTestServer(oauth2_tokens={USER: TOKEN}, auth_require_tls=False) as server:
        yield server


@pytest.fixture
def smtp_handler(
    smtp_server: SMTPTestServer,
) -> Iterator[Callable[..., SMTPProtocolHandler]]:
    pools: list[SMTPConnectionPool] = []

    def make(token: Any, **options: Any) -> SMTPProtocolHandler:
        pool = options.pop("pool", None) or SMTPConnectionPool()
        pools.append(pool)
        return SMTPProtocolHandler(
            smtp_server.host,
            smtp_server.port,
            USER,
            encryption="none",
            allow_cleartext=True,
            oauth2_token=token,
            pool=pool,
            sleep=lambda _: pytest.fail("an authentication failure must not be retried"),
            **options,
        )

    yield make
    for pool in pools:
        pool.close_all()


def send(handler: SMTPProtocolHandler) -> Any:
    return handler.send_message(["bob@example.com"], "hello", text_body="body")


def test_smtp_one_step_login(smtp_server: SMTPTestServer, smtp_handler: Any) -> None:
    result = send(smtp_handler(TOKEN))
    assert result.status is SMTPDeliveryStatus.SUCCESS
    [attempt] = smtp_server.oauth2.attempts  # type: ignore[union-attr]
    assert attempt.one_step and attempt.accepted and attempt.username == USER
    [message] = smtp_server.wait_for_messages(1)
    assert message.username == USER


def test_smtp_two_step_login(smtp_server: SMTPTestServer, smtp_handler: Any) -> None:
    result = send(smtp_handler(TOKEN, oauth2_initial_response=False))
    assert result.status is SMTPDeliveryStatus.SUCCESS
    [attempt] = smtp_server.oauth2.attempts  # type: ignore[union-attr]
    assert not attempt.one_step and attempt.accepted


def test_smtp_token_too_long_for_the_auth_line_goes_in_two_steps(
    smtp_server: SMTPTestServer, smtp_handler: Any
) -> None:
    # The server refuses command lines over 512 octets, so one step would fail here.
    smtp_server.oauth2.tokens[USER] = LONG_TOKEN  # type: ignore[union-attr]
    assert send(smtp_handler(LONG_TOKEN)).status is SMTPDeliveryStatus.SUCCESS
    [attempt] = smtp_server.oauth2.attempts  # type: ignore[union-attr]
    assert not attempt.one_step and attempt.accepted


def test_smtp_refused_static_token_fails_once_without_the_token_anywhere(
    smtp_server: SMTPTestServer, smtp_handler: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    handler = smtp_handler(WRONG)
    result = send(handler)
    assert result.status is SMTPDeliveryStatus.FAILED
    assert result.smtp_code == 535 and not result.is_retryable and result.retry_count == 0
    assert result.smtp_error is not None and "XOAUTH2: status 401" in result.smtp_error
    [attempt] = smtp_server.oauth2.attempts  # type: ignore[union-attr]
    assert attempt.status == "401"
    for text in (str(result.to_dict()), repr(result), repr(handler), handler.last_error or ""):
        assert_hidden(text, WRONG)
    assert_hidden(caplog.text, WRONG)
    assert not smtp_server.messages


def test_smtp_provider_is_asked_again_once_after_an_expired_token(
    smtp_server: SMTPTestServer, smtp_handler: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    smtp_server.oauth2.expire(TOKEN)  # type: ignore[union-attr]
    smtp_server.oauth2.tokens[USER] = FRESH  # type: ignore[union-attr]
    provider = Provider(TOKEN, FRESH)
    assert send(smtp_handler(provider)).status is SMTPDeliveryStatus.SUCCESS
    assert provider.calls == 2
    statuses = [a.status for a in smtp_server.oauth2.attempts]  # type: ignore[union-attr]
    assert statuses == ["401", None]
    assert smtp_server.sessions == 1  # both attempts on one connection
    assert_hidden(caplog.text, TOKEN, FRESH)


def test_smtp_caching_provider_hears_of_the_refusal_before_it_is_asked_again(
    smtp_server: SMTPTestServer, smtp_handler: Any
) -> None:
    smtp_server.oauth2.expire(TOKEN)  # type: ignore[union-attr]
    smtp_server.oauth2.tokens[USER] = FRESH  # type: ignore[union-attr]
    provider = CachingProvider(TOKEN, FRESH)
    assert send(smtp_handler(provider)).status is SMTPDeliveryStatus.SUCCESS
    assert provider.invalidated == [TOKEN] and provider.calls == 2


def test_smtp_failing_invalidate_is_an_authentication_failure(
    smtp_server: SMTPTestServer, smtp_handler: Any
) -> None:
    class Broken(CachingProvider):
        def invalidate(self, token: str) -> None:
            raise KeyError(token)

    result = send(smtp_handler(Broken(WRONG, FRESH)))
    assert result.status is SMTPDeliveryStatus.FAILED
    assert result.smtp_error is not None and "invalidate() raised KeyError" in result.smtp_error
    assert WRONG not in result.smtp_error


def test_smtp_provider_gets_one_retry_only(smtp_server: SMTPTestServer, smtp_handler: Any) -> None:
    provider = Provider(WRONG, "token-also-wrong", FRESH)
    result = send(smtp_handler(provider))
    assert result.status is SMTPDeliveryStatus.FAILED and result.smtp_code == 535
    assert provider.calls == 2
    assert len(smtp_server.oauth2.attempts) == 2  # type: ignore[union-attr]


def test_smtp_provider_returning_the_same_token_is_not_retried(
    smtp_server: SMTPTestServer, smtp_handler: Any
) -> None:
    provider = Provider(WRONG)
    assert send(smtp_handler(provider)).status is SMTPDeliveryStatus.FAILED
    assert provider.calls == 2
    assert len(smtp_server.oauth2.attempts) == 1  # type: ignore[union-attr]


def test_smtp_failing_provider_is_an_authentication_failure(
    smtp_server: SMTPTestServer, smtp_handler: Any
) -> None:
    def broken() -> str:
        raise RuntimeError(f"refresh failed for {TOKEN}")

    result = send(smtp_handler(broken))
    assert result.status is SMTPDeliveryStatus.FAILED and not result.is_retryable
    assert result.smtp_error is not None and "RuntimeError" in result.smtp_error
    assert TOKEN not in result.smtp_error
    assert not smtp_server.oauth2.attempts  # type: ignore[union-attr]


def test_smtp_pool_shares_a_providers_connections_but_not_another_tokens(
    smtp_server: SMTPTestServer, smtp_handler: Any
) -> None:
    pool = SMTPConnectionPool()
    provider = Provider(TOKEN, "token-not-used-yet")
    assert send(smtp_handler(provider, pool=pool)).status is SMTPDeliveryStatus.SUCCESS
    # A new handler with the same provider reuses the logged-in connection.
    assert send(smtp_handler(provider, pool=pool)).status is SMTPDeliveryStatus.SUCCESS
    assert provider.calls == 1 and pool.get_stats()["reused"] == 1
    # A wrong token for the same user must not ride on that connection.
    assert send(smtp_handler(WRONG, pool=pool)).status is SMTPDeliveryStatus.FAILED


def test_smtp_server_without_xoauth2_is_refused_clearly() -> None:
    with SMTPTestServer(users={USER: "pw"}, auth_require_tls=False) as server:
        pool = SMTPConnectionPool()
        handler = SMTPProtocolHandler(
            server.host, server.port, USER, encryption="none", oauth2_token=TOKEN, pool=pool
        )
        assert not handler.connect()
        assert handler.last_error is not None and "XOAUTH2" in handler.last_error
        pool.close_all()


def test_smtp_error_challenge_is_answered_with_an_empty_line() -> None:
    challenge = base64.b64encode(json.dumps(ERROR_JSON).encode()).decode()

    def gmail_like(conv: Conversation) -> None:
        conv.send("220 scripted ESMTP")
        conv.recv_line()  # EHLO
        conv.send("250-scripted\r\n250 AUTH XOAUTH2")
        conv.recv_line()  # AUTH XOAUTH2 <response>
        conv.send(f"334 {challenge}")
        conv.recv_line()  # the answer
        conv.send("535-5.7.8 Username and Password not accepted.\r\n535 5.7.8 Learn more")
        conv.wait_closed()

    with ScriptedServer(gmail_like) as server:
        pool = SMTPConnectionPool()
        handler = SMTPProtocolHandler(
            *server.address,
            USER,
            encryption="none",
            oauth2_token=WRONG,
            pool=pool,
            allow_cleartext=True,
        )
        assert not handler.authenticate()
        [conv] = server.wait_for_connections(1)
        server.join()
        pool.close_all()
    assert handler.last_error is not None and "status 401" in handler.last_error
    auth, answer = conv.received[1:3]
    assert auth == f"AUTH XOAUTH2 {xoauth2_response(USER, WRONG)}\r\n".encode()
    assert answer == b"\r\n"
    assert not server.errors


# ==================================================================================
# POP3 against the test server
# ==================================================================================


@pytest.fixture
def pop3_server() -> Iterator[POP3TestServer]:
    with POP3TestServer(oauth2_tokens={USER: TOKEN}) as server:
        server.add_message(MESSAGE, user=USER)
        yield server
        assert not server.errors


def pop3_handler(server: POP3TestServer, token: Any, **options: Any) -> POP3ProtocolHandler:
    return POP3ProtocolHandler(
        server.host,
        server.port,
        USER,
        encryption="none",
        oauth2_token=token,
        retry=RetryPolicy(max_retries=2, delays=(0.0,)),
        **options,
    )


def test_pop3_one_step_login(pop3_server: POP3TestServer) -> None:
    assert pop3_handler(pop3_server, TOKEN).get_mailbox_stat()[0] == 1
    [attempt] = pop3_server.oauth2.attempts  # type: ignore[union-attr]
    assert attempt.one_step and attempt.accepted
    assert pop3_server.commands[:2] == ["CAPA", "AUTH XOAUTH2 ***"]


def test_pop3_two_step_login(pop3_server: POP3TestServer) -> None:
    handler = pop3_handler(pop3_server, TOKEN, oauth2_initial_response=False)
    assert handler.get_mailbox_stat()[0] == 1
    [attempt] = pop3_server.oauth2.attempts  # type: ignore[union-attr]
    assert not attempt.one_step and attempt.accepted
    assert pop3_server.commands[:2] == ["CAPA", "AUTH XOAUTH2"]


def test_pop3_auth_line_over_255_octets_goes_in_two_steps(pop3_server: POP3TestServer) -> None:
    token = "t" * 200  # short for SMTP, too long for a POP3 AUTH line
    line = f"AUTH XOAUTH2 {xoauth2_response(USER, token)}\r\n"
    assert 255 < len(line) <= 512  # fits SMTP's command line (RFC 4954), not POP3's (RFC 5034)
    pop3_server.oauth2.tokens[USER] = token  # type: ignore[union-attr]
    assert pop3_handler(pop3_server, token).get_mailbox_stat()[0] == 1
    [attempt] = pop3_server.oauth2.attempts  # type: ignore[union-attr]
    assert not attempt.one_step and attempt.accepted


def test_pop3_refused_static_token_raises_once_without_the_token_anywhere(
    pop3_server: POP3TestServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    handler = pop3_handler(pop3_server, WRONG)
    with pytest.raises(POP3AuthenticationError) as caught:
        handler.list_messages()
    error = caught.value
    assert isinstance(error, MailAuthenticationError)
    assert "XOAUTH2: status 401" in str(error) and error.enhanced_code == "AUTH"
    assert pop3_server.sessions_started == 1  # not retried by the connect policy either
    [attempt] = pop3_server.oauth2.attempts  # type: ignore[union-attr]
    assert attempt.status == "401"
    assert error.__cause__ is None and error.__context__ is None
    for text in (str(error), repr(error), repr(handler), caplog.text):
        assert_hidden(text, WRONG)


def test_pop3_session_stays_open_after_a_refused_token(pop3_server: POP3TestServer) -> None:
    handler = pop3_handler(pop3_server, WRONG)
    with handler:
        with pytest.raises(POP3AuthenticationError):
            handler.authenticate()
        assert handler.state == "connected"


def test_pop3_provider_is_asked_again_once_after_an_expired_token(
    pop3_server: POP3TestServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    pop3_server.oauth2.expire(TOKEN)  # type: ignore[union-attr]
    pop3_server.oauth2.tokens[USER] = FRESH  # type: ignore[union-attr]
    provider = Provider(TOKEN, FRESH)
    assert pop3_handler(pop3_server, provider).get_mailbox_stat()[0] == 1
    assert provider.calls == 2
    statuses = [a.status for a in pop3_server.oauth2.attempts]  # type: ignore[union-attr]
    assert statuses == ["401", None]
    assert pop3_server.sessions_started == 1
    assert_hidden(caplog.text, TOKEN, FRESH)


def test_pop3_caching_provider_hears_of_the_refusal(pop3_server: POP3TestServer) -> None:
    pop3_server.oauth2.expire(TOKEN)  # type: ignore[union-attr]
    pop3_server.oauth2.tokens[USER] = FRESH  # type: ignore[union-attr]
    provider = CachingProvider(TOKEN, FRESH)
    assert pop3_handler(pop3_server, provider).get_mailbox_stat()[0] == 1
    assert provider.invalidated == [TOKEN] and provider.calls == 2


def test_pop3_provider_gets_one_retry_only(pop3_server: POP3TestServer) -> None:
    provider = Provider(WRONG, "token-also-wrong", FRESH)
    with pytest.raises(POP3AuthenticationError):
        pop3_handler(pop3_server, provider).get_mailbox_stat()
    assert provider.calls == 2
    assert len(pop3_server.oauth2.attempts) == 2  # type: ignore[union-attr]


def test_pop3_failing_provider_is_an_authentication_failure(pop3_server: POP3TestServer) -> None:
    def broken() -> str:
        raise OSError(f"no network to refresh {TOKEN}")

    with pytest.raises(POP3AuthenticationError, match="OSError") as caught:
        pop3_handler(pop3_server, broken).get_mailbox_stat()
    assert TOKEN not in str(caught.value)
    assert pop3_server.sessions_started == 1


def test_pop3_pool_passes_the_token_through(pop3_server: POP3TestServer) -> None:
    provider = Provider(TOKEN)
    with POP3ConnectionPool(
        pop3_server.host, pop3_server.port, USER, encryption="none", oauth2_token=provider
    ) as pool:
        handler = pool.acquire()
        assert handler is not None and handler.get_mailbox_stat()[0] == 1
        pool.release(handler)
    assert provider.calls == 1
    assert pop3_server.commands[:2] == ["CAPA", "AUTH XOAUTH2 ***"]
    static = POP3ConnectionPool("127.0.0.1", 995, USER, oauth2_token=TOKEN)
    assert TOKEN not in repr(static) and TOKEN not in repr(vars(static))


def test_pop3_two_step_exchange_on_the_wire() -> None:
    # Microsoft 365's documented POP exchange: AUTH alone, "+ ", then the response.
    def microsoft_like(conv: Conversation) -> None:
        conv.send("+OK scripted POP3 ready")
        conv.recv_line()  # CAPA
        conv.send("+OK\r\nUSER\r\nSASL XOAUTH2\r\n.")
        conv.recv_line()  # AUTH XOAUTH2
        conv.send("+ ")
        conv.recv_line()  # the response
        conv.send("+OK User successfully authenticated.")
        conv.recv_line()  # STAT
        conv.send("+OK 0 0")
        conv.recv_line()  # QUIT
        conv.send("+OK bye")

    with ScriptedServer(microsoft_like) as server:
        handler = POP3ProtocolHandler(
            *server.address, USER, encryption="none", oauth2_token=LONG_TOKEN
        )
        assert handler.get_mailbox_stat() == (0, 0)
        [conv] = server.wait_for_connections(1)
        server.join()
    assert conv.received[1:3] == [
        b"AUTH XOAUTH2\r\n",
        f"{xoauth2_response(USER, LONG_TOKEN)}\r\n".encode(),
    ]
    assert not server.errors


def test_pop3_error_continuation_is_answered_with_an_empty_line() -> None:
    challenge = base64.b64encode(json.dumps(ERROR_JSON).encode()).decode()

    def refusing(conv: Conversation) -> None:
        conv.send("+OK scripted POP3 ready")
        conv.recv_line()  # CAPA
        conv.send("-ERR no CAPA here")
        conv.recv_line()  # AUTH XOAUTH2 <response>
        conv.send(f"+ {challenge}")
        conv.recv_line()  # the answer
        conv.send("-ERR Authentication failure")
        conv.wait_closed()

    with ScriptedServer(refusing) as server:
        handler = POP3ProtocolHandler(*server.address, USER, encryption="none", oauth2_token=WRONG)
        with pytest.raises(POP3AuthenticationError, match="status 401"):
            handler.get_mailbox_stat()
        [conv] = server.wait_for_connections(1)
        server.join()
    assert conv.received[1:3] == [
        f"AUTH XOAUTH2 {xoauth2_response(USER, WRONG)}\r\n".encode(),
        b"\r\n",
    ]
