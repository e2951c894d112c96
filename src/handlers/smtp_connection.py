"""One SMTP connection: opening it safely, checking its health, and one mail transaction.

This is the choke point between the handler and :mod:`smtplib`. It turns every
smtplib and socket failure into the library's exception tree and records the facts
retry decisions need: whether the message body was handed over completely before the
connection failed (then the outcome is unknown and the message must not be resent).
"""

from __future__ import annotations

import base64
import contextlib
import functools
import logging
import os
import re
import select
import smtplib
import socket
import ssl
import time
from dataclasses import dataclass, field
from enum import Enum

from . import wire_log
from .deadline import Deadline
from .errors import (
    MailAuthenticationError,
    MailConnectionError,
    MailHandlerError,
    MailProtocolError,
    MailSecurityError,
    MailTimeoutError,
    OutcomeUnknownError,
    SMTPDataRefused,
    SMTPRecipientsRefused,
    SMTPResponseError,
    SMTPSenderRefused,
)
from .message_builder import OutgoingMessage
from .oauth2 import MECHANISM as XOAUTH2
from .oauth2 import (
    SMTP_COMMAND_LIMIT,
    TokenSource,
    XOAUTH2Exchange,
    explain,
    initial_response_fits,
    login_with_refresh,
)
from .tls import resolve_context, tls_error

log = logging.getLogger(__name__)

_DOT_AT_LINE_START = re.compile(rb"(?m)^\.")


class SMTPEncryption(Enum):
    """How the connection is protected."""

    NONE = "none"
    STARTTLS = "tls"
    IMPLICIT_SSL = "ssl"


class SMTPNotSupportedError(MailHandlerError):
    """The server lacks an extension this message needs (SMTPUTF8, or a large enough SIZE)."""


@functools.lru_cache(maxsize=1)
def default_local_hostname() -> str:
    """The name sent in EHLO, looked up once per process (smtplib would look it up per
    connection)."""
    name = socket.getfqdn()
    return name if name and name.isascii() and "." in name else "localhost.localdomain"


def _decode(reply: bytes | str) -> str:
    if isinstance(reply, bytes):
        return reply.decode("utf-8", "replace")
    return reply


@dataclass
class TransactionOutcome:
    """What the server said about one message."""

    code: int
    text: str
    accepted: list[str] = field(default_factory=list)
    refused: dict[str, tuple[int, str]] = field(default_factory=dict)


