"""Builds the bytes of an outgoing MIME message.

The message is assembled directly as CRLF-terminated bytes instead of through
``email.message.EmailMessage``: the result is the same standard MIME (the stdlib
parser reads it back field for field) at a fraction of the CPU cost, and the output
is fully under our control (no header is ever written with a raw line break).

Structure chosen from what is given::

    text only / html only          text/plain or text/html
    text and html                  multipart/alternative
    inline parts (contentId)       multipart/related around the html (or alternative)
    attachments                    multipart/mixed around all of the above
"""

from __future__ import annotations

import base64
import binascii
import re
import secrets
import time
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import NamedTuple

from .addresses import envelope_address, needs_smtputf8, split_display_name
from .attachments import Attachment

CRLF = b"\r\n"
_FOLD_AT = 78
_SPECIALS = frozenset('()<>[]:;@\\,."')
# UTF-8 bytes per RFC 2047 encoded word: base64 of 45 bytes is 60 characters, so
# "=?utf-8?b?" + 60 + "?=" stays within the 75-character limit.
_WORD_BYTES = 45
_HIGH_BYTES = bytes(range(0x80, 0x100))
# A display name made of atoms separated by single spaces needs no quoting.
_ATOM = r"[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~]+"
_ATOM_PHRASE = re.compile(rf"{_ATOM}(?: {_ATOM})*")
# A single space between two non-spaces: where a structured header may be folded.
_FOLDABLE_SPACE = re.compile(r"(?<! ) (?! )")
# Longer runs without a foldable space are sent as encoded words (RFC 5322 caps lines
# at 998 characters).
_MAX_TOKEN = 200


# --------------------------------------------------------------------------- headers


def _encoded_words(text: str) -> list[str]:
    """Split ``text`` into RFC 2047 base64 words, never splitting a character."""
    words: list[str] = []
    chunk: list[bytes] = []
    size = 0
    for char in text:
        encoded = char.encode("utf-8", "surrogatepass")
        if size + len(encoded) > _WORD_BYTES and chunk:
            words.append(_one_word(b"".join(chunk)))
            chunk, size = [], 0
        chunk.append(encoded)
        size += len(encoded)
    if chunk:
        words.append(_one_word(b"".join(chunk)))
    return words


def _one_word(data: bytes) -> str:
    return "=?utf-8?b?" + base64.b64encode(data).decode("ascii") + "?="


def _needs_encoding(text: str) -> bool:
    """True for non-ASCII text, or ASCII that a reader would mistake for encoded words."""
    return not text.isascii() or ("=?" in text and "?=" in text)


def _fold_words(name: str, words: Sequence[str], separator: str = " ") -> str:
    """Join ``words`` into a header line folded before any word that would pass 78 columns."""
    lines: list[str] = []
    current = f"{name}:"
    for index, word in enumerate(words):
        glue = " " if index == 0 else separator
        if index and len(current) + len(glue) + len(word) > _FOLD_AT:
            lines.append(current + glue.rstrip())
            current = " " + word
        else:
            current += glue + word
    lines.append(current)
    return "\r\n".join(lines)


def unstructured_header(name: str, value: str) -> str:
    """An unstructured header (Subject, custom headers), encoded and folded as needed."""
    if not value:
        return f"{name}: "
    # Readers drop whitespace right after the colon, so a value starting with
    # whitespace keeps it only inside an encoded word.
    if (
        _needs_encoding(value)
        or value[0] in " \t"
        or any(len(word) > 900 for word in value.split(" "))
    ):
        return _fold_words(name, _encoded_words(value))
    if len(name) + 2 + len(value) <= _FOLD_AT:
        return f"{name}: {value}"
    # Folding is done only at existing spaces, so the unfolded value is unchanged.
    words = value.split(" ")
    lines: list[str] = []
    current = f"{name}: {words[0]}"
    for word in words[1:]:
        if len(current) + 1 + len(word) > _FOLD_AT and current.strip():
            lines.append(current)
            current = " " + word
        else:
            current += " " + word
    lines.append(current)
    return "\r\n".join(lines)


def _quote_name(name: str) -> str:
    if not _needs_encoding(name):
        if _ATOM_PHRASE.fullmatch(name):
            quoted = name
        else:
            escaped = name.replace("\\", "\\\\").replace('"', '\\"')
            quoted = f'"{escaped}"'
        if all(len(token) <= _MAX_TOKEN for token in _FOLDABLE_SPACE.split(quoted)):
            return quoted
    return " ".join(_encoded_words(name))


