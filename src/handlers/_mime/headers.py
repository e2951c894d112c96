"""Decoding header bytes: charsets, RFC 2047 encoded words, RFC 2231 parameters,
address lists and dates, for :mod:`.parser`. Nothing here raises on bad input.

Decoding rules in one place:

* charsets, for header bytes, encoded words, parameters and text bodies alike: the
  declared charset as mail clients read its label, then UTF-8, then Windows-1252 (see
  :mod:`._mime.charsets`); U+FFFD only for bytes a declared charset cannot read;
* RFC 2047 encoded words are found and decoded in the raw bytes, before the rest of the
  header is decoded, so an 8-bit byte inside a word is read in the word's charset;
  adjacent words are joined before charset decoding (so a character split between two
  words survives) and folding whitespace inside a word is tolerated;
* RFC 2231 parameters, including numbered continuations, win over plain ones;
* text bodies: CRLF becomes ``\\n``, NUL characters are dropped, and the line break that
  ends a single-part message is not part of its text;
* address lists are split on their raw syntax (RFC 5322 with its obsolete forms:
  nested comments, whitespace around dots) before anything is decoded, see
  :mod:`._mime.address_list`.
"""

from __future__ import annotations

import binascii
import calendar
import re
from dataclasses import dataclass
from datetime import date
from email.utils import parsedate_tz
from urllib.parse import unquote_to_bytes

from .address_list import address_list
from .charsets import decode_text, decode_undeclared

_MAX_FILENAME = 255
# Latest instant a receivedAt may name: the end of year 9999.
_MAX_SECONDS = 253402300799


# --------------------------------------------------------------------------- charsets


#: Decode bytes whose charset nobody declared: UTF-8, else Windows-1252. The charset
#: module's function itself rather than a wrapper, as most header fields go through it.
decode_8bit = decode_undeclared


def _decode_declared(raw: bytes, charset: str) -> str:
    """Decode bytes in a declared charset by the rule of :mod:`._mime.charsets`."""
    return decode_text(raw, charset)


def decode_body_text(raw: bytes, charset: str) -> str:
    """A text part's decoded bytes as text: CRLF becomes ``\\n``, NUL characters go."""
    text = decode_text(raw, charset)
    if "\r" in text:
        text = text.replace("\r\n", "\n")
    if "\x00" in text:
        text = text.replace("\x00", "")
    return text


# Control characters do not belong in header-derived strings; folding leftovers become spaces.
_CONTROL_TABLE: dict[int, str | None] = {
    code: None for code in (*range(0x20), *range(0x7F, 0xA0))
} | {9: " ", 10: " ", 13: " "}


def clean(text: str) -> str:
    if not text.isprintable():
        text = text.translate(_CONTROL_TABLE)
    return text.strip()


# ------------------------------------------------------------------ transfer encodings

_NOT_BASE64 = bytes(
    code
    for code in range(256)
    if code not in b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
)


def b64decode(data: bytes | memoryview) -> tuple[bytes, bool]:
    """Decode base64 leniently; the flag is False when the input had to be repaired."""
    try:
        return binascii.a2b_base64(data), True
    except (binascii.Error, ValueError):
        pass
    clean = bytes(data).translate(None, _NOT_BASE64)
    extra = len(clean) % 4
    if extra == 1:
        clean = clean[:-1]
    elif extra:
        clean += b"=" * (4 - extra)
    try:
        return binascii.a2b_base64(clean), False
    except (binascii.Error, ValueError):
        return b"", False


# ------------------------------------------------------------------ RFC 2047 words

_ENCODED_WORD = re.compile(rb"=\?([^?\s]{1,80})\?([bBqQ])\?([^?]*)\?=")


def _word_bytes(encoding: bytes, payload: bytes) -> bytes:
    # Whitespace inside a word can only come from a fold in the middle of it.
    payload = b"".join(payload.split())
    if encoding in b"bB":
        return b64decode(payload)[0]
    return binascii.a2b_qp(payload, header=True)


