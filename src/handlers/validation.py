"""Checks of a message before it is built: headers, bodies, recipients, command arguments.

:class:`SMTPMessageValidator` checks every field of a message; the address rules live in
:mod:`.addresses` and the attachment rules in :mod:`.attachments`. Everything that reaches a
header line or a protocol command is checked for CR, LF, NUL and other control characters
(:mod:`.control_chars`) before a single byte is sent.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ._mime.addresses import (
    check_mailbox,
    check_message_id,
    envelope_address,
    split_display_name,
)
from ._mime.attachments import Attachment, decode_attachments
from ._net.control_chars import find_control_character
from .errors import MailValidationError

if TYPE_CHECKING:
    from ._dns.deliverability import DeliverabilityChecker

# decode_attachments, envelope_address and split_display_name live in .attachments and
# .addresses now; they stay importable from here, where callers found them first.
__all__ = [
    "MAX_BODY_BYTES",
    "MAX_HEADER_NAME_LENGTH",
    "MAX_RECIPIENTS",
    "MAX_SUBJECT_LENGTH",
    "RESERVED_HEADERS",
    "SMTPMessageValidator",
    "Verdict",
    "check_custom_headers",
    "check_header_value",
    "decode_attachments",
    "ensure_safe_command_argument",
    "envelope_address",
    "split_display_name",
]


def check_server_address(hostname: str, port: int) -> None:
    """Refuse an empty host name, one with spaces or control characters, and a port
    outside 1-65535, with :class:`MailValidationError` (a ``ValueError``)."""
    if not isinstance(hostname, str) or not hostname.strip():
        raise MailValidationError("hostname must be a non-empty string", "hostname")
    if find_control_character(hostname) is not None or " " in hostname.strip():
        raise MailValidationError(
            "hostname must not contain spaces or control characters", "hostname"
        )
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise MailValidationError(f"port must be an integer from 1 to 65535 (got {port!r})", "port")


def ensure_safe_command_argument(value: str, field: str) -> None:
    """Raise :class:`MailValidationError` if ``value`` could inject a protocol command.

    The error names ``field`` but never echoes the value, which may be a secret.
    """
    if not isinstance(value, str):
        raise MailValidationError(f"{field} must be a string", field)
    problem = find_control_character(value)
    if problem is not None:
        raise MailValidationError(f"{field} contains {problem}, which is not allowed", field)


# --------------------------------------------------------------------------- limits

MAX_SUBJECT_LENGTH = 998
MAX_BODY_BYTES = 100 * 1024 * 1024
MAX_RECIPIENTS = 100
MAX_HEADER_NAME_LENGTH = 76

# Headers the handler writes itself; a custom header may not replace them.
RESERVED_HEADERS = frozenset(
    {
        "from",
        "to",
        "cc",
        "bcc",
        "subject",
        "reply-to",
        "date",
        "sender",
        "mime-version",
        "content-type",
        "content-transfer-encoding",
        "content-disposition",
    }
)

_HEADER_NAME = re.compile(r"[\x21-\x39\x3b-\x7e]+")  # printable ASCII except ':'


# --------------------------------------------------------------------------- the validator


def address_list(value: str | Iterable[str] | None, field: str) -> list[str]:
    """A recipient list as a list: any iterable of addresses, a single address string
    (one recipient), or None (none). An iterator is read once, here."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if type(value) in (list, tuple):  # the common case, spared the ABC checks below
        return list(value)
    if isinstance(value, Mapping) or not isinstance(value, Iterable):
        raise MailValidationError(f"{field} must be a list of addresses", field)
    return list(value)


def _text_byte_length_over(text: str, limit: int) -> bool:
    # Cheap bounds first: a str of n characters encodes to between n and 4n bytes.
    if len(text) > limit:
        return True
    if len(text) * 4 <= limit:
        return False
    return len(text.encode("utf-8", "surrogatepass")) > limit


def check_header_value(value: str, field: str) -> None:
    """Refuse a header value that could break out of its header line."""
    if not isinstance(value, str):
        raise MailValidationError(f"{field} must be a string", field)
    control = find_control_character(value, allow_tab=True)
    if control is not None:
        raise MailValidationError(f"{field} contains {control}, which is not allowed", field)


