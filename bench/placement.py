"""Where the benchmark process and its loopback server run: pinned CPU placements.

A loopback round trip costs very different amounts depending on whether the client
and the server share a core. On one core, a reply is a context switch away. On two
cores, every reply wakes a process on the other core, and on a virtual machine that
wake-up (an inter-processor interrupt the hypervisor delivers) is several times the
CPU cost of the Python code around it. Left to the scheduler, a run lands on either
placement, or switches between them mid-run, so the same code measures 30 % faster or
slower from one run to the next and a ratio of two clients compares two placements
rather than two clients. The SMTP groups therefore measure every client under each
placement here, named in the figure.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class Placement:
    """CPUs for the benchmark process (``client``) and for its server."""

    name: str
    client: frozenset[int]
    server: frozenset[int]


def placements() -> list[Placement]:
    """Separate cores (a server on another machine: every reply crosses cores) and
    one shared core (replies are context switches); on a one-CPU machine, just that."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return [Placement("one core", frozenset(cpus), frozenset(cpus))]
    first, second = cpus[0], cpus[1]
    return [
        Placement("separate cores", frozenset({first}), frozenset({second})),
        Placement("one core", frozenset({first}), frozenset({first})),
    ]


@contextlib.contextmanager
def placed(placement: Placement, server_pid: int) -> Iterator[Placement]:
    """Pin every thread of this process, and ``server_pid``, as ``placement`` says;
    restore on exit. Threads started meanwhile inherit the pin."""
    own = os.sched_getaffinity(0)
    server = os.sched_getaffinity(server_pid)
    _pin_threads(placement.client)
    os.sched_setaffinity(server_pid, placement.server)
    try:
        yield placement
    finally:
        _pin_threads(own)
        with contextlib.suppress(ProcessLookupError):
            os.sched_setaffinity(server_pid, server)


def _pin_threads(cpus: frozenset[int] | set[int]) -> None:
    # sched_setaffinity(0) pins only the calling thread; a helper thread already
    # running (the deadline watchdog, say) would stay free.
    for task in os.listdir("/proc/self/task"):
        with contextlib.suppress(ProcessLookupError):
            os.sched_setaffinity(int(task), cpus)
