"""Timing and memory helpers: interleaved repetitions, medians, RSS from /proc."""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def interleaved(cases: dict[str, Callable[[], float]], repetitions: int) -> dict[str, list[float]]:
    """Run every case once per repetition, rotating the order, and collect the values.

    Each case returns one measurement (a rate, or seconds). Rotating the order spreads
    slow drifts of the machine (frequency, caches, a neighbour's load) over all cases
    instead of letting them fall on whichever runs last.
    """
    names = list(cases)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for repetition in range(repetitions):
        shift = repetition % len(names)
        for name in names[shift:] + names[:shift]:
            gc.collect()
            samples[name].append(cases[name]())
    return samples


def median(values: list[float]) -> float:
    return statistics.median(values)


def rate(operation: Callable[[], object], count: int) -> float:
    """Operations per second of ``count`` calls (wall clock)."""
    started = time.perf_counter()
    for _ in range(count):
        operation()
    return count / (time.perf_counter() - started)


def seconds_per_call(operation: Callable[[], object], count: int) -> float:
    """Mean wall-clock seconds of ``count`` calls."""
    started = time.perf_counter()
    for _ in range(count):
        operation()
    return (time.perf_counter() - started) / count


def cpu_seconds_per_call(operation: Callable[[], object], count: int) -> float:
    """Mean process CPU seconds of ``count`` calls (for pure-CPU work such as building)."""
    started = time.process_time()
    for _ in range(count):
        operation()
    return (time.process_time() - started) / count


def _status_kib(field_name: str) -> int:
    for line in _STATUS.read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field_name} not in {_STATUS}")


def rss_kib() -> int:
    """Current resident set size of this process, in KiB."""
    return _status_kib("VmRSS")


def peak_rss_kib() -> int:
    """Peak resident set size since start or since :func:`reset_peak_rss`, in KiB."""
    return _status_kib("VmHWM")


def reset_peak_rss() -> bool:
    """Reset the peak RSS counter (Linux 4.0+); False if the kernel refused."""
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return peak_rss_kib() <= rss_kib() + 64


@dataclass
class Row:
    """One line of the results: our figure, the baseline's, their ratio, the target."""

    target: str
    what: str
    ours: float
    baseline: float
    unit: str
    higher_is_better: bool = True
    required: float | None = None  # the ratio the target asks for
    note: str = ""
    samples: dict[str, list[float]] = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        return self.ours / self.baseline if self.baseline else float("inf")

    @property
    def verdict(self) -> str:
        if self.required is None:
            return "info"
        if self.higher_is_better:
            return "met" if self.ratio >= self.required else "NOT met"
        return "met" if self.ratio <= self.required else "NOT met"

    @property
    def requirement(self) -> str:
        if self.required is None:
            return "-"
        return f"{'≥' if self.higher_is_better else '≤'} {self.required:g}"


def fmt(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    if abs(value) >= 1:
        return f"{value:.2f}"
    return f"{value:.3g}"
