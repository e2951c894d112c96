"""SMTP and POP3 handlers: the library's public surface.

Everything listed in ``__all__`` is supported API; modules and names starting with an
underscore are private.
"""

import logging

from ._mime.parser import ParseLimits, parse_message
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
    "MAX_RETRIES",
    "RETRYABLE_CODES",
    "RETRY_DELAYS",
    "AccountBusyError",
    "ConfigurationError",
    "DBUIDStore",
    "DNSLookupError",
    "DNSTimeoutError",
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
    "RetryPolicy",
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
    "SyncLeaseError",
    "SyncResult",
    "TransactionalUIDStore",
    "UIDStore",
    "parse_message",
    "shared_pool",
    "sync_mailbox",
    "sync_transactional",
]