class SMTPConnection:
    """A connected, greeted, (optionally) encrypted and authenticated SMTP session.

    Created by :meth:`open`; used by one thread at a time (the pool guarantees it).
    Any failure mid-command marks it ``broken`` and it is never reused.
    """

    def __init__(self, client: smtplib.SMTP, key: object, clock: float) -> None:
        self.client = client
        self.key = key
        self.created_at = clock
        self.last_used = clock
        self.pid = os.getpid()
        self.broken = False
        self.messages_sent = 0
        self.generation = 0  # set by the pool that owns the connection
        self.checked_out = False  # True while a caller holds it from the pool
        # True once a message's final dot went out: from then on, a reply that does not
        # arrive (or cannot be read) leaves the outcome unknown.
        self.final_dot_sent = False

    # ------------------------------------------------------------------ opening

    @classmethod
    def open(
        cls,
        host: str,
        port: int,
        *,
        encryption: SMTPEncryption,
        username: str | None,
        password: str | None,
        timeout: float,
        ssl_context: ssl.SSLContext | None,
        local_hostname: str | None,
        key: object = None,
        clock: float | None = None,
        deadline: Deadline | None = None,
        oauth2: TokenSource | None = None,
        oauth2_initial_response: bool = True,
    ) -> SMTPConnection:
        """Connect, greet, secure and authenticate; raise a library error on any failure.

        With a ``deadline``, the whole opening (greeting, TLS, login) is cut short when
        it passes, however slowly the server drips its replies. With ``oauth2`` the
        login uses XOAUTH2 instead of the password (see :mod:`src.handlers.oauth2`).
        """
        context = resolve_context(ssl_context) if encryption is not SMTPEncryption.NONE else None
        name = local_hostname or default_local_hostname()
        client = _connect(host, port, encryption, timeout, context, name, deadline)
        try:
            _ehlo(client)
            if encryption is SMTPEncryption.STARTTLS:
                assert context is not None
                _starttls(client, host, context)
            if username:
                _login(
                    client,
                    username,
                    password or "",
                    oauth2=oauth2,
                    oauth2_initial_response=oauth2_initial_response,
                    encrypted=encryption is not SMTPEncryption.NONE,
                    where=f"{host}:{port}",
                )
        except BaseException:
            _close_quietly(client)
            raise
        log.debug("opened SMTP connection to %s:%s (%s)", host, port, encryption.value)
        return cls(client, key, time.monotonic() if clock is None else clock)

    # ------------------------------------------------------------------ health

    def is_dropped(self) -> bool:
        """True if the server closed the connection or sent something unasked for.

        Checked without a round trip: an idle SMTP connection must not be readable.
        """
        sock = self.client.sock
        if sock is None or self.broken:
            return True
        try:
            if not _readable(sock):
                return False
            if isinstance(sock, ssl.SSLSocket):
                # TLS 1.3 session tickets make a socket readable without any
                # application data; a non-blocking read tells them apart.
                sock.setblocking(False)
                try:
                    sock.recv(1)  # data or EOF: either way the session is unusable
                    return True
                except ssl.SSLWantReadError:
                    return False
                finally:
                    sock.setblocking(True)
                    sock.settimeout(self.client.timeout)
            return True
        except (OSError, ValueError):
            return True

    def has_extension(self, name: str) -> bool:
        """Whether the server advertised ``name`` in its EHLO reply."""
        return self.client.has_extn(name)

    @property
    def extensions(self) -> dict[str, str]:
        """The EHLO extensions, lower-case name to parameters."""
        return dict(self.client.esmtp_features)

    @property
    def tls_version(self) -> str | None:
        """The negotiated TLS version, or None on a plain connection."""
        sock = self.client.sock
        return sock.version() if isinstance(sock, ssl.SSLSocket) else None

    # ------------------------------------------------------------------ commands

    def _command(self, verb: str, args: str = "") -> tuple[int, str]:
        try:
            code, reply = self.client.docmd(verb, args)
        except smtplib.SMTPServerDisconnected as error:
            self.broken = True
            raise _disconnected(error) from None
        except smtplib.SMTPResponseException as error:  # a reply over its bounds
            # Caught before OSError, which smtplib's exceptions also are.
            self.broken = True
            raise MailProtocolError(f"bad reply to {verb}: {_decode(error.smtp_error)}") from None
        except OSError as error:
            self.broken = True
            raise _disconnected(error) from None
        return self._check_reply(verb, code, _decode(reply))

    def _read_reply(self, after: str) -> tuple[int, str]:
        try:
            code, reply = self.client.getreply()
        except smtplib.SMTPServerDisconnected as error:
            self.broken = True
            raise _disconnected(error) from None
        except smtplib.SMTPResponseException as error:
            self.broken = True
            raise MailProtocolError(f"bad reply to {after}: {_decode(error.smtp_error)}") from None
        return self._check_reply(after, code, _decode(reply))

    def _check_reply(self, verb: str, code: int, text: str) -> tuple[int, str]:
        if code < 200 or code > 599:
            self.broken = True
            raise MailProtocolError(f"unintelligible reply to {verb}: {text[:200]!r}")
        if code == 421:
            # The server is closing this connection; nothing more can be done on it.
            self.broken = True
        return code, text

    def noop(self) -> bool:
        """Send NOOP; True when the server answers 250."""
        return self._command("NOOP")[0] == 250

    def reset(self) -> None:
        """Abort a half-done transaction with RSET; a failure marks the connection broken."""
        try:
            code, _ = self._command("RSET")
        except MailHandlerError:
            self.broken = True
            return
        if code != 250:
            self.broken = True

    def _send_bytes(self, data: bytes) -> None:
        sock = self.client.sock
        if sock is None:
            self.broken = True
            raise MailConnectionError("connection is closed")
        try:
            sock.sendall(data)
        except OSError as error:
            self.broken = True
            raise _disconnected(error) from None

    # ------------------------------------------------------------------ transaction

    def _mail_options(self, message: OutgoingMessage) -> list[str]:
        options: list[str] = []
        if message.smtputf8:
            if not self.has_extension("smtputf8"):
                raise SMTPNotSupportedError(
                    "an address needs SMTPUTF8 (non-ASCII before the '@') and the server "
                    "does not offer it"
                )
            options.append("SMTPUTF8")
            if self.has_extension("8bitmime"):
                options.append("BODY=8BITMIME")
        if self.has_extension("size"):
            limit = self.client.esmtp_features.get("size", "").strip()
            if limit.isdigit() and int(limit) and len(message.data) > int(limit):
                raise SMTPNotSupportedError(
                    f"message is {len(message.data)} bytes; the server accepts at most {limit}"
                )
            options.append(f"SIZE={len(message.data)}")
        return options

    def send(self, message: OutgoingMessage) -> TransactionOutcome:
        """Run MAIL, RCPT and DATA for ``message``; pipelined when the server allows.

        Returns the outcome when the message was accepted for at least one recipient;
        raises SMTPSenderRefused, SMTPRecipientsRefused, SMTPDataRefused, a connection
        error (message not accepted) or OutcomeUnknownError (body sent, no reply).
        """
        options = " ".join(self._mail_options(message))
        # smtplib encodes commands as ASCII unless told otherwise; SMTPUTF8 needs UTF-8.
        self.client.command_encoding = "utf-8" if message.smtputf8 else "ascii"
        mail_args = f"FROM:<{message.sender}>" + (f" {options}" if options else "")
        rcpt_lines = [f"RCPT TO:<{r}>" for r in message.recipients]
        if self.has_extension("pipelining"):
            replies = self._pipelined_envelope(mail_args, rcpt_lines)
        else:
            replies = self._lockstep_envelope(mail_args, rcpt_lines)
        outcome = self._judge_envelope(message, replies)
        self.final_dot_sent = False
        self._send_body(message.data)
        self.final_dot_sent = True
        code, text = self._final_reply()
        if code != 250:
            raise SMTPDataRefused(code, text)
        self.messages_sent += 1
        outcome.code, outcome.text = code, text
        return outcome

    def _lockstep_envelope(self, mail_args: str, rcpt_lines: list[str]) -> list[tuple[int, str]]:
        replies = [self._command("MAIL", mail_args)]
        if replies[0][0] != 250:
            return replies
        for line in rcpt_lines:
            replies.append(self._command("RCPT", line[5:]))
        if any(code in (250, 251) for code, _ in replies[1:]):
            replies.append(self._command("DATA"))
        return replies

    def _pipelined_envelope(self, mail_args: str, rcpt_lines: list[str]) -> list[tuple[int, str]]:
        # RFC 2920: MAIL, every RCPT and DATA go out in one write; replies come back in order.
        commands = [f"MAIL {mail_args}", *rcpt_lines, "DATA"]
        wire_log.sent(self.client, commands)
        self._send_bytes(("\r\n".join(commands) + "\r\n").encode("utf-8"))
        return [self._read_reply(command.split(" ", 1)[0]) for command in commands]

    def _judge_envelope(
        self, message: OutgoingMessage, replies: list[tuple[int, str]]
    ) -> TransactionOutcome:
        mail_code, mail_text = replies[0]
        if mail_code != 250:
            self._abort_after(replies, expected=1 + len(message.recipients) + 1)
            raise SMTPSenderRefused(mail_code, mail_text, message.sender)
        outcome = TransactionOutcome(code=0, text="")
        for recipient, (code, text) in zip(message.recipients, replies[1:], strict=False):
            if code in (250, 251):
                outcome.accepted.append(recipient)
            else:
                outcome.refused[recipient] = (code, text)
        if not outcome.accepted:
            self._abort_after(replies, expected=1 + len(message.recipients) + 1)
            code, text = min(outcome.refused.values())  # a 4xx (retryable) wins over 5xx
            raise SMTPRecipientsRefused(code, text, outcome.refused)
        data_code, data_text = replies[-1]
        if data_code != 354:
            self.reset()
            raise SMTPDataRefused(data_code, data_text)
        return outcome

    def _abort_after(self, replies: list[tuple[int, str]], expected: int) -> None:
        """Leave the connection clean after a refused envelope."""
        if self.broken:
            # A 421: the server is closing, and a lenient one might even take the
            # empty message below. Say nothing more.
            return
        if len(replies) == expected and replies[-1][0] == 354:
            # The server accepted DATA despite refusing the envelope: send an empty
            # body's terminator so nothing is delivered, then reset.
            self._send_bytes(b".\r\n")
            self._read_reply("DATA")
        self.reset()

    def _send_body(self, data: bytes) -> None:
        # Two C-speed scans decide whether the regex (ten times slower) is needed.
        stuffing = data.startswith(b".") or b"\n." in data
        payload = _DOT_AT_LINE_START.sub(b"..", data) if stuffing else data
        if not payload.endswith(b"\r\n"):
            payload += b"\r\n"
        wire_log.sent_data(self.client, len(payload))
        # A failure while sending is safe to retry: without the final dot the server
        # discards the partial message.
        self._send_bytes(payload + b".\r\n")

    def _final_reply(self) -> tuple[int, str]:
        try:
            return self._read_reply("end of DATA")
        except MailProtocolError as error:
            raise OutcomeUnknownError(
                "the whole message was sent but the server's reply to it could not be "
                f"understood ({error}); it may or may not have been delivered"
            ) from None
        except MailConnectionError as error:
            if error.reset_by_peer:
                # A reset means our bytes were still unread when the server closed:
                # it never saw the final dot, so it cannot have accepted the message.
                raise
            raise OutcomeUnknownError(
                "the connection was lost after the whole message was sent and before the "
                f"server confirmed it ({error}); it may or may not have been delivered"
            ) from None

    # ------------------------------------------------------------------ closing

    def close(self, polite: bool = True) -> None:
        """QUIT (if ``polite`` and healthy) and close the socket; never raises."""
        if polite and not self.broken and self.pid == os.getpid():
            with contextlib.suppress(OSError, smtplib.SMTPException):
                self.client.docmd("QUIT")
        _close_quietly(self.client)
        self.broken = True

    def __repr__(self) -> str:
        state = "broken" if self.broken else "open"
        return f"<SMTPConnection {state} sent={self.messages_sent}>"


