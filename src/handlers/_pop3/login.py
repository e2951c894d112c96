"""Logging a POP3 connection in: choosing how, and running it.

:func:`log_in` reads what the server offers (``CAPA``'s ``SASL`` list, the APOP
timestamp in the greeting), picks the candidates best first, and tries them in turn:

1. SASL through :mod:`src.handlers._sasl` (RFC 5034 ``AUTH``): for a password
   ``SCRAM-SHA-256-PLUS``, ``SCRAM-SHA-1-PLUS`` (over TLS, bound to the server's
   certificate), ``SCRAM-SHA-256``, ``SCRAM-SHA-1``, ``CRAM-MD5``; for a token
   ``OAUTHBEARER``, then ``XOAUTH2``; ``EXTERNAL`` when pinned;
2. ``PLAIN``, ``LOGIN``, then ``USER``/``PASS``, which show the password to whoever
   reads the connection: only over TLS, unless cleartext is allowed;
3. ``APOP``, when the greeting carries a timestamp, only when pinned or when nothing
   else could log in (no TLS, cleartext not allowed, no SASL mechanism left).

The next candidate is tried only when the server says it does not support the one
just tried; a refusal of the credentials ends the login there. With ``UTF8`` in
``CAPA`` (RFC 6856) the client sends ``UTF8`` before logging in, so the user name and
password may be UTF-8; ``LANG`` is sent after the login when asked for.
"""

from __future__ import annotations

import poplib
import ssl
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Final

from .._auth.credentials import Credentials
from .._auth.oauth2 import login_with_refresh
from .._net.config import Encryption
from .._net.control_chars import find_control_character
from .._net.logs import get_logger
from .._sasl import (
    PREFERENCE,
    ChannelBinding,
    CleartextRefusedError,
    CredentialKind,
    Mechanism,
    NoMechanismError,
    apop_digest,
    apop_timestamp,
    choose_mechanisms,
    cleartext_consent,
    create_mechanism,
    tls_server_end_point,
)
from ..errors import ConfigurationError, MailHandlerError, POP3AuthenticationError
from .adapter import ClientAdapter
from .sasl import AuthRefused, refused

log = get_logger("pop3")

#: The POP3 logins that are not SASL mechanisms.
USER_PASS: Final = "USER"
APOP: Final = "APOP"
#: Every name ``auth_mechanism`` accepts.
PINNABLE: Final = frozenset({*(n for names in PREFERENCE.values() for n in names), USER_PASS, APOP})

_PASSWORD_ONLY: Final = frozenset({*PREFERENCE[CredentialKind.PASSWORD], USER_PASS, APOP})
_TOKEN_ONLY: Final = frozenset(PREFERENCE[CredentialKind.TOKEN])


@dataclass(frozen=True)
class LoginOptions:
    """How a handler logs in, beyond its credentials.

    ``mechanism`` pins one way (a SASL name, ``"APOP"`` or ``"USER"``); ``None`` picks
    the best. ``allow_cleartext`` lets PLAIN, LOGIN, USER/PASS and bearer tokens go
    over a connection without TLS; ``None`` means "as ``encryption='none'`` says",
    i.e. allowed there (with a warning), the choice that mode has always meant.
    ``language`` is sent with ``LANG`` after the login when the server offers it.
    ``initial_response`` False makes every ``AUTH`` wait for the server's first
    challenge instead of sending the client's first message with the command.
    """

    mechanism: str | None = None
    allow_cleartext: bool | None = None
    language: str | None = None
    initial_response: bool = True

    @classmethod
    def check(
        cls,
        mechanism: str | None,
        allow_cleartext: bool | None,
        language: str | None,
        credentials: Credentials,
        *,
        initial_response: bool = True,
    ) -> LoginOptions:
        """The options, checked against each other and the credentials."""
        if mechanism is not None:
            if not isinstance(mechanism, str) or mechanism.upper() not in PINNABLE:
                raise ConfigurationError(
                    "auth_mechanism must be one of " + ", ".join(sorted(PINNABLE)),
                    "auth_mechanism",
                    tuple(sorted(PINNABLE)),
                )
            mechanism = mechanism.upper()
            if credentials.token is not None and mechanism not in _TOKEN_ONLY:
                raise ConfigurationError(
                    f"{mechanism} cannot log in with oauth2_token", "auth_mechanism"
                )
            if credentials.token is None and mechanism in _TOKEN_ONLY:
                raise ConfigurationError(f"{mechanism} needs oauth2_token", "auth_mechanism")
        cleartext_consent(allow_cleartext, Encryption.NONE)  # checks the value now
        if language is not None and (
            not isinstance(language, str)
            or not language
            or " " in language
            or find_control_character(language) is not None
        ):
            raise ConfigurationError("language must be one language tag, like 'en'", "language")
        return cls(mechanism, allow_cleartext, language, bool(initial_response))


