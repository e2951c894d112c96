"""A wrapper that keeps a password out of reprs, logs and debugger views."""

from __future__ import annotations

from typing import Any


class Secret:
    """Holds a secret string; every textual form of it is a fixed mask.

    The value is only available through :meth:`reveal`, so printing an object that
    holds a ``Secret`` (or its ``vars()``) never shows it.
    """

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The secret itself; call only where it is sent to the server."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __reduce__(self) -> str | tuple[Any, ...]:
        raise TypeError("a Secret cannot be pickled")
