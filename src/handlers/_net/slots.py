"""A cap on how many threads use something at once: :class:`Slots`.

A handler lets at most ``pool_size`` of its sends hold a connection at a time. The
cap is a counter under a plain lock: taking a free slot costs one lock round, where
``threading.BoundedSemaphore`` costs a condition and a timeout computation even when
nothing waits; a send takes and gives back a slot every time.

A forked child starts with every slot free: the threads that held slots in the parent
do not exist in the child, so their slots would otherwise never come back.
"""

from __future__ import annotations

import threading
import time

from .forksafe import forget_in_child


class Slots:
    """At most ``count`` holders at once; :meth:`acquire` waits a bounded time."""

    __slots__ = ("__weakref__", "_count", "_free", "_lock", "_released", "_waiting")

    def __init__(self, count: int) -> None:
        if count < 1:
            raise ValueError("count must be at least 1")
        self._count = count
        self._fresh()
        forget_in_child(self)

    def _fresh(self) -> None:
        self._free = self._count
        self._waiting = 0
        self._lock = threading.Lock()
        self._released = threading.Condition(self._lock)

    @property
    def free(self) -> int:
        """How many slots are free now."""
        return self._free

    def acquire(self, timeout: float) -> bool:
        """Take a slot, waiting at most ``timeout`` seconds; False if none came free."""
        with self._lock:
            if self._free > 0:
                self._free -= 1
                return True
            if timeout <= 0:
                return False
            until = time.monotonic() + timeout
            self._waiting += 1
            try:
                while self._free <= 0:
                    remaining = until - time.monotonic()
                    if remaining <= 0:
                        return False
                    self._released.wait(remaining)
                self._free -= 1
                return True
            finally:
                self._waiting -= 1

    def release(self) -> None:
        """Give a slot back. A release beyond the count (a slot taken before a fork,
        given back in the child) is ignored."""
        with self._lock:
            if self._free < self._count:
                self._free += 1
                if self._waiting:
                    self._released.notify()

    def _after_fork_in_child(self) -> None:
        self._fresh()
