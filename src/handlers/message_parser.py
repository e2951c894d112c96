"""Turn the raw bytes of a retrieved message into the dict the POP3 handler returns.

Two promises shape this module:

* **It never raises.** Mail arrives from strangers, so every header, charset, transfer
  encoding and MIME structure is treated as possibly broken. What can be recovered is
  recovered; what cannot becomes an empty value and a log record (DEBUG for routine
  damage, WARNING when a limit cuts the message short). Message bodies are never logged.
* **It is cheap.** Headers are split and decoded straight from bytes and the MIME tree is
  walked with an explicit stack, so no ``email.message`` objects are built. Walking the
  tree ourselves also means :class:`ParseLimits` stops descent *while* splitting, instead
  of after a full parse has already paid for a hostile structure.

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
import logging
import pkgutil
import re
from dataclasses import dataclass
from email.utils import parsedate_tz
from encodings.aliases import aliases as _CODEC_ALIASES
from functools import lru_cache
from typing import Any
from urllib.parse import unquote_to_bytes

__all__ = ["ParseLimits", "parse_header_summary", "parse_message"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ParseLimits:
    """Bounds that keep a hostile or broken message cheap to parse.

    Attributes:
        max_depth: multipart nesting levels that are followed; a multipart nested
            deeper is skipped with a WARNING.
        max_parts: MIME parts examined per message, multipart containers included;
            the parts after that are skipped with a WARNING.
        max_header_bytes: bytes of one header section (the message's own or a part's)
            that are read; the rest of that section is ignored.
    """

    max_depth: int = 20
    max_parts: int = 500
    max_header_bytes: int = 256 * 1024


_DEFAULT_LIMITS = ParseLimits()
_FLAGS = ("isRead", "isStarred", "isDeleted", "isSpam", "isDraft", "isSent")
_MAX_FILENAME = 255
# Latest instant a receivedAt may name: the end of year 9999.
_MAX_SECONDS = 253402300799


# --------------------------------------------------------------------------- headers


class _Headers:
    """Header fields of one section, unfolded, as (lower-case name, raw value bytes)."""

    __slots__ = ("_first", "fields")

    def __init__(self) -> None:
        self.fields: list[tuple[str, bytes]] = []
        self._first: dict[str, bytes] = {}

    def add(self, name: str, value: bytes) -> None:
        self.fields.append((name, value))
        self._first.setdefault(name, value)

    def first(self, name: str) -> bytes | None:
        return self._first.get(name)

    def all(self, name: str) -> list[bytes]:
        return [value for key, value in self.fields if key == name]


_BLANK_LINE = re.compile(rb"\r?\n\r?\n")
_FIELD_NAME = re.compile(rb"([!-9;-~]+)[ \t]*:")
_ENVELOPE = re.compile(rb"From [^\s:]")


def _read_header_section(data: bytes, limit: int) -> tuple[_Headers, bytes, list[str]]:
    """Split ``data`` into its header fields and the bytes of its body.

    Returns the defects found as short descriptions without any message content.
    """
    headers, body_start, defects = _header_bounds(data, limit, 0, len(data))
    return headers, data[body_start:], defects


def _header_bounds(
    data: bytes, limit: int, start: int, stop: int
) -> tuple[_Headers, int, list[str]]:
    """Read the header section of the part ``data[start:stop]``; return where its body
    starts instead of copying the body (a large attachment is not copied per level)."""
    defects: list[str] = []
    if _ENVELOPE.match(data, start, stop):
        # An mbox envelope line that some servers leave in front of the headers.
        newline = data.find(b"\n", start, stop)
        start = stop if newline < 0 else newline + 1
    for separator in (b"\n", b"\r\n"):
        if data.startswith(separator, start, stop):
            return _Headers(), start + len(separator), defects
    blank = _BLANK_LINE.search(data, start, stop)
    end = stop if blank is None else blank.start()
    body = stop if blank is None else blank.end()
    if end - start > limit:
        defects.append(f"header section longer than {limit} bytes; the excess is ignored")
        cut = data.rfind(b"\n", start, min(start + limit, stop))
        end = cut if cut > start else start + limit
    headers, body_start = _parse_fields(data, start, end, defects)
    return headers, body if body_start is None else body_start, defects


def _parse_fields(
    data: bytes, start: int, end: int, defects: list[str]
) -> tuple[_Headers, int | None]:
    """Read the fields in ``data[start:end]``; also return where the body starts if a
    line that is no header field shows the blank separator line was missing."""
    headers = _Headers()
    name: str | None = None
    pieces: list[bytes] = []
    pos = start
    section = data[start:end]
    has_nul = b"\x00" in section
    if has_nul:
        defects.append("NUL bytes in header section dropped")
    for line in section.split(b"\n") if section else ():
        line_start = pos
        pos += len(line) + 1
        line = line.removesuffix(b"\r")
        if has_nul:
            line = line.replace(b"\x00", b"")
        if line[:1] in (b" ", b"\t"):
            if name is None:
                defects.append("continuation line before the first header field")
            else:
                pieces.append(line)
            continue
        match = _FIELD_NAME.match(line)
        if match is None and (name is None or b":" not in line):
            defects.append("text without a header separator; treated as the body")
            body_start: int | None = line_start
            break
        if match is None:
            defects.append("malformed header field skipped")
            continue
        if name is not None:
            headers.add(name, b"".join(pieces).strip())
        name = match.group(1).decode("ascii").lower()
        pieces = [line[match.end() :]]
    else:
        body_start = None
    if name is not None:
        headers.add(name, b"".join(pieces).strip())
    return headers, body_start


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


def _decode_8bit(raw: bytes) -> str:
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
    """Decode bytes in a declared charset, guessing like :func:`_decode_8bit` if unknown."""
    codec = _codec_for(charset)
    if codec is None:
        return _decode_8bit(raw)
    try:
        return raw.decode(codec, "replace")
    except Exception:
        return _decode_8bit(raw)


def _decode_body_text(raw: bytes, charset: str) -> str:
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


def _clean(text: str) -> str:
    if not text.isprintable():
        text = text.translate(_CONTROL_TABLE)
    return text.strip()


# ------------------------------------------------------------------ transfer encodings

_NOT_BASE64 = bytes(
    code
    for code in range(256)
    if code not in b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
)


def _b64decode(data: bytes | memoryview) -> tuple[bytes, bool]:
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
        return _b64decode(payload)[0]
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


def _header_text(raw: bytes | None) -> str:
    """Header bytes to display text: 8-bit fallback, encoded words, no control chars."""
    if not raw:
        return ""
    return _clean(_decode_words(_decode_8bit(raw)))


# ------------------------------------------------------------------ MIME parameters

_MIME_TYPE = re.compile(r"\s*([!#$%&'*+.^_`|~0-9a-z-]+)/([!#$%&'*+.^_`|~0-9a-z-]+)")
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
        return "" if raw is None else _decode_words(_decode_8bit(raw.encode("latin-1")))


def _unquote(value: str) -> str:
    value = value.strip()
    if not value.startswith('"'):
        return value
    value = value[1:-1] if len(value) > 1 and value.endswith('"') else value[1:]
    return _QUOTED_PAIR.sub(r"\1", value) if "\\" in value else value


def _parse_params(raw: bytes | None) -> _Params:
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


def _safe_filename(name: str) -> str:
    """Keep a filename usable: no control characters, no directory parts, bounded."""
    name = _clean(name).replace("/", "_").replace("\\", "_")
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


def _addresses(value: str) -> list[str]:
    """Bare addresses of an address-list header (display names, comments, groups dropped)."""
    found: list[str] = []
    angle: str | None = None
    words: list[str] = []
    for token in (*_ADDRESS_TOKEN.findall(value), ","):
        first = token[0]
        if first in ",;":
            address = _clean(_entry_address(angle, words))
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


def _sender(raw: bytes | None) -> str:
    if not raw:
        return ""
    text = _decode_8bit(raw)
    for candidate in (text, _decode_words(text)):
        for address in _addresses(candidate):
            if "@" in address:
                return address
    if _NULL_SENDER.search(text):
        return ""  # "<>" is the null sender of bounces, not a name to show
    return _clean(_decode_words(text))


def _timestamp_ms(value: str) -> int | None:
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


def _received_at(headers: _Headers) -> int:
    for raw in headers.all("received"):
        stamp = _timestamp_ms(_decode_8bit(raw).rpartition(";")[2])
        if stamp is not None:
            return stamp
    date = headers.first("date")
    stamp = _timestamp_ms(_decode_8bit(date)) if date else None
    return 0 if stamp is None else stamp


# ------------------------------------------------------------------ MIME tree


@dataclass(frozen=True, slots=True)
class _Part:
    content_type: str
    charset: str
    boundary: bytes
    transfer_encoding: str
    disposition: str
    filename: str

    @property
    def maintype(self) -> str:
        return self.content_type.partition("/")[0]


def _describe_part(headers: _Headers, default_type: str) -> tuple[_Part, bool]:
    """Read a part's MIME headers; the flag is False when its Content-Type was unusable."""
    type_params = _parse_params(headers.first("content-type"))
    match = _MIME_TYPE.match(type_params.value) if type_params.value else None
    content_type = f"{match.group(1)}/{match.group(2)}" if match else default_type
    disposition = _parse_params(headers.first("content-disposition"))
    filename = disposition.text("filename") or type_params.text("name")
    encoding = headers.first("content-transfer-encoding") or b""
    boundary = type_params.plain.get("boundary")
    part = _Part(
        content_type=content_type,
        charset=type_params.text("charset"),
        boundary=(
            boundary.encode("latin-1")
            if boundary is not None
            else type_params.extended.get("boundary", "").encode("utf-8", "replace")
        ),
        transfer_encoding=encoding.decode("latin-1").strip().strip('"').lower(),
        disposition=disposition.value,
        filename=_safe_filename(filename) if filename else "",
    )
    return part, match is not None or not type_params.value


