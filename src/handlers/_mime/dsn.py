"""Reading delivery status notifications: who got the message, who did not, and why.

:func:`parse_delivery_report` understands the standard form (RFC 3464: a
``multipart/report; report-type=delivery-status`` whose ``message/delivery-status`` part
holds one block of fields per recipient) and, when a server sends plain text instead, the
bounces Postfix, Exim, qmail, Exchange and Gmail write, through a heuristic that looks
for recipient addresses next to ``550 5.1.1``-style codes.

Each report is linked back to the message it is about: the Message-ID from the returned
headers (``text/rfc822-headers`` or ``message/rfc822``), else from a copy quoted in the
text, else from the report's In-Reply-To or References; and the envelope ID
(``Original-Envelope-Id``, the ``ENVID`` given at MAIL FROM).

Bounces come from strangers, so the parser never raises and its work is bounded: only the
first :data:`MAX_REPORT_BYTES` are read, at most :data:`MAX_PARTS` MIME parts are
looked at and at most :data:`MAX_RECIPIENTS` recipients are reported.
"""

from __future__ import annotations

import base64
import binascii
import email
import email.message
import email.policy
import re
from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum

from .._net.logs import get_logger

__all__ = [
    "MAX_PARTS",
    "MAX_RECIPIENTS",
    "MAX_REPORT_BYTES",
    "DeliveryAction",
    "DeliveryReport",
    "RecipientReport",
    "parse_delivery_report",
]

log = get_logger("parser")

MAX_REPORT_BYTES = 1 << 20
"""Only this many bytes of a report are read; the part that matters comes first."""
MAX_PARTS = 64
"""MIME parts looked at in one report."""
MAX_RECIPIENTS = 1000
"""Recipients reported from one report; the rest are dropped."""

_MAX_TEXT = 64 * 1024  # characters of a human-readable part the heuristic reads
_MAX_FIELD = 2000  # characters kept of one field value (a diagnostic, say)


class DeliveryAction(StrEnum):
    """What the reporting server did for one recipient (RFC 3464 ``Action``)."""

    DELIVERED = "delivered"
    FAILED = "failed"
    DELAYED = "delayed"
    RELAYED = "relayed"
    EXPANDED = "expanded"


@dataclass(frozen=True)
class RecipientReport:
    """The outcome for one recipient.

    Attributes:
        recipient: The address the report is about (``Final-Recipient``, or the address
            found in a text bounce), without its ``rfc822;`` type.
        action: What was done.
        status: The enhanced status code such as ``"5.1.1"``, or None when none was given.
        diagnostic: The remote server's reply (``Diagnostic-Code``) or the bounce text
            about this recipient, whitespace collapsed; None when absent.
        remote_mta: The server that gave the diagnostic (``Remote-MTA``), if known.
        original_recipient: The address as first given at RCPT TO
            (``Original-Recipient``), if reported.
        smtp_code: The three-digit reply code found in the diagnostic, if any.
    """

    recipient: str
    action: DeliveryAction
    status: str | None = None
    diagnostic: str | None = None
    remote_mta: str | None = None
    original_recipient: str | None = None
    smtp_code: int | None = None

    @property
    def permanent(self) -> bool:
        """Whether this is a permanent failure (a 5.x.x status, or action ``failed``)."""
        if self.status is not None:
            return self.status.startswith("5")
        return self.action is DeliveryAction.FAILED


