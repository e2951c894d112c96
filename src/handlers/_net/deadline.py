"""Whole-operation deadlines, enforced by one watchdog thread per process.

A per-socket timeout bounds each read, not an operation: a server that drips one byte
every few seconds never trips it. A :class:`Deadline` bounds the whole operation. When
it passes, the watchdog shuts down the socket the operation is using, so whatever read
or write is blocked returns at once with an error, and the caller, seeing
``deadline.expired``, reports a timeout.

The watchdog is a single daemon thread with a heap of armed deadlines, so arming one
costs a heap push under a lock, not a thread.

A socket a client library creates deep inside a constructor (poplib reads the greeting
before returning) can be handed over with :func:`announce_socket`: code running
inside :func:`watching_sockets` hears of it before anything is read from it.

A TLS handshake is not covered: ``wrap_socket`` shakes hands on a socket object that
no deadline can reach yet, so only the per-socket timeout bounds each of its reads.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import math
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextvars import ContextVar

from .logs import get_logger

log = get_logger("deadline")

SocketGetter = Callable[[], "socket.socket | None"]
SocketListener = Callable[[socket.socket], None]

_socket_listener: ContextVar[SocketListener | None] = ContextVar(
    "mailhandlers_socket_listener", default=None
)


class Deadline:
    """The time limit of one operation and the socket it currently uses.

    Set :attr:`target` to a callable returning the socket to cut when time runs out
    (it is looked up at expiry, so it may change as the operation proceeds). An
    operation made of many replies (a pipelined batch) calls :meth:`restart` after
    each, so the limit bounds every reply rather than the whole batch.
    """

    __slots__ = ("_armed", "_clock", "expired", "seconds", "target", "when")

    def __init__(self, seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.seconds = seconds
        self._clock = clock
        self.when = clock() + seconds
        self.target: SocketGetter | None = None
        self.expired = False
        self._armed: _Armed | None = None

    def _fire(self) -> None:
        self.expired = True
        sock = self.target() if self.target is not None else None
        if sock is not None:
            log.debug("operation deadline of %gs passed; cutting its connection", self.seconds)
            _cut(sock)

    def remaining(self) -> float:
        """Seconds left before the deadline passes (zero or less once it has)."""
        return self.when - self._clock()

    def restart(self) -> None:
        """Give the operation its full time limit again, counted from now."""
        self.when = self._clock() + self.seconds
        if self._armed is not None:
            watchdog = _watchdog()
            watchdog.disarm(self._armed)
            self._armed = watchdog.arm(self)

    def __enter__(self) -> Deadline:
        self._armed = _watchdog().arm(self)
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._armed is not None:
            _watchdog().disarm(self._armed)
            self._armed = None


class _Armed:
    """One arming of a deadline in the watchdog's heap (a restart arms a new one)."""

    __slots__ = ("cancelled", "deadline")

    def __init__(self, deadline: Deadline) -> None:
        self.deadline = deadline
        self.cancelled = False


@contextlib.contextmanager
def watching_sockets(listener: SocketListener) -> Iterator[None]:
    """Within the block, pass every socket given to :func:`announce_socket` to ``listener``."""
    token = _socket_listener.set(listener)
    try:
        yield
    finally:
        _socket_listener.reset(token)


def announce_socket(sock: socket.socket) -> None:
    """Tell the listener of the current :func:`watching_sockets` block about ``sock``."""
    listener = _socket_listener.get()
    if listener is not None:
        listener(sock)


def _cut(sock: socket.socket) -> None:
    # The plain socket's shutdown, even for an SSLSocket: SSLSocket.shutdown also drops
    # its SSL object, which would race with the thread blocked inside it.
    with contextlib.suppress(OSError):
        socket.socket.shutdown(sock, socket.SHUT_RDWR)


class _Watchdog:
    def __init__(self) -> None:
        self._lock = threading.Condition()
        self._heap: list[tuple[float, int, _Armed]] = []
        self._counter = itertools.count()
        self._cancelled = 0
        # When the thread will look at the heap next on its own: -inf while it is
        # awake, inf while it waits for a first deadline.
        self._sleeping_until = -math.inf
        self._thread = threading.Thread(
            target=self._run, name="mailhandlers-deadlines", daemon=True
        )
        self._thread.start()

    def arm(self, deadline: Deadline) -> _Armed:
        armed = _Armed(deadline)
        with self._lock:
            heapq.heappush(self._heap, (deadline.when, next(self._counter), armed))
            # Wake the thread only when this deadline comes before the time it is
            # already sleeping until: a wake-up costs a thread switch and the GIL,
            # and deadlines armed one after another with the same limit never need it.
            if deadline.when < self._sleeping_until:
                self._sleeping_until = -math.inf  # woken: it looks at the heap first
                self._lock.notify()
        return armed

    def disarm(self, armed: _Armed) -> None:
        with self._lock:
            if armed.cancelled:
                return
            armed.cancelled = True
            self._cancelled += 1
            # Lazy deletion, compacted when most of the heap is dead weight, so a
            # high send rate with long deadlines does not grow the heap without bound.
            if self._cancelled > 64 and self._cancelled * 2 > len(self._heap):
                self._heap = [entry for entry in self._heap if not entry[2].cancelled]
                heapq.heapify(self._heap)
                self._cancelled = 0

    def _run(self) -> None:
        while True:
            with self._lock:
                if not self._heap:
                    self._sleeping_until = math.inf
                    self._lock.wait()
                    continue
                # A disarmed entry is left in place until it falls due: sleeping until
                # the earliest entry, disarmed or not, keeps the heap non-empty while
                # operations keep arming deadlines, so arming one rarely wakes this thread.
                when, _, armed = self._heap[0]
                remaining = when - time.monotonic()
                if remaining > 0:
                    self._sleeping_until = when
                    self._lock.wait(remaining)
                    continue
                self._sleeping_until = -math.inf  # awake: the heap is looked at again
                heapq.heappop(self._heap)
                if armed.cancelled:
                    self._cancelled = max(0, self._cancelled - 1)
                    continue
                armed.cancelled = True  # fired: a later disarm has nothing to do
            armed.deadline._fire()  # outside the lock: it does socket I/O


_instance: _Watchdog | None = None
_instance_lock = threading.Lock()


def _watchdog() -> _Watchdog:
    global _instance
    if _instance is None:
        with _instance_lock:
            if _instance is None:
                _instance = _Watchdog()
    return _instance


def _forget_watchdog_in_child() -> None:
    # The parent's watchdog thread does not exist in a forked child; start afresh.
    global _instance, _instance_lock
    _instance = None
    _instance_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_watchdog_in_child)
