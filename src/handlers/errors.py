"""The exception tree shared by the SMTP and POP3 handlers.

Every error the library raises derives from :class:`MailHandlerError`. Connection
problems also derive from the built-in :class:`ConnectionError` and timeouts from
:class:`TimeoutError`, so code that already catches ``OSError`` keeps working::

    MailHandlerError
    ├── MailValidationError (ValueError)          bad input, nothing was sent
    │   └── ConfigurationError                     a handler or pool setting is invalid
    ├── MailConnectionError (ConnectionError)      could not reach or lost the server
    │   ├── MailTimeoutError (TimeoutError)        no answer within the timeout/deadline
    │   │   ├── PoolTimeoutError                   no pooled connection became free in time
    │   │   └── RateLimitTimeout                   a rate limit gave no permit in time
    │   ├── POP3ConnectionError                    spec name for POP3 connection failures
    │   │   ├── POP3TimeoutError (TimeoutError)
    │   │   └── POP3SecurityError                  also a MailSecurityError: not retried
    │   ├── DNSLookupError                         DNS gave no usable answer
    │   │   └── DNSTimeoutError (TimeoutError)
    │   ├── ProxyError                             a proxy unreachable or refusing the tunnel
    │   ├── OAuth2EndpointError                    a token endpoint unreachable or failing
    │   └── OutcomeUnknownError                    body sent, final reply never came
    ├── MailSecurityError                          TLS unavailable, refused or unverifiable
    │   └── POP3SecurityError                      (see above)
    ├── MailProtocolError                          the server spoke garbage
    │   └── POP3ProtocolError
    ├── SMTPNotSupportedError                      the server lacks an extension we need
    ├── POP3MessageTooLargeError                   over the handler's max_message_size
    ├── SyncLeaseError                             the per-account sync lease
    │   ├── AccountBusyError                       another worker holds the lease
    │   └── LeaseLostError                         ours expired and was taken: nothing committed
    ├── POP3PoolClosedError                        the POP3 pool was closed
    └── MailResponseError                          the server answered with an error reply
        ├── MailAuthenticationError                credentials refused
        │   ├── POP3AuthenticationError
        │   ├── ProxyAuthenticationError           the proxy refused its credentials
        │   └── OAuth2TokenError                   the token endpoint refused the grant
        ├── SMTPResponseError                      SMTP reply code >= 400
        │   ├── SMTPSenderRefused
        │   ├── SMTPRecipientsRefused
        │   └── SMTPDataRefused
        └── POP3ResponseError                      POP3 ``-ERR`` reply
            ├── POP3MailboxBusyError               [IN-USE] / [LOGIN-DELAY], retryable
            └── POP3UnsupportedError               an optional command (UIDL, TOP) refused

Errors built from a server reply carry ``code`` (SMTP reply code, or ``None`` for
POP3), ``text`` (the reply text) and ``enhanced_code`` (``"5.1.1"`` or the POP3
response code such as ``"IN-USE"``) as attributes. Whether an error may be retried
is decided in :mod:`src.handlers.retry`, never by the raiser.

No exception message ever contains a password, token or AUTH payload.

Every exception survives a ``pickle`` round trip with its message and fields, so a
process pool or a Celery result backend hands the caller the real error.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

_ENHANCED_CODE = re.compile(r"^([245])\.(\d{1,3})\.(\d{1,3})\b")


def parse_enhanced_code(text: str) -> str | None:
    """Return the RFC 3463 enhanced status code at the start of ``text``, if any."""
    match = _ENHANCED_CODE.match(text.lstrip())
    return ".".join(match.groups()) if match else None


def _rebuild(cls: type[MailHandlerError], args: tuple[Any, ...], state: dict[str, Any]) -> Any:
    """Unpickle without calling the subclass's ``__init__`` (each takes its own arguments)."""
    error = cls.__new__(cls)
    Exception.__init__(error, *args)
    error.__dict__.update(state)
    return error


class MailHandlerError(Exception):
    """Root of every exception raised by this library."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), self.args, dict(self.__dict__)))


class MailValidationError(MailHandlerError, ValueError):
    """Input was refused before anything was sent; ``field`` names what was wrong."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class ConfigurationError(MailValidationError):
    """A handler, pool or connection setting is invalid; raised before any I/O.

    ``field`` names the setting and ``choices``, when the setting takes one of a fixed
    set of values, lists them (also named in the message).
    """

    def __init__(self, message: str, field: str | None = None, choices: Iterable[str] = ()) -> None:
        self.choices = tuple(choices)
        if self.choices:
            message = f"{message} (valid: {', '.join(map(repr, self.choices))})"
        super().__init__(message, field)