@dataclass(frozen=True)
class DeliveryReport:
    """A parsed delivery status notification.

    Attributes:
        recipients: One entry per recipient the report speaks about, in its order.
        original_message_id: The Message-ID (with angle brackets) of the message the
            report is about, or None when the report does not say.
        envelope_id: ``Original-Envelope-Id``: the ``ENVID`` given at MAIL FROM.
        reporting_mta: The server that wrote the report (``Reporting-MTA``).
        standard: True for an RFC 3464 report, False for a text bounce read by heuristics.
        message_id: The report's own Message-ID, useful to skip duplicates.
    """

    recipients: tuple[RecipientReport, ...]
    original_message_id: str | None = None
    envelope_id: str | None = None
    reporting_mta: str | None = None
    standard: bool = True
    message_id: str | None = None

    def by_action(self, action: DeliveryAction) -> tuple[RecipientReport, ...]:
        """The recipients with ``action``."""
        return tuple(r for r in self.recipients if r.action is action)

    @property
    def failed(self) -> tuple[RecipientReport, ...]:
        """The recipients that will not get the message."""
        return self.by_action(DeliveryAction.FAILED)

    @property
    def delivered(self) -> tuple[RecipientReport, ...]:
        """The recipients whose server reports the message delivered."""
        return self.by_action(DeliveryAction.DELIVERED)

    @property
    def delayed(self) -> tuple[RecipientReport, ...]:
        """The recipients still being tried."""
        return self.by_action(DeliveryAction.DELAYED)


def parse_delivery_report(raw: bytes) -> DeliveryReport | None:
    """Read a delivery status notification; None when ``raw`` is not one.

    Standard reports (RFC 3464) are read field by field; plain-text bounces by
    heuristics that need both a bounce-like sender or subject and at least one
    recipient with a reason. Never raises: malformed input gives None or whatever
    could be recovered.
    """
    try:
        return _parse(bytes(raw[:MAX_REPORT_BYTES]))
    except Exception:  # a parser for strangers' mail must not raise
        log.debug("delivery report could not be read", exc_info=True)
        return None


# --------------------------------------------------------------------------- helpers

_WS = re.compile(r"\s+")
_MESSAGE_ID = re.compile(r"<[^<>\s]{1,500}>")
_STATUS = re.compile(r"(?<![\d.])([245])\.(\d{1,3})\.(\d{1,3})(?![\d.])")
_SMTP_CODE = re.compile(r"(?<![\d.#-])([245][0-5]\d)(?=[ -]|$)")
_ADDRESS = r"[^\s<>()\[\]@,;:\"]{1,64}@[A-Za-z0-9](?:[A-Za-z0-9.-]{0,253})"


def _text(value: object) -> str:
    """A header value as a one-line string, whatever the parser gave."""
    if value is None:
        return ""
    text = str(value)
    return _WS.sub(" ", text).strip()[:_MAX_FIELD]


def _typed(value: str) -> str:
    """``rfc822; a@b`` -> ``a@b``; ``dns; mx.example`` -> ``mx.example``."""
    _, semicolon, rest = value.partition(";")
    value = rest if semicolon else value
    return value.strip().strip("<>").strip()


def _status(text: str) -> str | None:
    match = _STATUS.search(text)
    return ".".join(match.groups()) if match else None


def _smtp_code(text: str) -> int | None:
    match = _SMTP_CODE.search(text)
    return int(match.group(1)) if match else None


def _message_id(value: str) -> str | None:
    match = _MESSAGE_ID.search(value)
    return match.group(0) if match else None


def _parts(message: email.message.Message) -> Iterator[email.message.Message]:
    """The message and its parts, depth first, at most :data:`MAX_PARTS`; no recursion."""
    stack = [message]
    seen = 0
    while stack and seen < MAX_PARTS:
        part = stack.pop()
        seen += 1
        yield part
        payload = part.get_payload()
        if part.is_multipart() and isinstance(payload, list):
            stack.extend(reversed([p for p in payload if isinstance(p, email.message.Message)]))


def _decoded_text(part: email.message.Message) -> str:
    payload = part.get_payload(decode=True)
    if not isinstance(payload, bytes):
        payload = str(part.get_payload() or "").encode("utf-8", "replace")
    charset = part.get_content_charset() or "utf-8"
    try:
        text = payload.decode(charset, "replace")
    except LookupError:
        text = payload.decode("utf-8", "replace")
    return text[:_MAX_TEXT]


def _header_block_id(text: str) -> str | None:
    """The Message-ID field in a block of returned headers."""
    for match in re.finditer(r"(?im)^message-id:[ \t]*(.*(?:\r?\n[ \t].*)*)", text):
        found = _message_id(match.group(1))
        if found:
            return found
    return None


