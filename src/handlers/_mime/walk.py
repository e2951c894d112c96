"""Walking a message's MIME tree: header sections split into fields, parts described,
multiparts cut at their delimiters, leaves decoded into bodies and attachments.

The walk uses an explicit stack and offsets into the one message, never copies of it, and
:class:`ParseLimits` stops descent while splitting. It never raises on bad input; damage is
logged (DEBUG for routine damage, WARNING when a limit cuts the message short).
"""

from __future__ import annotations

import binascii
import logging
import re
from dataclasses import dataclass
from typing import Any

from .._net.logs import get_logger
from .filetypes import type_for_filename
from .headers import (
    b64decode,
    decode_body_text,
    header_text,
    parse_params,
    safe_filename,
)
from .limits import ParseLimits
from .tnef import tnef_files
from .uuencode import split_blocks, uudecode

# The logger this code used before it moved here: records about damaged messages keep
# coming from the parser's logger, where callers listen for them.
log = get_logger("parser")

# --------------------------------------------------------------------------- headers


class Headers:
    """Header fields of one section, unfolded, as (lower-case name, raw value bytes)."""

    __slots__ = ("_first", "fields")

    def __init__(self, fields: list[tuple[str, bytes]] | None = None) -> None:
        """Start empty, or hold ``fields`` (which are not copied) in their order."""
        self.fields: list[tuple[str, bytes]] = [] if fields is None else fields
        # Built from the reversed list so that the first field of each name wins.
        self._first: dict[str, bytes] = dict(reversed(self.fields))

    def add(self, name: str, value: bytes) -> None:
        self.fields.append((name, value))
        self._first.setdefault(name, value)

    def first(self, name: str) -> bytes | None:
        return self._first.get(name)

    def all(self, name: str) -> list[bytes]:
        first = self._first.get(name)
        if first is None:
            return []
        if len(self._first) == len(self.fields):
            return [first]  # no name repeats, so the first field is the only one
        return [value for key, value in self.fields if key == name]


_BLANK_LINE = re.compile(rb"\n\r?\n")
_FIELD_NAME = re.compile(rb"([!-9;-~]+)[ \t]*:")
# Each line of a header section: a field with its continuation lines (name, value on
# the first line and the continuation lines captured), or any other line (all three
# left empty). Most fields have no continuation, and so nothing to unfold.
# Possessive quantifiers: giving characters back could never make a line match
# otherwise, and not keeping the positions to give them back saves time.
_SECTION_LINE = re.compile(
    rb"^(?:([!-9;-~]++)[ \t]*+:([^\n]*+)((?:\n[ \t][^\n]*+)*+)|[^\n]*+)", re.M
)
_ENVELOPE = re.compile(rb"From [^\s:]")


def _read_header_section(data: bytes, limit: int) -> tuple[Headers, bytes, list[str]]:
    """Split ``data`` into its header fields and the bytes of its body.

    Returns the defects found as short descriptions without any message content.
    """
    headers, body_start, defects = header_bounds(data, limit, 0, len(data))
    return headers, data[body_start:], defects


def header_bounds(data: bytes, limit: int, start: int, stop: int) -> tuple[Headers, int, list[str]]:
    """Read the header section of the part ``data[start:stop]``; return where its body
    starts instead of copying the body (a large attachment is not copied per level)."""
    defects: list[str] = []
    # The first byte rules out both special cases below in most sections, and reading
    # it is much cheaper than asking ``startswith`` with bounds.
    lead = data[start] if start < stop else -1
    if (
        lead == 0x46
        and data.startswith(b"From ", start, stop)
        and _ENVELOPE.match(data, start, stop)
    ):
        # An mbox envelope line that some servers leave in front of the headers.
        newline = data.find(b"\n", start, stop)
        start = stop if newline < 0 else newline + 1
        lead = data[start] if start < stop else -1
    if lead == 0x0A or (lead == 0x0D and data.startswith(b"\r\n", start, stop)):
        # No header fields: the body starts after the empty first line.
        return Headers(), data.index(b"\n", start) + 1, defects
    # The first empty line, with the line break before it. Searching from the line
    # feed, whose CR is then looked at, is several times faster than a pattern that
    # starts with an optional CR: a search for one byte is quick.
    blank = _BLANK_LINE.search(data, start, stop)
    if blank is None:
        end = body = stop
    else:
        end, body = blank.span()
        if end > start and data[end - 1] == 0x0D:
            end -= 1
    if end - start > limit:
        defects.append(f"header section longer than {limit} bytes; the excess is ignored")
        cut = data.rfind(b"\n", start, min(start + limit, stop))
        end = cut if cut > start else start + limit
    if data.find(b"\x00", start, end) < 0:
        fields = _well_formed_fields(data, start, end)
        if fields is not None:
            return Headers(fields), body, defects
    headers, body_start = _parse_fields(data, start, end, defects)
    return headers, body if body_start is None else body_start, defects


