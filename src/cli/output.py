"""Tables, JSON and a progress bar for the terminal, safe for text from strangers.

Subjects and addresses come from whoever sent the mail. Before any of it reaches a
terminal, control characters (which could move the cursor or retitle the window)
are replaced, in tables and in JSON alike.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterable, Sequence
from typing import Any, TextIO

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_C1 = re.compile(r"[\x7f-\x9f]")
_MAX_CELL = 60


def clean(value: object) -> str:
    """``value`` as one line of text without control characters."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return _CONTROL.sub("?", str(value))


def shorten(text: str, limit: int = _MAX_CELL) -> str:
    """``text`` cut to ``limit`` characters, marked with an ellipsis when cut."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def to_json(data: Any) -> str:
    """Indented JSON; C1 control characters are escaped too (json leaves them raw)."""
    text = json.dumps(data, indent=2, ensure_ascii=False, default=str)
    return _C1.sub(lambda match: f"\\u{ord(match.group()):04x}", text)


def print_json(data: Any) -> None:
    """Write ``data`` as JSON on stdout."""
    print(to_json(data))


def format_table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """A plain-text table with a header row and columns padded to fit."""
    cells = [[clean(h) for h in headers]]
    cells += [[shorten(clean(value)) for value in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]

    def line(row: list[str]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()

    rule = "  ".join("-" * width for width in widths)
    return "\n".join([line(cells[0]), rule, *(line(row) for row in cells[1:])])


def format_fields(pairs: Iterable[tuple[str, object]]) -> str:
    """Two columns, name and value, one field per line."""
    items = [(clean(name), clean(value)) for name, value in pairs]
    width = max((len(name) for name, _ in items), default=0)
    return "\n".join(f"{name.ljust(width)}  {value}".rstrip() for name, value in items)


class ProgressBar:
    """A one-line bar redrawn in place; silent unless ``stream`` is a terminal.

    Cleared by :meth:`close`, so whatever is printed next starts on a clean line.
    """

    WIDTH = 30

    def __init__(self, total: int, stream: TextIO | None = None, label: str = "messages") -> None:
        self.total = total
        self.done = 0
        self._stream = stream if stream is not None else sys.stdout
        self._label = label
        self.enabled = total > 1 and _is_terminal(self._stream)
        self._drawn = False

    def advance(self, step: int = 1) -> None:
        """Count ``step`` more items done and redraw."""
        self.done = min(self.total, self.done + step)
        if self.enabled:
            filled = self.WIDTH * self.done // max(self.total, 1)
            bar = "#" * filled + "." * (self.WIDTH - filled)
            self._stream.write(f"\r[{bar}] {self.done}/{self.total} {self._label}")
            self._stream.flush()
            self._drawn = True

    def close(self) -> None:
        """Erase the bar."""
        if self._drawn:
            self._stream.write("\r" + " " * (self.WIDTH + 40) + "\r")
            self._stream.flush()
            self._drawn = False


def _is_terminal(stream: TextIO) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty()) if callable(isatty) else False
    except ValueError:  # a closed stream
        return False
