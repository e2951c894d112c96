"""Slots: a cap on concurrent holders with a bounded wait, fresh in a forked child."""

from __future__ import annotations

import threading

import pytest

from src.handlers._net.slots import Slots


def test_slots_cap_holders_and_come_back_on_release() -> None:
    slots = Slots(2)
    assert slots.acquire(timeout=0) and slots.acquire(timeout=0)
    assert slots.free == 0
    assert slots.acquire(timeout=0) is False
    assert slots.acquire(timeout=0.01) is False
    slots.release()
    assert slots.free == 1
    assert slots.acquire(timeout=0)


def test_a_release_beyond_the_count_is_ignored() -> None:
    slots = Slots(1)
    slots.release()
    assert slots.free == 1
    assert slots.acquire(timeout=0)
    assert slots.acquire(timeout=0) is False


def test_a_waiting_thread_gets_the_slot_released_to_it() -> None:
    slots = Slots(1)
    assert slots.acquire(timeout=0)
    got: list[bool] = []
    waiter = threading.Thread(target=lambda: got.append(slots.acquire(timeout=10.0)))
    waiter.start()
    slots.release()
    waiter.join(10.0)
    assert got == [True]
    assert slots.free == 0


def test_a_forked_child_starts_with_every_slot_free() -> None:
    slots = Slots(1)
    assert slots.acquire(timeout=0)
    slots._after_fork_in_child()  # what the fork registry runs in a child
    assert slots.free == 1
    assert slots.acquire(timeout=0)


def test_count_must_be_positive() -> None:
    with pytest.raises(ValueError):
        Slots(0)
