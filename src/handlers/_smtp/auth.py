"""Logging in to an SMTP server: password mechanisms, UTF-8 AUTH PLAIN and XOAUTH2.

:func:`login` refuses to send credentials to a server that offers no AUTH, warns when they
go out unencrypted, and turns every refusal into :class:`MailAuthenticationError` with any
echoed secret masked. A password login uses the best mechanism both sides know and tries
another only when the server refused the mechanism itself, never the credentials.
"""

from __future__ import annotations

import base64
import binascii
import smtplib
from collections.abc import Callable, Sequence

from .._auth.oauth2 import MECHANISM as XOAUTH2
from .._auth.oauth2 import (
    SMTP_COMMAND_LIMIT,
    TokenSource,
    XOAUTH2Exchange,
    explain,
    initial_response_fits,
    login_with_refresh,
    xoauth2_string,
)
from .._net.logs import get_logger
from .._net.masking import mask_secrets
from ..errors import (
    MailAuthenticationError,
    MailConnectionError,
    MailHandlerError,
    MailProtocolError,
)
from .mapping import decode_reply, translate

# The logger this code used before it moved here, so logging configured for SMTP
# connections still sees the warning about credentials sent without encryption.
log = get_logger("smtp")

#: Password mechanisms, best first. PLAIN is the one every server implements; CRAM-MD5
#: comes last because servers that keep only password hashes advertise it and then
#: refuse every attempt.
_PASSWORD_MECHANISMS = ("PLAIN", "LOGIN", "CRAM-MD5")
#: AUTH replies that refuse the mechanism, not the credentials (RFC 4954: 504 not
#: supported, 534 too weak, 538 needs encryption), after which the next may be tried.
_MECHANISM_REFUSED = frozenset({504, 534, 538})


def login(
    client: smtplib.SMTP,
    username: str,
    password: str,
    *,
    oauth2: TokenSource | None = None,
    oauth2_initial_response: bool = True,
    encrypted: bool = True,
    where: str = "the server",
) -> tuple[str, ...]:
    """Log in; return the secrets that went out, for masking the session's later replies.

    Every failure is a library error whose text has those secrets masked, raised with
    no exception chained to it (smtplib's exceptions hold the unmasked replies).
    """
    if not client.has_extn("auth"):
        if not encrypted and client.has_extn("starttls"):
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
    if not encrypted:
        log.warning("sending SMTP credentials to %s without encryption", where)
    if oauth2 is not None:
        return _login_xoauth2(client, username, oauth2, oauth2_initial_response)
    secrets = (password, f"\0{username}\0{password}")
    failure = _attempt_login(lambda: _password_login(client, username, password), secrets)
    if failure is not None:
        raise failure
    return secrets


def _attempt_login(
    run: Callable[[], object],
    secrets: Sequence[str],
    explain_refusal: Callable[[str], str] | None = None,
) -> MailHandlerError | None:
    """Run one login exchange; return (never raise) the library error it ended in.

    Returning it lets the caller raise it outside the ``except`` block, so that
    smtplib's exception, which holds the server's unmasked reply, is not kept as
    its ``__context__``.
    """
    try:
        run()
    except MailHandlerError as error:
        return error
    except smtplib.SMTPNotSupportedError:
        return MailAuthenticationError(
            None, "the server offers no authentication mechanism this client supports"
        )
    except smtplib.SMTPResponseException as error:  # SMTPAuthenticationError included
        # A server may echo the AUTH payload (or the password) in its refusal.
        text = decode_reply(error.smtp_error)
        if explain_refusal is not None:
            text = explain_refusal(text)
        return MailAuthenticationError(error.smtp_code, mask_secrets(text, secrets))
    except smtplib.SMTPServerDisconnected as error:
        return _masked(error, secrets)
    except smtplib.SMTPException:
        # smtplib gives up after five challenges, quoting the last reply: a server
        # that keeps answering with 334 will not let this login finish.
        return MailProtocolError(
            "the server kept answering the login with more challenges; giving up"
        )
    except (binascii.Error, ValueError, UnicodeError):
        return MailProtocolError("the server sent a login challenge that is not valid base64")
    except OSError as error:
        return _masked(error, secrets)
    return None


