"""Sending mail over SMTP: :class:`SMTPProtocolHandler` and its result types.

A send goes validation → MIME building → a pooled connection → MAIL/RCPT/DATA
(pipelined when offered) → a :class:`DeliveryResult`. Transient failures are retried
with the same Message-ID, on a new connection when the old one broke; a message whose
body was sent but never confirmed is not resent, and the result says so.
"""

from __future__ import annotations

import atexit
import dataclasses
import email.message
import email.utils
import ssl
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import Enum
from typing import TYPE_CHECKING, Any

from ._auth.credentials import Credentials
from ._auth.oauth2 import TokenProvider, TokenSource
from ._mime.addresses import check_address
from ._mime.builder import OutgoingMessage, PendingMessage, plan_message
from ._mime.raw import prepare_raw
from ._net import trace as wire_log
from ._net.config import Encryption, Endpoint, Timeouts
from ._net.connect import Proxy
from ._net.control_chars import find_control_character
from ._net.deadline import Deadline
from ._net.logs import get_logger
from ._net.slots import Slots
from ._sasl import cleartext_consent
from ._smtp.connection import SMTPConnection, Transaction, TransactionOutcome
from ._smtp.options import NO_OPTIONS, DSNOptions, SendOptions, check_dsn
from ._smtp.pool import SMTPConnectionPool
from ._smtp.settings import ConnectionKey, SessionSettings, check_auth_mechanism, check_proxy
from .errors import (
    ConfigurationError,
    MailHandlerError,
    MailResponseError,
    MailTimeoutError,
    MailValidationError,
    OutcomeUnknownError,
    PoolTimeoutError,
    RateLimitTimeout,
    SMTPNotSupportedError,
    SMTPRecipientsRefused,
    SMTPResponseError,
    SMTPSenderRefused,
    parse_enhanced_code,
)
from .retry import (
    MAX_RETRIES,
    RETRY_DELAYS,
    RETRYABLE_CODES,
    RetryPolicy,
    Sleep,
    call_with_retry,
    default_sleep,
)
from .validation import SMTPMessageValidator, address_list

__all__ = [
    "MAX_RETRIES",
    "RETRYABLE_CODES",
    "RETRY_DELAYS",
    "DSNOptions",
    "DeliveryResult",
    "SMTPCapabilities",
    "SMTPConnectionPool",
    "SMTPDeliveryStatus",
    "SMTPEncryption",
    "SMTPMessageValidator",
    "SMTPProtocolHandler",
    "shared_pool",
]

if TYPE_CHECKING:
    from ._dkim.signer import DKIMSigner
    from ._dns.deliverability import DeliverabilityChecker
    from ._net.ratelimit import ConnectionSlot, RateLimiter

SMTPEncryption = Encryption
"""The spec's name for :class:`Encryption`: ``NONE``, ``STARTTLS``, ``IMPLICIT_SSL``."""

log = get_logger("smtp")


class SMTPDeliveryStatus(Enum):
    """What happened to a message."""

    SUCCESS = "success"
    FAILED = "failed"
    RETRY = "retry"
    INVALID = "invalid"
    REJECTED = "rejected"
    TEMP_FAILED = "temp_failed"


