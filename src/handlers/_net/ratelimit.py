"""Sending rate limits per server and login, shared by every thread of the process.

A :class:`RateLimiter` keeps, for each key (whatever identifies a server and a login;
a tuple such as ``("smtp.example.com", 587, "alice")`` is typical), four things:

* a **message rate**: a token bucket of ``burst`` messages refilled at ``per_second``;
  :meth:`RateLimiter.acquire` reserves the next token and sleeps until it is due, so
  threads are served in the order they asked;
* a **cap on concurrent connections**: :meth:`RateLimiter.connection` holds one of
  ``max_connections`` slots while a connection is open;
* a **cap on messages per connection**: :meth:`RateLimiter.connection_budget` says how
  many messages one connection may carry before a fresh one is opened;
* **slowing down when the server says so**: :meth:`RateLimiter.observe_reply` with a
  throttling reply (421, 451 4.7.x, 454 4.7.0, 452 4.3.x) cuts the rate by
  ``decrease`` (multiplicative decrease); after each ``cool_down`` seconds without
  another one it grows again by ``increase`` (additive increase) up to ``per_second``.
  A key with no rate of its own starts at ``after_throttle`` messages a second when first
  throttled, and is unlimited again after ``10 * cool_down`` quiet seconds.

The state of every key is shared by the threads of the process; with a
:class:`RedisRateStore` the message rate is shared by every worker process too. The
clock and ``sleep`` are parameters, so tests drive time by hand and never wait.

This module knows no protocol: the reply code and enhanced code are just numbers and
text that the caller reads off a server reply.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Protocol

from ..errors import RateLimitTimeout
from .forksafe import forget_in_child
from .logs import get_logger

__all__ = [
    "ConnectionSlot",
    "Permit",
    "RateLimit",
    "RateLimiter",
    "RateStore",
    "RedisRateStore",
    "is_throttling_reply",
]

log = get_logger("ratelimit")

Clock = Callable[[], float]
Sleep = Callable[[float], None]

_QUIET_PERIODS_TO_UNLIMITED = 10


def is_throttling_reply(code: int, enhanced_code: str | None = None) -> bool:
    """Whether a reply asks the client to slow down.

    421 (service closing, the usual "too many connections or messages"); 451 with a 4.7.x
    enhanced code (policy: rate exceeded); 454 4.7.0; 452 with a 4.3.x code (the server is
    short of resources).
    """
    enhanced = (enhanced_code or "").strip()
    if code == 421:
        return True
    if code == 451:
        return enhanced.startswith("4.7.")
    if code == 454:
        return enhanced == "4.7.0"
    if code == 452:
        return enhanced.startswith("4.3.")
    return False


@dataclass(frozen=True)
class RateLimit:
    """The limits of one key; every field is optional.

    Attributes:
        per_second: The most messages a second (the token rate); None for no ceiling.
        burst: How many messages may go at once after a quiet spell (the bucket size).
        max_connections: The most connections open at once; None for no cap.
        messages_per_connection: Messages one connection carries before a fresh one is
            opened; None for no cap.
        decrease: The rate is multiplied by this on a throttling reply.
        increase: Messages a second added back after each quiet ``cool_down``; None for a
            tenth of ``per_second`` (or of ``after_throttle`` when there is no ceiling).
        cool_down: Seconds without a throttling reply before the rate grows again.
        min_per_second: The rate never drops below this.
        after_throttle: The rate a key without ``per_second`` gets when first throttled.
    """

    per_second: float | None = None
    burst: float = 1.0
    max_connections: int | None = None
    messages_per_connection: int | None = None
    decrease: float = 0.5
    increase: float | None = None
    cool_down: float = 60.0
    min_per_second: float = 1 / 60
    after_throttle: float = 1.0

    def __post_init__(self) -> None:
        positive = {
            "per_second": self.per_second,
            "increase": self.increase,
            "cool_down": self.cool_down,
            "min_per_second": self.min_per_second,
            "after_throttle": self.after_throttle,
        }
        for name, value in positive.items():
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be positive, not {value!r}")
        if not self.burst >= 1:
            raise ValueError(f"burst must be at least 1, not {self.burst!r}")
        if not 0 < self.decrease < 1:
            raise ValueError(f"decrease must be between 0 and 1, not {self.decrease!r}")
        for name, count in (
            ("max_connections", self.max_connections),
            ("messages_per_connection", self.messages_per_connection),
        ):
            if count is not None and count < 1:
                raise ValueError(f"{name} must be at least 1, not {count!r}")

    @property
    def step(self) -> float:
        """The additive increase in messages a second."""
        if self.increase is not None:
            return self.increase
        return (self.per_second or self.after_throttle) / 10


class RateStore(Protocol):
    """Where token buckets live. The default is in the process; :class:`RedisRateStore`
    shares them between processes."""

    def reserve(
        self, key: str, rate: float, burst: float, now: float, latest: float | None
    ) -> float | None:
        """Take one token; return the seconds until it is due (0: now), or None when it
        would be due after ``latest`` (then nothing is taken)."""
        ...

    def drain(self, key: str, now: float) -> None:
        """Empty the bucket, so the next message waits a full interval."""
        ...


class _MemoryStore:
    """Token buckets in this process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # key -> (tokens, time of that count); tokens below zero are reservations.
        self._buckets: dict[str, tuple[float, float]] = {}
        forget_in_child(self)

    def _after_fork_in_child(self) -> None:
        # A thread of the parent may have held the lock at the fork; it never exists here.
        self._lock = threading.Lock()

    def reserve(
        self, key: str, rate: float, burst: float, now: float, latest: float | None
    ) -> float | None:
        with self._lock:
            tokens, then = self._buckets.get(key, (burst, now))
            tokens = min(burst, tokens + max(0.0, now - then) * rate) - 1
            wait = max(0.0, -tokens / rate)
            if latest is not None and now + wait > latest:
                return None
            self._buckets[key] = (tokens, now)
            return wait

    def drain(self, key: str, now: float) -> None:
        with self._lock:
            tokens, _ = self._buckets.get(key, (0.0, now))
            self._buckets[key] = (min(tokens, 0.0), now)