def format_mailbox(value: str) -> str:
    """Format a validated mailbox for a header: ``Name <addr>`` with the name encoded."""
    name, address = split_display_name(value)
    address = envelope_address(address)
    if not name:
        return address
    return f"{_quote_name(name)} <{address}>"


def address_header(name: str, mailboxes: Sequence[str]) -> str:
    """An address-list header (To, Cc, Reply-To), folded between addresses."""
    formatted = [format_mailbox(m) for m in mailboxes]
    listed = [f + "," for f in formatted[:-1]] + formatted[-1:]
    # Fold inside a mailbox too (between words of its display name), so a long name
    # cannot push a line past the limit.
    return _fold_words(name, [token for f in listed for token in _FOLDABLE_SPACE.split(f)])


_date_cache: tuple[int, str] = (0, "")


def _date_now() -> str:
    """The Date header value for now, formatted once per second (RFC 5322, UTC)."""
    global _date_cache
    second = int(time.time())
    cached = _date_cache
    if cached[0] != second:
        cached = (second, format_datetime(datetime.fromtimestamp(second, UTC)))
        _date_cache = cached
    return cached[1]


def make_message_id(domain: str) -> str:
    """A unique Message-ID using ``domain`` (no host-name lookup, cheap enough per message)."""
    if not domain or domain.startswith("["):
        domain = "mailhandlers.invalid"
    return f"<{time.time_ns():x}.{secrets.token_hex(8)}@{domain}>"


# --------------------------------------------------------------------------- parts


@dataclass
class _Part:
    headers: list[str]
    body: bytes = b""
    children: list[_Part] = field(default_factory=list)
    subtype: str = ""


def _to_crlf(data: bytes) -> bytes:
    return data.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", CRLF)


def _max_line_length(data: bytes) -> int:
    return max(map(len, data.split(b"\n")), default=0)


def _text_octets(text: str) -> bytes:
    """A text body as UTF-8 with LF line ends, before any transfer encoding."""
    return text.replace("\r\n", "\n").replace("\r", "\n").encode("utf-8", "surrogatepass")


def _sendable_as_is(raw: bytes) -> bool:
    """Whether text octets may travel unencoded (7bit, or 8bit where allowed)."""
    return b"\x00" not in raw and _max_line_length(raw) <= 998


def _travels_8bit(text: str | None) -> bool:
    """Whether :func:`_encode_text_body` with ``eight_bit`` sends ``text`` as 8bit."""
    return text is not None and not text.isascii() and _sendable_as_is(_text_octets(text))


def _encode_text_body(text: str, eight_bit: bool = False) -> tuple[str, bytes]:
    """Choose a transfer encoding for a text body; return (encoding, CRLF payload).

    With ``eight_bit``, UTF-8 text travels as it is (RFC 6152 8bit) when its lines fit.
    """
    raw = _text_octets(text)
    if _sendable_as_is(raw):
        if raw.isascii():
            return "7bit", raw.replace(b"\n", CRLF)
        if eight_bit:
            return "8bit", raw.replace(b"\n", CRLF)
    non_ascii = len(raw) - len(raw.translate(None, _HIGH_BYTES))
    # Mostly non-ASCII text is shorter in base64; mostly ASCII text stays readable in QP.
    if non_ascii * 3 > len(raw):
        return "base64", _to_crlf(base64.encodebytes(raw))
    return "quoted-printable", _to_crlf(binascii.b2a_qp(raw, istext=True, header=False))


def _text_part(text: str, subtype: str, eight_bit: bool = False) -> _Part:
    encoding, payload = _encode_text_body(text, eight_bit)
    return _Part(
        headers=[
            f'Content-Type: text/{subtype}; charset="utf-8"',
            f"Content-Transfer-Encoding: {encoding}",
        ],
        body=payload,
    )


def _rfc2231_param(name: str, value: str) -> list[str]:
    """``name*=utf-8''...`` split into continuations so no line gets too long."""
    quoted = urllib.parse.quote(value, safe="!#$&+-.^_`|~")
    if len(quoted) <= 60:
        return [f"{name}*=utf-8''{quoted}"]
    pieces: list[str] = []
    start = 0
    while start < len(quoted):
        end = min(start + 60, len(quoted))
        # Never cut a %XX escape in half.
        while end < len(quoted) and "%" in quoted[end - 2 : end]:
            end -= 1
        pieces.append(quoted[start:end])
        start = end
    params = [f"{name}*0*=utf-8''{pieces[0]}"]
    params.extend(f"{name}*{i}*={piece}" for i, piece in enumerate(pieces[1:], start=1))
    return params


