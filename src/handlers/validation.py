"""Input validation shared by the handlers: addresses, headers, command arguments.

Everything that reaches a header line or a protocol command passes through here
first, so CR, LF, NUL and other control characters are refused in one place before
a single byte is sent.
"""

from __future__ import annotations

import base64
import binascii
import mimetypes
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import MailValidationError

if TYPE_CHECKING:
    from .deliverability import DeliverabilityChecker

# C0 controls and DEL; TAB is allowed only where folding whitespace is legal. Lone
# surrogates count as well: they cannot be encoded, so they would only fail later,
# while the message is being built or the command sent.
_CONTROL_CHARS = re.compile(r"[\x00-\x08\x0a-\x1f\x7f\ud800-\udfff]")
_CONTROL_CHARS_NO_TAB = re.compile(r"[\x00-\x1f\x7f\ud800-\udfff]")
# An address's local part reaches the wire as raw UTF-8 (SMTPUTF8), so characters
# that text-based software treats as line breaks or controls are kept out of it.
_C1_OR_LINE_SEPARATOR = re.compile(r"[\x80-\x9f\u2028\u2029]")


def find_control_character(value: str, allow_tab: bool = False) -> str | None:
    """Return a readable name of the first control character in ``value``, or None."""
    pattern = _CONTROL_CHARS if allow_tab else _CONTROL_CHARS_NO_TAB
    match = pattern.search(value)
    if match is None:
        return None
    char = match.group()
    if "\ud800" <= char <= "\udfff":
        return f"an unpaired surrogate (U+{ord(char):04X})"
    names = {"\r": "CR", "\n": "LF", "\x00": "NUL", "\t": "TAB"}
    return names.get(char, f"control character 0x{ord(char):02x}")


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

MAX_ADDRESS_LENGTH = 254
MAX_LOCAL_PART_LENGTH = 64
MAX_DOMAIN_LENGTH = 253
MAX_LABEL_LENGTH = 63
MAX_SUBJECT_LENGTH = 998
MAX_BODY_BYTES = 100 * 1024 * 1024
MAX_ATTACHMENT_BYTES = 25 * 1024 * 1024
MAX_TOTAL_ATTACHMENT_BYTES = 100 * 1024 * 1024
MAX_RECIPIENTS = 100
MAX_HEADER_NAME_LENGTH = 76
MAX_FILENAME_LENGTH = 255

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

# --------------------------------------------------------------------------- addresses

# RFC 5322 atext, plus any non-ASCII character (RFC 6532 allows UTF-8 local parts).
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~\-\u0080-\U0010ffff]"
_DOT_ATOM = re.compile(rf"{_ATEXT}+(?:\.{_ATEXT}+)*")
_QUOTED_LOCAL = re.compile(r'"(?:[^"\\\x00-\x1f\x7f]|\\[^\x00-\x1f\x7f])*"')
_LDH_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9\-]*[A-Za-z0-9])?")
_NAME_ADDR = re.compile(r'^\s*(?:"((?:[^"\\]|\\.)*)"|([^<>"]*?))\s*<([^<>]*)>\s*$', re.S)


def split_display_name(value: str) -> tuple[str, str]:
    """Split ``'"Name" <user@example.com>'`` or ``'Name <u@e>'`` into (name, address).

    A bare address comes back with an empty name. Nothing is validated here.
    """
    match = _NAME_ADDR.match(value)
    if match is None:
        return "", value.strip()
    quoted, plain, address = match.groups()
    name = re.sub(r"\\(.)", r"\1", quoted) if quoted is not None else plain.strip()
    return name, address.strip()


def idna_domain(domain: str) -> str:
    """Return the ASCII (punycode) form of ``domain``; raises ValueError if impossible."""
    if domain.isascii():
        return domain
    return domain.encode("idna").decode("ascii")


def _check_local_part(local: str) -> str | None:
    if not local:
        return "the part before '@' is empty"
    if len(local) > MAX_LOCAL_PART_LENGTH:
        return f"the part before '@' is longer than {MAX_LOCAL_PART_LENGTH} characters"
    if _DOT_ATOM.fullmatch(local) is None and _QUOTED_LOCAL.fullmatch(local) is None:
        if ".." in local or local.startswith(".") or local.endswith("."):
            return "the part before '@' has a misplaced dot"
        return "the part before '@' contains characters that need quoting"
    return None


def _check_ip_literal(literal: str) -> str | None:
    import ipaddress

    body = literal[1:-1]
    try:
        if body.lower().startswith("ipv6:"):
            ipaddress.IPv6Address(body[5:])
        else:
            ipaddress.IPv4Address(body)
    except ValueError:
        return f"'{literal}' is not a valid address literal"
    return None


