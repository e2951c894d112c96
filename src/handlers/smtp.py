"""Sending mail over SMTP: :class:`SMTPProtocolHandler` and its result types.

A send goes validation → MIME building → a pooled connection → MAIL/RCPT/DATA
(pipelined when offered) → a :class:`DeliveryResult`. Transient failures are retried
with the same Message-ID, on a new connection when the old one broke; a message whose
body was sent but never confirmed is not resent, and the result says so.
"""

from __future__ import annotations

import atexit
import ssl
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import Enum
from typing import TYPE_CHECKING, Any

from ._auth.credentials import Credentials
from ._auth.oauth2 import TokenProvider, TokenSource
from ._mime.addresses import check_address
from ._mime.builder import OutgoingMessage, build_message
from ._net import trace as wire_log
from ._net.config import Encryption, Endpoint, Timeouts
from ._net.connect import Proxy
from ._net.control_chars import find_control_character
from ._net.deadline import Deadline
from ._net.logs import get_logger
from ._smtp.connection import SMTPConnection, Transaction, TransactionOutcome
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
    SMTPNotSupportedError,
    SMTPRecipientsRefused,
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
)
from .validation import SMTPMessageValidator, address_list

__all__ = [
    "MAX_RETRIES",
    "RETRYABLE_CODES",
    "RETRY_DELAYS",
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
    from ._dns.deliverability import DeliverabilityChecker

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
    offers, see SMTP_HANDLER.md), ``allow_cleartext`` (permit PLAIN, LOGIN,
    OAUTHBEARER and XOAUTH2 with ``encryption='none'``; refused otherwise),
    ``proxy`` (a :class:`Proxy` or a ``socks5://``, ``socks4://`` or ``http://`` URL
    to connect through), ``trace`` (log every command and reply of this
    handler's sends to the ``src.handlers._net.trace`` logger at DEBUG, credentials
    masked; see :mod:`src.handlers._net.trace`).
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
        sleep: Sleep = time.sleep,
        pool: SMTPConnectionPool | None = None,
        pool_wait_timeout: float = 30.0,
        operation_timeout: float | None = None,
        check_deliverability: bool | DeliverabilityChecker = False,
        oauth2_token: str | TokenProvider | TokenSource | None = None,
        oauth2_initial_response: bool = True,
        trace: bool = False,
        auth_mechanism: str | None = None,
        allow_cleartext: bool = False,
        proxy: Proxy | str | None = None,
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
        if from_address is not None:
            valid, error = SMTPMessageValidator.validate_email_address(from_address)
            if not valid:
                raise ConfigurationError(f"from_address: {error}", "from_address")
        self._settings = SessionSettings(
            endpoint,
            credentials,
            timeouts,
            ssl_context,
            local_hostname,
            oauth2_initial_response,
            check_auth_mechanism(auth_mechanism, credentials),
            bool(allow_cleartext),
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
        self._slots = threading.BoundedSemaphore(pool_size)
        self.last_error: str | None = None
        self.trace = trace
        self.auth_mechanism = self._settings.auth_mechanism
        self.allow_cleartext = self._settings.allow_cleartext
        self.proxy = self._settings.proxy

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
    ) -> DeliveryResult:
        """Validate, build and send one message; never raises for mail problems.

        Returns a :class:`DeliveryResult`; see SMTP_HANDLER.md for when each status
        is used.
        """
        try:
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
        policy = self.retry if retry else RetryPolicy.never()
        return self._deliver(message, policy, retry)

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
    ) -> OutgoingMessage:
        sender = self._sender(from_address)
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
            sender,
            reply_to,
            custom_headers,
            deliverability=self._deliverability,
        )
        return build_message(
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
        )

    def _deliver(
        self, message: OutgoingMessage, policy: RetryPolicy, retry: bool
    ) -> DeliveryResult:
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
                lambda: self._attempt(message), policy, self._sleep, before_retry
            )
        except Exception as error:  # every failure becomes a result, never a crash
            if policy.is_retryable(error):
                status = SMTPDeliveryStatus.TEMP_FAILED if retry else SMTPDeliveryStatus.RETRY
            else:
                status = _permanent_status(error)
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

    def _attempt(self, message: OutgoingMessage) -> TransactionOutcome:
        with Deadline(self.operation_timeout) as deadline, wire_log.tracing(self.trace):
            try:
                return self._transact(message, deadline)
            except OutcomeUnknownError:
                raise  # whatever cut the reply short, the message may have been delivered
            except (MailHandlerError, OSError) as error:
                if deadline.expired or deadline.remaining() <= 0:
                    raise MailTimeoutError(
                        f"sending did not finish within {self.operation_timeout:g}s "
                        "(operation_timeout)"
                    ) from error
                raise

    def _transact(self, message: OutgoingMessage, deadline: Deadline) -> TransactionOutcome:
        transaction = Transaction()
        try:
            return self._transact_once(message, deadline, transaction)
        except SMTPSenderRefused:
            if transaction.refused_at_mail_after is None:
                raise
        # A transient refusal of MAIL on a session that already carried messages: the
        # server's per-session message limit. A fresh connection, at once, is the remedy.
        log.debug(
            "SMTP server refused MAIL after %d messages on one connection; using a new one",
            transaction.refused_at_mail_after,
        )
        return self._transact_once(message, deadline, Transaction())

    def _transact_once(
        self, message: OutgoingMessage, deadline: Deadline, transaction: Transaction
    ) -> TransactionOutcome:
        connection = self._checkout(deadline)
        deadline.target = lambda: connection.client.sock
        try:
            if deadline.expired:
                # The time ran out while no socket was there to cut (waiting for the
                # pool): the exchange would have no bound.
                raise MailTimeoutError("the operation_timeout ran out before sending began")
            return connection.send(message, transaction)
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
            self._checkin(connection)


# ---------------------------------------------------------------------- results


def _failures_text(refused: Mapping[str, tuple[int, str]]) -> dict[str, str]:
    return {address: f"{code} {text}".strip() for address, (code, text) in refused.items()}


def _permanent_status(error: BaseException) -> SMTPDeliveryStatus:
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
    message: OutgoingMessage,
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