# ---------------------------------------------------------------------- helpers


def _readable(sock: socket.socket) -> bool:
    if isinstance(sock, ssl.SSLSocket) and sock.pending():
        return True
    poller = select.poll()
    poller.register(sock, select.POLLIN | select.POLLPRI)
    return bool(poller.poll(0))


def _disconnected(error: BaseException) -> MailConnectionError:
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


def _close_quietly(client: smtplib.SMTP) -> None:
    with contextlib.suppress(OSError):
        client.close()


def _connect(
    host: str,
    port: int,
    encryption: SMTPEncryption,
    timeout: float,
    context: ssl.SSLContext | None,
    local_hostname: str,
    deadline: Deadline | None,
) -> smtplib.SMTP:
    client: smtplib.SMTP
    try:
        if encryption is SMTPEncryption.IMPLICIT_SSL:
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
        raise SMTPResponseError(error.smtp_code, _decode(error.smtp_error)) from None
    except smtplib.SMTPResponseException as error:  # a greeting over its bounds
        raise MailProtocolError(
            f"bad greeting from {host}:{port}: {_decode(error.smtp_error)}"
        ) from None
    except smtplib.SMTPServerDisconnected as error:
        lost = _disconnected(error)
        if isinstance(lost, MailTimeoutError) and encryption is not SMTPEncryption.IMPLICIT_SSL:
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
        _close_quietly(client)
        raise MailProtocolError(
            f"unintelligible greeting from {host}:{port}: {_decode(greeting)[:200]!r}"
        )
    if code != 220:
        _close_quietly(client)
        raise SMTPResponseError(code, _decode(greeting))
    return client