@dataclass
class _KeyState:
    rate: float | None
    last_change: float
    connections: int = 0
    throttled: int = 0
    waiters: int = 0
    cond: threading.Condition | None = field(default=None, repr=False)


class Permit:
    """Permission to send one message now, from :meth:`RateLimiter.acquire`.

    ``waited`` is how long the acquire slept. As a context manager it marks the
    message's span (nothing to release: a sent message has used its token).
    """

    __slots__ = ("key", "waited")

    def __init__(self, key: str, waited: float) -> None:
        self.key = key
        self.waited = waited

    def __repr__(self) -> str:
        return f"<Permit {self.key} waited={self.waited:.3f}s>"

    def __enter__(self) -> Permit:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None


class ConnectionSlot:
    """One of a key's ``max_connections`` slots, held while a connection is open.

    ``budget`` is the number of messages the connection may carry (None: no cap);
    :meth:`spend` counts one and says whether the connection may carry another.
    Release with :meth:`release` or by leaving the ``with`` block; releasing twice
    is harmless.
    """

    __slots__ = ("_limiter", "_released", "budget", "key", "sent")

    def __init__(self, limiter: RateLimiter, key: str, budget: int | None) -> None:
        self._limiter = limiter
        self._released = False
        self.key = key
        self.budget = budget
        self.sent = 0

    def __repr__(self) -> str:
        state = "released" if self._released else "held"
        return f"<ConnectionSlot {self.key} {state} sent={self.sent}/{self.budget}>"

    @property
    def exhausted(self) -> bool:
        """Whether the connection has carried its budget of messages."""
        return self.budget is not None and self.sent >= self.budget

    def spend(self) -> bool:
        """Count one message sent; True while the connection may carry another."""
        self.sent += 1
        return not self.exhausted

    def release(self) -> None:
        """Give the slot back (the connection is closed)."""
        if not self._released:
            self._released = True
            self._limiter._release_connection(self.key)

    def __enter__(self) -> ConnectionSlot:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


def _key_text(key: Hashable) -> str:
    if isinstance(key, tuple):
        return ":".join(str(part) for part in key)
    return str(key)