def _check_domain(domain: str) -> str | None:
    if not domain:
        return "the domain after '@' is empty"
    if domain.startswith("[") and domain.endswith("]"):
        return _check_ip_literal(domain)
    try:
        ascii_domain = idna_domain(domain)
    except (UnicodeError, ValueError):
        return f"the domain '{domain}' is not a valid internationalised domain name"
    if len(ascii_domain) > MAX_DOMAIN_LENGTH:
        return f"the domain is longer than {MAX_DOMAIN_LENGTH} characters"
    labels = ascii_domain.split(".")
    if len(labels) < 2:
        return "the domain has no top-level domain (like '.com')"
    for label in labels:
        if not label:
            return "the domain has an empty label (two dots in a row, or a leading/trailing dot)"
        if len(label) > MAX_LABEL_LENGTH:
            return f"a domain label is longer than {MAX_LABEL_LENGTH} characters"
        if _LDH_LABEL.fullmatch(label) is None:
            return f"the domain label '{label}' contains characters not allowed in a host name"
    if labels[-1].isdigit():
        return "the top-level domain cannot be numeric"
    return None


def check_address(address: str) -> str | None:
    """Return why ``address`` (a bare addr-spec) is invalid, or None when it is valid."""
    if not address:
        return "the address is empty"
    control = find_control_character(address)
    if control is not None:
        return f"the address contains {control}"
    unsafe = _C1_OR_LINE_SEPARATOR.search(address)
    if unsafe is not None:
        return f"the address contains U+{ord(unsafe.group()):04X}, a control or line separator"
    if len(address) > MAX_ADDRESS_LENGTH:
        return f"the address is longer than {MAX_ADDRESS_LENGTH} characters"
    if "@" not in address:
        return "the address has no '@'"
    local, _, domain = address.rpartition("@")
    if "@" in local and _QUOTED_LOCAL.fullmatch(local) is None:
        return "the address has more than one '@'"
    return _check_local_part(local) or _check_domain(domain)


def check_mailbox(value: str) -> str | None:
    """Like :func:`check_address` but also accepts a display-name form."""
    if not isinstance(value, str):
        return f"expected a string, got {type(value).__name__}"
    control = find_control_character(value)
    if control is not None:
        return f"the address contains {control}"
    return check_address(split_display_name(value)[1])


def needs_smtputf8(address: str) -> bool:
    """True when the local part is non-ASCII (a non-ASCII domain can use punycode instead)."""
    local = address.rpartition("@")[0]
    return not local.isascii()


def envelope_address(address: str) -> str:
    """The form of a (valid, bare) address used in MAIL FROM / RCPT TO and headers.

    A non-ASCII domain is converted to punycode so the address works without
    SMTPUTF8 whenever the local part is ASCII.
    """
    local, _, domain = address.rpartition("@")
    if domain.startswith("["):
        return address
    return f"{local}@{idna_domain(domain)}"


# --------------------------------------------------------------------------- attachments