def check_custom_headers(headers: Mapping[str, str] | None) -> None:
    """Validate custom header names and values; raise MailValidationError."""
    if headers is None:
        return
    if not isinstance(headers, Mapping):
        raise MailValidationError(
            "custom_headers must be a dict of name to value", "custom_headers"
        )
    seen: dict[str, str] = {}
    for name, value in headers.items():
        if not isinstance(name, str) or _HEADER_NAME.fullmatch(name) is None:
            raise MailValidationError(
                f"custom header name {name!r} must be printable ASCII without ':' or spaces",
                "custom_headers",
            )
        if len(name) > MAX_HEADER_NAME_LENGTH:
            raise MailValidationError(f"custom header name {name!r} is too long", "custom_headers")
        lowered = name.lower()
        first = seen.setdefault(lowered, name)
        if first != name:
            # Both would be sent (or one silently dropped, for a Message-ID), and a
            # reader would see only one of them.
            raise MailValidationError(
                f"custom headers {first!r} and {name!r} are the same field "
                "(header names ignore case); give it once",
                "custom_headers",
            )
        if lowered in RESERVED_HEADERS:
            raise MailValidationError(
                f"custom header {name!r} is set by the handler; use the send_message parameter",
                "custom_headers",
            )
        check_header_value(value, f"custom_headers[{name!r}]")
        if lowered == "message-id":
            problem = check_message_id(value)
            if problem is not None:
                raise MailValidationError(
                    f"custom_headers[{name!r}] is not a Message-ID that can be sent: {problem}",
                    "custom_headers",
                )


Verdict = tuple[bool, str | None]


def _verdict(check: Any, *args: Any) -> Verdict:
    try:
        check(*args)
    except MailValidationError as error:
        return False, str(error)
    return True, None


