"""SMTP and POP3 handlers: the library's public surface.

Everything listed in ``__all__`` is supported API; modules and names starting with an
underscore are private.
"""

import logging

from .errors import (
    MailAuthenticationError,
    MailConnectionError,
    MailHandlerError,
    MailProtocolError,
    MailResponseError,
    MailSecurityError,
    MailTimeoutError,
    MailValidationError,
    OutcomeUnknownError,
    SMTPDataRefused,
    SMTPRecipientsRefused,
    SMTPResponseError,
    SMTPSenderRefused,
)
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
from .smtp_connection import SMTPNotSupportedError
from .smtp_pool import PoolTimeoutError

logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = [
    "MAX_RETRIES",
    "RETRYABLE_CODES",
    "RETRY_DELAYS",
    "DeliveryResult",
    "MailAuthenticationError",
    "MailConnectionError",
    "MailHandlerError",
    "MailProtocolError",
    "MailResponseError",
    "MailSecurityError",
    "MailTimeoutError",
    "MailValidationError",
    "OutcomeUnknownError",
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
    "shared_pool",
]
