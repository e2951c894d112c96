"""Every public exception survives a pickle round trip with its message and fields."""

from __future__ import annotations

import pickle
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import pytest

from src.handlers import errors
from src.handlers.errors import (
    ConfigurationError,
    MailHandlerError,
    MailValidationError,
    POP3MessageTooLargeError,
    SMTPRecipientsRefused,
    SMTPSenderRefused,
)

# One representative instance of every exception class errors.py exports.
EXAMPLES: dict[type[MailHandlerError], MailHandlerError] = {
    errors.MailHandlerError: errors.MailHandlerError("something failed"),
    errors.MailValidationError: errors.MailValidationError("subject is too long", "subject"),
    errors.ConfigurationError: errors.ConfigurationError(
        "encryption must name a mode", "encryption", ("none", "tls", "ssl")
    ),
    errors.MailConnectionError: errors.MailConnectionError("connection reset"),
    errors.MailTimeoutError: errors.MailTimeoutError("no answer in 30s"),
    errors.PoolTimeoutError: errors.PoolTimeoutError("no free connection in 30s"),
    errors.RateLimitTimeout: errors.RateLimitTimeout("smtp.example.org:587 ada", 2.5),
    errors.DNSLookupError: errors.DNSLookupError("SERVFAIL"),
    errors.DNSTimeoutError: errors.DNSTimeoutError("DNS timed out"),
    errors.OutcomeUnknownError: errors.OutcomeUnknownError("no reply after the dot"),
    errors.MailSecurityError: errors.MailSecurityError("certificate verify failed"),
    errors.MailProtocolError: errors.MailProtocolError("garbage reply"),
    errors.SMTPNotSupportedError: errors.SMTPNotSupportedError("SMTPUTF8 needed"),
    errors.MailResponseError: errors.MailResponseError(554, "5.7.1 no", "5.7.1"),
    errors.MailAuthenticationError: errors.MailAuthenticationError(535, "5.7.8 bad login"),
    errors.SMTPResponseError: errors.SMTPResponseError(451, "4.3.0 try later"),
    errors.SMTPSenderRefused: errors.SMTPSenderRefused(553, "5.1.8 bad sender", "a@x.org"),
    errors.SMTPRecipientsRefused: errors.SMTPRecipientsRefused(
        550, "5.1.1 unknown", {"b@x.org": (550, "5.1.1 unknown"), "c@x.org": (451, "later")}
    ),
    errors.SMTPDataRefused: errors.SMTPDataRefused(552, "5.3.4 too big"),
    errors.POP3ConnectionError: errors.POP3ConnectionError("connection refused"),
    errors.POP3TimeoutError: errors.POP3TimeoutError("no answer"),
    errors.POP3SecurityError: errors.POP3SecurityError("STLS not offered"),
    errors.POP3ProtocolError: errors.POP3ProtocolError("bad LIST line"),
    errors.POP3ResponseError: errors.POP3ResponseError("no such message", "SYS/PERM"),
    errors.POP3AuthenticationError: errors.POP3AuthenticationError("[AUTH] bad", "AUTH"),
    errors.POP3MailboxBusyError: errors.POP3MailboxBusyError("[IN-USE] locked", "IN-USE"),
    errors.POP3MessageTooLargeError: errors.POP3MessageTooLargeError(3, 9_000_000, 1_000_000),
    errors.POP3UnsupportedError: errors.POP3UnsupportedError("UIDL not supported"),
    errors.POP3PoolClosedError: errors.POP3PoolClosedError("the pool has been closed"),
    errors.ProxyError: errors.ProxyError(
        "proxy socks5://127.0.0.1:1080 refused: connection refused", "socks5://127.0.0.1:1080", 5
    ),
    errors.ProxyAuthenticationError: errors.ProxyAuthenticationError(
        "http://127.0.0.1:3128", "407 Proxy Authentication Required", 407
    ),
    errors.OAuth2EndpointError: errors.OAuth2EndpointError(
        "token endpoint https://127.0.0.1:8443/token failed: 503",
        "https://127.0.0.1:8443/token",
        503,
    ),
    errors.OAuth2TokenError: errors.OAuth2TokenError(
        "microsoft", "invalid_grant", "AADSTS70008: the refresh token has expired", 400
    ),
    errors.SyncLeaseError: errors.SyncLeaseError("lease trouble", "alice"),
    errors.AccountBusyError: errors.AccountBusyError("busy", "alice", 12.5),
    errors.LeaseLostError: errors.LeaseLostError("lost", "alice"),
}


def _exported_exceptions() -> set[type[MailHandlerError]]:
    found = set()
    for name in errors.__all__:
        value = getattr(errors, name)
        if isinstance(value, type) and issubclass(value, MailHandlerError):
            found.add(value)
    return found


def test_every_exported_exception_has_an_example() -> None:
    assert _exported_exceptions() == set(EXAMPLES)


def _fields(error: BaseException) -> dict[str, Any]:
    return dict(vars(error))


@pytest.mark.parametrize(
    "cls",
    sorted(EXAMPLES, key=lambda c: c.__name__),  # type: ignore[attr-defined]
    ids=lambda c: c.__name__,
)
def test_pickle_round_trip_keeps_type_message_and_fields(cls: type[MailHandlerError]) -> None:
    error = EXAMPLES[cls]
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is cls
    assert str(copy) == str(error)
    assert copy.args == error.args
    assert _fields(copy) == _fields(error)


def test_fields_survive_by_name() -> None:
    refused = pickle.loads(pickle.dumps(EXAMPLES[SMTPRecipientsRefused]))
    assert isinstance(refused, SMTPRecipientsRefused)
    assert (refused.code, refused.enhanced_code) == (550, "5.1.1")
    assert refused.failures["c@x.org"] == (451, "later")
    sender = pickle.loads(pickle.dumps(EXAMPLES[SMTPSenderRefused]))
    assert isinstance(sender, SMTPSenderRefused) and sender.sender == "a@x.org"
    large = pickle.loads(pickle.dumps(EXAMPLES[POP3MessageTooLargeError]))
    assert isinstance(large, POP3MessageTooLargeError)
    assert (large.message_number, large.size, large.limit) == (3, 9_000_000, 1_000_000)
    config = pickle.loads(pickle.dumps(EXAMPLES[ConfigurationError]))
    assert isinstance(config, ConfigurationError) and isinstance(config, ValueError)
    assert config.field == "encryption" and config.choices == ("none", "tls", "ssl")


def _raise_in_worker(which: str) -> None:
    raise EXAMPLES[getattr(errors, which)]


@pytest.mark.parametrize("which", ["SMTPRecipientsRefused", "POP3MessageTooLargeError"])
def test_a_process_pool_hands_back_the_real_error(which: str) -> None:
    with ProcessPoolExecutor(max_workers=1) as pool:
        future = pool.submit(_raise_in_worker, which)
        with pytest.raises(getattr(errors, which)) as caught:
            future.result(timeout=60)
    assert str(caught.value) == str(EXAMPLES[getattr(errors, which)])


def test_configuration_error_is_a_validation_and_value_error_naming_the_choices() -> None:
    error = ConfigurationError("encryption must name a mode", "encryption", ("none", "tls"))
    assert isinstance(error, MailValidationError) and isinstance(error, ValueError)
    assert "'none', 'tls'" in str(error)