def _ehlo(client: smtplib.SMTP) -> None:
    try:
        code, reply = client.ehlo()
        if code != 250 and _is_reply_code(code):
            code, reply = client.helo()
    except smtplib.SMTPServerDisconnected as error:
        raise _disconnected(error) from None
    except smtplib.SMTPResponseException as error:  # a reply over its bounds
        raise MailProtocolError(f"bad reply to EHLO: {_decode(error.smtp_error)}") from None
    except OSError as error:
        raise _disconnected(error) from None
    if not _is_reply_code(code):
        raise MailProtocolError(f"unintelligible reply to EHLO: {_decode(reply)[:200]!r}")
    if code != 250:
        raise SMTPResponseError(code, _decode(reply))


def _starttls(client: smtplib.SMTP, host: str, context: ssl.SSLContext) -> None:
    if not client.has_extn("starttls"):
        raise MailSecurityError(
            f"{host} does not offer STARTTLS; refusing to continue without encryption "
            "(use encryption='ssl' for implicit TLS, or 'none' to send in clear deliberately)"
        )
    try:
        client.starttls(context=context)
    except smtplib.SMTPResponseException as error:
        raise MailSecurityError(
            f"{host} refused STARTTLS ({error.smtp_code} {_decode(error.smtp_error)}); "
            "refusing to continue without encryption"
        ) from None
    except ssl.SSLError as error:
        raise tls_error(error, host) from None
    except smtplib.SMTPServerDisconnected as error:
        raise _disconnected(error) from None
    except OSError as error:
        raise _disconnected(error) from None
    _ehlo(client)


