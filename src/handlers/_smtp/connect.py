"""Opening an SMTP connection: connect, greeting, EHLO and STARTTLS, with bounded replies.

:func:`connect` builds the smtplib client (implicit TLS or plain), bounds every reply it
will read (:data:`MAX_REPLY_BYTES`) and checks the greeting; :func:`ehlo` and
:func:`starttls` follow. The smtplib-to-library error translation here
(:func:`disconnected`, :func:`decode_reply`) is shared with the login and the session.
"""

from __future__ import annotations

import contextlib
import functools
import smtplib
import socket
import ssl

from .._net import trace as wire_log
from .._net.config import Encryption, Endpoint
from .._net.deadline import Deadline
from .._net.tls import tls_error
from ..errors import (
    MailConnectionError,
    MailProtocolError,
    MailSecurityError,
    MailTimeoutError,
    SMTPResponseError,
)


@functools.lru_cache(maxsize=1)
def default_local_hostname() -> str:
    """The name sent in EHLO, looked up once per process (smtplib would look it up per
    connection)."""
    name = socket.getfqdn()
    return name if name and name.isascii() and "." in name else "localhost.localdomain"


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


def _is_reply_code(code: int) -> bool:
    return 200 <= code <= 599


#: Largest reply accepted, all its lines together. smtplib bounds each line but not
#: how many there are, so a server repeating "250-" lines would grow one reply until
#: memory or the operation deadline ran out.
MAX_REPLY_BYTES = 64 * 1024
_MAX_LINE = 8192  # smtplib's own bound on one reply line


def _bound_replies(client: smtplib.SMTP) -> None:
    """Make ``client`` read every reply through :func:`_read_bounded_reply`."""
    client.getreply = functools.partial(_read_bounded_reply, client)  # type: ignore[method-assign]


def _read_bounded_reply(client: smtplib.SMTP) -> tuple[int, bytes]:
    """smtplib's ``getreply``, refusing a reply longer than :data:`MAX_REPLY_BYTES`."""
    if client.file is None:
        if client.sock is None:
            raise smtplib.SMTPServerDisconnected("please run connect() first")
        client.file = client.sock.makefile("rb")
    lines: list[bytes] = []
    size = 0
    while True:
        try:
            line = client.file.readline(_MAX_LINE + 1)
        except OSError as error:
            client.close()
            raise smtplib.SMTPServerDisconnected(
                f"Connection unexpectedly closed: {error}"
            ) from error
        if not line:
            client.close()
            raise smtplib.SMTPServerDisconnected("Connection unexpectedly closed")
        size += len(line)
        if len(line) > _MAX_LINE or size > MAX_REPLY_BYTES:
            client.close()
            what = "Line" if len(line) > _MAX_LINE else "Reply"
            raise smtplib.SMTPResponseException(500, f"{what} too long.")
        lines.append(line[4:].strip(b" \t\r\n"))
        try:
            code = int(line[:3])
        except ValueError:
            return -1, b"\n".join(lines)
        if line[3:4] != b"-":
            return code, b"\n".join(lines)


def close_quietly(client: smtplib.SMTP) -> None:
    with contextlib.suppress(OSError):
        client.close()


def connect(
    endpoint: Endpoint,
    timeout: float,
    context: ssl.SSLContext | None,
    local_hostname: str,
    deadline: Deadline | None,
) -> smtplib.SMTP:
    host, port, encryption = endpoint.host, endpoint.port, endpoint.encryption
    client: smtplib.SMTP
    try:
        if encryption is Encryption.IMPLICIT_SSL:
            client = smtplib.SMTP_SSL(
                local_hostname=local_hostname, timeout=timeout, context=context
            )
        else:
            client = smtplib.SMTP(local_hostname=local_hostname, timeout=timeout)
        if deadline is not None:
            deadline.target = lambda: client.sock
        client._host = host  # type: ignore[attr-defined]  # smtplib uses it for SNI
        _bound_replies(client)
        # After the bound, so the trace wraps (and sees) the reader actually used.
        wire_log.watch_smtp(client, f"{host}:{port}")
        code, greeting = client.connect(host, port)
    except ssl.SSLError as error:
        raise tls_error(error, host) from None
    except smtplib.SMTPConnectError as error:
        raise SMTPResponseError(error.smtp_code, decode_reply(error.smtp_error)) from None
    except smtplib.SMTPResponseException as error:  # a greeting over its bounds
        raise MailProtocolError(
            f"bad greeting from {host}:{port}: {decode_reply(error.smtp_error)}"
        ) from None
    except smtplib.SMTPServerDisconnected as error:
        lost = disconnected(error)
        if isinstance(lost, MailTimeoutError) and encryption is not Encryption.IMPLICIT_SSL:
            lost = MailTimeoutError(
                f"no greeting from {host}:{port}: timed out after {timeout:g}s (a port "
                "that expects TLS from the first byte, such as 465, stays silent until the "
                "handshake: use encryption='ssl' there)"
            )
        raise lost from None
    except TimeoutError as error:
        raise MailTimeoutError(f"no answer from {host}:{port} within {timeout}s") from error
    except OSError as error:
        raise MailConnectionError(f"cannot connect to {host}:{port}: {error}") from None
    if not _is_reply_code(code):
        close_quietly(client)
        raise MailProtocolError(
            f"unintelligible greeting from {host}:{port}: {decode_reply(greeting)[:200]!r}"
        )
    if code != 220:
        close_quietly(client)
        raise SMTPResponseError(code, decode_reply(greeting))
    return client


def ehlo(client: smtplib.SMTP) -> None:
    try:
        code, reply = client.ehlo()
        if code != 250 and _is_reply_code(code):
            code, reply = client.helo()
    except smtplib.SMTPServerDisconnected as error:
        raise disconnected(error) from None
    except smtplib.SMTPResponseException as error:  # a reply over its bounds
        raise MailProtocolError(f"bad reply to EHLO: {decode_reply(error.smtp_error)}") from None
    except OSError as error:
        raise disconnected(error) from None
    if not _is_reply_code(code):
        raise MailProtocolError(f"unintelligible reply to EHLO: {decode_reply(reply)[:200]!r}")
    if code != 250:
        raise SMTPResponseError(code, decode_reply(reply))


def starttls(client: smtplib.SMTP, host: str, context: ssl.SSLContext) -> None:
    if not client.has_extn("starttls"):
        raise MailSecurityError(
            f"{host} does not offer STARTTLS; refusing to continue without encryption "
            "(use encryption='ssl' for implicit TLS, or 'none' to send in clear deliberately)"
        )
    try:
        client.starttls(context=context)
    except smtplib.SMTPResponseException as error:
        raise MailSecurityError(
            f"{host} refused STARTTLS ({error.smtp_code} {decode_reply(error.smtp_error)}); "
            "refusing to continue without encryption"
        ) from None
    except ssl.SSLError as error:
        raise tls_error(error, host) from None
    except smtplib.SMTPServerDisconnected as error:
        raise disconnected(error) from None
    except OSError as error:
        raise disconnected(error) from None
    ehlo(client)
