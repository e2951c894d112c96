"""Logging in to an SMTP server (RFC 4954) with the shared SASL mechanisms.

:func:`login` chooses the mechanisms (:func:`choose_mechanisms`), and :func:`run_exchange`
drives one of them over the wire: ``AUTH`` with the initial response when the line
fits in 512 octets, each ``334`` challenge answered in base64, ``*`` to cancel an
exchange the client cannot go on with, and ``235`` accepted only once the mechanism's
:meth:`~src.handlers._sasl.Mechanism.verify_final` has (SCRAM: the server proved it
knows the password). Refusals are read as a :class:`Refusal`; only an unsupported
mechanism lets the next candidate be tried, never refused credentials.

Order for a password: SCRAM-SHA-256-PLUS, SCRAM-SHA-1-PLUS (bound to the TLS
connection with ``tls-server-end-point``), SCRAM-SHA-256, SCRAM-SHA-1, then, inside
TLS, PLAIN, LOGIN and CRAM-MD5 last (servers that keep only password hashes advertise
CRAM-MD5 and then refuse it); over an unencrypted connection CRAM-MD5 comes before
PLAIN and LOGIN, which are used there only with ``allow_cleartext``. For a token:
OAUTHBEARER, then XOAUTH2, with one refresh after a refused token.

Every failure is a library error whose text has the exchange's secrets masked, raised
with no exception chained to it (smtplib's exceptions hold the unmasked replies).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import smtplib
import ssl
from collections.abc import Callable
from dataclasses import dataclass

from .._auth.credentials import Credentials
from .._auth.oauth2 import TokenSource, login_with_refresh
from .._net.logs import get_logger
from .._net.masking import mask_secrets
from .._sasl import (
    ChannelBinding,
    CredentialKind,
    Mechanism,
    Refusal,
    SASLAuthenticationError,
    SASLFailure,
    choose_mechanisms,
    create_mechanism,
    tls_server_end_point,
)
from ..errors import (
    MailAuthenticationError,
    MailConnectionError,
    MailHandlerError,
    MailProtocolError,
    parse_enhanced_code,
)
from .mapping import decode_reply, translate

# The logger this code used before it moved here, so logging configured for SMTP
# connections still sees the warning about credentials sent without encryption.
log = get_logger("smtp")

#: Longest SMTP command line, CRLF included (RFC 5321 4.5.3.1.4, applied by RFC 4954).
COMMAND_LIMIT = 512
#: Server challenges answered in one exchange before giving up, whatever the mechanism
#: allows: a server that keeps sending ``334`` cannot keep the client busy.
_MAX_ROUNDS = 8

_REFUSALS = {
    504: Refusal.MECHANISM_UNSUPPORTED,
    534: Refusal.MECHANISM_TOO_WEAK,
    538: Refusal.ENCRYPTION_REQUIRED,
    535: Refusal.CREDENTIALS,
}
_EXPLANATIONS = {
    Refusal.MECHANISM_UNSUPPORTED: "the server does not support this mechanism",
    Refusal.MECHANISM_TOO_WEAK: "the server finds this mechanism too weak",
    Refusal.ENCRYPTION_REQUIRED: "the server wants encryption for this mechanism",
}


def refusal_of(code: int) -> Refusal:
    """What an SMTP refusal of ``AUTH`` means (RFC 4954 section 6): 504, 534 and 538
    refuse the mechanism, 4xx is temporary, anything else refuses the credentials."""
    if 400 <= code < 500:
        return Refusal.TEMPORARY
    return _REFUSALS.get(code, Refusal.CREDENTIALS)


class AuthRefused(SASLAuthenticationError):
    """The server refused one ``AUTH`` exchange; ``refusal`` says how (see
    :class:`Refusal`)."""

    def __init__(
        self,
        code: int | None,
        text: str,
        refusal: Refusal = Refusal.CREDENTIALS,
        enhanced_code: str | None = None,
        failure: SASLFailure | None = None,
    ) -> None:
        super().__init__(code, text, failure, enhanced_code)
        self.refusal = refusal


@dataclass(frozen=True)
class LoginOptions:
    """How :func:`login` chooses: ``pinned`` restricts it to one mechanism,
    ``allow_cleartext`` permits PLAIN, LOGIN and the token mechanisms without TLS,
    ``initial_response`` sends token mechanisms' first message with ``AUTH``."""

    pinned: str | None = None
    allow_cleartext: bool = False
    initial_response: bool = True