def _split_multipart(
    body: bytes, boundary: bytes, cap: int, begin: int = 0, stop: int | None = None
) -> tuple[list[tuple[int, int]], bool]:
    """Cut the multipart body ``body[begin:stop]`` at its delimiter lines into the
    ``(start, stop)`` offsets of its parts; the flag says whether it was closed."""
    stop = len(body) if stop is None else stop
    delimiter = b"--" + boundary
    parts: list[tuple[int, int]] = []
    start = -1
    pos = begin
    while len(parts) < cap:
        found = body.find(delimiter, pos, stop)
        if found < 0:
            break
        pos = found + len(delimiter)
        if found > begin and body[found - 1] != 0x0A:
            continue
        newline = body.find(b"\n", pos, stop)
        tail = body[pos : stop if newline < 0 else newline].rstrip(b" \t\r")
        if tail not in (b"", b"--"):
            continue
        if start >= 0:
            parts.append((start, _end_without_newline(body, start, found)))
        if tail == b"--":
            return parts, True
        start = pos = stop if newline < 0 else newline + 1
    if start >= 0 and len(parts) < cap:
        parts.append((start, stop))
    return parts, False


def _end_without_newline(data: bytes, start: int, stop: int) -> int:
    # The line break before a delimiter belongs to the delimiter (RFC 2046).
    if data.endswith(b"\r\n", start, stop):
        return stop - 2
    if data.endswith(b"\n", start, stop):
        return stop - 1
    return stop


