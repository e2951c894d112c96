"""Opening an SMTP connection: connect and greeting, EHLO and STARTTLS.

:func:`connect` makes the :class:`~.client.SMTPClient` (implicit TLS or plain) and
checks the greeting, recognising a plain connection to a port that expects TLS from
the first byte; :func:`ehlo` and :func:`starttls` follow.
"""

from __future__ import annotations

import contextlib
import functools
import smtplib
import socket
import ssl

from .._net.config import Encryption, Endpoint
from .._net.connect import Proxy
from .._net.deadline import Deadline
from .._net.tls import PLAINTEXT_REPLY
from ..errors import (
    MailConnectionError,
    MailHandlerError,
    MailProtocolError,
    MailSecurityError,
    MailTimeoutError,
    SMTPResponseError,
)
from .client import SMTPClient, SMTPSSLClient
from .mapping import HANDSHAKE_CUT, decode_reply, disconnected, map_errors


@functools.lru_cache(maxsize=1)
def default_local_hostname() -> str:
    """The name sent in EHLO, looked up once per process (smtplib would look it up per
    connection)."""
    name = socket.getfqdn()
    return name if name and name.isascii() and "." in name else "localhost.localdomain"


def _is_reply_code(code: int) -> bool:
    return 200 <= code <= 599


def close_quietly(client: smtplib.SMTP) -> None:
    with contextlib.suppress(OSError):
        client.close()


def connect(
    endpoint: Endpoint,
    timeout: float,
    context: ssl.SSLContext | None,
    local_hostname: str,
    deadline: Deadline | None,
    *,
    proxy: Proxy | None = None,
) -> SMTPClient:
    """Connect (through ``proxy`` if given) and read the greeting; raise a library
    error unless it is a 220."""
    host, port, encryption = endpoint.host, endpoint.port, endpoint.encryption
    where = f"{host}:{port}"
    client: SMTPClient
    if encryption is Encryption.IMPLICIT_SSL:
        assert context is not None
        client = SMTPSSLClient(
            where, local_hostname=local_hostname, timeout=timeout, tls_context=context, proxy=proxy
        )
    else:
        client = SMTPClient(where, local_hostname=local_hostname, timeout=timeout, proxy=proxy)
    if deadline is not None:
        deadline.target = lambda: client.sock
    try:
        with map_errors("the greeting", host):
            try:
                code, greeting = client.connect(host, port)
            except MailHandlerError:
                # open_connection's own errors: DNS, every address failed, the proxy.
                raise
            except smtplib.SMTPConnectError as error:
                raise SMTPResponseError(error.smtp_code, decode_reply(error.smtp_error)) from None
            except smtplib.SMTPResponseException as error:  # a greeting over its bounds
                raise MailProtocolError(
                    f"bad greeting from {where}: {decode_reply(error.smtp_error)}"
                ) from None
            except smtplib.SMTPServerDisconnected as error:
                lost = disconnected(error)
                silent = isinstance(lost, MailTimeoutError) and not lost.reset_by_peer
                if silent and encryption is not Encryption.IMPLICIT_SSL:
                    raise _silent_greeting(client, endpoint, timeout, deadline) from None
                raise lost from None
            except TimeoutError:
                raise MailTimeoutError(f"no answer from {where} within {timeout:g}s") from None
            except HANDSHAKE_CUT as error:
                # Implicit TLS: the server went away mid-handshake, before anything
                # was said; as retryable as any connection that failed.
                raise MailConnectionError(
                    f"connection to {where} lost during the TLS handshake: {error}"
                ) from None
            except OSError as error:
                if isinstance(error, ssl.SSLError):
                    raise
                raise MailConnectionError(f"cannot connect to {where}: {error}") from None
    except BaseException:
        close_quietly(client)
        raise
    if not _is_reply_code(code):
        close_quietly(client)
        raise MailProtocolError(
            f"unintelligible greeting from {where}: {decode_reply(greeting)[:200]!r}"
        )
    if code != 220:
        close_quietly(client)
        raise SMTPResponseError(code, decode_reply(greeting))
    return client


#: How long a silent server is given to answer a TLS ClientHello: one that speaks TLS
#: answers at once.
_PROBE_SECONDS = 5.0


def _silent_greeting(
    client: SMTPClient, endpoint: Endpoint, timeout: float, deadline: Deadline | None
) -> MailHandlerError:
    """The error for a server that sent no greeting in time on a plain connection.

    A port that expects TLS from the first byte (465) stays silent, waiting for a
    ClientHello. One is sent on the same connection: when the server answers it, the
    encryption mode is wrong for the port, no retry can help, and the error is a
    :class:`MailSecurityError` (never retried) that names the fix.
    """
    where = f"{endpoint.host}:{endpoint.port}"
    raw = client.sock
    client.sock = client.file = None  # the probe owns the socket now
    bound = min(timeout, _PROBE_SECONDS)
    if deadline is not None:
        # Half of what is left, so that a silent server is still reported as one.
        bound = min(bound, deadline.remaining() / 2)
        deadline.target = lambda: raw
    if raw is not None and bound > 0 and _speaks_tls(raw, endpoint.host, bound):
        return MailSecurityError(
            f"{where} expects TLS from the first byte and sent no plain-text greeting: "
            "use encryption='ssl' for this port (such as 465)"
        )
    return MailTimeoutError(
        f"no greeting from {where}: timed out after {timeout:g}s (a port that expects TLS "
        "from the first byte, such as 465, stays silent until the handshake: use "
        "encryption='ssl' there)"
    )


def _speaks_tls(raw: socket.socket, host: str, timeout: float) -> bool:
    """Whether the server answers a TLS ClientHello on ``raw`` (closed afterwards)."""
    probe = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    probe.check_hostname = False
    probe.verify_mode = ssl.CERT_NONE  # nothing is sent: only "does it speak TLS?"
    try:
        raw.settimeout(timeout)
        with probe.wrap_socket(raw, server_hostname=host):
            return True
    except ssl.SSLError as error:
        return getattr(error, "reason", None) not in PLAINTEXT_REPLY and not isinstance(
            error, HANDSHAKE_CUT
        )
    except OSError:
        return False
    finally:
        with contextlib.suppress(OSError):
            raw.close()


def ehlo(client: smtplib.SMTP) -> None:
    """EHLO, falling back to HELO when the server does not know it."""
    with map_errors("EHLO"):
        code, reply = client.ehlo()
        if code != 250 and _is_reply_code(code):
            code, reply = client.helo()
    if not _is_reply_code(code):
        raise MailProtocolError(f"unintelligible reply to EHLO: {decode_reply(reply)[:200]!r}")
    if code != 250:
        raise SMTPResponseError(code, decode_reply(reply))


def starttls(client: smtplib.SMTP, host: str, context: ssl.SSLContext) -> None:
    """Upgrade to TLS and greet again; refuse to go on in clear if that fails."""
    if not client.has_extn("starttls"):
        raise MailSecurityError(
            f"{host} does not offer STARTTLS; refusing to continue without encryption "
            "(use encryption='ssl' for implicit TLS, or 'none' to send in clear deliberately)"
        )
    with map_errors("STARTTLS", host):
        try:
            client.starttls(context=context)
        except smtplib.SMTPResponseException as error:
            if isinstance(error, smtplib.SMTPServerDisconnected):
                raise
            raise MailSecurityError(
                f"{host} refused STARTTLS ({error.smtp_code} {decode_reply(error.smtp_error)}); "
                "refusing to continue without encryption"
            ) from None
    ehlo(client)