def decode_words(raw: bytes) -> str:
    """Decode an unfolded header value from bytes: RFC 2047 encoded words in their own
    charsets, the bytes between them by the undeclared-charset rule."""
    # ``find`` rather than ``in``: for bytes, ``in`` first tries the operand as an
    # integer, which costs more than the search itself in a value this short.
    if raw.find(b"=?") < 0:
        return decode_undeclared(raw)
    out: list[str] = []
    charset: str | None = None
    pending = bytearray()
    end = 0
    for match in _ENCODED_WORD.finditer(raw):
        gap = raw[end : match.start()]
        adjacent = charset is not None and not gap.strip()
        word_charset = match.group(1).decode("latin-1").split("*", 1)[0].lower()
        if charset is not None and (not adjacent or word_charset != charset):
            out.append(decode_text(bytes(pending), charset))
            pending.clear()
        if not adjacent:
            out.append(decode_undeclared(gap))
        charset = word_charset
        pending += _word_bytes(match.group(2), match.group(3))
        end = match.end()
    if charset is not None:
        out.append(decode_text(bytes(pending), charset))
    out.append(decode_undeclared(raw[end:]))
    return "".join(out)


def header_text(raw: bytes | None) -> str:
    """Header bytes to display text: encoded words, 8-bit fallback, no control chars."""
    if not raw:
        return ""
    return clean(decode_words(raw))


# ------------------------------------------------------------------ MIME parameters

# A parameter's name and value. A quoted string that is closed gives just its inside;
# any other value (a token, a quoted string left open) is given as it stands. Quoted
# strings are written as runs of plain characters between escaped pairs (Friedl's
# "unrolled loop"), which match what ``(?:[^"\\]|\\.)*`` matches, only faster.
# Possessive quantifiers, as giving characters back could never make it match
# otherwise, save keeping the positions to give them back.
_PARAM = re.compile(
    r';\s*+([^\s=;"]++)\s*+=\s*+'
    r'(?:"([^"\\]*+(?:\\.[^"\\]*+)*+)"|("[^"\\]*+(?:\\.[^"\\]*+)*+$|[^;]*+))',
    re.S,
)
_QUOTED_PAIR = re.compile(r"\\(.)", re.S)


# Not frozen: a frozen dataclass sets each field through object.__setattr__, which
# makes building one several times slower, and every MIME part needs one or two.
@dataclass(slots=True)
class _Params:
    """Parameters of a MIME header: ``plain`` values are still raw bytes as Latin-1 text,
    ``extended`` (RFC 2231) values are already decoded."""

    value: str
    plain: dict[str, str]
    extended: dict[str, str]

    def text(self, name: str) -> str:
        if name in self.extended:
            return self.extended[name]
        raw = self.plain.get(name)
        if raw is None:
            return ""
        if raw.isascii() and "=?" not in raw:
            return raw  # what decode_words gives for ASCII without encoded words
        return decode_words(raw.encode("latin-1"))


def _unquote(value: str) -> str:
    value = value.strip()
    if not value.startswith('"'):
        return value
    value = value[1:-1] if len(value) > 1 and value.endswith('"') else value[1:]
    return _QUOTED_PAIR.sub(r"\1", value) if "\\" in value else value


def parse_params(raw: bytes | None) -> _Params:
    """Read a MIME header such as Content-Type into its value (lower case) and parameters."""
    if not raw:
        return _Params("", {}, {})
    text = raw.decode("latin-1")
    value, semicolon, _ = text.partition(";")
    if not semicolon:
        return _Params(value.strip().lower(), {}, {})
    plain: dict[str, str] = {}
    sections: dict[str, list[tuple[int, bool, str]]] = {}
    # The parameters start at the first semicolon, where ``value`` ends.
    for key, inside_quotes, as_written in _PARAM.findall(text, len(value)):
        key = key.lower()
        if as_written:
            param = _unquote(as_written)
        elif "\\" in inside_quotes:
            param = _QUOTED_PAIR.sub(r"\1", inside_quotes)
        else:
            param = inside_quotes  # also an empty value, quoted or not
        if "*" not in key:
            plain.setdefault(key, param)
            continue
        base, _, number = key.partition("*")
        encoded = number == "" or number.endswith("*")
        number = number.rstrip("*")
        index = int(number) if number.isascii() and number.isdigit() and len(number) < 5 else 0
        sections.setdefault(base, []).append((index, encoded, param))
    extended = {name: _join_sections(parts) for name, parts in sections.items()} if sections else {}
    return _Params(value.strip().lower(), plain, extended)


