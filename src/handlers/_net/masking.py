"""Masking every form a secret takes on the wire: one function for every protocol.

A server may echo what the client sent: the password itself, the base64 line that
carried a SASL response, or the response decoded. Before text that came from a server
reaches an exception, a result, a log record or the protocol trace, :func:`mask_secrets`
hides all of them, given the secrets and the responses that held them (each SASL
mechanism lists its own in ``sensitive()``).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import re
from collections.abc import Iterable

__all__ = ["MASK", "base64_forms", "mask_secrets"]

MASK = "***"
# Base64 fragments of a secret shorter than this are not masked on their own: they
# would match ordinary words. Whole base64 runs are still decoded and checked.
_MIN_FRAGMENT = 4
# A run cut off after this many bytes of a secret is masked as if it held all of it.
_MIN_CUT_PREFIX = 6
_BASE64_RUN = re.compile(r"[A-Za-z0-9+/]{2,}={0,2}")


def mask_secrets(text: str, secrets: Iterable[str | bytes | None]) -> str:
    """``text`` with every form of every secret in ``secrets`` replaced by ``***``.

    For each secret (a ``str`` is taken as its UTF-8 bytes) this masks: the literal text;
    its base64 encoding; the base64 characters it fixes when it sits at any of the three
    byte offsets inside a longer encoded response; and any run of base64 characters that
    decodes, at any alignment, to bytes containing it or ending partway through it (an
    echo cut short). Masking may hide more than the secret, never less.
    """
    needles = sorted({_as_bytes(secret) for secret in secrets if secret}, key=len, reverse=True)
    if not needles:
        return text

    def hide_run(match: re.Match[str]) -> str:
        run = match.group()
        return MASK if _run_holds(run, needles) else run

    text = _BASE64_RUN.sub(hide_run, text)
    forms: set[str] = set()
    for needle in needles:
        forms.update(_forms(needle))
    for form in sorted(forms, key=len, reverse=True):
        text = text.replace(form, MASK)
    return text


def base64_forms(secret: str | bytes) -> list[str]:
    """The base64 texts that reveal ``secret``: its own encoding, then the characters it
    alone determines at each of the three offsets inside a longer encoded payload."""
    data = _as_bytes(secret)
    if not data:
        return []
    forms = [base64.b64encode(data).decode("ascii")]
    for offset in range(3):
        encoded = base64.b64encode(b"\0" * offset + data + b"\0\0").decode("ascii")
        start = -(-8 * offset // 6)
        end = 8 * (offset + len(data)) // 6
        if end - start >= _MIN_FRAGMENT:
            forms.append(encoded[start:end])
    return forms


def _forms(needle: bytes) -> list[str]:
    forms = base64_forms(needle)
    with contextlib.suppress(UnicodeDecodeError):
        forms.append(needle.decode("utf-8"))
    return forms


def _run_holds(run: str, needles: list[bytes]) -> bool:
    body = run.rstrip("=")
    for start in range(4):
        chunk = body[start:]
        chunk = chunk[: len(chunk) - len(chunk) % 4] if len(chunk) % 4 == 1 else chunk
        try:
            decoded = base64.b64decode(chunk + "=" * (-len(chunk) % 4))
        except (binascii.Error, ValueError):
            continue
        if any(needle in decoded or _ends_with_part_of(decoded, needle) for needle in needles):
            return True
    return False


def _ends_with_part_of(decoded: bytes, needle: bytes) -> bool:
    """True when ``decoded`` stops partway through ``needle``: a server that cut its echo
    short still shows that much of the secret."""
    shortest = min(len(needle), _MIN_CUT_PREFIX)
    for length in range(min(len(needle) - 1, len(decoded)), shortest - 1, -1):
        if decoded.endswith(needle[:length]):
            return True
    return False


def _as_bytes(secret: str | bytes) -> bytes:
    return secret.encode("utf-8", "surrogatepass") if isinstance(secret, str) else secret