@dataclass
class LoginContext:
    """What one login needs from the session around it."""

    credentials: Credentials
    options: LoginOptions
    encryption: Encryption
    host: str
    port: int
    where: str
    #: Hears of every mechanism before it sends anything, to mask its secrets.
    remember: Callable[[Mechanism | str], None]
    #: The secrets to mask in replies, as the session knows them now.
    secrets: Callable[[], Iterable[str | bytes | None]]
    #: Turns a failure of a plain command (USER, PASS) into the library's error.
    translate: Callable[[BaseException, str], MailHandlerError]


def log_in(adapter: ClientAdapter, context: LoginContext) -> str:
    """Log ``adapter`` in; return the name of the way that worked (``"SCRAM-SHA-256"``,
    ``"APOP"``, ``"USER"``, ...)."""
    capabilities = adapter.capabilities()
    if "UTF8" in capabilities:
        _utf8(adapter, context)
    used = _log_in(adapter, context, capabilities)
    if context.options.language is not None and "LANG" in capabilities:
        _lang(adapter, context, context.options.language)
    log.debug("logged in to %s as %r with %s", context.where, context.credentials.username, used)
    return used


def _log_in(
    adapter: ClientAdapter, context: LoginContext, capabilities: dict[str, list[str]]
) -> str:
    tls = _on_tls(adapter, context.encryption)
    allow_cleartext = cleartext_consent(context.options.allow_cleartext, context.encryption)
    offered = [name.upper() for name in capabilities["SASL"]] if "SASL" in capabilities else None
    real = isinstance(adapter.client, poplib.POP3)
    if not real:
        # A test double stands in for poplib's public methods only: it can take USER
        # and PASS, not a SASL exchange line by line.
        offered = None
    binding = _channel_binding(adapter) if tls else None
    credentials = context.credentials
    pinned = context.options.mechanism

    if credentials.token is not None:
        source = credentials.token
        candidates = _token_candidates(offered, pinned, tls=tls, allow_cleartext=allow_cleartext)
        if not tls:
            log.warning(
                "sending a POP3 OAuth2 token for %r to %s without encryption",
                credentials.username,
                context.where,
            )
        used: list[str] = []

        def attempt(token: str) -> None:
            context.remember(token)
            used.append(
                _try_in_turn(
                    adapter, context, candidates, token=token, binding=binding, offered=offered
                )
            )

        login_with_refresh(source, attempt, POP3AuthenticationError, where=context.where)
        return used[-1]

    timestamp = apop_timestamp(_greeting(adapter)) if real else None
    if pinned == "EXTERNAL":
        candidates = choose_mechanisms(offered, CredentialKind.CLIENT_CERT, tls=tls, pinned=pinned)
    else:
        candidates = _password_candidates(
            offered,
            pinned,
            timestamp,
            tls=tls,
            binding=binding is not None,
            allow_cleartext=allow_cleartext,
        )
    return _try_in_turn(
        adapter, context, candidates, binding=binding, offered=offered, timestamp=timestamp
    )


def _password_candidates(
    offered: list[str] | None,
    pinned: str | None,
    timestamp: str | None,
    *,
    tls: bool,
    binding: bool,
    allow_cleartext: bool,
) -> list[str]:
    if pinned == USER_PASS:
        if not (tls or allow_cleartext):
            raise _cleartext_refused()
        return [USER_PASS]
    if pinned == APOP:
        if timestamp is None:
            raise NoMechanismError(
                "the server's greeting has no APOP timestamp, so it does not offer APOP "
                "(nothing was sent)",
                tuple(offered) if offered is not None else None,
            )
        return [APOP]
    if pinned is not None:
        return choose_mechanisms(
            offered,
            CredentialKind.PASSWORD,
            tls=tls,
            channel_binding=binding,
            pinned=pinned,
            allow_cleartext=allow_cleartext,
        )
    try:
        sasl = choose_mechanisms(
            offered if offered is not None else (),
            CredentialKind.PASSWORD,
            tls=tls,
            channel_binding=binding,
            allow_cleartext=allow_cleartext,
        )
    except (NoMechanismError, CleartextRefusedError):
        sasl = []
    if timestamp is not None and not (tls or allow_cleartext):
        # Only where it is the one way left that keeps the password off the wire:
        # servers put a timestamp in their greeting without being able to check APOP
        # for every account, and a refused APOP ends the login.
        sasl.append(APOP)
    if tls or allow_cleartext:
        sasl.append(USER_PASS)
    if not sasl:
        raise _cleartext_refused()
    return sasl


def _token_candidates(
    offered: list[str] | None, pinned: str | None, *, tls: bool, allow_cleartext: bool
) -> list[str]:
    if offered is None and pinned is None:
        # A server that lists no SASL mechanisms gets the one every provider speaks.
        if not (tls or allow_cleartext):
            raise _cleartext_refused()
        return ["XOAUTH2"]
    return choose_mechanisms(
        offered, CredentialKind.TOKEN, tls=tls, pinned=pinned, allow_cleartext=allow_cleartext
    )


