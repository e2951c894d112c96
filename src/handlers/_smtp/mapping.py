"""The one translation of smtplib, socket and ssl failures into the library's errors.

Every exchange with the server runs inside :func:`map_errors`, so the rules live here
once: a closed or reset connection and an unanswered read become
:class:`MailConnectionError` (:class:`MailTimeoutError` for a timeout, with
``reset_by_peer`` kept), a reply over its bounds a :class:`MailProtocolError`, and a
TLS failure a :class:`MailSecurityError` that says what to do (after STARTTLS even a
handshake cut short: a stripping attack looks just like that).
"""

from __future__ import annotations

import contextlib
import smtplib
import ssl
from collections.abc import Callable, Iterator

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


@contextlib.contextmanager
def map_errors(
    doing: str, host: str = "the server", on_failure: Callable[[], None] | None = None
) -> Iterator[None]:
    """Run the block, turning what smtplib, socket and ssl raise into library errors.

    ``doing`` names the step in messages ("EHLO", "end of DATA"); ``host`` is named
    in TLS messages; ``on_failure`` runs before any error leaves the block (a
    connection marks itself broken). Library errors pass through unchanged.
    """
    try:
        yield
        return
    except MailHandlerError:
        if on_failure is not None:
            on_failure()
        raise
    except ssl.SSLError as error:
        failure: MailHandlerError = tls_error(error, host)
    except smtplib.SMTPServerDisconnected as error:
        failure = disconnected(error)
    except smtplib.SMTPResponseException as error:
        # Caught before OSError, which smtplib's exceptions also are: a reply over
        # its bounds, or one that smtplib itself refused.
        failure = MailProtocolError(f"bad reply to {doing}: {decode_reply(error.smtp_error)}")
    except OSError as error:
        failure = disconnected(error)
    if on_failure is not None:
        on_failure()
    raise failure from None
