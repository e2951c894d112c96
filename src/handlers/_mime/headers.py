"""Decoding header bytes: charsets, RFC 2047 encoded words, RFC 2231 parameters,
address lists and dates, for :mod:`.message_parser`. Nothing here raises on bad input.

Decoding rules in one place:

* header bytes: UTF-8 when valid, else Windows-1252, else Latin-1 (never an error);
* RFC 2047 encoded words: adjacent words are joined before charset decoding (so a
  character split between two words survives), folding whitespace inside a word is
  tolerated, unknown charsets use the header byte rules above;
* RFC 2231 parameters, including numbered continuations, win over plain ones;
* text bodies: the declared charset with ``errors="replace"``, UTF-8 when the charset is
  missing or unknown; CRLF becomes ``\\n``, NUL characters are dropped, and the line
  break that ends a single-part message is not part of its text;
* labels that browsers also reinterpret are widened (ISO-8859-1 to Windows-1252, GB2312
  to GB18030, KS C 5601 to CP949) because mailers use them for the wider sets.
"""

from __future__ import annotations

import binascii
import calendar
import codecs
import encodings
import pkgutil
import re
from dataclasses import dataclass
from email.utils import parsedate_tz
from encodings.aliases import aliases as _CODEC_ALIASES
from functools import lru_cache
from urllib.parse import unquote_to_bytes

_MAX_FILENAME = 255
# Latest instant a receivedAt may name: the end of year 9999.
_MAX_SECONDS = 253402300799


# --------------------------------------------------------------------------- charsets

_WIDER_CHARSETS = {
    "ascii": "utf_8",
    "us_ascii": "utf_8",
    "iso_8859_1": "cp1252",
    "iso8859_1": "cp1252",
    "latin_1": "cp1252",
    "latin1": "cp1252",
    "gb2312": "gb18030",
    "gbk": "gb18030",
    "ks_c_5601_1987": "cp949",
    "euc_kr": "cp949",
}


@lru_cache(maxsize=1)
def _known_codec_names() -> frozenset[str]:
    # Only names Python can resolve are passed to codecs.lookup: its encodings cache
    # remembers every failed name forever, which hostile mail could exploit.
    modules = {info.name for info in pkgutil.iter_modules(encodings.__path__)}
    return frozenset(modules) | frozenset(_CODEC_ALIASES)


@lru_cache(maxsize=256)
def _codec_for(charset: str) -> str | None:
    """Resolve a declared charset to a Python text codec name, or None if unusable."""
    name = charset.strip().strip("\"'").split("*", 1)[0].lower()
    name = re.sub(r"[^0-9a-z.]+", "_", name).strip("_")
    name = _WIDER_CHARSETS.get(name, name)
    known = _known_codec_names()
    if name not in known:
        name = name.replace(".", "_")
        if name not in known:
            return None
    try:
        codec = codecs.lookup(name).name
        # Rejects byte-to-byte codecs (base64, zlib) and ones that cannot replace.
        b"a".decode(codec, "replace")
    except Exception:
        return None
    return codec


def decode_8bit(raw: bytes) -> str:
    """Decode bytes whose charset nobody declared: UTF-8, else Windows-1252, else Latin-1."""
    if raw.isascii():
        return raw.decode("ascii")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        pass
    try:
        return raw.decode("cp1252")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def _decode_declared(raw: bytes, charset: str) -> str:
    """Decode bytes in a declared charset, guessing like :func:`decode_8bit` if unknown."""
    codec = _codec_for(charset)
    if codec is None:
        return decode_8bit(raw)
    try:
        return raw.decode(codec, "replace")
    except Exception:
        return decode_8bit(raw)


def decode_body_text(raw: bytes, charset: str) -> str:
    codec = (_codec_for(charset) if charset else None) or "utf-8"
    try:
        text = raw.decode(codec, "replace")
    except Exception:
        text = raw.decode("utf-8", "replace")
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

_ENCODED_WORD = re.compile(r"=\?([^?\s]{1,80})\?([bBqQ])\?([^?]*)\?=")


def _word_bytes(encoding: str, text: str) -> bytes:
    # Whitespace inside a word can only come from a fold in the middle of it.
    payload = "".join(text.split()).encode("utf-8", "replace")
    if encoding in "bB":
        return b64decode(payload)[0]
    return binascii.a2b_qp(payload, header=True)


