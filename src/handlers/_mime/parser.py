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

Decoding header bytes is in :mod:`.headers`, the walk over the MIME tree in
:mod:`.walk`; this module puts the message dict together from both.
"""

from __future__ import annotations

from typing import Any

from .._net.logs import get_logger
from .headers import (
    addresses,
    clean,
    decode_8bit,
    header_text,
    sender,
    timestamp_ms,
)
from .limits import ParseLimits
from .walk import Collector, Headers, header_bounds

__all__ = ["ParseLimits", "parse_header_summary", "parse_message"]

log = get_logger("parser")


_DEFAULT_LIMITS = ParseLimits()
_FLAGS = ("isRead", "isStarred", "isDeleted", "isSpam", "isDraft", "isSent")


def _received_at(headers: Headers) -> int:
    for raw in headers.all("received"):
        stamp = timestamp_ms(decode_8bit(raw).rpartition(";")[2])
        if stamp is not None:
            return stamp
    date = headers.first("date")
    stamp = timestamp_ms(decode_8bit(date)) if date else None
    return 0 if stamp is None else stamp


# ------------------------------------------------------------------ public API


# The keys of a result in their order, with the values that are not lists: copying
# this is much cheaper than building the dict anew for every message.
_RESULT_TEMPLATE: dict[str, Any] = {
    "messageId": 0,
    "popId": 0,
    "messageIdHeader": "",
    "from": "",
    "to": None,
    "cc": None,
    "bcc": None,
    "subject": "",
    "textBody": "",
    "htmlBody": "",
    "receivedAt": 0,
    "size": 0,
    "attachmentCount": 0,
    "attachments": None,
    **dict.fromkeys(_FLAGS, False),
}


def _empty_result(number: int, size: int) -> dict[str, Any]:
    result = _RESULT_TEMPLATE.copy()
    result["messageId"] = result["popId"] = number
    result["to"] = []
    result["cc"] = []
    result["bcc"] = []
    result["size"] = size
    result["attachments"] = []
    return result


def _fill_from_headers(result: dict[str, Any], headers: Headers) -> None:
    message_id = headers.first("message-id")
    result["messageIdHeader"] = clean(decode_8bit(message_id)) if message_id else ""
    result["from"] = sender(headers.first("from"))
    for key in ("to", "cc"):
        found: list[str] = []
        for raw in headers.all(key):
            found += addresses(decode_8bit(raw))
        result[key] = found
    result["subject"] = header_text(headers.first("subject"))
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
) -> tuple[dict[str, Any], Headers, int]:
    """The header-derived result, the headers, and where the body starts in ``data``."""
    result = _empty_result(message_number, len(data) if size is None else size)
    headers: Headers | None = None
    body = len(data)
    try:
        headers, body, defects = header_bounds(data, limits.max_header_bytes, 0, len(data))
        for defect in defects:
            log.debug("message %s: %s", message_number, defect)
        _fill_from_headers(result, headers)
    except Exception as exc:
        log.warning("message %s: header parsing failed (%s)", message_number, type(exc).__name__)
        log.debug("message %s: header parsing traceback", message_number, exc_info=True)
    return result, Headers() if headers is None else headers, body


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
    ``htmlBody`` the text/html ones. Inside multipart/alternative each direct child is
    one rendering: the first child with a text/plain (or text/html) part supplies that
    body, all of its parts of that type; the same type in a later child is another
    rendering and is not repeated. Every other leaf part (a calendar invitation in an
    alternative too), any part with a filename or ``Content-Disposition: attachment``,
    and each encapsulated message is an attachment; an encapsulated message without a
    declared filename is named after its subject (``<subject>.eml``, else
    ``message.eml``). uuencoded parts are decoded; complete uuencoded blocks in a plain
    text part become attachments named by their ``begin`` line. A TNEF part
    (``winmail.dat``) is followed by the files inside it.
    Filenames lose control characters and path separators (replaced by ``_``).

    Text is decoded by one rule for headers and bodies: the declared charset as mail
    clients read its label, then UTF-8, then Windows-1252; U+FFFD only for bytes that
    a declared charset cannot read.
    """
    limits = limits or _DEFAULT_LIMITS
    data = _as_bytes(raw)
    result, headers, body_start = _summary(data, message_number, size, limits)
    collector = Collector(message_number, limits, include_attachment_content)
    try:
        collector.walk(headers, data, body_start)
    except Exception as exc:
        log.warning("message %s: body parsing failed (%s)", message_number, type(exc).__name__)
        log.debug("message %s: body parsing traceback", message_number, exc_info=True)
    result["textBody"] = "\n".join(filter(None, collector.texts))  # the non-empty ones
    result["htmlBody"] = "\n".join(filter(None, collector.htmls))
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
