"""Comparing the message parser with the standard library on the shared mail corpus.

The reference applies the parser's documented placement rules (which leaf is body text,
which is HTML, which is an attachment) to the tree that ``email.message_from_bytes(...,
policy=policy.default)`` builds, and decodes every field with the standard library. So a
difference is a difference in *decoding*: headers, addresses, charsets, transfer
encodings, filenames and sizes. Not a test module itself; ``python tests/corpus_fidelity.py``
prints the per-field agreement.
"""

from __future__ import annotations

import binascii
import email
import json
import mimetypes
import re
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from email import policy
from email.message import EmailMessage, Message
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from src.handlers._mime.parser import ParseLimits, parse_message  # noqa: E402
from src.handlers._mime.tnef import tnef_files  # noqa: E402
from src.handlers._mime.walk import Collector, header_bounds  # noqa: E402

CORPUS = ROOT.parent / "shared" / "mail-corpus"
FIELDS = (
    "messageIdHeader",
    "from",
    "to",
    "cc",
    "subject",
    "textBody",
    "htmlBody",
    "attachments",
)
_ENCAPSULATED = ("message/rfc822", "message/global")
_TNEF = ("application/ms-tnef", "application/vnd.ms-tnef")
# Python's own table, not the host's mime.types files.
_TYPES = mimetypes.MimeTypes()
_UU = ("x-uuencode", "uuencode", "x-uue", "uue")
_UU_BEGIN = re.compile(r"^begin[ \t]+[0-7]{3,4}[ \t]+(.*?)[ \t]*\r?$", re.M)
_UU_END = re.compile(r"^end[ \t]*\r?(?:\n|$)", re.M)
# Rule: Latin-1 labels are read as Windows-1252, as browsers and mail clients do; the
# stdlib shows C1 control characters for those bytes.
_C1_AS_CP1252 = str.maketrans(
    {
        code: bytes([code]).decode("cp1252")
        for code in range(0x80, 0xA0)
        if code not in (0x81, 0x8D, 0x8F, 0x90, 0x9D)
    }
)
# Runs of what the stdlib could not read: U+FFFD, or bytes kept as surrogate escapes.
_UNREAD = re.compile("[\ufffd\udc80-\udcff]+")


def corpus_files() -> list[str]:
    """The corpus messages, as paths relative to the corpus directory (from its manifest)."""
    manifest = json.loads((CORPUS / "MANIFEST.json").read_text(encoding="utf-8"))
    return [entry["file"] for entry in manifest]


def _flat(text: str) -> str:
    return " ".join(text.split())


def _body(texts: list[str]) -> str:
    joined = "\n".join(text for text in texts if text)
    joined = joined.replace("\r\n", "\n").replace("\x00", "")
    return "\n".join(line.rstrip() for line in joined.split("\n")).strip()


def _safe_name(name: str) -> str:
    name = "".join(c for c in name if c.isprintable() or c in "\t\n\r")
    name = " ".join(name.split()) if name.strip() != name or "\n" in name else name
    return name.strip().replace("/", "_").replace("\\", "_")[:255]


def _header(message: Message, name: str) -> str:
    value = message.get(name)
    return "" if value is None else _flat(str(value))


def _address_list(message: Message, name: str) -> list[str]:
    found: list[str] = []
    for value in message.get_all(name) or []:
        found += [a.addr_spec for a in getattr(value, "addresses", ()) if a.addr_spec]
    return found


def _sender(message: Message) -> str:
    value = message.get("from")
    if value is None:
        return ""
    for address in getattr(value, "addresses", ()):
        if "@" in address.addr_spec:
            return str(address.addr_spec)
    return _flat(str(value))


