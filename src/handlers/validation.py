"""Input validation shared by the handlers: addresses, headers, command arguments.

Everything that reaches a header line or a protocol command passes through here
first, so CR, LF, NUL and other control characters are refused in one place before
a single byte is sent.
"""

from __future__ import annotations

import re

from .errors import MailValidationError

# C0 controls and DEL; TAB is allowed only where folding whitespace is legal.
_CONTROL_CHARS = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_CONTROL_CHARS_NO_TAB = re.compile(r"[\x00-\x1f\x7f]")


def find_control_character(value: str, allow_tab: bool = False) -> str | None:
    """Return a readable name of the first control character in ``value``, or None."""
    pattern = _CONTROL_CHARS if allow_tab else _CONTROL_CHARS_NO_TAB
    match = pattern.search(value)
    if match is None:
        return None
    char = match.group()
    names = {"\r": "CR", "\n": "LF", "\x00": "NUL", "\t": "TAB"}
    return names.get(char, f"control character 0x{ord(char):02x}")


def ensure_safe_command_argument(value: str, field: str) -> None:
    """Raise :class:`MailValidationError` if ``value`` could inject a protocol command.

    The error names ``field`` but never echoes the value, which may be a secret.
    """
    if not isinstance(value, str):
        raise MailValidationError(f"{field} must be a string", field)
    problem = find_control_character(value)
    if problem is not None:
        raise MailValidationError(f"{field} contains {problem}, which is not allowed", field)