def _masked(error: OSError, secrets: Sequence[str]) -> MailHandlerError:
    """:func:`.mapping.translate`'s error for ``error``, with ``secrets`` masked."""
    failure = translate(error, "AUTH") or MailConnectionError(str(error))
    masked = type(failure)(*(mask_secrets(str(arg), secrets) for arg in failure.args))
    masked.__dict__.update(failure.__dict__)
    return masked


def _password_login(client: smtplib.SMTP, username: str, password: str) -> None:
    """AUTH with the best password mechanism both sides know, once.

    smtplib's ``login()`` tries every mechanism in turn after a refusal, so one wrong
    password costs two or three failed logins at the server (each counted towards
    its rate limits and lockouts) and as many of its failure delays. Another
    mechanism is tried here only when the server refused the mechanism itself.
    """
    offered = client.esmtp_features.get("auth", "").upper().split()
    mechanisms = [name for name in _PASSWORD_MECHANISMS if name in offered]
    if not mechanisms:
        raise smtplib.SMTPNotSupportedError("no common AUTH mechanism")
    if not (username + password).isascii():
        _utf8_plain_login(client, username, password, offered)
        return
    client.user, client.password = username, password
    try:
        for mechanism in mechanisms:
            method = getattr(client, "auth_" + mechanism.lower().replace("-", "_"))
            try:
                client.auth(mechanism, method)
                return
            except smtplib.SMTPAuthenticationError as error:
                if error.smtp_code not in _MECHANISM_REFUSED or mechanism == mechanisms[-1]:
                    raise
    finally:
        # smtplib would otherwise keep the password on the client for its lifetime.
        client.user = client.password = ""


def _utf8_plain_login(
    client: smtplib.SMTP, username: str, password: str, offered: list[str]
) -> None:
    """AUTH PLAIN with UTF-8 credentials (RFC 4616); smtplib can only send ASCII."""
    if "PLAIN" not in offered:
        raise MailAuthenticationError(
            None,
            "a non-ASCII username or password needs AUTH PLAIN, which the server does not offer",
        )
    payload = base64.b64encode(f"\0{username}\0{password}".encode()).decode("ascii")
    code, reply = client.docmd("AUTH", "PLAIN " + payload)
    if code not in (235, 503):  # 503: already authenticated, as smtplib treats it
        raise smtplib.SMTPAuthenticationError(code, reply)


def _login_xoauth2(
    client: smtplib.SMTP, username: str, source: TokenSource, initial_response: bool
) -> tuple[str, ...]:
    if XOAUTH2 not in client.esmtp_features.get("auth", "").upper().split():
        raise MailAuthenticationError(
            None, "the server does not offer AUTH XOAUTH2; cannot log in with an OAuth2 token"
        )
    sent: list[str] = []

    def attempt(token: str) -> None:
        sent.extend((token, xoauth2_string(username, token)))
        failure = _xoauth2_once(client, username, token, initial_response, sent)
        if failure is not None:
            raise failure

    login_with_refresh(
        source,
        attempt,
        lambda reason: MailAuthenticationError(None, reason),
        where="the SMTP server",
    )
    return tuple(sent)


def _xoauth2_once(
    client: smtplib.SMTP, username: str, token: str, initial_response: bool, secrets: list[str]
) -> MailHandlerError | None:
    """One XOAUTH2 exchange; one step when allowed and the AUTH line fits (RFC 4954)."""
    exchange = XOAUTH2Exchange(username, token)
    one_step = initial_response and initial_response_fits(username, token, SMTP_COMMAND_LIMIT)
    return _attempt_login(
        lambda: client.auth(XOAUTH2, exchange, initial_response_ok=one_step),
        secrets,
        lambda text: explain(text, exchange.failure, token),
    )
