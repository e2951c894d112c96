"""A wrapper that keeps a secret (a password, a token) out of reprs, logs and debugger
views, and the keyed digest that stands for a secret where one must be compared."""

from __future__ import annotations

import hashlib
import os
from typing import Any

# Drawn once per process, never stored or shown: a digest made with it cannot be
# checked against guessed passwords anywhere else.
_DIGEST_KEY = os.urandom(32)


def keyed_digest(kind: str, value: str) -> bytes:
    """A 16-byte BLAKE2b digest of ``value`` under the process's secret key.

    Equal values give equal digests within one process (so pools can compare logins);
    ``kind`` keeps digests of different sorts of secret apart.
    """
    data = value.encode("utf-8", "surrogatepass")
    return hashlib.blake2b(
        data, key=_DIGEST_KEY, digest_size=16, person=kind.encode("ascii")[:16]
    ).digest()


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

    def __copy__(self) -> Secret:
        return self

    def __deepcopy__(self, memo: object) -> Secret:
        return self  # immutable, and copying must not need pickling

    def __reduce__(self) -> str | tuple[Any, ...]:
        raise TypeError("a Secret cannot be pickled")