# --------------------------------------------------------------------------- RFC 3464

_PER_MESSAGE = {"reporting-mta", "original-envelope-id", "arrival-date", "received-from-mta"}
_ACTIONS = {a.value: a for a in DeliveryAction}


def _status_fields(part: email.message.Message) -> list[tuple[str, str]]:
    """All fields of a ``message/delivery-status`` part in order, names lower-cased.

    The stdlib parser splits the body into blocks (sub-messages); reports that forget
    the blank lines still give every field, just in fewer blocks.
    """
    fields: list[tuple[str, str]] = []
    payload = part.get_payload()
    blocks = payload if isinstance(payload, list) else []
    if not blocks:
        text = payload if isinstance(payload, str) else _decoded_text(part)
        blocks = [email.message_from_string(chunk) for chunk in re.split(r"\n\s*\n", text)]
    base64_next = False
    for block in blocks[: MAX_RECIPIENTS + 1]:
        if not isinstance(block, email.message.Message):
            continue
        items = block.items()
        if not items and base64_next:
            fields.extend(_base64_fields(block.get_payload()))
        fields.extend((name.lower(), _text(value)) for name, value in items)
        base64_next = _text(block.get("Content-Transfer-Encoding", "")).lower() == "base64"
        # The next block is a new recipient even if it repeats no field.
        fields.append(("", ""))
    return fields


def _base64_fields(payload: object) -> list[tuple[str, str]]:
    """Fields hidden in a base64 block (some gateways re-encode the recipient part)."""
    if not isinstance(payload, str):
        return []
    try:
        body = base64.b64decode(re.sub(r"\s+", "", payload[:_MAX_TEXT]))
    except (ValueError, binascii.Error):
        return []
    inner = email.message_from_bytes(body, policy=email.policy.compat32)
    return [(name.lower(), _text(value)) for name, value in inner.items()]


def _recipient_groups(fields: list[tuple[str, str]]) -> list[dict[str, str]]:
    groups: list[dict[str, str]] = []
    current: dict[str, str] = {}
    for name, value in fields:
        if not name:
            if current:
                groups.append(current)
            current = {}
            continue
        if name in _PER_MESSAGE:
            continue
        if name in current:
            groups.append(current)
            current = {}
        current[name] = value
    if current:
        groups.append(current)
    return [g for g in groups if "final-recipient" in g or "original-recipient" in g]


def _recipient_from_fields(group: dict[str, str]) -> RecipientReport | None:
    final = _typed(group.get("final-recipient", ""))
    original = _typed(group.get("original-recipient", "")) or None
    recipient = final or original
    if not recipient:
        return None
    status = _status(group.get("status", ""))
    diagnostic_field = group.get("diagnostic-code", "")
    diagnostic = _typed(diagnostic_field) if diagnostic_field else None
    action = _ACTIONS.get(group.get("action", "").split(" ")[0].lower())
    if action is None:
        action = _action_from_status(status, "")
    return RecipientReport(
        recipient=recipient,
        action=action,
        status=status,
        diagnostic=diagnostic or None,
        remote_mta=_typed(group.get("remote-mta", "")) or None,
        original_recipient=original,
        smtp_code=_smtp_code(diagnostic or ""),
    )


def _standard_report(
    status_part: email.message.Message,
) -> tuple[list[RecipientReport], dict[str, str]]:
    fields = _status_fields(status_part)
    per_message = {}
    for name, value in fields:
        if name in _PER_MESSAGE and name not in per_message:
            per_message[name] = value
    recipients = []
    for group in _recipient_groups(fields)[:MAX_RECIPIENTS]:
        report = _recipient_from_fields(group)
        if report is not None:
            recipients.append(report)
    return recipients, per_message


# --------------------------------------------------------------------------- text bounces

