"""A fake ``sleep`` for retry tests: it records the delays instead of waiting.
Not a test module itself."""

from __future__ import annotations


class Sleeps(list[float]):
    """Records the waits a handler asks for instead of waiting."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)