#: Password mechanisms, best first. PLAIN is the one every server implements; CRAM-MD5
#: comes last because servers that keep only password hashes advertise it and then
#: refuse every attempt.
_PASSWORD_MECHANISMS = ("PLAIN", "LOGIN", "CRAM-MD5")
#: AUTH replies that refuse the mechanism, not the credentials (RFC 4954: 504 not
#: supported, 534 too weak, 538 needs encryption), after which the next may be tried.
_MECHANISM_REFUSED = frozenset({504, 534, 538})


def _login(
    client: smtplib.SMTP,
    username: str,
    password: str,
    *,
    oauth2: TokenSource | None = None,
    oauth2_initial_response: bool = True,
    encrypted: bool = True,
    where: str = "the server",
) -> None:
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
        _login_xoauth2(client, username, oauth2, oauth2_initial_response)
        return
    try:
        _password_login(client, username, password)
    except smtplib.SMTPAuthenticationError as error:
        # A server may echo the AUTH payload (or the password) in its refusal.
        text = wire_log.mask_secret(_decode(error.smtp_error), password)
        raise MailAuthenticationError(error.smtp_code, text) from None
    except smtplib.SMTPNotSupportedError:
        raise MailAuthenticationError(
            None, "the server offers no authentication mechanism this client supports"
        ) from None
    except smtplib.SMTPServerDisconnected as error:
        raise _disconnected(error) from None
    except smtplib.SMTPResponseException as error:
        # A server may echo the AUTH payload (or the password) in its refusal.
        text = wire_log.mask_secret(_decode(error.smtp_error), password)
        raise MailAuthenticationError(error.smtp_code, text) from None
    except OSError as error:
        raise _disconnected(error) from None


def _password_login(client: smtplib.SMTP, username: str, password: str) -> None:
    """AUTH with the best password mechanism both sides know, once.

    smtplib's ``login()`` tries every mechanism in turn after a refusal, so one wrong
    password costs two or three failed logins at the server (each counted towards
    its rate limits and lockouts) and as many of its failure delays. Another
    mechanism is tried here only when the server refused the mechanism itself.
    """
    features = getattr(client, "esmtp_features", None)
    if not isinstance(features, dict):  # a stand-in for smtplib.SMTP in someone's tests
        client.login(username, password)
        return
    offered = features.get("auth", "").upper().split()
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
) -> None:
    if XOAUTH2 not in client.esmtp_features.get("auth", "").upper().split():
        raise MailAuthenticationError(
            None, "the server does not offer AUTH XOAUTH2; cannot log in with an OAuth2 token"
        )

    def attempt(token: str) -> None:
        _xoauth2_once(client, username, token, initial_response)

    login_with_refresh(
        source,
        attempt,
        lambda reason: MailAuthenticationError(None, reason),
        where="the SMTP server",
    )


def _xoauth2_once(client: smtplib.SMTP, username: str, token: str, initial_response: bool) -> None:
    """One XOAUTH2 exchange; one step when allowed and the AUTH line fits (RFC 4954)."""
    exchange = XOAUTH2Exchange(username, token)
    one_step = initial_response and initial_response_fits(username, token, SMTP_COMMAND_LIMIT)
    try:
        client.auth(XOAUTH2, exchange, initial_response_ok=one_step)
    except smtplib.SMTPServerDisconnected as error:
        raise _disconnected(error) from None
    except smtplib.SMTPResponseException as error:  # SMTPAuthenticationError included
        text = explain(_decode(error.smtp_error), exchange.failure, token)
        raise MailAuthenticationError(error.smtp_code, text) from None
    except smtplib.SMTPException:
        raise MailProtocolError("the server kept sending XOAUTH2 challenges") from None
    except OSError as error:
        raise _disconnected(error) from None