@dataclass
class DeliveryResult:
    """The outcome of one :meth:`SMTPProtocolHandler.send_message` call.

    ``outcome_unknown`` is True when the connection broke after the whole message was
    sent but before the server confirmed it: the message may have been delivered, so
    it was not resent and ``is_retryable`` is False.
    """

    status: SMTPDeliveryStatus
    message_id: str | None = None
    smtp_code: int | None = None
    smtp_error: str | None = None
    recipient_failures: dict[str, str] = field(default_factory=dict)
    sent_at: datetime | None = None
    retry_count: int = 0
    is_retryable: bool = False
    enhanced_status_code: str | None = None
    outcome_unknown: bool = False
    retry_after: float | None = None
    """Seconds to wait before trying again, when a rate limit said so."""

    @property
    def success(self) -> bool:
        """True when the server accepted the message (perhaps not for every recipient)."""
        return self.status is SMTPDeliveryStatus.SUCCESS

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict: the status as its value, ``sent_at`` as ISO-8601 UTC."""
        return {
            "status": self.status.value,
            "message_id": self.message_id,
            "smtp_code": self.smtp_code,
            "smtp_error": self.smtp_error,
            "recipient_failures": dict(self.recipient_failures),
            "sent_at": self.sent_at.astimezone(UTC).isoformat() if self.sent_at else None,
            "retry_count": self.retry_count,
            "is_retryable": self.is_retryable,
            "enhanced_status_code": self.enhanced_status_code,
            "outcome_unknown": self.outcome_unknown,
            "retry_after": self.retry_after,
        }


@dataclass(frozen=True)
class SMTPCapabilities:
    """What a server offers this client: its EHLO reply, after STARTTLS when the
    handler uses it, before any login."""

    server: str | None
    """The first line of the EHLO reply, usually the server's host name."""
    extensions: dict[str, str]
    """Each extension keyword (upper case) mapped to its parameters (``""`` for none),
    e.g. ``{"SIZE": "35882577", "AUTH": "PLAIN LOGIN", "PIPELINING": ""}``."""
    tls: bool
    """Whether the session these were read from was encrypted."""

    def offers(self, extension: str) -> bool:
        """Whether ``extension`` (any case) was advertised."""
        return extension.upper() in self.extensions


_shared_pool: SMTPConnectionPool | None = None
_shared_pool_lock = threading.Lock()


def shared_pool() -> SMTPConnectionPool:
    """The process-wide pool used by handlers that are not given one.

    Handlers for the same server and login share its warm connections, so creating a
    handler per request does not open a new connection each time.
    """
    global _shared_pool
    with _shared_pool_lock:
        if _shared_pool is None:
            _shared_pool = SMTPConnectionPool(max_connections=100)
        return _shared_pool


@atexit.register
def _close_shared_pool() -> None:
    if _shared_pool is not None:
        _shared_pool.close_all()


def _deliverability_checker(
    option: bool | DeliverabilityChecker,
) -> DeliverabilityChecker | None:
    if option is True:
        from ._dns.deliverability import default_checker  # dnspython loads only when asked

        return default_checker
    return option or None


def _check_local_hostname(name: object) -> str:
    # The EHLO argument goes to the server as is: smtplib refuses CR/LF there only
    # after connecting, and lets NUL and non-ASCII through.
    if (
        not isinstance(name, str)
        or not name.strip()
        or not name.isascii()
        or find_control_character(name) is not None
        or " " in name
    ):
        raise ConfigurationError(
            "local_hostname must be ASCII without spaces or control characters",
            "local_hostname",
        )
    return name