def _parse_fields(
    data: bytes, start: int, end: int, defects: list[str]
) -> tuple[Headers, int | None]:
    """Read the fields in ``data[start:end]``; also return where the body starts if a
    line that is no header field shows the blank separator line was missing."""
    headers = Headers()
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


def _well_formed_fields(data: bytes, start: int, end: int) -> list[tuple[str, bytes]] | None:
    """The fields of ``data[start:end]`` if every line is a header field or continues
    one, else None.

    Most header sections are well formed, and one pass of a regular expression reads
    them much faster than the line-by-line reader in :func:`_parse_fields`, which is
    left the other sections because it knows how to report their damage. Both unfold a
    field the same way: the line breaks (each with one CR before it) go, the rest stays.
    """
    # A copy, so that ``^`` matches at its start; header sections are small.
    lines = _SECTION_LINE.findall(data[start:end])
    if (b"", b"", b"") in lines:
        return None  # a line that is no field, a stray continuation, an empty line
    return [
        (
            name.decode("ascii").lower(),
            (value + more).replace(b"\r\n", b"").replace(b"\n", b"").strip()
            if more
            else value.strip(),
        )
        for name, value, more in lines
    ]


# ------------------------------------------------------------------ MIME tree

# Matched against a parsed header value, which is stripped and in lower case.
_MIME_TYPE = re.compile(r"[!#$%&'*+.^_`|~0-9a-z-]+/[!#$%&'*+.^_`|~0-9a-z-]+")
# The leaf types whose text is decoded, so the only ones whose charset is read.
_TEXT_BODIES = frozenset({"text/plain", "text/html"})


# Not frozen: a frozen dataclass sets each field through object.__setattr__, which
# makes building one, as is done for every part, several times slower.
@dataclass(slots=True)
class _Part:
    content_type: str
    charset: str
    """The declared charset, read only for a text/plain or text/html leaf (the bodies
    decoded as text); empty for any other part."""
    boundary: bytes
    transfer_encoding: str
    disposition: str
    filename: str
    named: bool
    """The part carries a file name, even one that cleaning leaves empty."""


def _describe_part(headers: Headers, default_type: str) -> tuple[_Part, bool]:
    """Read a part's MIME headers; the flag is False when its Content-Type was unusable.

    Of a multipart only its boundary is used, of a leaf everything but the boundary
    (and the charset only of a text body), so each kind reads just that.
    """
    type_params = parse_params(headers.first("content-type"))
    value = type_params.value
    match = _MIME_TYPE.match(value) if value else None
    content_type = match[0] if match else default_type
    type_ok = match is not None or not value
    # Parts are built with positional arguments, which is measurably faster.
    if content_type.startswith("multipart/"):
        boundary = type_params.plain.get("boundary")
        raw_boundary = (
            boundary.encode("latin-1")
            if boundary is not None
            else type_params.extended.get("boundary", "").encode("utf-8", "replace")
        )
        return _Part(content_type, "", raw_boundary, "", "", "", False), type_ok
    raw_disposition = headers.first("content-disposition")
    # Most leaves have no Content-Disposition; they are spared reading an empty one.
    disposition = parse_params(raw_disposition) if raw_disposition else None
    filename = (disposition and disposition.text("filename")) or type_params.text("name")
    encoding = headers.first("content-transfer-encoding")
    leaf = _Part(
        content_type,
        type_params.text("charset") if content_type in _TEXT_BODIES else "",
        b"",
        encoding.decode("latin-1").strip().strip('"').lower() if encoding else "",
        disposition.value if disposition else "",
        safe_filename(filename) if filename else "",
        bool(filename),
    )
    return leaf, type_ok


