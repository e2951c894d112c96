"""Finding control characters, which must never reach a header line or a protocol command.

CR, LF and NUL could end a line early and inject a command or a header of the sender's
choosing; the other C0 controls, DEL and lone surrogates cannot be sent safely either.
Every check that guards the wire asks :func:`find_control_character`.
"""

from __future__ import annotations

import re

# C0 controls and DEL; TAB is allowed only where folding whitespace is legal. Lone
# surrogates count as well: they cannot be encoded, so they would only fail later,
# while the message is being built or the command sent.
_CONTROL_CHARS = re.compile(r"[\x00-\x08\x0a-\x1f\x7f\ud800-\udfff]")
_CONTROL_CHARS_NO_TAB = re.compile(r"[\x00-\x1f\x7f\ud800-\udfff]")


def find_control_character(value: str, allow_tab: bool = False) -> str | None:
    """Return a readable name of the first control character in ``value``, or None."""
    pattern = _CONTROL_CHARS if allow_tab else _CONTROL_CHARS_NO_TAB
    match = pattern.search(value)
    if match is None:
        return None
    char = match.group()
    if "\ud800" <= char <= "\udfff":
        return f"an unpaired surrogate (U+{ord(char):04X})"
    names = {"\r": "CR", "\n": "LF", "\x00": "NUL", "\t": "TAB"}
    return names.get(char, f"control character 0x{ord(char):02x}")