_MIME_TYPE = re.compile(r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+\-]*/[A-Za-z0-9][A-Za-z0-9!#$&^_.+\-]*")
_CONTENT_ID = re.compile(r"[\x21-\x3b\x3d\x3f-\x7e]+")  # printable ASCII except '<' and '>'
_HEADER_NAME = re.compile(r"[\x21-\x39\x3b-\x7e]+")  # printable ASCII except ':'
_WHITESPACE = re.compile(rb"\s+")


@dataclass(frozen=True, slots=True)
class Attachment:
    """An attachment after validation: decoded content and safe metadata."""

    filename: str
    content_type: str
    content: bytes
    content_id: str | None = None

    @property
    def inline(self) -> bool:
        """Inline parts (with a Content-ID) are referenced from the HTML body."""
        return self.content_id is not None


def _decode_base64(data: str | bytes) -> bytes:
    raw = data.encode("ascii") if isinstance(data, str) else bytes(data)
    raw = _WHITESPACE.sub(b"", raw)
    return base64.b64decode(raw, validate=True)


def _attachment_content(item: Mapping[str, Any], where: str) -> bytes:
    if "content" in item and item["content"] is not None:
        content = item["content"]
        if not isinstance(content, bytes | bytearray | memoryview):
            raise MailValidationError(f"{where}.content must be bytes", where)
        return bytes(content)
    data = item.get("data")
    if data is None:
        raise MailValidationError(f"{where} needs 'data' (base64 text) or 'content' (bytes)", where)
    if not isinstance(data, str | bytes):
        raise MailValidationError(f"{where}.data must be base64 text", where)
    try:
        return _decode_base64(data)
    except (binascii.Error, ValueError, UnicodeEncodeError):
        raise MailValidationError(f"{where}.data is not valid base64", where) from None


def _attachment_filename(item: Mapping[str, Any], where: str) -> str:
    filename = item.get("filename")
    if not isinstance(filename, str) or not filename.strip():
        raise MailValidationError(f"{where}.filename must be a non-empty string", where)
    control = find_control_character(filename)
    if control is not None:
        raise MailValidationError(f"{where}.filename contains {control}", where)
    if len(filename) > MAX_FILENAME_LENGTH:
        raise MailValidationError(
            f"{where}.filename is longer than {MAX_FILENAME_LENGTH} characters", where
        )
    return filename


def _attachment_content_type(item: Mapping[str, Any], filename: str, where: str) -> str:
    content_type = item.get("contentType") or item.get("content_type")
    if content_type is None:
        return mimetypes.guess_type(filename, strict=False)[0] or "application/octet-stream"
    if not isinstance(content_type, str) or _MIME_TYPE.fullmatch(content_type) is None:
        raise MailValidationError(
            f"{where}.contentType must look like 'type/subtype' with no parameters", where
        )
    return content_type.lower()


def _attachment_content_id(item: Mapping[str, Any], where: str) -> str | None:
    content_id = item.get("contentId") or item.get("content_id")
    if content_id is None:
        return None
    if not isinstance(content_id, str):
        raise MailValidationError(f"{where}.contentId must be a string", where)
    bare = content_id.strip().removeprefix("<").removesuffix(">")
    # strip() would quietly drop a CR or LF at either end; refuse them like elsewhere.
    if find_control_character(content_id) is not None or _CONTENT_ID.fullmatch(bare) is None:
        raise MailValidationError(f"{where}.contentId has characters not allowed there", where)
    return bare


def decode_attachments(attachments: Sequence[Mapping[str, Any]] | None) -> list[Attachment]:
    """Validate attachment dicts and return them decoded; raise MailValidationError.

    Each dict has ``filename`` and either ``data`` (base64 text, line breaks allowed)
    or ``content`` (raw bytes); ``contentType`` is optional (guessed from the name)
    and ``contentId`` makes the part inline.
    """
    if attachments is None:
        return []
    if isinstance(attachments, Mapping | str | bytes) or not isinstance(attachments, Iterable):
        raise MailValidationError("attachments must be a list of dicts", "attachments")
    decoded: list[Attachment] = []
    total = 0
    for index, item in enumerate(attachments):
        where = f"attachments[{index}]"
        if not isinstance(item, Mapping):
            raise MailValidationError(f"{where} must be a dict", where)
        filename = _attachment_filename(item, where)
        content = _attachment_content(item, where)
        if len(content) > MAX_ATTACHMENT_BYTES:
            raise MailValidationError(
                f"{where} ({filename}) is {len(content)} bytes, over the "
                f"{MAX_ATTACHMENT_BYTES // (1024 * 1024)} MB limit per attachment",
                where,
            )
        total += len(content)
        if total > MAX_TOTAL_ATTACHMENT_BYTES:
            raise MailValidationError(
                f"attachments total more than the {MAX_TOTAL_ATTACHMENT_BYTES // (1024 * 1024)}"
                " MB limit",
                "attachments",
            )
        decoded.append(
            Attachment(
                filename=filename,
                content_type=_attachment_content_type(item, filename, where),
                content=content,
                content_id=_attachment_content_id(item, where),
            )
        )
    return decoded


# --------------------------------------------------------------------------- the validator


def _as_address_list(value: str | Sequence[str] | None, field: str) -> list[str]:
    """Accept a list of addresses, a single address string, or None."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
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
    for name, value in headers.items():
        if not isinstance(name, str) or _HEADER_NAME.fullmatch(name) is None:
            raise MailValidationError(
                f"custom header name {name!r} must be printable ASCII without ':' or spaces",
                "custom_headers",
            )
        if len(name) > MAX_HEADER_NAME_LENGTH:
            raise MailValidationError(f"custom header name {name!r} is too long", "custom_headers")
        if name.lower() in RESERVED_HEADERS:
            raise MailValidationError(
                f"custom header {name!r} is set by the handler; use the send_message parameter",
                "custom_headers",
            )
        check_header_value(value, f"custom_headers[{name!r}]")
        if name.lower() == "message-id" and not _is_message_id(value):
            raise MailValidationError(
                "custom Message-ID must look like <unique@domain>", "custom_headers"
            )


def _is_message_id(value: str) -> bool:
    value = value.strip()
    return (
        value.startswith("<")
        and value.endswith(">")
        and value.count("@") >= 1
        and " " not in value
        and value.isascii()
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
            "to_addresses": _as_address_list(to, "to_addresses"),
            "cc_addresses": _as_address_list(cc, "cc_addresses"),
            "bcc_addresses": _as_address_list(bcc, "bcc_addresses"),
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
                    "to_addresses": _as_address_list(to_addresses, "to_addresses"),
                    "cc_addresses": _as_address_list(cc_addresses, "cc_addresses"),
                    "bcc_addresses": _as_address_list(bcc_addresses, "bcc_addresses"),
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