def _declared_charset(headers: Headers) -> str:
    """The charset parameter of a part's Content-Type."""
    return parse_params(headers.first("content-type")).text("charset")


def _split_multipart(
    body: bytes, boundary: bytes, cap: int, begin: int = 0, stop: int | None = None
) -> tuple[list[tuple[int, int]], bool]:
    """Cut the multipart body ``body[begin:stop]`` at its delimiter lines into the
    ``(start, stop)`` offsets of its parts; the flag says whether it was closed."""
    stop = len(body) if stop is None else stop
    delimiter = b"--" + boundary
    length = len(delimiter)
    parts: list[tuple[int, int]] = []
    start = -1
    pos = begin
    while len(parts) < cap:
        found = body.find(delimiter, pos, stop)
        if found < 0:
            break
        pos = found + length
        if found > begin and body[found - 1] != 0x0A:
            continue
        newline = body.find(b"\n", pos, stop)
        line_end = stop if newline < 0 else newline
        # Most delimiter lines end right after the boundary; they need no copy of a tail.
        tail = body[pos:line_end].rstrip(b" \t\r") if line_end != pos else b""
        if tail and tail != b"--":
            continue
        if start >= 0:
            # The line break before a delimiter belongs to the delimiter (RFC 2046).
            end = found
            if end > start and body[end - 1] == 0x0A:
                end -= 1
                if end > start and body[end - 1] == 0x0D:
                    end -= 1
            parts.append((start, end))
        if tail:
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


# Inside a multipart/alternative: which branch (direct child of the alternative, by
# index) took each body subtype, and the branch this part is in.
_Alternative = tuple[dict[str, int], int]
# A part waiting to be visited: headers (None until read), the message bytes and the
# part's start and stop offsets in them (body start once headers are read), depth, the
# enclosing multipart/alternative's state, and the default type. Parts are offsets into
# the one message, never copies of it.
_Pending = tuple[Headers | None, bytes, int, int, int, _Alternative | None, str]
_ENCAPSULATED = frozenset({"message/rfc822", "message/global"})
_UUENCODE = frozenset({"x-uuencode", "uuencode", "x-uue", "uue"})
_TNEF = frozenset({"application/ms-tnef", "application/vnd.ms-tnef"})