def _decode_words(text: str) -> str:
    """Decode RFC 2047 encoded words in an already unfolded header value."""
    if "=?" not in text:
        return text
    out: list[str] = []
    charset: str | None = None
    pending = bytearray()
    end = 0
    for match in _ENCODED_WORD.finditer(text):
        gap = text[end : match.start()]
        adjacent = charset is not None and not gap.strip()
        word_charset = match.group(1).split("*", 1)[0].lower()
        if charset is not None and (not adjacent or word_charset != charset):
            out.append(_decode_declared(bytes(pending), charset))
            pending.clear()
        if not adjacent:
            out.append(gap)
        charset = word_charset
        pending += _word_bytes(match.group(2), match.group(3))
        end = match.end()
    if charset is not None:
        out.append(_decode_declared(bytes(pending), charset))
    out.append(text[end:])
    return "".join(out)


def header_text(raw: bytes | None) -> str:
    """Header bytes to display text: 8-bit fallback, encoded words, no control chars."""
    if not raw:
        return ""
    return clean(_decode_words(decode_8bit(raw)))


# ------------------------------------------------------------------ MIME parameters

_PARAM = re.compile(r';\s*([^\s=;"]+)\s*=\s*("(?:[^"\\]|\\.)*(?:"|$)|[^;]*)', re.S)
_QUOTED_PAIR = re.compile(r"\\(.)", re.S)


@dataclass(frozen=True, slots=True)
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
        return "" if raw is None else _decode_words(decode_8bit(raw.encode("latin-1")))


def _unquote(value: str) -> str:
    value = value.strip()
    if not value.startswith('"'):
        return value
    value = value[1:-1] if len(value) > 1 and value.endswith('"') else value[1:]
    return _QUOTED_PAIR.sub(r"\1", value) if "\\" in value else value


def parse_params(raw: bytes | None) -> _Params:
    if not raw:
        return _Params("", {}, {})
    text = raw.decode("latin-1")
    value, _, rest = text.partition(";")
    plain: dict[str, str] = {}
    sections: dict[str, list[tuple[int, bool, str]]] = {}
    for match in _PARAM.finditer(";" + rest):
        key = match.group(1).lower()
        if "*" not in key:
            plain.setdefault(key, _unquote(match.group(2)))
            continue
        base, _, number = key.partition("*")
        encoded = number == "" or number.endswith("*")
        number = number.rstrip("*")
        index = int(number) if number.isascii() and number.isdigit() and len(number) < 5 else 0
        sections.setdefault(base, []).append((index, encoded, _unquote(match.group(2))))
    extended = {name: _join_sections(parts) for name, parts in sections.items()}
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

_ADDRESS_TOKEN = re.compile(
    r'"(?:[^"\\]|\\.)*(?:"|$)|\((?:[^()\\]|\\.)*(?:\)|$)|<[^<>]*(?:>|$)|[^,;:"(<]+|[,;:]'
)


def _entry_address(angle: str | None, words: list[str]) -> str:
    if angle is not None:
        address = angle[1:].rstrip(">")
        if address.lstrip().startswith("@") and ":" in address:
            address = address.split(":", 1)[1]  # obsolete source route
        return "".join(address.split())
    parts = "".join(words).split()
    if len(parts) == 1:
        return parts[0]
    with_at = [part for part in parts if "@" in part]
    return with_at[-1] if with_at else ""


def addresses(value: str) -> list[str]:
    """Bare addresses of an address-list header (display names, comments, groups dropped)."""
    found: list[str] = []
    angle: str | None = None
    words: list[str] = []
    for token in (*_ADDRESS_TOKEN.findall(value), ","):
        first = token[0]
        if first in ",;":
            address = clean(_entry_address(angle, words))
            if address and "=?" not in address:
                found.append(address)
            angle, words = None, []
        elif first == ":":
            if angle is None:
                words = []  # a group's display name, not an address
        elif first == "<":
            angle = token
        elif first != "(":
            words.append(token)
    return found


_NULL_SENDER = re.compile(r"<\s*>")


def sender(raw: bytes | None) -> str:
    if not raw:
        return ""
    text = decode_8bit(raw)
    for candidate in (text, _decode_words(text)):
        for address in addresses(candidate):
            if "@" in address:
                return address
    if _NULL_SENDER.search(text):
        return ""  # "<>" is the null sender of bounces, not a name to show
    return clean(_decode_words(text))


def timestamp_ms(value: str) -> int | None:
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