_BOUNCE_SENDER = re.compile(r"mailer-daemon|postmaster|mail delivery|mdaemon|mailerdaemon", re.I)
_BOUNCE_SUBJECT = re.compile(
    r"undeliver|undelivered|delivery (status|failure|has failed|notification)|"
    r"returned mail|failure notice|mail delivery failed|not delivered|delivery report|"
    r"could not be delivered|delayed mail|warning: could not send",
    re.I,
)
# Where a text bounce stops explaining and starts quoting the original message: a line
# of dashes naming the copy, or Exim's and Exchange's header-block titles.
_QUOTE_WORDS = (
    "original message",
    "copy of the message",
    "returned message",
    "undelivered message",
    "message headers",
    "below this line",
)
_QUOTE_TITLES = ("original message headers:",)


def _quote_start(text: str) -> int | None:
    """Offset of the line where quoting starts, or None. Plain substring tests on each
    line, so hostile lines (thousands of dashes) cost linear time."""
    offset = 0
    for line in text.split("\n"):
        head = line.lstrip(" \t")[:200].lower()
        if (head.startswith("--") and any(word in head for word in _QUOTE_WORDS)) or (
            head.startswith(_QUOTE_TITLES)
        ):
            return offset
        offset += len(line) + 1
    return None


_ADDRESS_LINE = re.compile(
    rf"^[ \t]*<?(?P<address>{_ADDRESS})>?[ \t]*(?::|$|[ \t]+(?=\())(?P<rest>.*)$", re.M
)
_DELAYED_WORDS = re.compile(
    r"not yet been delivered|delayed|will (?:keep|continue) trying|temporar|"
    r"will be retried|still trying|deferred",
    re.I,
)
_FAILED_WORDS = re.compile(
    r"permanent|failed|could not be delivered|undeliverable|unable to deliver|"
    r"given up|does not exist|user unknown|rejected|no (?:such|mailbox)",
    re.I,
)


def _action_from_status(status: str | None, text: str) -> DeliveryAction:
    if status is not None:
        if status.startswith("2"):
            return DeliveryAction.DELIVERED
        if status.startswith("4"):
            return DeliveryAction.DELAYED
        return DeliveryAction.FAILED
    if _DELAYED_WORDS.search(text) and not _FAILED_WORDS.search(text):
        return DeliveryAction.DELAYED
    return DeliveryAction.FAILED


def _looks_like_bounce(message: email.message.Message) -> bool:
    sender = _text(message.get("From", "")) + " " + _text(message.get("Return-Path", ""))
    subject = _text(message.get("Subject", ""))
    return bool(
        message.get("X-Failed-Recipients")
        or _BOUNCE_SENDER.search(sender)
        or _BOUNCE_SUBJECT.search(subject)
    )


def _text_recipients(explanation: str, failed_header: list[str]) -> list[RecipientReport]:
    """Recipients found in the explaining text of a bounce, each with its block of text.

    A recipient's block runs from its address line to the next address line; the codes
    inside it are that recipient's. Codes found only elsewhere in the explanation (as
    Gmail and Exchange write them) apply to every recipient without codes of its own.
    """
    matches: list[re.Match[str]] = []
    for match in _ADDRESS_LINE.finditer(explanation):
        # A recipient's own address quoted again inside its reason continues its block.
        if matches and matches[-1].group("address").lower() == match.group("address").lower():
            continue
        matches.append(match)
        if len(matches) > MAX_RECIPIENTS * 2:
            break
    # What the explanation as a whole says, worked out once (not once per recipient).
    overall_status = _status(explanation)
    overall_code = _smtp_code(explanation)
    overall_action = _action_from_status(overall_status, explanation)
    has_reasons = overall_status is not None or bool(
        _FAILED_WORDS.search(explanation) or _DELAYED_WORDS.search(explanation)
    )
    overall_text = _text(explanation)[:500]
    found: dict[str, RecipientReport] = {}
    for index, match in enumerate(matches):
        address = match.group("address").rstrip(".")
        key = address.lower()
        end = matches[index + 1].start() if index + 1 < len(matches) else len(explanation)
        block = explanation[match.end() : end]
        detail = _text(match.group("rest") + " " + block)
        status = _status(detail)
        code = _smtp_code(detail)
        if status is None and code is None:
            # An address with no reason beside it; count it only if the text names
            # reasons elsewhere (one list of addresses, then one explanation).
            if not has_reasons and key not in failed_header:
                continue
            action = overall_action
            status, code = overall_status, overall_code
            detail = detail or overall_text
        else:
            action = _action_from_status(status, detail)
        if key in found and found[key].status is not None:
            continue
        found[key] = RecipientReport(
            recipient=address,
            action=action,
            status=status,
            diagnostic=detail or None,
            smtp_code=code,
        )
        if len(found) >= MAX_RECIPIENTS:
            break
    for address in failed_header:
        if address not in found and len(found) < MAX_RECIPIENTS:
            found[address] = RecipientReport(
                recipient=address,
                action=DeliveryAction.FAILED,
                status=overall_status,
                diagnostic=overall_text or None,
                smtp_code=overall_code,
            )
    return list(found.values())


