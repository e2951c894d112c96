"""Retry policy as an immutable value, and the single place that decides retryability.

A :class:`RetryPolicy` says how many retries are allowed, how long to wait before
each, and which reply codes are transient. :meth:`RetryPolicy.increment` returns a
new policy with the failure recorded, so a policy can be shared between threads and
calls. Computing a delay is separate from waiting: callers pass ``sleep`` so tests
never wait for real.
"""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TypeVar

from .errors import (
    MailAuthenticationError,
    MailConnectionError,
    MailResponseError,
    MailSecurityError,
    OutcomeUnknownError,
    POP3MailboxBusyError,
)

T = TypeVar("T")

Sleep = Callable[[float], None]
Clock = Callable[[], float]


def default_sleep(seconds: float) -> None:
    """Wait with :func:`time.sleep`, looked up at each call: a test that patches
    ``time.sleep`` (``mocker.patch("time.sleep")``) also skips the handlers' back-off."""
    time.sleep(seconds)


#: Retries after the first attempt (so at most four attempts in all).
MAX_RETRIES = 3
#: Seconds to wait before the first, second and third retry.
RETRY_DELAYS = [1, 5, 30]
#: SMTP reply codes that mean "try again later".
RETRYABLE_CODES = frozenset({421, 450, 451, 452})


def is_retryable(error: BaseException, retryable_codes: frozenset[int] = RETRYABLE_CODES) -> bool:
    """Decide from the kind of failure whether repeating the operation is safe and useful.

    * a reply with a transient code (421/450/451/452 by default) or a POP3
      [IN-USE]/[LOGIN-DELAY]: yes;
    * a connection that failed or broke before the message was handed over, or a
      timeout: yes;
    * the body was sent but the final reply never came: **no**, the message may have
      been delivered;
    * credentials refused (5xx), TLS failures, permanent (5xx) replies: no; a
      temporary authentication failure (4xx, e.g. 454) is retried.
    """
    if isinstance(error, OutcomeUnknownError):
        return False
    if isinstance(error, POP3MailboxBusyError):
        return True
    if isinstance(error, MailAuthenticationError):
        # 454 and friends: the server could not check the credentials right now.
        return error.code is not None and 400 <= error.code < 500
    if isinstance(error, MailSecurityError):
        return False
    if isinstance(error, ssl.SSLCertVerificationError):
        return False
    if isinstance(error, MailResponseError):
        return error.code is not None and error.code in retryable_codes
    return isinstance(error, MailConnectionError | ConnectionError | TimeoutError | socket.gaierror)


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently to retry.

    ``delays[i]`` is the wait before retry ``i + 1``; if there are more retries than
    delays, the last delay repeats.
    """

    max_retries: int = MAX_RETRIES
    delays: tuple[float, ...] = tuple(RETRY_DELAYS)
    retryable_codes: frozenset[int] = RETRYABLE_CODES
    history: tuple[str, ...] = field(default=(), compare=False)

    def __post_init__(self) -> None:
        if self.max_retries < 0:
            raise ValueError("max_retries must be >= 0")
        if any(d < 0 for d in self.delays):
            raise ValueError("retry delays must be >= 0")

    @classmethod
    def exponential(cls, max_retries: int, base: float = 1.0, factor: float = 2.0) -> RetryPolicy:
        """A policy waiting ``base``, ``base*factor``, ``base*factor**2``, ... seconds."""
        delays = tuple(base * factor**i for i in range(max_retries))
        return cls(max_retries=max_retries, delays=delays)

    @classmethod
    def never(cls) -> RetryPolicy:
        """A policy that allows no retry."""
        return cls(max_retries=0, delays=())

    @property
    def retries_done(self) -> int:
        """How many failures have been recorded with :meth:`increment`."""
        return len(self.history)

    def is_exhausted(self) -> bool:
        """True when no retry is left."""
        return self.retries_done >= self.max_retries

    def is_retryable(self, error: BaseException) -> bool:
        """Whether ``error`` is of a kind this policy retries (ignores the count)."""
        return is_retryable(error, self.retryable_codes)

    def next_delay(self) -> float:
        """Seconds to wait before the next retry."""
        if not self.delays:
            return 0.0
        return float(self.delays[min(self.retries_done, len(self.delays) - 1)])

    def increment(self, error: BaseException) -> RetryPolicy:
        """Return a new policy with ``error`` recorded in its history."""
        return replace(self, history=(*self.history, type(error).__name__))


def call_with_retry(
    operation: Callable[[], T],
    policy: RetryPolicy,
    sleep: Sleep = default_sleep,
    on_retry: Callable[[BaseException, int, float], None] | None = None,
) -> T:
    """Run ``operation``; on a retryable error wait and run it again, within ``policy``.

    The last error is raised once the policy is exhausted or the error is not
    retryable. ``on_retry(error, retry_number, delay)`` is called before each wait.
    """
    while True:
        try:
            return operation()
        except Exception as error:
            if not policy.is_retryable(error) or policy.is_exhausted():
                raise
            delay = policy.next_delay()
            policy = policy.increment(error)
            if on_retry is not None:
                on_retry(error, policy.retries_done, delay)
            sleep(delay)