class MailConnectionError(MailHandlerError, ConnectionError):
    """The server could not be reached, or the connection broke.

    ``reset_by_peer`` is True when the server reset the connection (TCP RST), which
    it does when it closes with data of ours still unread.
    """

    reset_by_peer: bool = False


class MailTimeoutError(MailConnectionError, TimeoutError):
    """The server did not answer within the configured timeout or deadline."""


class PoolTimeoutError(MailTimeoutError):
    """No connection became free within the pool's wait timeout."""


class RateLimitTimeout(MailTimeoutError):
    """A rate limit gave no permit before the deadline.

    ``key`` names the limited server and login; ``retry_after`` hints when to try again:
    one token interval at the current rate when a message token was missing, 0 when a
    connection slot was.
    """

    def __init__(self, key: str, retry_after: float) -> None:
        super().__init__(f"rate limit for {key}: no permit before the deadline")
        self.key = key
        self.retry_after = retry_after


class DNSLookupError(MailConnectionError):
    """DNS gave no usable answer: every server failed (SERVFAIL) or none was reachable.

    A :class:`MailConnectionError`, so it is retryable.
    """


class DNSTimeoutError(DNSLookupError, MailTimeoutError):
    """DNS did not answer within the time budget."""


class OutcomeUnknownError(MailConnectionError):
    """The message body was sent but the server's final reply never arrived.

    The server may or may not have accepted the message, so it must not be resent
    automatically.
    """


class MailSecurityError(MailHandlerError):
    """TLS could not be established as configured (not offered, refused, or unverified)."""


class MailProtocolError(MailHandlerError):
    """The server sent something that does not follow the protocol."""


class SMTPNotSupportedError(MailHandlerError):
    """The server lacks an extension this message needs (SMTPUTF8, or a large enough SIZE)."""


class MailResponseError(MailHandlerError):
    """The server answered a command with an error reply."""

    def __init__(self, code: int | None, text: str, enhanced_code: str | None = None) -> None:
        self.code = code
        self.text = text
        self.enhanced_code = (
            enhanced_code if enhanced_code is not None else (parse_enhanced_code(text))
        )
        super().__init__(f"{code} {text}" if code is not None else text)


class MailAuthenticationError(MailResponseError):
    """The server refused the credentials."""


class SMTPResponseError(MailResponseError):
    """An SMTP command got a 4xx or 5xx reply."""


class SMTPSenderRefused(SMTPResponseError):
    """MAIL FROM was refused."""

    def __init__(self, code: int, text: str, sender: str) -> None:
        super().__init__(code, text)
        self.sender = sender


class SMTPRecipientsRefused(SMTPResponseError):
    """Every recipient was refused; ``failures`` maps each address to its reply."""

    def __init__(self, code: int, text: str, failures: dict[str, tuple[int, str]]) -> None:
        super().__init__(code, text)
        self.failures = failures


class SMTPDataRefused(SMTPResponseError):
    """DATA, or the message after it, was refused."""


class ProxyError(MailConnectionError):
    """A proxy could not be reached, or would not open the tunnel to the server.

    ``proxy`` names the proxy as ``scheme://host:port`` (never its credentials);
    ``reply_code`` is the proxy's reply code (SOCKS reply or HTTP status), if any.
    A :class:`MailConnectionError`, so it is retryable.
    """

    def __init__(self, message: str, proxy: str, reply_code: int | None = None) -> None:
        super().__init__(message, proxy, reply_code)
        self.proxy = proxy
        self.reply_code = reply_code

    def __str__(self) -> str:
        return str(self.args[0])


class ProxyAuthenticationError(MailAuthenticationError):
    """The proxy refused the user name and password it was given (or needs some).

    ``proxy`` names the proxy as ``scheme://host:port``; ``status`` is the HTTP status
    (407) for an HTTP proxy, ``None`` for SOCKS. Not retryable.
    """

    def __init__(self, proxy: str, text: str, status: int | None = None) -> None:
        super().__init__(None, text)
        self.args = (proxy, text, status)
        self.proxy = proxy
        self.status = status

    def __str__(self) -> str:
        return f"proxy {self.proxy} refused the login: {self.text}"


class OAuth2EndpointError(MailConnectionError):
    """An OAuth2 token endpoint could not be reached, timed out or failed (5xx, 429).

    ``endpoint`` is the endpoint's ``scheme://host/path``; ``status`` the HTTP status,
    when one came. A :class:`MailConnectionError`, so it is retryable.
    """

    def __init__(self, message: str, endpoint: str, status: int | None = None) -> None:
        super().__init__(message, endpoint, status)
        self.endpoint = endpoint
        self.status = status

    def __str__(self) -> str:
        return str(self.args[0])


