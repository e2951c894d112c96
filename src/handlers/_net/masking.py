"""Masking secrets in text that came back from a server: one function for every protocol.

Servers echo what they were sent: a refused ``AUTH`` line, the base64 of a SASL
response, a password inside a later reply. Before any such text reaches an exception,
a result, a log record or the protocol trace it goes through :func:`mask_secrets`,
which hides every form a secret takes on the wire:

* the secret as is;
* any base64 run that decodes to bytes holding a secret (the whole SASL response, e.g.
  ``\\0user\\0password`` for PLAIN or ``user=..\\x01auth=Bearer <token>`` for XOAUTH2);
* the base64 of a secret at each of the three byte alignments it can have inside a
  longer base64 string, which also catches a response the server cut short.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterable

__all__ = ["MASK", "mask_secrets"]

MASK = "***"

_BASE64_RUN = re.compile(r"[A-Za-z0-9+/_-]{4,}={0,2}")
# A base64 fragment shorter than this is too likely to occur by chance in ordinary text.
_MIN_FRAGMENT = 8


def _fragments(secret: bytes) -> list[str]:
    """The base64 characters that encode only ``secret``'s bytes, at each alignment."""
    found = []
    for offset in range(3):
        encoded = base64.b64encode(b"\0" * offset + secret).decode("ascii")
        # Characters that mix in the prefix or the padding are not the secret's alone.
        start = -(-offset * 4 // 3)
        usable = encoded[start : len(encoded) - 3]
        if len(usable) >= _MIN_FRAGMENT:
            found.append(usable)
            found.append(usable.replace("+", "-").replace("/", "_"))
    return found


def _decodes_to_secret(token: str, needles: list[bytes]) -> bool:
    padded = token.rstrip("=")
    padded += "=" * (-len(padded) % 4)
    for altchars in (None, b"-_"):
        try:
            decoded = base64.b64decode(padded, altchars=altchars)
        except (binascii.Error, ValueError):
            continue
        if any(needle in decoded for needle in needles):
            return True
    return False


def mask_secrets(text: str, secrets: Iterable[str | bytes | None]) -> str:
    """``text`` with every form of every non-empty secret in ``secrets`` replaced by ``***``."""
    needles = []
    for secret in secrets:
        if not secret:
            continue
        needles.append(
            secret if isinstance(secret, bytes) else secret.encode("utf-8", "surrogatepass")
        )
    if not needles or not text:
        return text
    for needle in sorted(needles, key=len, reverse=True):
        literal = needle.decode("utf-8", "replace")
        text = text.replace(literal, MASK)
    for needle in needles:
        for fragment in _fragments(needle):
            text = text.replace(fragment, MASK)

    def hide(match: re.Match[str]) -> str:
        token = match.group()
        return MASK if _decodes_to_secret(token, needles) else token

    return _BASE64_RUN.sub(hide, text)