def _try_in_turn(
    adapter: ClientAdapter,
    context: LoginContext,
    candidates: list[str],
    *,
    token: str | None = None,
    binding: ChannelBinding | None = None,
    offered: list[str] | None = None,
    timestamp: str | None = None,
) -> str:
    """Try ``candidates`` in order, moving on only past an unsupported mechanism."""
    last: AuthRefused | None = None
    for name in candidates:
        refusal: AuthRefused | None = None
        try:
            if name == USER_PASS:
                _user_pass(adapter, context)
            elif name == APOP:
                assert timestamp is not None
                _apop(adapter, context, timestamp)
            else:
                _sasl(adapter, context, name, token=token, binding=binding, offered=offered)
        except AuthRefused as raised:
            refusal = raised
        if refusal is None:
            return name
        # Raised out here, so the error keeps no context that may hold a server echo.
        if not refusal.refusal.allows_fallback():
            raise refusal.error
        log.debug("%s does not support %s; trying the next mechanism", context.where, name)
        last = refusal
    assert last is not None
    raise last.error


def _sasl(
    adapter: ClientAdapter,
    context: LoginContext,
    name: str,
    *,
    token: str | None,
    binding: ChannelBinding | None,
    offered: list[str] | None,
) -> None:
    credentials = context.credentials
    password = credentials.password.reveal() if credentials.password is not None else None
    mechanism = create_mechanism(
        name,
        username=credentials.username,
        password=password,
        token=token,
        channel_binding=binding,
        offered=offered,
        host=context.host,
        port=context.port,
    )
    context.remember(mechanism)
    if mechanism.cleartext and token is None and context.encryption is Encryption.NONE:
        log.warning(
            "sending the POP3 password for %r to %s without encryption (%s)",
            credentials.username,
            context.where,
            name,
        )
    adapter.authenticate(
        mechanism, context.secrets, initial_response=context.options.initial_response
    )


def _apop(adapter: ClientAdapter, context: LoginContext, timestamp: str) -> None:
    credentials = context.credentials
    password = credentials.password.reveal() if credentials.password is not None else ""
    digest = apop_digest(timestamp, password)
    context.remember(digest)
    try:
        adapter.command(f"APOP {credentials.username} {digest}")
    except poplib.error_proto as error:
        reply = error.args[0] if error.args else b""
        raise refused(
            reply if isinstance(reply, bytes | str) else str(reply), context.secrets()
        ) from None


def _user_pass(adapter: ClientAdapter, context: LoginContext) -> None:
    credentials = context.credentials
    password = credentials.password.reveal() if credentials.password is not None else ""
    steps = (
        ("USER", adapter.user, credentials.username or ""),
        ("PASS", adapter.password, password),
    )
    for verb, send, argument in steps:
        if verb == "PASS" and context.encryption is Encryption.NONE:
            # Only now: a server that insists on TLS refuses USER already
            # (Dovecot's disable_plaintext_auth), and the password stays here.
            log.warning(
                "sending the POP3 password for %r to %s without encryption",
                credentials.username,
                context.where,
            )
        failure = None
        try:
            send(argument)
        except Exception as error:
            failure = context.translate(error, verb)
        if failure is not None:
            # Raised outside the handler so the original, which may hold the
            # password or the server's echo of it, is not kept as the context.
            raise failure


def _utf8(adapter: ClientAdapter, context: LoginContext) -> None:
    try:
        adapter.command("UTF8")
    except poplib.error_proto:
        log.debug("%s lists UTF8 but refused it; going on in ASCII", context.where)


def _lang(adapter: ClientAdapter, context: LoginContext, language: str) -> None:
    try:
        adapter.command(f"LANG {language}")
    except poplib.error_proto:
        log.warning("%s does not offer the language %r", context.where, language)


def _on_tls(adapter: ClientAdapter, encryption: Encryption) -> bool:
    sock = adapter.socket
    if sock is None:  # a test double: trust the settings
        return encryption is not Encryption.NONE
    return isinstance(sock, ssl.SSLSocket)


def _channel_binding(adapter: ClientAdapter) -> ChannelBinding | None:
    sock = adapter.socket
    if not isinstance(sock, ssl.SSLSocket):
        return None
    certificate = sock.getpeercert(binary_form=True)
    return tls_server_end_point(certificate) if certificate else None


def _greeting(adapter: ClientAdapter) -> str:
    welcome = getattr(adapter.client, "welcome", b"")
    if isinstance(welcome, bytes):
        return welcome.decode("utf-8", "replace")
    return welcome if isinstance(welcome, str) else ""


def _cleartext_refused() -> CleartextRefusedError:
    return CleartextRefusedError(
        "the server offers only logins that would send the password or token readable over "
        "an unencrypted connection; use TLS or pass allow_cleartext=True (nothing was sent)"
    )


__all__ = ["APOP", "PINNABLE", "USER_PASS", "LoginContext", "LoginOptions", "log_in"]