class OAuth2TokenError(MailAuthenticationError):
    """An OAuth2 token endpoint refused to issue a token.

    ``error`` is the provider's OAuth error code (``"invalid_grant"`` when a refresh
    token was revoked or expired, ``"invalid_client"`` for a wrong client secret);
    ``status`` the HTTP status; ``provider`` names the provider. The message holds the
    provider's description but never a secret. Not retryable: a new grant is needed.
    """

    def __init__(
        self, provider: str, error: str, description: str | None = None, status: int | None = None
    ) -> None:
        text = f"{provider} token endpoint refused the grant: {error}"
        if description:
            text += f" ({description})"
        super().__init__(None, text)
        self.args = (provider, error, description, status)
        self.provider = provider
        self.error = error
        self.description = description
        self.status = status

    def __str__(self) -> str:
        return self.text


class POP3ConnectionError(MailConnectionError):
    """A POP3 server could not be reached or the session broke."""


class POP3TimeoutError(POP3ConnectionError, MailTimeoutError):
    """A POP3 server did not answer in time."""


class POP3SecurityError(MailSecurityError, POP3ConnectionError):
    """POP3 TLS could not be set up: STLS not offered or refused, a certificate that
    does not verify, or a port that expects the other encryption mode.

    It always happens while connecting, so it is also a :class:`POP3ConnectionError`
    (the specification's ``except POP3ConnectionError`` catches it); as a
    :class:`MailSecurityError` it is never retried.
    """


class POP3ProtocolError(MailProtocolError):
    """A POP3 server sent a malformed reply."""


class POP3ResponseError(MailResponseError):
    """A POP3 command got ``-ERR``."""

    def __init__(self, text: str, response_code: str | None = None) -> None:
        super().__init__(None, text, response_code)


class POP3AuthenticationError(POP3ResponseError, MailAuthenticationError):
    """The POP3 server refused the credentials."""


class POP3MailboxBusyError(POP3ResponseError):
    """The mailbox is locked by another session ([IN-USE]) or logins are throttled
    ([LOGIN-DELAY]). Retry later; the credentials were not judged wrong."""


class POP3MessageTooLargeError(MailHandlerError):
    """A POP3 message is larger than the handler's ``max_message_size``.

    The message was refused before (or, if the server misreported its size, while)
    being downloaded. ``message_number`` and ``size`` are ``None`` when unknown.
    """

    def __init__(self, message_number: int | None, size: int | None, limit: int) -> None:
        what = f"message {message_number}" if message_number is not None else "reply"
        detail = f"{size} bytes" if size is not None else "more"
        super().__init__(f"{what} is {detail}, over the limit of {limit} bytes")
        self.message_number = message_number
        self.size = size
        self.limit = limit


class POP3UnsupportedError(POP3ResponseError):
    """The POP3 server refused an optional command an operation needs (UIDL, TOP)."""


class POP3PoolClosedError(MailHandlerError):
    """A handler was requested from a POP3 connection pool after ``close_all()``."""


class SyncLeaseError(MailHandlerError):
    """The per-account sync lease (``account`` names the account, never a secret)."""

    def __init__(self, message: str, account: str) -> None:
        super().__init__(message)
        self.account = account


class AccountBusyError(SyncLeaseError):
    """Another worker holds the account's sync lease; nothing was done.

    ``retry_after`` is how many seconds its lease has left (0 when unknown).
    """

    def __init__(self, message: str, account: str, retry_after: float = 0.0) -> None:
        super().__init__(message, account)
        self.retry_after = retry_after


class LeaseLostError(SyncLeaseError):
    """The lease expired and another worker took it; the open transaction was rolled back.

    The fencing token checked inside the transaction did not match, so nothing this
    worker did under the lost lease was committed.
    """


__all__ = [
    "AccountBusyError",
    "ConfigurationError",
    "DNSLookupError",
    "DNSTimeoutError",
    "LeaseLostError",
    "MailAuthenticationError",
    "MailConnectionError",
    "MailHandlerError",
    "MailProtocolError",
    "MailResponseError",
    "MailSecurityError",
    "MailTimeoutError",
    "MailValidationError",
    "OAuth2EndpointError",
    "OAuth2TokenError",
    "OutcomeUnknownError",
    "POP3AuthenticationError",
    "POP3ConnectionError",
    "POP3MailboxBusyError",
    "POP3MessageTooLargeError",
    "POP3PoolClosedError",
    "POP3ProtocolError",
    "POP3ResponseError",
    "POP3SecurityError",
    "POP3TimeoutError",
    "POP3UnsupportedError",
    "PoolTimeoutError",
    "ProxyAuthenticationError",
    "ProxyError",
    "RateLimitTimeout",
    "SMTPDataRefused",
    "SMTPNotSupportedError",
    "SMTPRecipientsRefused",
    "SMTPResponseError",
    "SMTPSenderRefused",
    "SyncLeaseError",
    "parse_enhanced_code",
]
