"""One SMTP connection: checking its health, its commands, and one mail transaction.

:meth:`SMTPConnection.open` connects, greets and secures the connection with the helpers
in :mod:`.connect`, then logs in with :mod:`.auth`. Every exchange runs inside
:func:`.mapping.map_errors`, so what reaches the handler is the library's exception
tree. A :class:`Transaction`, made for each attempt, records the fact retry decisions
need: whether this message's body was handed over completely before the connection
failed (then the outcome is unknown and the message must not be resent).
"""

from __future__ import annotations

import contextlib
import os
import re
import select
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from .._mime.builder import OutgoingMessage, PendingMessage
from .._net.config import Encryption
from .._net.deadline import Deadline
from .._net.logs import get_logger
from .._net.masking import mask_secrets
from .._net.tls import resolve_context
from ..errors import (
    MailConnectionError,
    MailHandlerError,
    MailProtocolError,
    OutcomeUnknownError,
    SMTPDataRefused,
    SMTPNotSupportedError,
    SMTPRecipientsRefused,
    SMTPSenderRefused,
)
from .auth import LoginOptions, login
from .client import SMTPClient
from .connect import close_quietly, connect, default_local_hostname, ehlo, starttls
from .mapping import decode_reply, map_errors
from .options import NO_OPTIONS, SendOptions
from .settings import SessionSettings

log = get_logger("smtp")

_DOT_AT_LINE_START = re.compile(rb"(?m)^\.")