class RateLimiter:
    """Rate limits per key, thread-safe; share one instance across the process.

    Args:
        default: The limits of keys without their own entry in ``limits``.
        limits: Limits for particular keys.
        clock: Monotonic seconds (``time.monotonic``); tests pass a fake.
        sleep: How to wait (``time.sleep``); tests pass one that advances the fake clock.
        store: Where the token buckets live; :class:`RedisRateStore` shares them
            between processes. The default keeps them in this process.
    """

    def __init__(
        self,
        default: RateLimit | None = None,
        *,
        limits: Mapping[Hashable, RateLimit] | None = None,
        clock: Clock = time.monotonic,
        sleep: Sleep = time.sleep,
        store: RateStore | None = None,
    ) -> None:
        self.default = default if default is not None else RateLimit()
        self._limits = {_key_text(k): v for k, v in (limits or {}).items()}
        self._clock = clock
        self._sleep = sleep
        self._store: RateStore = store if store is not None else _MemoryStore()
        self._lock = threading.Lock()
        self._states: dict[str, _KeyState] = {}
        forget_in_child(self)

    def __repr__(self) -> str:
        with self._lock:
            parts = [
                f"{key}: rate={_rate_text(s.rate)} connections={s.connections}"
                for key, s in self._states.items()
            ]
        return f"<RateLimiter [{'; '.join(parts)}]>"

    def _after_fork_in_child(self) -> None:
        # The parent's connections and waiting threads are not the child's: start the
        # counts afresh under a new lock; the rates (and any slowing down) carry over.
        self._lock = threading.Lock()
        for state in self._states.values():
            state.connections = state.waiters = 0
            state.cond = None

    def now(self) -> float:
        """The limiter's clock: deadlines passed to :meth:`acquire` and
        :meth:`connection` are times on it."""
        return self._clock()

    def limit(self, key: Hashable) -> RateLimit:
        """The configured limits of ``key``."""
        return self._limits.get(_key_text(key), self.default)

    def current_rate(self, key: Hashable) -> float | None:
        """Messages a second now allowed for ``key`` (None: unlimited)."""
        name = _key_text(key)
        with self._lock:
            return self._state(name, self._clock()).rate

    def _state(self, name: str, now: float) -> _KeyState:
        """The key's state with any additive increase that is due applied (lock held)."""
        state = self._states.get(name)
        limit = self._limits.get(name, self.default)
        if state is None:
            state = _KeyState(rate=limit.per_second, last_change=now)
            self._states[name] = state
            return state
        if state.throttled and state.rate is not None:
            periods = int((now - state.last_change) // limit.cool_down)
            if periods > 0:
                ceiling = limit.per_second
                if ceiling is None and periods >= _QUIET_PERIODS_TO_UNLIMITED:
                    state.rate = None
                else:
                    grown = state.rate + periods * limit.step
                    state.rate = grown if ceiling is None else min(ceiling, grown)
                state.last_change += periods * limit.cool_down
                if state.rate is None or state.rate == ceiling:
                    state.throttled = 0
                    log.debug("rate limit for %s back to %s", name, _rate_text(state.rate))
        return state

    def acquire(self, key: Hashable, *, deadline: float | None = None) -> Permit:
        """Wait until ``key`` may send one more message, and return the :class:`Permit`.

        ``deadline`` is a time on the limiter's clock (``time.monotonic()`` unless
        another clock was given); when the message could not go before it,
        :class:`RateLimitTimeout` is raised at once, without waiting and without using
        up a token.
        """
        name = _key_text(key)
        limit = self.limit(key)
        with self._lock:
            now = self._clock()
            state = self._state(name, now)
            rate = state.rate
        if rate is None:
            return Permit(name, 0.0)
        # Outside the lock: a shared store talks to a server.
        wait = self._store.reserve(name, rate, limit.burst, now, deadline)
        if wait is None:
            retry_after = 1.0 / rate
            raise RateLimitTimeout(name, retry_after)
        if wait > 0:
            self._sleep(wait)
        return Permit(name, wait)

    def observe_reply(self, key: Hashable, code: int, enhanced_code: str | None = None) -> bool:
        """Tell the limiter how the server answered; slow down on a throttling reply.

        Returns whether the reply was taken as throttling. Any reply may be passed; only
        those :func:`is_throttling_reply` recognises change anything.
        """
        if not is_throttling_reply(code, enhanced_code):
            return False
        name = _key_text(key)
        limit = self.limit(key)
        with self._lock:
            now = self._clock()
            state = self._state(name, now)
            if state.rate is None:
                state.rate = limit.after_throttle
            else:
                state.rate = max(limit.min_per_second, state.rate * limit.decrease)
            state.throttled += 1
            state.last_change = now
            rate = state.rate
        self._store.drain(name, now)
        log.warning(
            "server throttled %s (%d %s): slowing to %.3g messages/s",
            name,
            code,
            enhanced_code or "",
            rate,
        )
        return True

    def connection_budget(self, key: Hashable) -> int | None:
        """How many messages one connection for ``key`` may carry (None: no cap)."""
        return self.limit(key).messages_per_connection

    def connection(self, key: Hashable, *, deadline: float | None = None) -> ConnectionSlot:
        """Take one of the key's connection slots, waiting for one until ``deadline``.

        The slot carries the key's :meth:`connection_budget`. Raises
        :class:`RateLimitTimeout` when no slot is free by then (at once when
        ``deadline`` has passed).
        """
        name = _key_text(key)
        limit = self.limit(key)
        cap = limit.max_connections
        with self._lock:
            state = self._state(name, self._clock())
            if cap is not None:
                if state.cond is None:
                    state.cond = threading.Condition(self._lock)
                state.waiters += 1
                try:
                    while state.connections >= cap:
                        remaining = None if deadline is None else deadline - self._clock()
                        if remaining is not None and remaining <= 0:
                            raise RateLimitTimeout(name, 0.0)
                        # Bounded: a release notifies, and the deadline ends the wait.
                        state.cond.wait(remaining)
                finally:
                    state.waiters -= 1
            state.connections += 1
        return ConnectionSlot(self, name, limit.messages_per_connection)

    def _release_connection(self, name: str) -> None:
        with self._lock:
            state = self._states.get(name)
            if state is None:
                return
            state.connections = max(0, state.connections - 1)
            if state.cond is not None:
                state.cond.notify()

    def open_connections(self, key: Hashable) -> int:
        """How many connection slots of ``key`` are held."""
        with self._lock:
            state = self._states.get(_key_text(key))
            return state.connections if state is not None else 0


def _rate_text(rate: float | None) -> str:
    return "unlimited" if rate is None else f"{rate:.3g}/s"


# A token bucket in Redis, atomic because Redis runs a script alone. The time is
# Redis's own, so workers on different machines agree on it.
_RESERVE_SCRIPT = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local max_wait = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(state[1]) or burst
local at = tonumber(state[2]) or now
local elapsed = now - at
if elapsed < 0 then elapsed = 0 end
tokens = math.min(burst, tokens + elapsed * rate) - 1
local wait = 0
if tokens < 0 then wait = -tokens / rate end
if max_wait >= 0 and wait > max_wait then return nil end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
redis.call('EXPIRE', KEYS[1], math.ceil(burst / rate + wait) + 60)
return tostring(wait)
"""

_DRAIN_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local tokens = tonumber(redis.call('HGET', KEYS[1], 'tokens')) or 0
if tokens > 0 then tokens = 0 end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
redis.call('EXPIRE', KEYS[1], 3600)
return 1
"""


class RedisRateStore:
    """Token buckets in Redis, so every worker process draws from the same buckets.

    Needs the ``redis`` package (``pip install redis``). Pass a ``redis.Redis`` client,
    or a URL such as ``"redis://localhost:6379/0"``. Keys are ``<prefix><key>``
    hashes that expire when idle. Only the message rate is shared this way; connection
    slots and the slowed-down rate stay per process.
    """

    def __init__(self, client: Any, *, prefix: str = "mailhandlers:rate:") -> None:
        if isinstance(client, str):
            import redis

            client = redis.Redis.from_url(client)
        self._client = client
        self._prefix = prefix
        self._reserve = client.register_script(_RESERVE_SCRIPT)
        self._drain = client.register_script(_DRAIN_SCRIPT)

    def __repr__(self) -> str:
        return f"<RedisRateStore prefix={self._prefix!r}>"

    def reserve(
        self, key: str, rate: float, burst: float, now: float, latest: float | None
    ) -> float | None:
        """Take a token from the shared bucket (see :class:`RateStore`)."""
        max_wait = -1.0 if latest is None else max(0.0, latest - now)
        result = self._reserve(keys=[self._prefix + key], args=[rate, burst, max_wait])
        if result is None:
            return None
        return float(result.decode() if isinstance(result, bytes) else result)

    def drain(self, key: str, now: float) -> None:
        """Empty the shared bucket (see :class:`RateStore`)."""
        self._drain(keys=[self._prefix + key])