# A part waiting to be visited: headers (None until read), the message bytes and the
# part's start and stop offsets in them (body start once headers are read), depth, the
# set of body types already taken by the enclosing multipart/alternative, and the
# default type. Parts are offsets into the one message, never copies of it.
_Pending = tuple[_Headers | None, bytes, int, int, int, set[str] | None, str]
_ENCAPSULATED = frozenset({"message/rfc822", "message/global"})


class _Collector:
    """Walks one message's MIME tree without recursion, gathering bodies and attachments."""

    def __init__(self, number: object, limits: ParseLimits, keep_content: bool) -> None:
        self.number = number
        self.limits = limits
        self.keep_content = keep_content
        self.texts: list[str] = []
        self.htmls: list[str] = []
        self.attachments: list[dict[str, Any]] = []

    def defect(self, level: int, what: str, *args: object) -> None:
        log.log(level, "message %s: " + what, self.number, *args)

    def walk(self, headers: _Headers, body: bytes, start: int = 0) -> None:
        """Visit the message whose headers were read and whose body is ``body[start:]``."""
        stack: list[_Pending] = [(headers, body, start, len(body), 0, None, "text/plain")]
        visited = 0
        while stack:
            part_headers, data, start, stop, depth, alternative, default_type = stack.pop()
            visited += 1
            if visited > self.limits.max_parts:
                self.defect(logging.WARNING, "more than %d MIME parts; rest skipped", visited - 1)
                return
            if part_headers is None:
                part_headers, start, defects = _header_bounds(
                    data, self.limits.max_header_bytes, start, stop
                )
                for defect in defects:
                    self.defect(logging.DEBUG, "%s (part)", defect)
            part, type_ok = _describe_part(part_headers, default_type)
            if not type_ok:
                self.defect(logging.DEBUG, "unusable Content-Type; read as %s", default_type)
            if part.maintype == "multipart":
                children = self._children(part, data, start, stop, depth, alternative)
                if children is None:
                    part = _Part("text/plain", part.charset, b"", "", "", "")
                else:
                    stack.extend(reversed(children))
                    continue
            if depth == 0:
                # POP3 delivers lines, so the last line break ends the last line rather
                # than adding content; dropping it matches how parts end at a delimiter.
                stop = _end_without_newline(data, start, stop)
            self._leaf(part, data, start, stop, alternative)

    def _children(
        self,
        part: _Part,
        data: bytes,
        start: int,
        stop: int,
        depth: int,
        alternative: set[str] | None,
    ) -> list[_Pending] | None:
        """The parts inside a multipart, or None when it has to be read as plain text."""
        if not part.boundary:
            self.defect(logging.DEBUG, "multipart without boundary; read as text")
            return None
        if depth >= self.limits.max_depth:
            self.defect(logging.WARNING, "multipart nested deeper than %d; skipped", depth)
            return []
        chunks, closed = _split_multipart(
            data, part.boundary, self.limits.max_parts + 1, start, stop
        )
        if not chunks:
            self.defect(logging.DEBUG, "multipart without delimiter lines; read as text")
            return None
        if not closed:
            self.defect(logging.DEBUG, "multipart without closing delimiter")
        subtype = part.content_type.partition("/")[2]
        inner_alternative = set() if subtype == "alternative" else alternative
        inner_default = "message/rfc822" if subtype == "digest" else "text/plain"
        return [
            (None, data, begin, end, depth + 1, inner_alternative, inner_default)
            for begin, end in chunks
        ]

    def _leaf(
        self, part: _Part, data: bytes, start: int, stop: int, alternative: set[str] | None
    ) -> None:
        payload = self._transfer_decode(data, start, stop, part.transfer_encoding)
        if part.content_type in _ENCAPSULATED:
            self._attach(part.filename or self._message_filename(payload), part, payload)
            return
        if part.maintype == "text" and part.disposition != "attachment" and not part.filename:
            subtype = part.content_type.partition("/")[2]
            if alternative is not None:
                if subtype in alternative or subtype not in ("plain", "html"):
                    return  # another rendering of a body already taken
                alternative.add(subtype)
            if subtype == "plain":
                self.texts.append(_decode_body_text(payload, part.charset))
                return
            if subtype == "html":
                self.htmls.append(_decode_body_text(payload, part.charset))
                return
        self._attach(part.filename, part, payload)

    def _attach(self, filename: str, part: _Part, payload: bytes) -> None:
        attachment: dict[str, Any] = {
            "filename": filename,
            "contentType": part.content_type,
            "size": len(payload),
        }
        if self.keep_content:
            attachment["content"] = payload
        self.attachments.append(attachment)

    def _message_filename(self, payload: bytes) -> str:
        headers, _, _ = _read_header_section(payload, self.limits.max_header_bytes)
        subject = _safe_filename(_header_text(headers.first("subject")))
        return f"{subject}.eml" if subject else "message.eml"

    def _transfer_decode(self, data: bytes, start: int, stop: int, encoding: str) -> bytes:
        """The decoded bytes of ``data[start:stop]`` (base64 is decoded in place)."""
        if encoding == "base64":
            with memoryview(data) as view:
                decoded, clean = _b64decode(view[start:stop])
            if not clean:
                self.defect(logging.DEBUG, "damaged base64 repaired")
            return decoded
        data = data[start:stop] if start or stop != len(data) else data
        if encoding in ("", "7bit", "8bit", "binary"):
            return data
        if encoding == "quoted-printable":
            return binascii.a2b_qp(data)
        self.defect(logging.DEBUG, "unknown transfer encoding %r; left as is", encoding[:40])
        return data