@dataclass
class Transaction:
    """The state of one attempt to send one message, made fresh for every attempt.

    A pooled connection outlives its transactions, so what one message's exchange
    reached must never be read as another's: ``final_dot_sent`` belongs here.
    """

    final_dot_sent: bool = False
    """True once this message's final dot went out: from then on, a reply that does not
    arrive (or cannot be read) leaves the outcome unknown."""
    refused_at_mail_after: int | None = None
    """When MAIL got a transient refusal on a connection that had already carried
    messages, how many: the server may limit the messages of one session."""


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

    def __init__(self, client: SMTPClient, key: object, clock: float) -> None:
        self.client = client
        self.key = key
        self.created_at = clock
        self.last_used = clock
        self.pid = os.getpid()
        self.broken = False
        self.messages_sent = 0
        self.generation = 0  # set by the pool that owns the connection
        self.checked_out = False  # True while a caller holds it from the pool
        # Set when the session is fine but must not carry another message (the server's
        # per-session message limit): the pool closes it instead of keeping it.
        self.retired = False
        # Every secret this session's login sent: masked in every reply text it reports.
        self.secrets: tuple[str, ...] = ()
        # Told of every reply of a transaction (a rate limiter learns from them).
        self.observer: Callable[[int, str], None] | None = None

    # ------------------------------------------------------------------ opening

    @classmethod
    def open(
        cls,
        settings: SessionSettings,
        *,
        key: object = None,
        clock: float | None = None,
        deadline: Deadline | None = None,
        log_in: bool = True,
    ) -> SMTPConnection:
        """Connect, greet, secure and authenticate; raise a library error on any failure.

        With ``log_in=False`` the session stops before AUTH (to see what the server
        offers whatever the credentials).

        With a ``deadline``, the whole opening (greeting, TLS, login) is cut short when
        it passes, however slowly the server drips its replies. The login goes
        through the SASL mechanisms of :mod:`src.handlers._sasl` (see :mod:`.auth`).
        """
        endpoint, credentials = settings.endpoint, settings.credentials
        host, port, encryption = endpoint.host, endpoint.port, endpoint.encryption
        context = (
            resolve_context(settings.ssl_context) if encryption is not Encryption.NONE else None
        )
        name = settings.local_hostname or default_local_hostname()
        client = connect(
            endpoint, settings.timeouts.socket, context, name, deadline, proxy=settings.proxy
        )
        secrets: tuple[str, ...] = ()
        try:
            ehlo(client)
            if encryption is Encryption.STARTTLS:
                assert context is not None
                starttls(client, host, context)
            if log_in and (credentials.logs_in or settings.auth_mechanism == "EXTERNAL"):
                secrets = login(
                    client,
                    credentials,
                    LoginOptions(
                        settings.auth_mechanism,
                        settings.allow_cleartext,
                        settings.oauth2_initial_response,
                    ),
                    host=host,
                    port=port,
                )
        except BaseException:
            close_quietly(client)
            raise
        log.debug("opened SMTP connection to %s:%s (%s)", host, port, encryption.value)
        connection = cls(client, key, time.monotonic() if clock is None else clock)
        connection.secrets = secrets
        if secrets:
            client.mask_in_trace(secrets)
        return connection

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
    def server_name(self) -> str | None:
        """The first line of the last EHLO (or HELO) reply: how the server names itself."""
        reply = self.client.ehlo_resp or self.client.helo_resp or b""
        return reply.decode("utf-8", "replace").split("\n", 1)[0] or None

    @property
    def tls_active(self) -> bool:
        """Whether the session is encrypted (implicit TLS or after STARTTLS)."""
        return isinstance(self.client.sock, ssl.SSLSocket)

    # ------------------------------------------------------------------ commands

    def _broke(self) -> None:
        self.broken = True

    def _command(self, verb: str, args: str = "") -> tuple[int, str]:
        with map_errors(verb, on_failure=self._broke):
            code, reply = self.client.docmd(verb, args)
        return self._check_reply(verb, code, decode_reply(reply))

    def _read_reply(self, after: str) -> tuple[int, str]:
        with map_errors(after, on_failure=self._broke):
            code, reply = self.client.getreply()
        return self._check_reply(after, code, decode_reply(reply))

    def _check_reply(self, verb: str, code: int, text: str) -> tuple[int, str]:
        if self.observer is not None:
            self.observer(code, text)
        if self.secrets and (code >= 400 or code < 200):
            # Error texts end up in results, logs and exceptions; a server may echo
            # what the login sent.
            text = mask_secrets(text, self.secrets)
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

    # ------------------------------------------------------------------ transaction

    def _mail_options(
        self, message: OutgoingMessage | PendingMessage, options: SendOptions
    ) -> list[str]:
        parameters: list[str] = []
        if message.smtputf8:
            if not self.has_extension("smtputf8"):
                raise SMTPNotSupportedError(
                    "an address or header needs SMTPUTF8 (non-ASCII) and the server "
                    "does not offer it"
                )
            parameters.append("SMTPUTF8")
        if message.eight_bit and not self.has_extension("8bitmime"):
            raise SMTPNotSupportedError(
                "the message body has 8-bit octets and the server does not offer 8BITMIME"
            )
        if (message.smtputf8 or message.eight_bit) and self.has_extension("8bitmime"):
            parameters.append("BODY=8BITMIME")
        if self.has_extension("size"):
            size = _declared_size(message)
            limit = _size_limit(self.client.esmtp_features.get("size", ""))
            if limit is not None and size > limit:
                raise SMTPNotSupportedError(
                    f"message is {size} bytes; the server accepts at most {limit}"
                )
            parameters.append(f"SIZE={size}")
        if options.require_tls:
            if not self.tls_active:
                raise SMTPNotSupportedError(
                    "REQUIRETLS was asked for and the connection is not encrypted; nothing was sent"
                )
            if not self.has_extension("requiretls"):
                raise SMTPNotSupportedError(
                    "REQUIRETLS was asked for and the server does not offer it; nothing was sent"
                )
            parameters.append("REQUIRETLS")
        if options.dsn is not None and self._dsn_offered(options):
            parameters.extend(options.dsn.mail_parameters())
        return parameters

    def _dsn_offered(self, options: SendOptions) -> bool:
        if self.has_extension("dsn"):
            return True
        assert options.dsn is not None
        if options.dsn.required:
            raise SMTPNotSupportedError(
                "delivery status notifications were required and the server does not "
                "offer DSN; nothing was sent"
            )
        log.warning("the SMTP server does not offer DSN; sending without NOTIFY/RET/ENVID")
        return False

    def send(
        self,
        message: OutgoingMessage | PendingMessage,
        transaction: Transaction,
        options: SendOptions = NO_OPTIONS,
    ) -> TransactionOutcome:
        """Run MAIL, RCPT and DATA (or BDAT) for ``message``; pipelined when allowed.

        A :class:`PendingMessage` is built while the server answers the pipelined
        envelope when its estimated size may stand in for the real one (see
        :meth:`_builds_in_flight`); otherwise first. ``transaction`` records how far
        this attempt got. Returns the outcome when the message was accepted for at
        least one recipient; raises SMTPSenderRefused, SMTPRecipientsRefused,
        SMTPDataRefused, SMTPNotSupportedError (nothing sent), a connection error
        (message not accepted) or OutcomeUnknownError (body sent, no reply).
        """
        if isinstance(message, PendingMessage) and not self._builds_in_flight(message):
            message = message.built()  # still pending below means: built in flight
        parameters = " ".join(self._mail_options(message, options))
        # smtplib encodes commands as ASCII unless told otherwise; SMTPUTF8 needs UTF-8.
        self.client.command_encoding = "utf-8" if message.smtputf8 else "ascii"
        mail_args = f"FROM:<{message.sender}>" + (f" {parameters}" if parameters else "")
        dsn = options.dsn if options.dsn is not None and self.has_extension("dsn") else None
        rcpt_lines = [
            f"RCPT TO:<{r}>" + ("".join(f" {p}" for p in dsn.rcpt_parameters(r)) if dsn else "")
            for r in message.recipients
        ]
        if isinstance(message, PendingMessage):
            replies = self._pipelined_envelope(mail_args, rcpt_lines, build=message)
            built = message.built()
        else:
            built = message
            if self.has_extension("chunking"):
                return self._send_chunked(message, transaction, mail_args, rcpt_lines)
            if self.has_extension("pipelining"):
                replies = self._pipelined_envelope(mail_args, rcpt_lines)
            else:
                replies = self._lockstep_envelope(mail_args, rcpt_lines)
        self._note_mail_refusal(transaction, replies[0][0])
        outcome = self._judge_envelope(built, replies)
        self._send_body(built.data)
        transaction.final_dot_sent = True
        code, text = self._final_reply()
        if code != 250:
            raise SMTPDataRefused(code, text)
        self.messages_sent += 1
        outcome.code, outcome.text = code, text
        return outcome

    def _note_mail_refusal(self, transaction: Transaction, mail_code: int) -> None:
        if 400 <= mail_code < 500 and mail_code != 421 and self.messages_sent:
            transaction.refused_at_mail_after = self.messages_sent
            self.retired = True

    def _send_chunked(
        self,
        message: OutgoingMessage,
        transaction: Transaction,
        mail_args: str,
        rcpt_lines: list[str],
    ) -> TransactionOutcome:
        """RFC 3030: the body as one ``BDAT <size> LAST`` chunk, not dot-stuffed.

        With PIPELINING, MAIL, every RCPT and the chunk go out in one write; the server
        reads the chunk even when it refused the envelope, and answers it with an
        error then. Once the chunk is written, a reply that cannot be read (any of
        them: the server may have acted on all) leaves the outcome unknown.
        """
        data = message.data
        bdat = f"BDAT {len(data)} LAST"
        if self.has_extension("pipelining"):
            commands = [f"MAIL {mail_args}", *rcpt_lines]
            with map_errors("BDAT", on_failure=self._broke):
                self.client.write_commands([*commands, bdat], data)
            transaction.final_dot_sent = True
            replies = self._chunk_replies([c.split(" ", 1)[0] for c in commands])
        else:
            replies = [self._command("MAIL", mail_args)]
            if replies[0][0] == 250:
                replies.extend(self._command("RCPT", line[5:]) for line in rcpt_lines)
            if replies[0][0] != 250 or not any(c in (250, 251) for c, _ in replies[1:]):
                self._note_mail_refusal(transaction, replies[0][0])
                return self._refuse_envelope(message, replies)
            with map_errors("BDAT", on_failure=self._broke):
                self.client.write_commands([bdat], data)
            transaction.final_dot_sent = True
            replies.extend(self._chunk_replies([]))
        self._note_mail_refusal(transaction, replies[0][0])
        if len(replies) < 2 + len(rcpt_lines):
            # A 421 cut the exchange short: nothing was accepted on this session.
            code, text = replies[-1]
            raise SMTPSenderRefused(code, text, message.sender)
        envelope, (code, text) = replies[:-1], replies[-1]
        if envelope[0][0] != 250 or not any(c in (250, 251) for c, _ in envelope[1:]):
            return self._refuse_envelope(message, envelope)
        if code != 250:
            self.reset()
            raise SMTPDataRefused(code, text)
        outcome = self._envelope_outcome(message, envelope)
        self.messages_sent += 1
        outcome.code, outcome.text = code, text
        return outcome

    def _chunk_replies(self, verbs: list[str]) -> list[tuple[int, str]]:
        replies: list[tuple[int, str]] = []
        for verb in [*verbs, "BDAT"]:
            try:
                reply = self._read_reply(verb)
            except MailHandlerError as error:
                raise self._unknown_outcome(error) from None
            replies.append(reply)
            if reply[0] == 421:
                break
        return replies

    def _refuse_envelope(
        self, message: OutgoingMessage, envelope: list[tuple[int, str]]
    ) -> TransactionOutcome:
        """Raise the refusal of an envelope that carried nothing (the session is reset)."""
        if not self.broken:
            self.reset()
        mail_code, mail_text = envelope[0]
        if mail_code != 250:
            raise SMTPSenderRefused(mail_code, mail_text, message.sender)
        refused = self._envelope_outcome(message, envelope).refused
        code, text = min(refused.values())  # a 4xx (retryable) wins over 5xx
        raise SMTPRecipientsRefused(code, text, refused)

    @staticmethod
    def _envelope_outcome(
        message: OutgoingMessage, envelope: list[tuple[int, str]]
    ) -> TransactionOutcome:
        outcome = TransactionOutcome(code=0, text="")
        for recipient, (code, text) in zip(message.recipients, envelope[1:], strict=False):
            if code in (250, 251):
                outcome.accepted.append(recipient)
            else:
                outcome.refused[recipient] = (code, text)
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

    def _pipelined_envelope(
        self, mail_args: str, rcpt_lines: list[str], build: PendingMessage | None = None
    ) -> list[tuple[int, str]]:
        # RFC 2920: MAIL, every RCPT and DATA go out in one write; replies come back in order.
        commands = [f"MAIL {mail_args}", *rcpt_lines, "DATA"]
        with map_errors("MAIL", on_failure=self._broke):
            self.client.write_commands(commands)
        if build is not None:
            self._build_in_flight(build)
        return [self._read_reply(command.split(" ", 1)[0]) for command in commands]

    def _builds_in_flight(self, message: PendingMessage) -> bool:
        """Whether ``message`` may be built after its envelope went out.

        Only where the envelope does not depend on the bytes: a pipelined DATA
        transaction (BDAT needs the exact size first), an estimate far inside the
        server's SIZE limit (a message near it is measured before anything is sent),
        and 8-bit content only for a server that offers 8BITMIME (otherwise the exact
        answer decides whether anything is sent at all).
        """
        if not self.has_extension("pipelining") or self.has_extension("chunking"):
            return False
        if message.eight_bit and not self.has_extension("8bitmime"):
            return False
        if not self.has_extension("size"):
            return True  # no SIZE= to announce: nothing depends on the bytes
        if message.estimated_size > _MAX_ESTIMATED_SIZE:
            return False
        limit = _size_limit(self.client.esmtp_features.get("size", ""))
        return limit is None or 2 * message.estimated_size <= limit

    def _build_in_flight(self, message: PendingMessage) -> None:
        # The server is reading the envelope meanwhile, so building hides in its reply
        # time. If building fails, the envelope's DATA waits for a body that must not
        # come; closing without the final dot makes the server drop the transaction.
        try:
            built = message.built()
        except BaseException:
            self._broke()
            raise
        if built.eight_bit and not message.eight_bit:
            # MAIL went out without BODY=8BITMIME; these bytes must not follow it.
            self._broke()
            raise MailHandlerError(
                "the message built differs from the envelope announced for it; nothing was sent"
            )

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
            with map_errors("DATA", on_failure=self._broke):
                self.client.write_body(b".\r\n")
            self._read_reply("DATA")
        self.reset()

    def _send_body(self, data: bytes) -> None:
        # Two C-speed scans decide whether the regex (ten times slower) is needed.
        stuffing = data.startswith(b".") or b"\n." in data
        payload = _DOT_AT_LINE_START.sub(b"..", data) if stuffing else data
        if not payload.endswith(b"\r\n"):
            payload += b"\r\n"
        # A failure while sending is safe to retry: without the final dot the server
        # discards the partial message.
        with map_errors("DATA", on_failure=self._broke):
            self.client.write_body(payload + b".\r\n")

    def _final_reply(self) -> tuple[int, str]:
        try:
            return self._read_reply("end of DATA")
        except MailHandlerError as error:
            raise self._unknown_outcome(error) from None

    @staticmethod
    def _unknown_outcome(error: MailHandlerError) -> MailHandlerError:
        """What a failed read after the whole message went out means."""
        if isinstance(error, MailProtocolError):
            return OutcomeUnknownError(
                "the whole message was sent but the server's reply to it could not be "
                f"understood ({error}); it may or may not have been delivered"
            )
        if isinstance(error, MailConnectionError) and not error.reset_by_peer:
            return OutcomeUnknownError(
                "the connection was lost after the whole message was sent and before the "
                f"server confirmed it ({error}); it may or may not have been delivered"
            )
        # A reset means our bytes were still unread when the server closed: it never
        # saw the end of the message, so it cannot have accepted it.
        return error

    # ------------------------------------------------------------------ closing

    def close(self, polite: bool = True) -> None:
        """Say QUIT (if ``polite`` and healthy) and close the socket; never raises.

        The QUIT goes out without waiting, and the 221 is not awaited: closing often
        happens on the way to another send, whose time a slow goodbye must not take.
        """
        sock = self.client.sock
        if polite and not self.broken and self.pid == os.getpid() and sock is not None:
            with contextlib.suppress(OSError, ValueError):
                sock.setblocking(False)
                sock.send(b"QUIT\r\n")
        close_quietly(self.client)
        self.broken = True

    def __repr__(self) -> str:
        state = "broken" if self.broken else "open"
        return f"<SMTPConnection {state} sent={self.messages_sent}>"


# ---------------------------------------------------------------------- helpers


# Above this an estimate is not announced: the message is built, then its size announced.
_MAX_ESTIMATED_SIZE = 1 << 20


def _declared_size(message: OutgoingMessage | PendingMessage) -> int:
    """SIZE= for MAIL (RFC 1870): exact when built, else the builder's estimate."""
    if isinstance(message, PendingMessage):
        return message.estimated_size
    return len(message.data)


def _size_limit(parameter: str) -> int | None:
    """The byte limit of an EHLO ``SIZE`` parameter; None for no limit.

    A value that is not plain ASCII digits (a superscript passes ``str.isdigit``) is
    ignored rather than failing every send: the server still refuses what is too big.
    """
    value = parameter.strip()
    if not value.isascii() or not value.isdigit():
        return None
    return int(value) or None


def _readable(sock: socket.socket) -> bool:
    if isinstance(sock, ssl.SSLSocket) and sock.pending():
        return True
    poller = select.poll()
    poller.register(sock, select.POLLIN | select.POLLPRI)
    return bool(poller.poll(0))
