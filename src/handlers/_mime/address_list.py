"""The bare addresses of an RFC 5322 address list, read on its raw syntax. Never raises.

The list is split before anything in it is decoded, so a comma, colon or angle bracket
inside a quoted string, a comment or an RFC 2047 encoded word is never syntax. Comments
(nested ones too) are dropped, group names are not addresses, an obsolete source route
is ignored, and the obsolete whitespace around the dots and the ``@`` of an address is
removed (``jdoe@test . example`` is ``jdoe@test.example``).
"""

from __future__ import annotations

import re

__all__ = ["address_list"]

_ENCODED_WORD = re.compile(r"=\?[^?\s]{1,80}\?[bBqQ]\?[^?]*\?=")
_ATOM_END = re.compile(r'[\s"(),:;<>@.\[\]]|=\?')
_ANGLE_STOP = re.compile(r'[\s"(),;>]')
_AROUND_SEPARATOR = re.compile(r"\s+(?=[.@])|(?<=[.@])\s+")
# Without these (and without "=?") the list has no comments, quoted strings, groups,
# source routes or encoded words, and a plain split finds the same addresses as the
# scanner below. A character class alone is searched much faster than an alternation.
_NEEDS_SCANNER = re.compile(r'[(":\\]')
_ENTRY_SEPARATOR = re.compile(r"[,;]")
# A quoted display name right before an angle-addr says nothing about the address.
_QUOTED_NAME = re.compile(r'"(?:[^"\\]|\\.)*"(?=[ \t]*<)')
# Whitespace inside a quoted string survives the joins below as this character.
_QUOTED_SPACE = "\x00"


def _skip_comment(text: str, pos: int) -> int:
    """The position after the comment that opens at ``text[pos]`` (nesting counted)."""
    depth = 0
    length = len(text)
    while pos < length:
        char = text[pos]
        if char == "\\":
            pos += 2
            continue
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
            if depth == 0:
                return pos + 1
        pos += 1
    return length


def _quoted(text: str, pos: int) -> tuple[str, int]:
    """The quoted string that opens at ``text[pos]`` (quotes kept) and where it ends."""
    out = ['"']
    pos += 1
    length = len(text)
    while pos < length:
        char = text[pos]
        if char == "\\" and pos + 1 < length:
            out.append(text[pos : pos + 2])
            pos += 2
            continue
        pos += 1
        if char == '"':
            break
        out.append(_QUOTED_SPACE if char in " \t" else char)
    out.append('"')
    return "".join(out), pos


def _addr_spec(tokens: list[str]) -> str:
    """An address from the tokens of an entry or an angle-addr (comments already gone)."""
    text = "".join(tokens)
    text = _AROUND_SEPARATOR.sub("", text)
    words = text.split()
    if not words:
        return ""
    if len(words) == 1:
        found = words[0]
    else:
        with_at = [word for word in words if "@" in word]
        found = with_at[0] if with_at else ""
    return found.replace(_QUOTED_SPACE, " ")


def _keep(address: str) -> bool:
    return bool(address) and "=?" not in address and not address.startswith("@")


def _simple_list(text: str) -> list[str] | None:
    """The addresses of a list that needs no scanner, or None if it does after all."""
    found: list[str] = []
    # A plain split is much cheaper than the pattern, and lists seldom use ";".
    entries = text.split(",") if ";" not in text else _ENTRY_SEPARATOR.split(text)
    for entry in entries:
        angles = entry.count("<")
        if angles != entry.count(">") or angles > 1:
            return None  # an angle-addr that goes on past the separator, or junk
        opening = entry.find("<")
        if opening < 0:
            address = _addr_spec([entry])
        else:
            closing = entry.find(">", opening)
            if closing < 0:
                return None
            address = "".join(entry[opening + 1 : closing].split())
        # As _keep decides, spelled out: this loop runs for every address in a list.
        if address and "=?" not in address and not address.startswith("@"):
            found.append(address)
    return found


def address_list(text: str) -> list[str]:
    """Bare addresses of an address-list header value (names, comments, groups dropped).

    Entries that yield no address, or only an undecoded encoded word, are left out.
    """
    plain = _QUOTED_NAME.sub("", text) if '"' in text else text
    if "=?" not in plain and _NEEDS_SCANNER.search(plain) is None:
        simple = _simple_list(plain)
        if simple is not None:
            return simple
    return _scan(text)


def _scan(text: str) -> list[str]:
    """The full RFC 5322 reading of an address list, character by character."""
    found: list[str] = []
    words: list[str] = []
    angle: list[str] | None = None
    in_angle = False
    pos = 0
    length = len(text)
    last_close = text.rfind(">")

    def finish() -> None:
        address = _addr_spec(angle if angle is not None else words)
        if angle is not None and ":" in address:
            address = address.rpartition(":")[2]  # obsolete source route
        address = address.strip(",;")
        if _keep(address):
            found.append(address)

    while pos < length:
        char = text[pos]
        if char == "(":
            pos = _skip_comment(text, pos)
            continue
        if char == '"':
            quoted, pos = _quoted(text, pos)
            (angle if in_angle and angle is not None else words).append(quoted)
            continue
        if in_angle and angle is not None:
            if char == ">":
                in_angle = False
            elif char in ",;" and pos > last_close:
                in_angle = False  # an angle-addr never closed: end it here
                continue
            elif not char.isspace():
                match = _ANGLE_STOP.search(text, pos + 1)
                end = match.start() if match else length
                angle.append(text[pos:end])
                pos = end
                continue
            pos += 1
            continue
        if char == "<":
            angle, in_angle = [], True
        elif char in ",;":
            finish()
            words, angle = [], None
        elif char == ":":
            if angle is None:
                words = []  # a group's display name, not an address
        elif char == "=" and text.startswith("=?", pos):
            match = _ENCODED_WORD.match(text, pos)
            end = match.end() if match else pos + 2
            words.append(text[pos:end])
            pos = end
            continue
        else:
            match = _ATOM_END.search(text, pos + 1)
            end = match.start() if match else length
            words.append(text[pos:end])
            pos = end
            continue
        pos += 1
    finish()
    return found
