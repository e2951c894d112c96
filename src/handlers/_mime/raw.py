"""Pre-built messages made ready for the wire: :func:`prepare_raw`.

A message the caller built (bytes, or an ``email.message.EmailMessage`` serialized to
bytes) is checked and normalised the way the builder's own output already is: CRLF line
endings, no header line that could smuggle another one in, no line over RFC 5322's 998
octets, a From header, no Bcc header on the wire, and a Message-ID (one is added when
the message has none, so every retry carries the same one).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from ..errors import MailValidationError
from .addresses import (
    check_address,
    check_mailbox,
    envelope_address,
    needs_smtputf8,
    split_display_name,
)
from .builder import CRLF, OutgoingMessage, make_message_id, unique_recipients

MAX_LINE_OCTETS = 998
"""The longest line RFC 5322 allows, without its CRLF."""

_BARE_LF = re.compile(rb"(?<!\r)\n")
_FIELD = re.compile(rb"([!-9;-~]+)[ \t]*:")
_MESSAGE_ID = re.compile(rb"<[^<>\s]+>")


def _split(data: bytes) -> tuple[bytes, bytes]:
    """The header section (without its final CRLF) and the body (after the blank line)."""
    if data.startswith(CRLF):
        return b"", data[2:]
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return data.rstrip(b"\r\n"), b""
    return data[:end], data[end + 4 :]


def _fields(lines: list[bytes]) -> list[tuple[bytes, list[bytes]]]:
    """Group header lines into fields: (lower-case name, its lines), refusing any line
    that is neither a field nor a continuation (what an injected line break leaves)."""
    fields: list[tuple[bytes, list[bytes]]] = []
    for number, line in enumerate(lines, start=1):
        if line[:1] in (b" ", b"\t"):
            if not fields:
                raise MailValidationError("the message starts with a continuation line", "message")
            fields[-1][1].append(line)
            continue
        match = _FIELD.match(line)
        if match is None:
            raise MailValidationError(
                f"header line {number} is not a 'Name: value' field (a line break "
                "injected into a header?)",
                "message",
            )
        fields.append((match.group(1).lower(), [line]))
    return fields


def _check_lines(head_bytes: bytes, head: list[bytes], body: bytes) -> None:
    """Refuse a bare CR or a NUL in the header section and a line over 998 octets."""
    if b"\x00" in head_bytes or head_bytes.count(b"\r") != head_bytes.count(CRLF):
        raise MailValidationError(
            "a header line contains a bare CR or a NUL (header injection?)", "message"
        )
    if max(map(len, head), default=0) > MAX_LINE_OCTETS or (
        len(body) > MAX_LINE_OCTETS and max(map(len, body.split(CRLF)), default=0) > MAX_LINE_OCTETS
    ):
        raise MailValidationError(
            f"the message has a line over {MAX_LINE_OCTETS} octets (RFC 5322); "
            "encode long lines (quoted-printable or base64)",
            "message",
        )


def prepare_raw(
    sender: str,
    recipients: Sequence[str],
    data: bytes,
    *,
    message_id: str | None = None,
    sender_checked: bool = False,
) -> OutgoingMessage:
    """Check and normalise a pre-built message for sending; raise MailValidationError.

    ``sender`` is the envelope sender (``""`` for the null sender of a bounce) and
    ``recipients`` every envelope recipient, Bcc included; either may carry a display
    name (``App <app@example.com>``), which the envelope leaves out. Bare LF becomes CRLF; Bcc
    header fields are removed from the bytes; a message without a Message-ID gets
    ``message_id`` (or a new one) as its first header field. ``sender_checked`` says
    the caller already validated ``sender`` (a handler's configured sender).
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise MailValidationError("the message must be bytes", "message")
    data = bytes(data)
    if not data or data.isspace():
        raise MailValidationError("the message is empty", "message")
    if sender:
        sender = split_display_name(sender)[1]
        problem = None if sender_checked else check_address(sender)
        if problem is not None:
            raise MailValidationError(f"envelope sender: {problem}", "envelope_from")
    if not recipients:
        raise MailValidationError("at least one recipient is required", "recipients")
    for recipient in recipients:
        problem = check_mailbox(recipient) if isinstance(recipient, str) else "not a string"
        if problem is not None:
            raise MailValidationError(f"recipient {recipient!r}: {problem}", "recipients")
    if data.count(b"\n") != data.count(CRLF):  # two C scans spare the regex
        data = _BARE_LF.sub(CRLF, data)
    head_bytes, body = _split(data)
    head = head_bytes.split(CRLF) if head_bytes else []
    _check_lines(head_bytes, head, body)
    fields = _fields(head)
    names = [name for name, _ in fields]
    if b"from" not in names:
        raise MailValidationError("the message has no From header", "message")
    kept = [lines for name, lines in fields if name != b"bcc"]
    found_id = next((b" ".join(lines) for name, lines in fields if name == b"message-id"), None)
    if found_id is not None:
        match = _MESSAGE_ID.search(found_id.partition(b":")[2])
        if match is None:
            raise MailValidationError("the message's Message-ID is not <id@domain>", "message")
        identifier = match.group().decode("ascii", "replace")
    else:
        domain = envelope_address(sender).rpartition("@")[2] if sender else ""
        identifier = (message_id or make_message_id(domain)).strip()
        kept.insert(0, [f"Message-ID: {identifier}".encode("ascii")])
    header_bytes = CRLF.join(line for lines in kept for line in lines)
    unchanged = found_id is not None and b"bcc" not in names and bool(body)
    # Nothing removed or added: the bytes as given.
    wire = data if unchanged else header_bytes + CRLF + CRLF + body
    if not wire.endswith(CRLF):
        wire += CRLF
    envelope = unique_recipients(recipients)
    bare_sender = envelope_address(sender) if sender else ""
    return OutgoingMessage(
        sender=bare_sender,
        recipients=envelope,
        data=wire,
        message_id=identifier,
        smtputf8=not header_bytes.isascii()
        or any(needs_smtputf8(a) for a in (bare_sender, *envelope)),
        eight_bit=not body.isascii(),
    )