class SMTPProtocolHandler:
    """Sends mail through one SMTP server with one login.

    Thread-safe: share one handler between threads; at most ``pool_size`` connections
    are used at once. No network I/O happens until a method needs it.

    Keyword-only options: ``timeout`` (seconds per socket operation), ``ssl_context``
    (defaults to a shared verifying context), ``local_hostname`` (EHLO name),
    ``retry`` (a :class:`RetryPolicy` for transient failures; not the same as
    :meth:`send_message`'s ``retry`` flag, which turns retrying off for one send),
    ``sleep`` (for tests), ``pool`` (an
    :class:`SMTPConnectionPool`; defaults to the process-wide :func:`shared_pool`),
    ``pool_wait_timeout`` (how long a send waits for a free connection),
    ``operation_timeout`` (a bound on one whole attempt, the wait for a pooled
    connection and connecting included, however slowly the server answers, and on each
    :meth:`connect`, :meth:`test_connection` and :meth:`capabilities`; default ten times
    ``timeout``),
    ``check_deliverability`` (True, or a ``DeliverabilityChecker``: refuse recipients
    whose domain DNS says takes no mail; off by default), ``oauth2_token`` (an OAuth2
    access token, or a callable returning one, to log in with OAUTHBEARER or XOAUTH2
    instead of a password; needs ``username``, see docs/oauth2.md),
    ``oauth2_initial_response`` (send the token with the AUTH command when the line
    fits; False always waits for the server's challenge), ``auth_mechanism`` (the one
    SASL mechanism to log in with, e.g. ``"SCRAM-SHA-256"`` or ``"EXTERNAL"`` for a
    client certificate given in ``ssl_context``; by default the strongest the server
    offers, see SMTP_HANDLER.md), ``allow_cleartext`` (whether PLAIN, LOGIN,
    OAUTHBEARER and XOAUTH2 may run without TLS: by default choosing
    ``encryption='none'`` is that consent, with a WARNING per login; False withdraws
    it),
    ``proxy`` (a :class:`Proxy` or a ``socks5://``, ``socks4://`` or ``http://`` URL
    to connect through), ``trace`` (log every command and reply of this
    handler's sends to the ``src.handlers._net.trace`` logger at DEBUG, credentials
    masked; see :mod:`src.handlers._net.trace`).

    Delivery options: ``dkim`` (a :class:`DKIMSigner`: every message is signed once,
    after it is built and before the first attempt; retries send the same signed
    bytes), ``eight_bit`` (non-ASCII text bodies go out as 8bit UTF-8 rather than
    quoted-printable or base64; such a message fails, with nothing sent, on a server
    that does not offer 8BITMIME), ``rate_limiter`` (a :class:`RateLimiter`, keyed by
    server, port and user name: a permit per attempt within the operation deadline,
    else ``TEMP_FAILED`` with ``retry_after``; every reply observed; its
    messages-per-connection budget retires a connection; its connection cap counts
    the connections in use).
    """

    def __init__(
        self,
        hostname: str,
        port: int,
        username: str | None = None,
        password: str | None = None,
        encryption: Encryption | str = "tls",
        from_address: str | None = None,
        pool_size: int = 10,
        *,
        timeout: float = 30.0,
        ssl_context: ssl.SSLContext | None = None,
        local_hostname: str | None = None,
        retry: RetryPolicy | None = None,
        sleep: Sleep = default_sleep,
        pool: SMTPConnectionPool | None = None,
        pool_wait_timeout: float = 30.0,
        operation_timeout: float | None = None,
        check_deliverability: bool | DeliverabilityChecker = False,
        oauth2_token: str | TokenProvider | TokenSource | None = None,
        oauth2_initial_response: bool = True,
        trace: bool = False,
        # -- logging in and reaching the server
        auth_mechanism: str | None = None,
        allow_cleartext: bool | None = None,
        proxy: Proxy | str | None = None,
        # -- delivery: what happens to each message on its way out
        dkim: DKIMSigner | None = None,
        eight_bit: bool = False,
        rate_limiter: RateLimiter | None = None,
    ) -> None:
        if isinstance(pool_size, bool) or not isinstance(pool_size, int) or pool_size < 1:
            raise ConfigurationError("pool_size must be an integer of at least 1", "pool_size")
        if retry is not None and not isinstance(retry, RetryPolicy):
            raise ConfigurationError("retry must be a RetryPolicy (or None)", "retry")
        endpoint = Endpoint(hostname, port, Encryption.parse(encryption))
        credentials = Credentials.of(username, password, oauth2_token)
        timeouts = Timeouts(timeout, operation_timeout, pool_wait_timeout)
        if local_hostname is not None:
            local_hostname = _check_local_hostname(local_hostname)
        self._settings = SessionSettings(
            endpoint,
            credentials,
            timeouts,
            ssl_context,
            local_hostname,
            oauth2_initial_response,
            check_auth_mechanism(auth_mechanism, credentials),
            cleartext_consent(allow_cleartext, endpoint.encryption),
            check_proxy(proxy),
        )
        self._key = ConnectionKey.of(self._settings)
        self.hostname = endpoint.host
        self.port = endpoint.port
        self.username = username
        self.encryption = endpoint.encryption
        self.from_address = from_address
        self.pool_size = pool_size
        self.timeout = timeouts.socket
        self.ssl_context = ssl_context
        self.local_hostname = local_hostname
        self.retry = retry if retry is not None else RetryPolicy()
        self._sleep = sleep
        self._pool = pool if pool is not None else shared_pool()
        self.operation_timeout = timeouts.operation or timeouts.socket * 10
        self._deliverability = _deliverability_checker(check_deliverability)
        self._slots = Slots(pool_size)
        self.last_error: str | None = None
        self.trace = trace
        self.auth_mechanism = self._settings.auth_mechanism
        self.allow_cleartext = self._settings.allow_cleartext
        self.proxy = self._settings.proxy
        # -- delivery
        if dkim is not None and not callable(getattr(dkim, "sign", None)):
            raise ConfigurationError("dkim must be a DKIMSigner (or None)", "dkim")
        self.dkim = dkim
        self.eight_bit = bool(eight_bit)
        if rate_limiter is not None and not callable(getattr(rate_limiter, "acquire", None)):
            raise ConfigurationError("rate_limiter must be a RateLimiter (or None)", "rate_limiter")
        self.rate_limiter = rate_limiter
        # What the limits are per: the server and the login (a user name, never a secret).
        self._rate_key = (endpoint.host.lower(), endpoint.port, username or "")

    # ------------------------------------------------------------------ repr

    def __repr__(self) -> str:
        return (
            f"<SMTPProtocolHandler {self.hostname}:{self.port} "
            f"encryption={self.encryption.value} user={self.username!r}>"
        )

    @property
    def pool(self) -> SMTPConnectionPool:
        """The connection pool this handler uses."""
        return self._pool

    # ------------------------------------------------------------------ connections

    def _checkout(self, deadline: Deadline | None = None) -> SMTPConnection:
        wait = self._settings.timeouts.pool_wait
        if deadline is not None:
            wait = max(0.0, min(wait, deadline.remaining()))
        if not self._slots.acquire(timeout=wait):
            raise PoolTimeoutError(f"all {self.pool_size} connections of this handler stayed busy")
        try:
            return self._pool.checkout(
                self._settings, self._key, wait_timeout=wait, deadline=deadline
            )
        except BaseException:
            self._slots.release()
            raise

    def _checkin(self, connection: SMTPConnection) -> None:
        try:
            self._pool.release_connection(self.hostname, self.port, connection)
        finally:
            self._slots.release()

    def _probe(self, check_noop: bool) -> bool:
        with Deadline(self.operation_timeout) as deadline, wire_log.tracing(self.trace):
            return self._probe_within(check_noop, deadline)

    def _probe_within(self, check_noop: bool, deadline: Deadline) -> bool:
        try:
            connection = self._checkout(deadline)
        except MailHandlerError as error:
            self.last_error = str(error)
            log.info("SMTP %s:%s unavailable: %s", self.hostname, self.port, error)
            return False
        deadline.target = lambda: connection.client.sock
        try:
            if check_noop and not connection.noop():
                self.last_error = "server did not answer NOOP with 250"
                return False
        except MailHandlerError as error:
            self.last_error = str(error)
            return False
        finally:
            self._checkin(connection)
        self.last_error = None
        return True

    def connect(self) -> bool:
        """Open (or reuse) a connection, with TLS and login as configured.

        Returns False on failure and keeps the reason in :attr:`last_error`. The
        connection stays in the pool for the next send.
        """
        return self._probe(check_noop=False)

    def authenticate(self) -> bool:
        """Check that the server accepts the credentials (logging in happens on connect)."""
        return self._probe(check_noop=False)

    def test_connection(self) -> bool:
        """True if the server can be reached, secured, logged into and answers NOOP."""
        return self._probe(check_noop=True)

    def capabilities(self) -> SMTPCapabilities:
        """Connect (and STARTTLS, as configured) on a new session, read the server's
        EHLO capabilities, and close it without logging in.

        Raises the library's errors (:class:`MailConnectionError`,
        :class:`MailSecurityError`, ...) when the server cannot be reached or secured.
        """
        with Deadline(self.operation_timeout) as deadline, wire_log.tracing(self.trace):
            connection = SMTPConnection.open(self._settings, deadline=deadline, log_in=False)
            try:
                return SMTPCapabilities(
                    connection.server_name,
                    {name.upper(): value.strip() for name, value in connection.extensions.items()},
                    connection.tls_active,
                )
            finally:
                connection.close()

    def close(self) -> None:
        """Stop using the server. Idempotent.

        With a pool of its own, the handler's idle connections are closed. With the
        process-wide shared pool they stay for other handlers of the same server and
        login, and expire after the pool's idle timeout.
        """
        if self._pool is not _shared_pool:
            self._pool.close_all()

    def __enter__(self) -> SMTPProtocolHandler:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ------------------------------------------------------------------ sending

    def send_message(
        self,
        to_addresses: Sequence[str] | str,
        subject: str | None,
        text_body: str | None = None,
        html_body: str | None = None,
        cc_addresses: Sequence[str] | str | None = None,
        bcc_addresses: Sequence[str] | str | None = None,
        reply_to: str | None = None,
        attachments: Sequence[Mapping[str, Any]] | None = None,
        custom_headers: Mapping[str, str] | None = None,
        from_address: str | None = None,
        retry: bool = True,
        *,
        dsn: DSNOptions | None = None,
        require_tls: bool = False,
    ) -> DeliveryResult:
        """Validate, build and send one message; never raises for mail problems.

        ``dsn`` asks for delivery status notifications (see :class:`DSNOptions`);
        ``require_tls`` sends only over TLS to a server offering REQUIRETLS (RFC 8689)
        and otherwise fails with nothing sent. Returns a :class:`DeliveryResult`; see
        SMTP_HANDLER.md for when each status is used.
        """
        try:
            options = _send_options(dsn, require_tls)
            message = self._prepare(
                to_addresses,
                subject,
                text_body,
                html_body,
                cc_addresses,
                bcc_addresses,
                reply_to,
                attachments,
                custom_headers,
                from_address,
            )
        except MailValidationError as error:
            self.last_error = str(error)
            return DeliveryResult(status=SMTPDeliveryStatus.INVALID, smtp_error=str(error))
        return self._deliver(message, retry, options)

    def send_raw(
        self,
        envelope_from: str | None,
        recipients: Sequence[str] | str,
        message: bytes,
        *,
        dsn: DSNOptions | None = None,
        require_tls: bool = False,
        retry: bool = True,
    ) -> DeliveryResult:
        """Send a message you built yourself, as bytes; never raises for mail problems.

        ``envelope_from`` is the MAIL FROM address (None: the handler's sender; ``""``:
        the null sender) and ``recipients`` every envelope recipient, Bcc included.
        The bytes are checked and normalised first (see SMTP_HANDLER.md): bare LF
        becomes CRLF, Bcc header fields are removed, a message without a Message-ID
        gets one; a message without From, with a line over 998 octets or with a header
        line that is not a field is ``INVALID``, and nothing is sent. Pool, retries,
        DKIM, ``dsn`` and ``require_tls`` work as in :meth:`send_message`; the
        result's ``message_id`` is the message's.
        """
        try:
            options = _send_options(dsn, require_tls)
            sender = "" if envelope_from == "" else self._sender(envelope_from)
            outgoing = prepare_raw(
                sender,
                address_list(recipients, "recipients"),
                message,
                sender_checked=sender == self._from_address,
            )
        except MailValidationError as error:
            self.last_error = str(error)
            return DeliveryResult(status=SMTPDeliveryStatus.INVALID, smtp_error=str(error))
        return self._deliver(outgoing, retry, options)

    def send_email_message(
        self,
        message: email.message.EmailMessage,
        *,
        envelope_from: str | None = None,
        recipients: Sequence[str] | str | None = None,
        dsn: DSNOptions | None = None,
        require_tls: bool = False,
        retry: bool = True,
    ) -> DeliveryResult:
        """Send an :class:`email.message.EmailMessage`; never raises for mail problems.

        Without ``recipients`` the envelope takes every address in To, Cc and Bcc;
        without ``envelope_from``, the handler's sender, else the message's Sender or
        From. The message is serialized with CRLF line endings and then sent exactly
        as :meth:`send_raw` sends bytes (Bcc removed, a Message-ID added to what is
        sent when it has none; ``message`` itself is not changed).
        """
        try:
            if not isinstance(message, email.message.Message):
                raise MailValidationError("message must be an EmailMessage", "message")
            data = message.as_bytes(policy=message.policy.clone(linesep="\r\n"))
            if recipients is None:
                fields = [
                    str(value)
                    for name in ("to", "cc", "bcc")
                    for value in message.get_all(name, [])
                ]
                recipients = [a for _, a in email.utils.getaddresses(fields) if a]
            if envelope_from is None and self.from_address is None:
                author = message.get("sender") or message.get("from")
                found = email.utils.getaddresses([str(author)]) if author else []
                envelope_from = found[0][1] if found and found[0][1] else None
        except MailValidationError as error:
            self.last_error = str(error)
            return DeliveryResult(status=SMTPDeliveryStatus.INVALID, smtp_error=str(error))
        except (ValueError, TypeError, LookupError, UnicodeError) as error:
            # The email package's serializer refused the message.
            self.last_error = f"the message cannot be serialized: {error}"
            return DeliveryResult(status=SMTPDeliveryStatus.INVALID, smtp_error=self.last_error)
        return self.send_raw(
            envelope_from, recipients, data, dsn=dsn, require_tls=require_tls, retry=retry
        )

    @property
    def from_address(self) -> str | None:
        """The sender used when a send names none; checked when set, not per send."""
        return self._from_address

    @from_address.setter
    def from_address(self, value: str | None) -> None:
        if value is not None:
            valid, error = SMTPMessageValidator.validate_email_address(value)
            if not valid:
                raise ConfigurationError(f"from_address: {error}", "from_address")
        self._from_address = value

    def _sender(self, from_address: str | None) -> str:
        sender = from_address or self.from_address
        if sender is None and self.username and check_address(self.username) is None:
            sender = self.username
        if sender is None:
            raise MailValidationError(
                "no sender: pass from_address, or set it (or an address username) on the handler",
                "from_address",
            )
        return sender

    def _prepare(
        self,
        to_addresses: Sequence[str] | str,
        subject: str | None,
        text_body: str | None,
        html_body: str | None,
        cc_addresses: Sequence[str] | str | None,
        bcc_addresses: Sequence[str] | str | None,
        reply_to: str | None,
        attachments: Sequence[Mapping[str, Any]] | None,
        custom_headers: Mapping[str, str] | None,
        from_address: str | None,
    ) -> PendingMessage:
        sender = self._sender(from_address)
        # The handler's own sender was checked when it was set.
        unchecked_sender = None if sender == self._from_address else sender
        to_list = address_list(to_addresses, "to_addresses")
        cc_list = address_list(cc_addresses, "cc_addresses")
        bcc_list = address_list(bcc_addresses, "bcc_addresses")
        decoded = SMTPMessageValidator.check_message(
            to_list,
            subject,
            text_body,
            html_body,
            cc_list,
            bcc_list,
            attachments,
            unchecked_sender,
            reply_to,
            custom_headers,
            deliverability=self._deliverability,
        )
        return plan_message(
            from_address=sender,
            to_addresses=to_list,
            subject=subject,
            text_body=text_body,
            html_body=html_body,
            cc_addresses=cc_list,
            bcc_addresses=bcc_list,
            reply_to=reply_to,
            attachments=decoded,
            custom_headers=custom_headers,
            eight_bit=self.eight_bit,
        )

    def _deliver(
        self,
        message: OutgoingMessage | PendingMessage,
        retry: bool,
        options: SendOptions = NO_OPTIONS,
    ) -> DeliveryResult:
        if self.dkim is not None:
            # Signed once: every retry sends these same bytes.
            built = message.built() if isinstance(message, PendingMessage) else message
            try:
                message = dataclasses.replace(built, data=self.dkim.sign(built.data))
            except MailValidationError as error:
                self.last_error = str(error)
                return DeliveryResult(
                    status=SMTPDeliveryStatus.INVALID,
                    message_id=message.message_id,
                    smtp_error=str(error),
                )
        policy = self.retry if retry else RetryPolicy.never()
        retries = 0

        def before_retry(error: BaseException, number: int, delay: float) -> None:
            nonlocal retries
            retries = number
            log.info(
                "SMTP send of %s failed (%s); retry %d in %gs",
                message.message_id,
                error,
                number,
                delay,
            )

        try:
            outcome = call_with_retry(
                lambda: self._attempt(message, options), policy, self._sleep, before_retry
            )
        except _NoPermit as no_permit:
            self.last_error = str(no_permit.error)
            return DeliveryResult(
                status=SMTPDeliveryStatus.TEMP_FAILED,
                message_id=message.message_id,
                smtp_error=str(no_permit.error),
                retry_count=retries,
                is_retryable=True,
                retry_after=no_permit.error.retry_after,
            )
        except Exception as error:  # every failure becomes a result, never a crash
            if policy.is_retryable(error):
                status = SMTPDeliveryStatus.TEMP_FAILED if retry else SMTPDeliveryStatus.RETRY
            else:
                status = _unretried_status(error)
            result = _failure(error, message, retries, status)
            self.last_error = result.smtp_error
            return result
        self.last_error = None
        return DeliveryResult(
            status=SMTPDeliveryStatus.SUCCESS,
            message_id=message.message_id,
            smtp_code=outcome.code,
            smtp_error=None,
            recipient_failures=_failures_text(outcome.refused),
            sent_at=datetime.now(UTC),
            retry_count=retries,
            enhanced_status_code=parse_enhanced_code(outcome.text),
        )

    def _attempt(
        self, message: OutgoingMessage | PendingMessage, options: SendOptions
    ) -> TransactionOutcome:
        with Deadline(self.operation_timeout) as deadline, wire_log.tracing(self.trace):
            try:
                return self._transact(message, deadline, options)
            except OutcomeUnknownError:
                raise  # whatever cut the reply short, the message may have been delivered
            except (MailHandlerError, OSError) as error:
                if deadline.expired or deadline.remaining() <= 0:
                    raise MailTimeoutError(
                        f"sending did not finish within {self.operation_timeout:g}s "
                        "(operation_timeout)"
                    ) from error
                raise

    def _transact(
        self,
        message: OutgoingMessage | PendingMessage,
        deadline: Deadline,
        options: SendOptions,
    ) -> TransactionOutcome:
        transaction = Transaction()
        try:
            return self._transact_once(message, deadline, transaction, options)
        except SMTPSenderRefused:
            if transaction.refused_at_mail_after is None:
                raise
        # A transient refusal of MAIL on a session that already carried messages: the
        # server's per-session message limit. A fresh connection, at once, is the remedy.
        log.debug(
            "SMTP server refused MAIL after %d messages on one connection; using a new one",
            transaction.refused_at_mail_after,
        )
        return self._transact_once(message, deadline, Transaction(), options)

    def _transact_once(
        self,
        message: OutgoingMessage | PendingMessage,
        deadline: Deadline,
        transaction: Transaction,
        options: SendOptions,
    ) -> TransactionOutcome:
        slot = self._rate_permit(deadline)
        try:
            connection = self._checkout(deadline)
        except BaseException as error:
            if (
                self.rate_limiter is not None
                and isinstance(error, MailResponseError)
                and error.code is not None
            ):
                self._observe(error.code, error.text)  # a greeting's 421, say
            if slot is not None:
                slot.release()
            raise
        deadline.target = lambda: connection.client.sock
        if self.rate_limiter is not None:
            connection.observer = self._observe
        try:
            if deadline.expired:
                # The time ran out while no socket was there to cut (waiting for the
                # pool): the exchange would have no bound.
                raise MailTimeoutError("the operation_timeout ran out before sending began")
            outcome = connection.send(message, transaction, options)
            if self.rate_limiter is not None:
                budget = self.rate_limiter.connection_budget(self._rate_key)
                if budget is not None and connection.messages_sent >= budget:
                    connection.retired = True  # the pool closes it; a fresh one is next
            return outcome
        except (MailResponseError, SMTPNotSupportedError):
            raise  # the server answered (or nothing was sent): the session is in step
        except BaseException as error:
            connection.broken = True
            if isinstance(error, Exception) and deadline.expired and transaction.final_dot_sent:
                # The watchdog cut the wait for the final reply; whatever error that
                # caused (even a reset), the server may have accepted the message.
                raise OutcomeUnknownError(
                    f"the operation_timeout of {self.operation_timeout:g}s ran out after the "
                    "whole message was sent and before the server confirmed it; it may or "
                    "may not have been delivered"
                ) from error
            raise
        finally:
            connection.observer = None
            self._checkin(connection)
            if slot is not None:
                slot.release()

    def _rate_permit(self, deadline: Deadline) -> ConnectionSlot | None:
        """Wait for the rate limiter's permit for one message and, when it caps
        connections, a connection slot (held while the connection is in use), both
        within the operation deadline."""
        limiter = self.rate_limiter
        if limiter is None:
            return None
        until = limiter.now() + max(0.0, deadline.remaining())
        try:
            limiter.acquire(self._rate_key, deadline=until)
            if limiter.limit(self._rate_key).max_connections is None:
                return None
            return limiter.connection(self._rate_key, deadline=until)
        except RateLimitTimeout as error:
            raise _NoPermit(error) from None

    def _observe(self, code: int, text: str) -> None:
        # Every reply: the limiter slows down on throttling ones (and logs it).
        assert self.rate_limiter is not None
        self.rate_limiter.observe_reply(self._rate_key, code, parse_enhanced_code(text))


