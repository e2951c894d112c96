"""The one translation of smtplib, socket and ssl failures into the library's errors.

Every exchange with the server runs inside :func:`map_errors`, so the rules live here
once: a closed or reset connection and an unanswered read become
:class:`MailConnectionError` (:class:`MailTimeoutError` for a timeout, with
``reset_by_peer`` kept), a reply over its bounds a :class:`MailProtocolError`, and a
TLS failure a :class:`MailSecurityError` that says what to do (after STARTTLS even a
handshake cut short: a stripping attack looks just like that).
"""

from __future__ import annotations

import smtplib
import ssl
from collections.abc import Callable
from types import TracebackType

from .._net.tls import tls_error
from ..errors import (
    MailConnectionError,
    MailHandlerError,
    MailProtocolError,
    MailTimeoutError,
)

#: TLS failures that are a connection cut in the middle of the handshake, not a
#: verdict on the server's security: worth another attempt like any broken connection.
HANDSHAKE_CUT = (ssl.SSLEOFError, ssl.SSLZeroReturnError, ssl.SSLSyscallError)


def decode_reply(reply: bytes | str) -> str:
    """A reply's text as str; bytes that are not UTF-8 are replaced."""
    if isinstance(reply, bytes):
        return reply.decode("utf-8", "replace")
    return reply


def disconnected(error: BaseException) -> MailConnectionError:
    """Wrap a socket-level failure, keeping the fact smtplib hides: was it a reset?"""
    root = error.__context__ if isinstance(error, smtplib.SMTPException) else error
    text = str(error)
    wrapped: MailConnectionError
    if isinstance(root, TimeoutError) or "timed out" in text:
        wrapped = MailTimeoutError(f"server did not answer in time: {text}")
    else:
        wrapped = MailConnectionError(f"connection lost: {text}")
    wrapped.reset_by_peer = isinstance(root, ConnectionResetError)
    return wrapped


class map_errors:
    """Run the block, turning what smtplib, socket and ssl raise into library errors.

    ``doing`` names the step in messages ("EHLO", "end of DATA"); ``host`` is named
    in TLS messages; ``on_failure`` runs before any error leaves the block (a
    connection marks itself broken). Library errors pass through unchanged.

    A class rather than a generator: it runs several times per message, and entering
    it costs two plain method calls.
    """

    __slots__ = ("doing", "host", "on_failure")

    def __init__(
        self,
        doing: str,
        host: str = "the server",
        on_failure: Callable[[], None] | None = None,
    ) -> None:
        self.doing = doing
        self.host = host
        self.on_failure = on_failure

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if not isinstance(error, Exception):
            return  # no error, or KeyboardInterrupt and friends: pass untouched
        failure = translate(error, self.doing, self.host)
        if self.on_failure is not None:
            self.on_failure()
        if failure is not None:
            raise failure from None


def translate(
    error: BaseException, doing: str, host: str = "the server"
) -> MailHandlerError | None:
    """The library error for what smtplib, socket or ssl raised while ``doing``; None
    for a library error (already translated) or anything else (a bug, left as is)."""
    if isinstance(error, MailHandlerError):
        return None
    if isinstance(error, ssl.SSLError):
        return tls_error(error, host)
    if isinstance(error, smtplib.SMTPServerDisconnected):
        return disconnected(error)
    if isinstance(error, smtplib.SMTPResponseException):
        # Checked before OSError, which smtplib's exceptions also are: a reply over
        # its bounds, or one that smtplib itself refused.
        return MailProtocolError(f"bad reply to {doing}: {decode_reply(error.smtp_error)}")
    if isinstance(error, OSError):
        return disconnected(error)
    return None