class SMTPMessageValidator:
    """Checks a message against RFC 5321/5322 rules and our size limits before sending.

    Every ``validate_*`` method returns ``(is_valid, error)`` where ``error`` is None
    when valid and otherwise a sentence naming the field. The ``check_*`` methods do
    the same work but raise :class:`MailValidationError` (with ``field`` set).
    """

    @classmethod
    def validate_email_address(cls, email: str) -> Verdict:
        """Check one address; a display-name form such as ``"Ann" <ann@x.org>`` is accepted."""
        problem = check_mailbox(email)
        if problem is None:
            return True, None
        return False, f"{email!r} is not a valid email address: {problem}"

    @classmethod
    def check_recipients(
        cls,
        to: str | Sequence[str] | None,
        cc: str | Sequence[str] | None = None,
        bcc: str | Sequence[str] | None = None,
    ) -> None:
        """Raise unless there is at least one recipient, all valid, at most 100 in all."""
        lists = {
            "to_addresses": address_list(to, "to_addresses"),
            "cc_addresses": address_list(cc, "cc_addresses"),
            "bcc_addresses": address_list(bcc, "bcc_addresses"),
        }
        total = sum(len(v) for v in lists.values())
        if total == 0:
            raise MailValidationError("at least one recipient is required", "to_addresses")
        if total > MAX_RECIPIENTS:
            raise MailValidationError(
                f"{total} recipients given; at most {MAX_RECIPIENTS} are allowed (to+cc+bcc)",
                "to_addresses",
            )
        for field, addresses in lists.items():
            for index, address in enumerate(addresses):
                problem = check_mailbox(address)
                if problem is not None:
                    raise MailValidationError(
                        f"{field}[{index}] {address!r} is not a valid email address: {problem}",
                        field,
                    )

    @classmethod
    def validate_recipients(
        cls,
        to: str | Sequence[str] | None,
        cc: str | Sequence[str] | None = None,
        bcc: str | Sequence[str] | None = None,
    ) -> Verdict:
        """Check the recipient lists (see :meth:`check_recipients`)."""
        return _verdict(cls.check_recipients, to, cc, bcc)

    @classmethod
    def check_subject(cls, subject: str | None) -> None:
        """Raise unless the subject is a string of at most 998 characters with no CR/LF/NUL."""
        if subject is None:
            return
        check_header_value(subject, "subject")
        if len(subject) > MAX_SUBJECT_LENGTH:
            raise MailValidationError(
                f"subject is {len(subject)} characters; at most {MAX_SUBJECT_LENGTH} allowed",
                "subject",
            )

    @classmethod
    def validate_subject(cls, subject: str | None) -> Verdict:
        """Check the subject (None counts as an empty subject)."""
        return _verdict(cls.check_subject, subject)

    @classmethod
    def check_body(cls, text_body: str | None, html_body: str | None = None) -> None:
        """Raise unless at least one body is given, each a str of at most 100 MB (UTF-8)."""
        if text_body is None and html_body is None:
            raise MailValidationError("a message needs text_body or html_body", "text_body")
        for field, body in (("text_body", text_body), ("html_body", html_body)):
            if body is None:
                continue
            if not isinstance(body, str):
                raise MailValidationError(f"{field} must be a string", field)
            if _text_byte_length_over(body, MAX_BODY_BYTES):
                raise MailValidationError(
                    f"{field} is over the {MAX_BODY_BYTES // (1024 * 1024)} MB limit", field
                )

    @classmethod
    def validate_body(cls, text_body: str | None, html_body: str | None = None) -> Verdict:
        """Check the bodies (see :meth:`check_body`)."""
        return _verdict(cls.check_body, text_body, html_body)

    @classmethod
    def validate_attachments(cls, attachments: Sequence[Mapping[str, Any]] | None) -> Verdict:
        """Check attachments: names, types, base64 data, 25 MB each and 100 MB in all."""
        return _verdict(decode_attachments, attachments)

    @classmethod
    def check_single_address(cls, value: str | None, field: str) -> None:
        """Raise if an optional single address (sender, reply-to) is given and invalid."""
        if value is None:
            return
        problem = check_mailbox(value)
        if problem is not None:
            raise MailValidationError(
                f"{field} {value!r} is not a valid email address: {problem}", field
            )

    @classmethod
    def check_deliverability(
        cls,
        addresses: dict[str, list[str]],
        checker: DeliverabilityChecker,
    ) -> None:
        """Raise if DNS says a recipient's domain takes no mail (NXDOMAIN, null MX, no
        MX/A/AAAA). A DNS failure never blocks: unverifiable domains pass. Each domain is
        looked up once (and cached by the checker)."""
        verdicts: dict[str, str | None] = {}
        for field, mailboxes in addresses.items():
            for index, mailbox in enumerate(mailboxes):
                domain = split_display_name(mailbox)[1].rpartition("@")[2]
                if domain.startswith("["):
                    continue
                if domain not in verdicts:
                    result = checker.check(domain)
                    verdicts[domain] = None if result.deliverable else result.reason
                reason = verdicts[domain]
                if reason is not None:
                    raise MailValidationError(
                        f"{field}[{index}] {mailbox!r}: the domain does not accept mail ({reason})",
                        field,
                    )

    @classmethod
    def check_message(
        cls,
        to_addresses: str | Sequence[str] | None,
        subject: str | None,
        text_body: str | None = None,
        html_body: str | None = None,
        cc_addresses: str | Sequence[str] | None = None,
        bcc_addresses: str | Sequence[str] | None = None,
        attachments: Sequence[Mapping[str, Any]] | None = None,
        from_address: str | None = None,
        reply_to: str | None = None,
        custom_headers: Mapping[str, str] | None = None,
        deliverability: DeliverabilityChecker | None = None,
    ) -> list[Attachment]:
        """Validate a whole message; return the decoded attachments or raise.

        With a ``deliverability`` checker, recipient domains are also checked in DNS.
        """
        cls.check_single_address(from_address, "from_address")
        cls.check_recipients(to_addresses, cc_addresses, bcc_addresses)
        if deliverability is not None:
            cls.check_deliverability(
                {
                    "to_addresses": address_list(to_addresses, "to_addresses"),
                    "cc_addresses": address_list(cc_addresses, "cc_addresses"),
                    "bcc_addresses": address_list(bcc_addresses, "bcc_addresses"),
                },
                deliverability,
            )
        cls.check_single_address(reply_to, "reply_to")
        cls.check_subject(subject)
        cls.check_body(text_body, html_body)
        check_custom_headers(custom_headers)
        return decode_attachments(attachments)

    @classmethod
    def validate_message(
        cls,
        to_addresses: str | Sequence[str] | None,
        subject: str | None,
        text_body: str | None = None,
        html_body: str | None = None,
        cc_addresses: str | Sequence[str] | None = None,
        bcc_addresses: str | Sequence[str] | None = None,
        attachments: Sequence[Mapping[str, Any]] | None = None,
        from_address: str | None = None,
        reply_to: str | None = None,
        custom_headers: Mapping[str, str] | None = None,
    ) -> Verdict:
        """Check everything :meth:`check_message` checks; return ``(is_valid, error)``."""
        return _verdict(
            cls.check_message,
            to_addresses,
            subject,
            text_body,
            html_body,
            cc_addresses,
            bcc_addresses,
            attachments,
            from_address,
            reply_to,
            custom_headers,
        )