class Collector:
    """Walks one message's MIME tree without recursion, gathering bodies and attachments."""

    def __init__(self, number: object, limits: ParseLimits, keep_content: bool) -> None:
        self.number = number
        self.limits = limits
        self.keep_content = keep_content
        self.texts: list[str] = []
        self.htmls: list[str] = []
        self.attachments: list[dict[str, Any]] = []
        # Bookkeeping that shows no leaf is lost: every leaf visited is a body, an
        # attachment, or another rendering of a body an alternative already has.
        self.leaves = 0
        self.renderings = 0
        self.extracted = 0

    def defect(self, level: int, what: str, *args: object) -> None:
        log.log(level, "message %s: " + what, self.number, *args)

    def walk(self, headers: Headers, body: bytes, start: int = 0) -> None:
        """Visit the message whose headers were read and whose body is ``body[start:]``."""
        stack: list[_Pending] = [(headers, body, start, len(body), 0, None, "text/plain")]
        visited = 0
        max_parts, max_header_bytes = self.limits.max_parts, self.limits.max_header_bytes
        while stack:
            part_headers, data, start, stop, depth, alternative, default_type = stack.pop()
            visited += 1
            if visited > max_parts:
                self.defect(logging.WARNING, "more than %d MIME parts; rest skipped", visited - 1)
                return
            if part_headers is None:
                part_headers, start, defects = header_bounds(data, max_header_bytes, start, stop)
                for defect in defects:
                    self.defect(logging.DEBUG, "%s (part)", defect)
            part, type_ok = _describe_part(part_headers, default_type)
            if not type_ok:
                self.defect(logging.DEBUG, "unusable Content-Type; read as %s", default_type)
            # The content type always has a slash: it is a matched type or a default.
            if part.content_type.startswith("multipart/"):
                children = self._children(part, data, start, stop, depth, alternative)
                if children is None:
                    # Read as text after all, so its charset is wanted now.
                    charset = _declared_charset(part_headers)
                    part = _Part("text/plain", charset, b"", "", "", "", False)
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
        alternative: _Alternative | None,
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
        inner_default = "message/rfc822" if subtype == "digest" else "text/plain"
        claims: dict[str, int] = {}
        return [
            (
                None,
                data,
                begin,
                end,
                depth + 1,
                (claims, index) if subtype == "alternative" else alternative,
                inner_default,
            )
            for index, (begin, end) in enumerate(chunks)
        ]

    def _leaf(
        self,
        part: _Part,
        data: bytes,
        start: int,
        stop: int,
        alternative: _Alternative | None,
    ) -> None:
        self.leaves += 1
        payload = self._transfer_decode(data, start, stop, part.transfer_encoding)
        filename = part.filename
        if part.transfer_encoding in _UUENCODE:
            payload, uu_name = uudecode(payload)
            filename = filename or safe_filename(uu_name)
        if part.content_type in _ENCAPSULATED:
            self._attach(filename or self._message_filename(payload), part.content_type, payload)
            return
        maintype, _, subtype = part.content_type.partition("/")
        if (
            maintype == "text"
            and subtype in ("plain", "html")
            and part.disposition != "attachment"
            and not part.named
            and not filename
        ):
            if alternative is not None:
                claims, branch = alternative
                if claims.setdefault(subtype, branch) != branch:
                    self.renderings += 1  # of a body that a sibling branch gave
                    return
            if subtype == "html":
                self.htmls.append(decode_body_text(payload, part.charset))
                return
            payload, blocks = split_blocks(payload)
            self.texts.append(decode_body_text(payload, part.charset))
            self.extracted += len(blocks)
            for name, content in blocks:
                name = safe_filename(name)
                self._attach(name, type_for_filename(name), content)
            return
        self._attach(filename, part.content_type, payload)
        if part.content_type in _TNEF or filename.lower() == "winmail.dat":
            for inner in tnef_files(payload):
                self.extracted += 1
                self._attach(safe_filename(inner.filename), inner.content_type, inner.data)

    def _attach(self, filename: str, content_type: str, payload: bytes) -> None:
        attachment: dict[str, Any] = {
            "filename": filename,
            "contentType": content_type,
            "size": len(payload),
        }
        if self.keep_content:
            attachment["content"] = payload
        self.attachments.append(attachment)

    def _message_filename(self, payload: bytes) -> str:
        headers, _, _ = _read_header_section(payload, self.limits.max_header_bytes)
        subject = safe_filename(header_text(headers.first("subject")))
        return f"{subject}.eml" if subject else "message.eml"

    def _transfer_decode(self, data: bytes, start: int, stop: int, encoding: str) -> bytes:
        """The decoded bytes of ``data[start:stop]`` (base64 is decoded in place)."""
        if encoding == "base64":
            with memoryview(data) as view:
                decoded, clean = b64decode(view[start:stop])
            if not clean:
                self.defect(logging.DEBUG, "damaged base64 repaired")
            return decoded
        data = data[start:stop] if start or stop != len(data) else data
        if encoding in ("", "7bit", "8bit", "binary") or encoding in _UUENCODE:
            return data
        if encoding == "quoted-printable":
            return binascii.a2b_qp(data)
        self.defect(logging.DEBUG, "unknown transfer encoding %r; left as is", encoding[:40])
        return data