def _text_report(
    message: email.message.Message, text_part: email.message.Message | None
) -> tuple[list[RecipientReport], str | None]:
    """Recipients of a plain-text bounce, and a Message-ID quoted in its text."""
    if text_part is None:
        return [], None
    text = _decoded_text(text_part).replace("\r\n", "\n")
    quote = _quote_start(text)
    explanation = text if quote is None else text[:quote]
    quoted = "" if quote is None else text[quote:]
    failed_header = [
        address.lower()
        for value in message.get_all("X-Failed-Recipients", [])
        for address in re.findall(_ADDRESS, _text(value))
    ]
    recipients = _text_recipients(explanation, failed_header)
    return recipients, _header_block_id(quoted) if quoted else None


# --------------------------------------------------------------------------- the report


def _returned_message_id(part: email.message.Message) -> str | None:
    """The Message-ID inside a returned ``message/rfc822`` or ``text/rfc822-headers``."""
    content_type = part.get_content_type()
    if content_type == "message/rfc822":
        payload = part.get_payload()
        inner = payload[0] if isinstance(payload, list) and payload else None
        if isinstance(inner, email.message.Message):
            return _message_id(_text(inner.get("Message-ID", "")))
        return None
    return _header_block_id(_decoded_text(part).replace("\r\n", "\n"))


def _linked_id(message: email.message.Message) -> str | None:
    reply_to = _message_id(_text(message.get("In-Reply-To", "")))
    if reply_to:
        return reply_to
    references = _MESSAGE_ID.findall(_text(message.get("References", "")))
    return references[-1] if references else None


def _parse(raw: bytes) -> DeliveryReport | None:
    message = email.message_from_bytes(raw, policy=email.policy.compat32)
    status_part: email.message.Message | None = None
    text_part: email.message.Message | None = None
    original_id: str | None = None
    for part in _parts(message):
        content_type = part.get_content_type()
        if content_type in ("message/delivery-status", "message/global-delivery-status"):
            status_part = status_part or part
        elif content_type in ("message/rfc822", "text/rfc822-headers", "message/global"):
            original_id = original_id or _returned_message_id(part)
        elif content_type == "text/plain" and text_part is None and not part.get_filename():
            text_part = part
    own_id = _message_id(_text(message.get("Message-ID", "")))
    if status_part is not None:
        recipients, per_message = _standard_report(status_part)
        if recipients:
            return DeliveryReport(
                recipients=tuple(recipients),
                original_message_id=original_id or _linked_id(message),
                envelope_id=per_message.get("original-envelope-id") or None,
                reporting_mta=_typed(per_message.get("reporting-mta", "")) or None,
                standard=True,
                message_id=own_id,
            )
    if not _looks_like_bounce(message) and status_part is None:
        return None
    recipients, quoted_id = _text_report(message, text_part)
    if not recipients:
        return None
    return DeliveryReport(
        recipients=tuple(recipients),
        original_message_id=original_id or quoted_id or _linked_id(message),
        standard=False,
        message_id=own_id,
    )