def login(
    client: smtplib.SMTP,
    credentials: Credentials,
    options: LoginOptions,
    *,
    host: str,
    port: int,
) -> tuple[str, ...]:
    """Log in; return the secrets that went out, for masking the session's later replies.

    Raises a library error: :class:`MailAuthenticationError` (refused, or nothing
    usable offered), :class:`CleartextRefusedError` (only cleartext mechanisms without
    TLS or consent; nothing sent), :class:`SASLServerVerificationError` (the server did
    not prove it knows the password), :class:`MailProtocolError`, or a connection error.
    """
    where = f"{host}:{port}"
    tls = isinstance(client.sock, ssl.SSLSocket)
    if not client.has_extn("auth"):
        if not tls and client.has_extn("starttls"):
            # Postfix with smtpd_tls_auth_only, and most submission servers, list
            # AUTH only once the connection is encrypted.
            raise MailAuthenticationError(
                None,
                "the server offers no AUTH on an unencrypted connection but does offer "
                "STARTTLS; use encryption='tls' (the credentials were not sent)",
            )
        raise MailAuthenticationError(
            None, "the server does not offer AUTH; cannot log in with the given credentials"
        )
    offered = client.esmtp_features.get("auth", "").upper().split()
    sent: list[str] = []
    if credentials.token is not None:
        kind = CredentialKind.TOKEN
    elif options.pinned is not None and options.pinned.upper() == "EXTERNAL":
        kind = CredentialKind.CLIENT_CERT
    else:
        kind = CredentialKind.PASSWORD
    binding = _channel_binding(client.sock) if tls else None
    names = choose_mechanisms(
        offered,
        kind,
        tls=tls,
        channel_binding=binding is not None,
        pinned=options.pinned,
        allow_cleartext=options.allow_cleartext,
    )
    if kind is CredentialKind.PASSWORD and tls and "CRAM-MD5" in names:
        names.remove("CRAM-MD5")
        names.append("CRAM-MD5")
    if not tls:
        log.warning("logging in to SMTP server %s without encryption", where)

    def attempt(token: str | None) -> None:
        def make(name: str) -> Mechanism:
            password = credentials.password
            return create_mechanism(
                name,
                username=credentials.username,
                password=password.reveal() if password is not None else None,
                token=token,
                channel_binding=binding,
                offered=offered,
                host=host,
                port=port,
            )

        one_step = kind is not CredentialKind.TOKEN or options.initial_response
        _try_in_turn(client, names, make, one_step, sent)

    if credentials.token is None:
        attempt(None)
    else:
        source: TokenSource = credentials.token
        login_with_refresh(
            source,
            attempt,
            lambda reason: MailAuthenticationError(None, reason),
            where=f"the SMTP server {where}",
        )
    return tuple(sent)


def _channel_binding(sock: object) -> ChannelBinding | None:
    if not isinstance(sock, ssl.SSLSocket):
        return None
    der = sock.getpeercert(binary_form=True)
    return tls_server_end_point(der) if der else None


def _try_in_turn(
    client: smtplib.SMTP,
    names: list[str],
    make: Callable[[str], Mechanism],
    one_step: bool,
    sent: list[str],
) -> None:
    """Try ``names`` best first; go on to the next only after "mechanism unsupported"."""
    for index, name in enumerate(names):
        mechanism = make(name)
        failure = _attempt(client, mechanism, one_step)
        sent.extend(_as_text(secret) for secret in mechanism.sensitive() if secret)
        if failure is None:
            log.debug("logged in with %s", mechanism.name)
            return
        last = index == len(names) - 1
        if isinstance(failure, AuthRefused) and failure.refusal.allows_fallback() and not last:
            log.debug("%s not supported by the server; trying the next mechanism", name)
            continue
        raise failure


