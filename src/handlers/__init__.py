"""SMTP and POP3 handlers: the library's public surface.

Everything listed in ``__all__`` is supported API; modules and names starting with an
underscore are private.
"""

import logging

from ._auth.providers import (
    OAuth2TokenProvider,
    google_tokens,
    microsoft_app_tokens,
    microsoft_tokens,
)
from ._dkim.signer import DEFAULT_SIGNED_HEADERS, DKIMSigner
from ._mime.dsn import DeliveryAction, DeliveryReport, RecipientReport, parse_delivery_report
from ._mime.parser import ParseLimits, parse_message
from ._net.connect import Proxy, open_connection
from ._net.ratelimit import RateLimit, RateLimiter, RedisRateStore, is_throttling_reply
from ._net.secret import Secret
from ._net.tls import client_certificate_context
from ._sync.lease import Lease
from ._sync.sync import SyncResult, sync_mailbox
from ._sync.transactional import DBUIDStore, TransactionalUIDStore, sync_transactional
from ._sync.uid_store import FileUIDStore, MemoryUIDStore, SQLiteUIDStore, UIDStore
from .errors import (
    AccountBusyError,
    ConfigurationError,
    DNSLookupError,
    DNSTimeoutError,
    LeaseLostError,
    MailAuthenticationError,
    MailConnectionError,
    MailHandlerError,
    MailProtocolError,
    MailResponseError,
    MailSecurityError,
    MailTimeoutError,
    MailValidationError,
    OAuth2EndpointError,
    OAuth2TokenError,
    OutcomeUnknownError,
    PoolTimeoutError,
    POP3AuthenticationError,
    POP3ConnectionError,
    POP3MailboxBusyError,
    POP3MessageTooLargeError,
    POP3PoolClosedError,
    POP3ProtocolError,
    POP3ResponseError,
    POP3SecurityError,
    POP3TimeoutError,
    POP3UnsupportedError,
    ProxyAuthenticationError,
    ProxyError,
    RateLimitTimeout,
    SMTPDataRefused,
    SMTPNotSupportedError,
    SMTPRecipientsRefused,
    SMTPResponseError,
    SMTPSenderRefused,
    SyncLeaseError,
)
from .pop3 import DEFAULT_MAX_MESSAGE_SIZE, POP3ConnectionPool, POP3ProtocolHandler
from .retry import MAX_RETRIES, RETRY_DELAYS, RETRYABLE_CODES, RetryPolicy
from .smtp import (
    DeliveryResult,
    DSNOptions,
    SMTPCapabilities,
    SMTPConnectionPool,
    SMTPDeliveryStatus,
    SMTPEncryption,
    SMTPMessageValidator,
    SMTPProtocolHandler,
    shared_pool,
)

logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = [
    "DEFAULT_MAX_MESSAGE_SIZE",
    "DEFAULT_SIGNED_HEADERS",
    "MAX_RETRIES",
    "RETRYABLE_CODES",
    "RETRY_DELAYS",
    "AccountBusyError",
    "ConfigurationError",
    "DBUIDStore",
    "DKIMSigner",
    "DNSLookupError",
    "DNSTimeoutError",
    "DSNOptions",
    "DeliveryAction",
    "DeliveryReport",
    "DeliveryResult",
    "FileUIDStore",
    "Lease",
    "LeaseLostError",
    "MailAuthenticationError",
    "MailConnectionError",
    "MailHandlerError",
    "MailProtocolError",
    "MailResponseError",
    "MailSecurityError",
    "MailTimeoutError",
    "MailValidationError",
    "MemoryUIDStore",
    "OAuth2EndpointError",
    "OAuth2TokenError",
    "OAuth2TokenProvider",
    "OutcomeUnknownError",
    "POP3AuthenticationError",
    "POP3ConnectionError",
    "POP3ConnectionPool",
    "POP3MailboxBusyError",
    "POP3MessageTooLargeError",
    "POP3PoolClosedError",
    "POP3ProtocolError",
    "POP3ProtocolHandler",
    "POP3ResponseError",
    "POP3SecurityError",
    "POP3TimeoutError",
    "POP3UnsupportedError",
    "ParseLimits",
    "PoolTimeoutError",
    "Proxy",
    "ProxyAuthenticationError",
    "ProxyError",
    "RateLimit",
    "RateLimitTimeout",
    "RateLimiter",
    "RecipientReport",
    "RedisRateStore",
    "RetryPolicy",
    "SMTPCapabilities",
    "SMTPConnectionPool",
    "SMTPDataRefused",
    "SMTPDeliveryStatus",
    "SMTPEncryption",
    "SMTPMessageValidator",
    "SMTPNotSupportedError",
    "SMTPProtocolHandler",
    "SMTPRecipientsRefused",
    "SMTPResponseError",
    "SMTPSenderRefused",
    "SQLiteUIDStore",
    "Secret",
    "SyncLeaseError",
    "SyncResult",
    "TransactionalUIDStore",
    "UIDStore",
    "client_certificate_context",
    "google_tokens",
    "is_throttling_reply",
    "microsoft_app_tokens",
    "microsoft_tokens",
    "open_connection",
    "parse_delivery_report",
    "parse_message",
    "shared_pool",
    "sync_mailbox",
    "sync_transactional",
]
