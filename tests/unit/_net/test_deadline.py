"""Whole-operation deadlines: the watchdog thread cuts the socket of an operation whose
time ran out, never one that finished, and is not woken by every operation.

The timing bounds below are generous (seconds for deadlines of a tenth of one): they
check that a deadline fires, not how fast.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest

from src.handlers._net.deadline import Deadline, _Watchdog


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    left, right = socket.socketpair()
    left.settimeout(10)
    try:
        yield left, right
    finally:
        left.close()
        right.close()


class CountingWatchdog(_Watchdog):
    """A private watchdog that counts how often arming had to wake its thread."""

    def __init__(self) -> None:
        super().__init__()
        self.wakeups = 0
        notify = self._lock.notify

        def counted(n: int = 1) -> None:
            self.wakeups += 1
            notify(n)

        self._lock.notify = counted  # type: ignore[method-assign]

    def settle(self) -> None:
        """Wait until the thread sleeps (so the next arm sees its real wake-up time)."""
        limit = time.monotonic() + 5
        while self._sleeping_until == float("-inf") and time.monotonic() < limit:
            time.sleep(0.001)


def test_a_passed_deadline_cuts_a_blocked_read(pair: tuple[socket.socket, socket.socket]) -> None:
    left, _ = pair
    started = time.monotonic()
    with Deadline(0.1) as deadline:
        deadline.target = lambda: left
        data = left.recv(10)  # blocks until the watchdog shuts the socket down
    assert data == b""
    assert deadline.expired
    assert time.monotonic() - started < 5


def test_a_finished_operation_is_never_cut(pair: tuple[socket.socket, socket.socket]) -> None:
    left, right = pair
    with Deadline(0.05) as deadline:
        deadline.target = lambda: left
        right.sendall(b"x")
        assert left.recv(1) == b"x"
    time.sleep(0.2)
    assert not deadline.expired
    right.sendall(b"still open")
    assert left.recv(20) == b"still open"


def test_operations_one_after_another_do_not_wake_the_watchdog() -> None:
    """Each wake-up costs a thread switch and the GIL; a busy sender arms and disarms a
    deadline per message, all with the same limit, and must not pay that per message."""
    watchdog = CountingWatchdog()
    watchdog.settle()
    for _ in range(1000):
        deadline = Deadline(30)
        watchdog.disarm(watchdog.arm(deadline))
    # The first deadline wakes the idle thread; later ones fall due after it.
    assert watchdog.wakeups <= 2
    # Disarmed entries are dropped in bulk, so the heap stays small.
    assert len(watchdog._heap) <= 130


def test_an_earlier_deadline_wakes_the_watchdog_and_fires(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    left, _ = pair
    watchdog = CountingWatchdog()
    long = watchdog.arm(Deadline(60))
    watchdog.settle()
    before = watchdog.wakeups
    short = Deadline(0.1)
    short.target = lambda: left
    armed = watchdog.arm(short)
    assert watchdog.wakeups == before + 1
    started = time.monotonic()
    assert left.recv(10) == b""  # cut by the watchdog, not the 10 s socket timeout
    assert short.expired
    assert time.monotonic() - started < 5
    watchdog.disarm(armed)
    watchdog.disarm(long)


def test_a_deadline_armed_after_disarmed_ones_still_fires(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    """The thread sleeps until the earliest entry even when that one was disarmed; the
    live deadline behind it must still be found when its time comes."""
    left, _ = pair
    watchdog = CountingWatchdog()
    for _ in range(10):
        watchdog.disarm(watchdog.arm(Deadline(0.05)))
    live = Deadline(0.15)
    live.target = lambda: left
    watchdog.arm(live)
    assert left.recv(10) == b""
    assert live.expired