class Reference:
    """Bodies and attachments of a stdlib-parsed message under the parser's rules."""

    def __init__(self, message: Message) -> None:
        self.texts: list[str] = []
        self.htmls: list[str] = []
        self.attachments: list[tuple[str, str, int | None]] = []
        self.skipped: list[str] = []
        self.leaves = 0
        self._visit(message, None)

    def _visit(self, part: Message, alternative: tuple[dict[str, int], int] | None) -> None:
        ctype = part.get_content_type()
        payload: Any = part.get_payload()
        if part.get_content_maintype() == "multipart" and isinstance(payload, list):
            if part.get_content_subtype() == "alternative":
                claims: dict[str, int] = {}
                for index, child in enumerate(payload):
                    self._visit(child, (claims, index))
            else:
                for child in payload:
                    self._visit(child, alternative)
            return
        self.leaves += 1
        if part.get_content_maintype() == "multipart":
            ctype = "text/plain"
        filename = part.get_filename()
        disposition = part.get_content_disposition()
        if ctype in _ENCAPSULATED:
            name = _safe_name(filename) if filename else ""
            if not name and isinstance(payload, list) and payload:
                subject = _safe_name(_flat(str(payload[0].get("subject", "") or "")))
                name = f"{subject}.eml" if subject else "message.eml"
            self.attachments.append((name or "message.eml", ctype, None))
            return
        subtype = ctype.partition("/")[2]
        if (
            ctype.startswith("text/")
            and subtype in ("plain", "html")
            and disposition != "attachment"
            and not filename
        ):
            if alternative is not None:
                claims, branch = alternative
                if claims.setdefault(subtype, branch) != branch:
                    self.skipped.append(ctype)
                    return
            text = _text(part)
            if subtype == "plain":
                text = self._take_uuencoded(text)
            (self.texts if subtype == "plain" else self.htmls).append(text)
            return
        data = part.get_payload(decode=True)
        size = len(data) if isinstance(data, bytes) else None
        name = filename or ""
        if not name and part.get("content-transfer-encoding", "").lower() in _UU:
            begin = _UU_BEGIN.search(str(part.get_payload()))
            name = begin.group(1).strip() if begin else ""
        self.attachments.append((_safe_name(name), ctype, size))
        if isinstance(data, bytes) and (ctype in _TNEF or name.lower() == "winmail.dat"):
            # Rule: TNEF streams are read by the parser's own reader (tested on its
            # own); the stdlib only supplies the decoded bytes.
            for inner in tnef_files(data):
                guessed = inner.content_type
                self.attachments.append((_safe_name(inner.filename), guessed, len(inner.data)))

    def _take_uuencoded(self, text: str) -> str:
        """Rule: complete uuencoded blocks in plain text are attachments, not text."""
        while True:
            begin = _UU_BEGIN.search(text)
            end = _UU_END.search(text, begin.end()) if begin else None
            if begin is None or end is None:
                return text
            data = bytearray()
            for line in text[begin.end() : end.start()].splitlines():
                line = line.rstrip()
                if line and line != "`":
                    count = (ord(line[0]) - 32) & 0x3F
                    data += binascii.a2b_uu(line[: (count * 4 + 5) // 3])
            name = _safe_name(begin.group(1).strip())
            guessed = _TYPES.guess_type(name, strict=False)[0] or "application/octet-stream"
            self.attachments.append((name, guessed, len(data)))
            text = text[: begin.start()] + text[end.end() :]


def _text(part: Message) -> str:
    try:
        content = part.get_content() if isinstance(part, EmailMessage) else None
    except Exception:
        content = None
    if isinstance(content, str):
        return content
    data = part.get_payload(decode=True)
    return data.decode("utf-8", "replace") if isinstance(data, bytes) else ""


def reference(raw: bytes) -> dict[str, Any]:
    """The standard library's reading of ``raw`` as the fields of :data:`FIELDS`."""
    message = email.message_from_bytes(raw, policy=policy.default)
    result: dict[str, Any] = {}
    getters: dict[str, Callable[[], object]] = {
        "messageIdHeader": lambda: _header(message, "message-id"),
        "from": lambda: _sender(message),
        "to": lambda: _address_list(message, "to"),
        "cc": lambda: _address_list(message, "cc"),
        "subject": lambda: _header(message, "subject"),
    }
    for field, getter in getters.items():
        try:
            result[field] = getter()
        except Exception as exc:
            result[field] = f"<stdlib failed: {type(exc).__name__}>"
    try:
        ref = Reference(message)
        result["textBody"] = _body(ref.texts)
        result["htmlBody"] = _body(ref.htmls)
        result["attachments"] = ref.attachments
    except Exception as exc:
        for field in ("textBody", "htmlBody", "attachments"):
            result[field] = f"<stdlib failed: {type(exc).__name__}>"
    return result


def ours(raw: bytes) -> dict[str, Any]:
    """The parser's reading of ``raw`` in the same shape as :func:`reference`."""
    parsed = parse_message(raw, 1)
    result = {field: parsed[field] for field in FIELDS[:5]}
    result["messageIdHeader"] = _flat(result["messageIdHeader"])
    result["subject"] = _flat(result["subject"])
    result["textBody"] = _body([parsed["textBody"]])
    result["htmlBody"] = _body([parsed["htmlBody"]])
    result["attachments"] = [
        (a["filename"], a["contentType"], a["size"]) for a in parsed["attachments"]
    ]
    return result


def read_where_stdlib_could_not(mine: str, theirs: str) -> bool:
    """Rule: where the stdlib shows U+FFFD or surrogate escapes (bytes it could not
    read), the parser's fallback reading of those bytes counts as agreement; every
    other character must be equal."""
    theirs = theirs.translate(_C1_AS_CP1252)
    pieces = _UNREAD.split(theirs)
    if len(pieces) == 1:
        return mine == theirs
    first, *middle, last = pieces
    if not (mine.startswith(first) and mine.endswith(last)):
        return False
    pos, stop = len(first) + 1, len(mine) - len(last)
    for piece in middle:
        found = mine.find(piece, pos, stop)
        if found < 0:
            return False
        pos = found + len(piece) + 1
    return pos <= stop + 1


def _same(field: str, mine: Any, theirs: Any) -> bool:
    if isinstance(mine, str) and isinstance(theirs, str):
        return read_where_stdlib_could_not(mine, theirs)
    if not isinstance(theirs, list) or len(mine) != len(theirs):
        return bool(mine == theirs)
    if field != "attachments":
        return all(map(read_where_stdlib_could_not, mine, theirs))
    # The stdlib keeps no bytes of an encapsulated message, so its size is not compared.
    return all(
        read_where_stdlib_could_not(m[0], t[0]) and m[1] == t[1] and (t[2] is None or m[2] == t[2])
        for m, t in zip(mine, theirs, strict=True)
    )


@dataclass(frozen=True)
class LeafCount:
    """How the parser placed the leaf parts of one message, and how many the stdlib sees."""

    leaves: int
    texts: int
    htmls: int
    attachments: int
    renderings: int
    stdlib_leaves: int

    @property
    def placed(self) -> int:
        """Leaves that became a body, an attachment, or a known second rendering."""
        return self.texts + self.htmls + self.attachments + self.renderings


def leaf_count(raw: bytes) -> LeafCount:
    """Count the leaves the parser's walk visits and where each one went."""
    limits = ParseLimits()
    headers, body_start, _ = header_bounds(raw, limits.max_header_bytes, 0, len(raw))
    collector = Collector(0, limits, False)
    collector.walk(headers, raw, body_start)
    stdlib = Reference(email.message_from_bytes(raw, policy=policy.default))
    return LeafCount(
        leaves=collector.leaves,
        texts=len(collector.texts),
        htmls=len(collector.htmls),
        attachments=len(collector.attachments) - collector.extracted,
        renderings=collector.renderings,
        stdlib_leaves=stdlib.leaves,
    )


def differences(raw: bytes) -> dict[str, tuple[Any, Any]]:
    """Fields where the parser and the standard library disagree: (ours, stdlib)."""
    mine, theirs = ours(raw), reference(raw)
    return {
        field: (mine[field], theirs[field])
        for field in FIELDS
        if not _same(field, mine[field], theirs[field])
    }


def all_differences() -> Iterator[tuple[str, dict[str, tuple[Any, Any]]]]:
    """Every corpus message's differences, by its path in the corpus."""
    for name in corpus_files():
        yield name, differences((CORPUS / name).read_bytes())


def main() -> None:
    """Print the per-field agreement over the corpus, and (with -v) each difference."""
    verbose = "-v" in sys.argv
    disagree = dict.fromkeys(FIELDS, 0)
    total = 0
    for name, diff in all_differences():
        total += 1
        for field, (mine, theirs) in diff.items():
            disagree[field] += 1
            if verbose:
                print(f"{name} {field}\n  ours:   {mine!r:.300}\n  stdlib: {theirs!r:.300}")
    for field in FIELDS:
        agree = total - disagree[field]
        print(f"{field:16} {agree:4}/{total} {100 * agree / total:6.1f}%")


if __name__ == "__main__":
    main()