def _join_sections(parts: list[tuple[int, bool, str]]) -> str:
    """Reassemble RFC 2231 continuations (``name*0*=charset'lang'..``, ``name*1*=..``)."""
    parts.sort(key=lambda part: part[0])
    charset = ""
    joined = bytearray()
    for position, (_, encoded, value) in enumerate(parts):
        if encoded:
            if position == 0 and value.count("'") >= 2:
                charset, _, value = value.split("'", 2)
            joined += unquote_to_bytes(value.encode("latin-1"))
        else:
            joined += value.encode("latin-1")
    return _decode_declared(bytes(joined), charset)


def safe_filename(name: str) -> str:
    """Keep a filename usable: no control characters, no directory parts, bounded."""
    name = clean(name).replace("/", "_").replace("\\", "_")
    return name[:_MAX_FILENAME]


# ------------------------------------------------------------------ addresses and dates


def addresses(value: str) -> list[str]:
    """Bare addresses of an address-list header (display names, comments, groups dropped)."""
    return [address for address in map(clean, address_list(value)) if address]


_NULL_SENDER = re.compile(r"<\s*>")


def sender(raw: bytes | None) -> str:
    if not raw:
        return ""
    text = decode_8bit(raw)
    for address in addresses(text):
        if "@" in address:
            return address
    decoded = decode_words(raw) if raw.find(b"=?") >= 0 else text
    if decoded != text:
        # For mailers that encode the whole header, address included.
        for address in addresses(decoded):
            if "@" in address:
                return address
    if _NULL_SENDER.search(text):
        return ""  # "<>" is the null sender of bounces, not a name to show
    return clean(decoded)


# The date form RFC 5322 section 3.3 asks for, which nearly every mailer writes:
# "[Mon, ]2 Mar 2026 10:03[:00] +0000", anything after the zone set off by whitespace
# (a comment such as "(UTC)"). The standard library reads each one to the same instant.
_RFC5322_DATE = re.compile(
    r"\s*(?:(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun),\s*)?([0-9]{1,2})\s+"
    r"(Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)\s+([1-9][0-9]{3})\s+"
    r"([0-9]{2}):([0-9]{2})(?::([0-9]{2}))?\s+([+-])([0-9]{2})([0-9]{2})(?:\s.*)?",
    re.S,
)
_MONTHS = {
    name: number
    for number, name in enumerate(
        ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"), 1
    )
}
_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()
# Two-digit fields looked up rather than converted: int() costs more, five times a date.
_TWO_DIGITS = {f"{number:02d}": number for number in range(100)}


def _rfc5322_seconds(match: re.Match[str]) -> int:
    """Seconds since the epoch of a date in :data:`_RFC5322_DATE`'s form, counted as
    ``calendar.timegm`` counts them (a day or time out of range simply carries over)."""
    day, month, year, hour, minute, second, sign, zone_hours, zone_minutes = match.groups()
    two = _TWO_DIGITS
    days = date(int(year), _MONTHS[month], 1).toordinal() - _EPOCH_ORDINAL + int(day) - 1
    seconds = ((days * 24 + two[hour]) * 60 + two[minute]) * 60 + two[second or "00"]
    offset = two[zone_hours] * 3600 + two[zone_minutes] * 60
    return seconds + offset if sign == "-" else seconds - offset


def timestamp_ms(value: str) -> int | None:
    """Milliseconds since the epoch for a date header's text, or None if it has none."""
    match = _RFC5322_DATE.fullmatch(value)
    if match is not None:
        seconds = _rfc5322_seconds(match)
    else:
        try:
            parsed = parsedate_tz(value)
            if parsed is None:
                return None
            # A date without a zone is read as UTC so results do not depend on the host.
            seconds = calendar.timegm(parsed[:6]) - (parsed[9] or 0)
        except Exception:
            return None
    if not 0 <= seconds <= _MAX_SECONDS:
        return None
    return seconds * 1000