# ------------------------------------------------------------------ public API


def _empty_result(number: int, size: int) -> dict[str, Any]:
    result: dict[str, Any] = {
        "messageId": number,
        "popId": number,
        "messageIdHeader": "",
        "from": "",
        "to": [],
        "cc": [],
        "bcc": [],
        "subject": "",
        "textBody": "",
        "htmlBody": "",
        "receivedAt": 0,
        "size": size,
        "attachmentCount": 0,
        "attachments": [],
    }
    for flag in _FLAGS:
        result[flag] = False
    return result


def _fill_from_headers(result: dict[str, Any], headers: _Headers) -> None:
    message_id = headers.first("message-id")
    result["messageIdHeader"] = _clean(_decode_8bit(message_id)) if message_id else ""
    result["from"] = _sender(headers.first("from"))
    for key in ("to", "cc"):
        result[key] = [
            address for raw in headers.all(key) for address in _addresses(_decode_8bit(raw))
        ]
    result["subject"] = _header_text(headers.first("subject"))
    result["receivedAt"] = _received_at(headers)


def _as_bytes(raw: object) -> bytes:
    if isinstance(raw, bytes):
        return raw
    if isinstance(raw, bytearray | memoryview):
        return bytes(raw)
    if isinstance(raw, str):
        return raw.encode("utf-8", "replace")
    log.warning("expected message bytes, got %s; parsed as empty", type(raw).__name__)
    return b""


