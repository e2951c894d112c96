"""Forgetting inherited connections in a child made by ``os.fork()``.

A child must never talk on a socket it inherited: its bytes would interleave with the
parent's on the same connection, and a POP3 QUIT from the child would commit the
parent's deletions. Objects that hold connections register here, and in every forked
child their ``_after_fork_in_child()`` runs before any other code, dropping what they
inherited without touching it (the parent keeps using it).
"""

from __future__ import annotations

import os
import weakref
from typing import Protocol


class ForkAware(Protocol):
    """Something that holds connections and can forget them in a forked child."""

    def _after_fork_in_child(self) -> None: ...


_registered: weakref.WeakSet[ForkAware] = weakref.WeakSet()


def forget_in_child(holder: ForkAware) -> None:
    """Have ``holder._after_fork_in_child()`` called in every child this process forks."""
    _registered.add(holder)


def _run_in_child() -> None:
    for holder in list(_registered):
        holder._after_fork_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_run_in_child)