def _as_text(secret: str | bytes) -> str:
    return secret if isinstance(secret, str) else secret.decode("utf-8", "replace")


def _attempt(client: smtplib.SMTP, mechanism: Mechanism, one_step: bool) -> MailHandlerError | None:
    """Run one exchange; return (never raise) the library error it ended in.

    Returning it lets the caller raise it outside the ``except`` block, so that
    smtplib's exception, which holds the server's unmasked reply, is not kept as its
    ``__context__``.
    """
    try:
        run_exchange(client, mechanism, one_step=one_step)
    except MailHandlerError as error:
        return error
    except smtplib.SMTPServerDisconnected as error:
        return _masked(error, mechanism)
    except smtplib.SMTPResponseException as error:  # a reply over its bounds
        text = mechanism.mask(decode_reply(error.smtp_error))
        return MailProtocolError(f"bad reply to AUTH: {error.smtp_code} {text}")
    except OSError as error:
        return _masked(error, mechanism)
    return None


def _masked(error: OSError, mechanism: Mechanism) -> MailHandlerError:
    """:func:`.mapping.translate`'s error for ``error``, with the secrets masked."""
    failure = translate(error, "AUTH") or MailConnectionError(str(error))
    secrets = mechanism.sensitive()
    masked = type(failure)(*(mask_secrets(str(arg), secrets) for arg in failure.args))
    masked.__dict__.update(failure.__dict__)
    return masked


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def run_exchange(client: smtplib.SMTP, mechanism: Mechanism, *, one_step: bool = True) -> None:
    """Drive one ``AUTH`` exchange with ``mechanism`` to success, or raise.

    The initial response goes on the ``AUTH`` line when ``one_step`` and the line fits
    in :data:`COMMAND_LIMIT`; otherwise it answers the server's empty first challenge
    (``=`` on the line stands for an empty response). A step the mechanism cannot take
    (a SCRAM signature that is wrong, an error the server put inside the mechanism) is
    cancelled with ``*`` and then raised. A refusal raises :class:`AuthRefused`.
    """
    name = mechanism.name
    initial = mechanism.initial_response()
    pending: bytes | None = None
    if initial is not None:
        encoded = _b64(initial) or "="
        if one_step and len(f"AUTH {name} {encoded}\r\n") <= COMMAND_LIMIT:
            code, reply = client.docmd("AUTH", f"{name} {encoded}")
        else:
            pending = initial
            code, reply = client.docmd("AUTH", name)
    else:
        code, reply = client.docmd("AUTH", name)
    for _ in range(_MAX_ROUNDS):
        if code != 334:
            break
        try:
            challenge = base64.b64decode(reply.strip(), validate=True)
        except (binascii.Error, ValueError):
            _cancel(client)
            raise MailProtocolError(
                "the server sent a login challenge that is not valid base64"
            ) from None
        if pending is not None:
            if challenge:
                _cancel(client)
                raise MailProtocolError(
                    f"{name}: the server sent a challenge where the client speaks first"
                )
            answer, pending = pending, None
        else:
            try:
                answer = mechanism.respond(challenge)
            except MailHandlerError as error:
                _cancel(client)
                raise error from None
        code, reply = client.docmd(_b64(answer))
    else:
        _cancel(client)
        raise MailProtocolError("the server kept answering the login with challenges; giving up")
    if code == 235:
        mechanism.verify_final(None)
        return
    text = decode_reply(reply)
    refusal = refusal_of(code)
    shown = mechanism.mask(text)
    if mechanism.failure is not None:
        shown = f"{shown} ({mechanism.failure.describe()})"
    explanation = _EXPLANATIONS.get(refusal)
    if explanation is not None:
        shown = f"{shown} ({name}: {explanation})"
    raise AuthRefused(code, shown, refusal, parse_enhanced_code(text), mechanism.failure)


def _cancel(client: smtplib.SMTP) -> None:
    """Cancel the exchange with ``*`` and read the server's reply (RFC 4954: 501)."""
    # The exchange's own error is what the caller reports, not this one's.
    with contextlib.suppress(smtplib.SMTPException, OSError):
        client.docmd("*")