def _summary(
    data: bytes, message_number: int, size: int | None, limits: ParseLimits
) -> tuple[dict[str, Any], _Headers, int]:
    """The header-derived result, the headers, and where the body starts in ``data``."""
    result = _empty_result(message_number, len(data) if size is None else size)
    headers, body = _Headers(), len(data)
    try:
        headers, body, defects = _header_bounds(data, limits.max_header_bytes, 0, len(data))
        for defect in defects:
            log.debug("message %s: %s", message_number, defect)
        _fill_from_headers(result, headers)
    except Exception as exc:
        log.warning("message %s: header parsing failed (%s)", message_number, type(exc).__name__)
        log.debug("message %s: header parsing traceback", message_number, exc_info=True)
    return result, headers, body


def parse_message(
    raw: bytes,
    message_number: int,
    *,
    size: int | None = None,
    include_raw: bool = False,
    include_attachment_content: bool = False,
    limits: ParseLimits | None = None,
) -> dict[str, Any]:
    """Parse a complete message into the POP3 handler's message dict. Never raises.

    Args:
        raw: the whole message, lines ending in CRLF or LF, already dot-unstuffed.
        message_number: the message's 1-based number in the POP3 session; it becomes
            both ``messageId`` and ``popId``.
        size: the size the server reported; defaults to ``len(raw)``.
        include_raw: also return the input bytes under ``"raw"``.
        include_attachment_content: add the decoded bytes of each attachment under
            ``"content"``.
        limits: bounds on nesting, part count and header size (defaults are generous).

    ``receivedAt`` is in milliseconds since the epoch, taken from the first
    ``Received`` header (the hop nearest the mailbox) whose date parses, else from
    ``Date``, else 0. A date without a zone is read as UTC.

    ``textBody`` joins the non-empty inline text/plain parts with a newline and
    ``htmlBody`` the text/html ones; inside multipart/alternative only the first of
    each counts. Every other leaf part, any part with a filename or
    ``Content-Disposition: attachment``, and each encapsulated message is an
    attachment; an encapsulated message without a declared filename is named after
    its subject (``<subject>.eml``, else ``message.eml``).
    Filenames lose control characters and path separators (replaced by ``_``).
    """
    limits = limits or _DEFAULT_LIMITS
    data = _as_bytes(raw)
    result, headers, body_start = _summary(data, message_number, size, limits)
    collector = _Collector(message_number, limits, include_attachment_content)
    try:
        collector.walk(headers, data, body_start)
    except Exception as exc:
        log.warning("message %s: body parsing failed (%s)", message_number, type(exc).__name__)
        log.debug("message %s: body parsing traceback", message_number, exc_info=True)
    result["textBody"] = "\n".join(text for text in collector.texts if text)
    result["htmlBody"] = "\n".join(html for html in collector.htmls if html)
    result["attachments"] = collector.attachments
    result["attachmentCount"] = len(collector.attachments)
    if include_raw:
        result["raw"] = data
    return result


def parse_header_summary(
    raw_headers: bytes, message_number: int, *, size: int | None = None
) -> dict[str, Any]:
    """Build the message dict from a header section alone (as returned by ``TOP n 0``).

    Header-derived keys are filled exactly as :func:`parse_message` fills them; body
    text is empty and there are no attachments. Pass ``size`` from ``LIST``, since
    ``len(raw_headers)`` (the default) is only the size of the headers. Never raises.
    """
    result, _, _ = _summary(_as_bytes(raw_headers), message_number, size, _DEFAULT_LIMITS)
    return result