# ---------------------------------------------------------------------- results


class _NoPermit(Exception):
    """The rate limiter gave no permit in time: not retried here, the caller waits
    ``retry_after`` (an exception outside the retryable kinds, so the loop stops)."""

    def __init__(self, error: RateLimitTimeout) -> None:
        super().__init__(error)
        self.error = error


def _send_options(dsn: object, require_tls: object) -> SendOptions:
    if not isinstance(require_tls, bool):
        raise ConfigurationError("require_tls must be True or False", "require_tls")
    checked = check_dsn(dsn)
    if checked is None and not require_tls:
        return NO_OPTIONS
    return SendOptions(dsn=checked, require_tls=require_tls)


def _failures_text(refused: Mapping[str, tuple[int, str]]) -> dict[str, str]:
    return {address: f"{code} {text}".strip() for address, (code, text) in refused.items()}


def _unretried_status(error: BaseException) -> SMTPDeliveryStatus:
    """The status of a failure the retry policy does not retry."""
    if isinstance(error, SMTPResponseError) and 400 <= (error.code or 0) < 500:
        # A 4xx outside the policy's codes (454, 455, ...): the server said "later",
        # so it is not a permanent failure either.
        return SMTPDeliveryStatus.RETRY
    if isinstance(error, SMTPSenderRefused | SMTPRecipientsRefused):
        return SMTPDeliveryStatus.REJECTED
    return SMTPDeliveryStatus.FAILED


def _describe(error: BaseException) -> str:
    if isinstance(error, MailHandlerError):
        return str(error)
    log.exception("unexpected error while sending")
    return f"unexpected error: {type(error).__name__}"


def _failure(
    error: BaseException,
    message: OutgoingMessage | PendingMessage,
    retries: int,
    status: SMTPDeliveryStatus,
) -> DeliveryResult:
    code = error.code if isinstance(error, MailResponseError) else None
    text = error.text if isinstance(error, MailResponseError) else _describe(error)
    result = DeliveryResult(
        status=status,
        message_id=message.message_id,
        smtp_code=code,
        smtp_error=text,
        retry_count=retries,
        is_retryable=status in (SMTPDeliveryStatus.RETRY, SMTPDeliveryStatus.TEMP_FAILED),
        enhanced_status_code=error.enhanced_code if isinstance(error, MailResponseError) else None,
        outcome_unknown=isinstance(error, OutcomeUnknownError),
    )
    if isinstance(error, SMTPRecipientsRefused):
        result.recipient_failures = _failures_text(error.failures)
    return result