def _quoted_param(name: str, value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'{name}="{escaped}"'


def _attachment_part(attachment: Attachment) -> _Part:
    filename = attachment.filename
    disposition = "inline" if attachment.inline else "attachment"
    # ASCII that looks like an encoded word is decoded by many readers even inside
    # quotes, so it travels RFC 2231-encoded like non-ASCII names.
    if not _needs_encoding(filename):
        type_params = [_quoted_param("name", filename)]
        disposition_params = [_quoted_param("filename", filename)]
    else:
        type_params = _rfc2231_param("name", filename)
        disposition_params = _rfc2231_param("filename", filename)
    content_type, encoding, body = _attachment_body(attachment)
    headers = [
        ";\r\n ".join([f"Content-Type: {content_type}", *type_params]),
        f"Content-Transfer-Encoding: {encoding}",
        ";\r\n ".join([f"Content-Disposition: {disposition}", *disposition_params]),
    ]
    if attachment.content_id is not None:
        headers.append(f"Content-ID: <{attachment.content_id}>")
    return _Part(headers=headers, body=body)


def _attachment_body(attachment: Attachment) -> tuple[str, str, bytes]:
    """(content type, transfer encoding, CRLF payload) for an attachment.

    RFC 2045 forbids base64 for message/* and multipart/* parts. An attached message
    (message/rfc822) that is plain 7-bit text travels as is; any other such content
    travels as opaque bytes (application/octet-stream) so nothing is mangled.
    """
    content_type = attachment.content_type
    data = attachment.content
    if content_type.startswith(("message/", "multipart/")):
        if content_type == "message/rfc822" and _is_7bit_text(data):
            body = _to_crlf(data)
            return content_type, "7bit", body if body.endswith(CRLF) else body + CRLF
        content_type = "application/octet-stream"
    return content_type, "base64", _to_crlf(base64.encodebytes(data))


def _is_7bit_text(data: bytes) -> bool:
    return data.isascii() and _sendable_as_is(data)


def _multipart(subtype: str, children: list[_Part]) -> _Part:
    return _Part(headers=[], children=children, subtype=subtype)


def _body_tree(
    text_body: str | None,
    html_body: str | None,
    attachments: Sequence[Attachment],
    eight_bit: bool = False,
) -> _Part:
    text = _text_part(text_body, "plain", eight_bit) if text_body is not None else None
    html = _text_part(html_body, "html", eight_bit) if html_body is not None else None
    inline = [a for a in attachments if a.inline]
    regular = [a for a in attachments if not a.inline]
    if html is not None and inline:
        html = _multipart("related", [html, *(_attachment_part(a) for a in inline)])
        inline = []
    regular = inline + regular
    parts = [p for p in (text, html) if p is not None]
    root = parts[0] if len(parts) == 1 else _multipart("alternative", parts)
    if regular:
        root = _multipart("mixed", [root, *(_attachment_part(a) for a in regular)])
    return root


def _new_boundary(payloads: list[bytes]) -> str:
    while True:
        boundary = "=_mh_" + secrets.token_hex(12)
        marker = boundary.encode("ascii")
        if not any(marker in payload for payload in payloads):
            return boundary


def _leaf_payloads(part: _Part) -> list[bytes]:
    if not part.children:
        return [part.body]
    return [payload for child in part.children for payload in _leaf_payloads(child)]


def _serialize(part: _Part, out: list[bytes], payloads: list[bytes]) -> None:
    """Append the part's headers and body to ``out`` (headers end with a blank line)."""
    if not part.children:
        out.append("\r\n".join(part.headers).encode("utf-8") + CRLF + CRLF)
        out.append(part.body)
        return
    boundary = _new_boundary(payloads)
    header_lines = [
        *part.headers,
        f'Content-Type: multipart/{part.subtype};\r\n boundary="{boundary}"',
    ]
    out.append("\r\n".join(header_lines).encode("utf-8") + CRLF + CRLF)
    delimiter = f"--{boundary}".encode("ascii")
    for child in part.children:
        out.append(delimiter + CRLF)
        _serialize(child, out, payloads)
        # The CRLF before a delimiter belongs to the delimiter, so a body ending in a
        # line break keeps it only if one more CRLF follows.
        out.append(CRLF)
    out.append(delimiter + b"--" + CRLF)


# --------------------------------------------------------------------------- message


@dataclass(frozen=True, slots=True)
class OutgoingMessage:
    """What goes on the wire: the envelope and the message bytes (CRLF, not dot-stuffed)."""

    sender: str
    recipients: tuple[str, ...]
    data: bytes
    message_id: str
    smtputf8: bool
    eight_bit: bool = False
    """The body has octets over 127: it needs the server's 8BITMIME."""


def _bare(mailbox: str) -> str:
    return envelope_address(split_display_name(mailbox)[1])


def unique_recipients(*lists: Sequence[str]) -> tuple[str, ...]:
    """Envelope recipients in order, each once (domains compared case-insensitively)."""
    seen: set[str] = set()
    result: list[str] = []
    for mailboxes in lists:
        for mailbox in mailboxes:
            address = _bare(mailbox)
            local, _, domain = address.rpartition("@")
            key = f"{local}@{domain.lower()}"
            if key not in seen:
                seen.add(key)
                result.append(address)
    return tuple(result)


def build_message(
    *,
    from_address: str,
    to_addresses: Sequence[str],
    subject: str | None,
    text_body: str | None = None,
    html_body: str | None = None,
    cc_addresses: Sequence[str] = (),
    bcc_addresses: Sequence[str] = (),
    reply_to: str | None = None,
    attachments: Sequence[Attachment] = (),
    custom_headers: Mapping[str, str] | None = None,
    message_id: str | None = None,
    date: datetime | None = None,
    eight_bit: bool = False,
) -> OutgoingMessage:
    """Assemble a validated message. Bcc addresses go only into the envelope.

    ``eight_bit`` sends non-ASCII text bodies as 8bit UTF-8 instead of quoted-printable
    or base64; the message then needs a server offering 8BITMIME (``eight_bit`` on the
    result says so).
    """
    return plan_message(
        from_address=from_address,
        to_addresses=to_addresses,
        subject=subject,
        text_body=text_body,
        html_body=html_body,
        cc_addresses=cc_addresses,
        bcc_addresses=bcc_addresses,
        reply_to=reply_to,
        attachments=attachments,
        custom_headers=custom_headers,
        message_id=message_id,
        date=date,
        eight_bit=eight_bit,
    ).built()


def plan_message(
    *,
    from_address: str,
    to_addresses: Sequence[str],
    subject: str | None,
    text_body: str | None = None,
    html_body: str | None = None,
    cc_addresses: Sequence[str] = (),
    bcc_addresses: Sequence[str] = (),
    reply_to: str | None = None,
    attachments: Sequence[Attachment] = (),
    custom_headers: Mapping[str, str] | None = None,
    message_id: str | None = None,
    date: datetime | None = None,
    eight_bit: bool = False,
) -> PendingMessage:
    """What :func:`build_message` would build, with the bytes left for later.

    The envelope, the Message-ID and the MAIL parameters are settled here, so the
    Message-ID is the same however often the message is sent.
    """
    sender = _bare(from_address)
    recipients = unique_recipients(to_addresses, cc_addresses, bcc_addresses)
    custom = dict(custom_headers or {})
    custom_id = next((v for k, v in custom.items() if k.lower() == "message-id"), None)
    custom = {k: v for k, v in custom.items() if k.lower() != "message-id"}
    message_id = (custom_id or message_id or make_message_id(sender.rpartition("@")[2])).strip()
    # Reply-To is the one address only in a header; raw UTF-8 there needs SMTPUTF8 too.
    smtputf8 = any(
        needs_smtputf8(a) for a in (sender, *recipients, _bare(reply_to) if reply_to else "")
    )
    return PendingMessage(
        sender=sender,
        recipients=recipients,
        message_id=message_id,
        smtputf8=smtputf8,
        # Raw UTF-8 reaches the bytes only through 8bit text bodies and SMTPUTF8
        # addresses; everything else in a header is encoded.
        eight_bit=eight_bit and (smtputf8 or _travels_8bit(text_body) or _travels_8bit(html_body)),
        content=_Content(
            from_address,
            to_addresses,
            cc_addresses,
            reply_to,
            subject,
            custom,
            text_body,
            html_body,
            attachments,
            date,
            eight_bit,
        ),
    )


# Header fields the builder adds (Date, Message-ID, MIME-Version, Content-Type,
# Content-Transfer-Encoding), boundaries and separators: a generous allowance.
_FIXED_SIZE = 512
_PER_PART_SIZE = 256


def _estimate_size(
    headers: Sequence[str | None], bodies: Sequence[str | None], attachments: Sequence[Attachment]
) -> int:
    """The message's size in octets, estimated from its parts (RFC 1870's SIZE is
    the client's estimate): close for ASCII text, generous for the rest."""
    size = _FIXED_SIZE
    for text in (*headers, *bodies):
        if text is None:
            continue
        if text.isascii():
            # CRLF for every line end, and room for folding.
            size += len(text) + text.count("\n") + len(text) // 32 + 8
        else:
            # Encoded words, quoted-printable or base64: at most three octets per octet.
            size += 3 * len(text.encode("utf-8", "surrogatepass")) + 64
    size += _PER_PART_SIZE * sum(body is not None for body in bodies)
    for attachment in attachments:
        # base64 in lines of 76 characters and a CRLF; the file name possibly encoded.
        lines = (len(attachment.content) + 56) // 57
        size += lines * 78 + 3 * len(attachment.filename.encode("utf-8")) + _PER_PART_SIZE
    return size


class _Content(NamedTuple):
    """What the builder turns into the message's bytes (Message-ID taken out of
    ``custom``: the PendingMessage holds it)."""

    from_address: str
    to_addresses: Sequence[str]
    cc_addresses: Sequence[str]
    reply_to: str | None
    subject: str | None
    custom: dict[str, str]
    text_body: str | None
    html_body: str | None
    attachments: Sequence[Attachment]
    date: datetime | None
    eight_bit: bool


class PendingMessage:
    """A validated message whose bytes are built on first use.

    ``sender``, ``recipients``, ``message_id``, ``smtputf8`` and ``eight_bit`` (it may
    carry raw 8-bit octets; never False when the built message has them) are known
    without building, and :attr:`estimated_size` is close to the built size, so a
    sender can put the envelope on the wire first and build while the server answers
    it. :meth:`built` builds once; later calls (a retry) return the same message.
    """

    __slots__ = (
        "_built",
        "_content",
        "_estimated_size",
        "eight_bit",
        "message_id",
        "recipients",
        "sender",
        "smtputf8",
    )

    def __init__(
        self,
        *,
        sender: str,
        recipients: tuple[str, ...],
        message_id: str,
        smtputf8: bool,
        eight_bit: bool,
        content: _Content,
    ) -> None:
        self.sender = sender
        self.recipients = recipients
        self.message_id = message_id
        self.smtputf8 = smtputf8
        self.eight_bit = eight_bit
        self._content = content
        self._estimated_size: int | None = None
        self._built: OutgoingMessage | None = None

    @property
    def estimated_size(self) -> int:
        """The built message's size in octets, estimated without building it."""
        if self._estimated_size is None:
            content = self._content
            headers = [
                content.from_address,
                *content.to_addresses,
                *content.cc_addresses,
                content.reply_to,
                content.subject,
            ]
            headers.extend(f"{name}: {value}" for name, value in content.custom.items())
            self._estimated_size = _estimate_size(
                headers, (content.text_body, content.html_body), content.attachments
            )
        return self._estimated_size

    def built(self) -> OutgoingMessage:
        """The message's bytes and envelope, built on the first call."""
        if self._built is None:
            self._built = self._build()
        return self._built

    def _build(self) -> OutgoingMessage:
        (from_, to, cc, reply_to, subject, custom, text, html, attachments, date, eight_bit) = (
            self._content
        )
        headers = [address_header("From", [from_])]
        if to:
            headers.append(address_header("To", to))
        if cc:
            headers.append(address_header("Cc", cc))
        if reply_to:
            headers.append(address_header("Reply-To", [reply_to]))
        headers.append(unstructured_header("Subject", subject or ""))
        headers.append(f"Date: {format_datetime(date) if date else _date_now()}")
        headers.append(f"Message-ID: {self.message_id}")
        headers.append("MIME-Version: 1.0")
        headers.extend(unstructured_header(name, value) for name, value in custom.items())
        root = _body_tree(text, html, attachments, eight_bit)
        root.headers[:0] = headers
        out: list[bytes] = []
        _serialize(root, out, _leaf_payloads(root))
        data = b"".join(out)
        return OutgoingMessage(
            sender=self.sender,
            recipients=self.recipients,
            data=data,
            message_id=self.message_id,
            smtputf8=self.smtputf8,
            eight_bit=eight_bit and not data.isascii(),
        )

    def __repr__(self) -> str:
        return f"<PendingMessage {self.message_id} to {len(self.recipients)} recipient(s)>"
