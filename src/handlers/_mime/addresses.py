"""Email addresses: parsing, checks, IDN (punycode) domains, SMTPUTF8 need, display names.

:func:`check_address` says why a bare addr-spec is invalid (RFC 5321/5322 lengths, dot-atom
or quoted local part, LDH or IDN domain, address literal); :func:`check_mailbox` also accepts
a display-name form. :func:`envelope_address` gives the form used on the wire.
"""

from __future__ import annotations

import re

from .._net.control_chars import find_control_character

# An address's local part reaches the wire as raw UTF-8 (SMTPUTF8), so characters
# that text-based software treats as line breaks or controls are kept out of it.
_C1_OR_LINE_SEPARATOR = re.compile(r"[\x80-\x9f\u2028\u2029]")

MAX_ADDRESS_LENGTH = 254
MAX_LOCAL_PART_LENGTH = 64
MAX_DOMAIN_LENGTH = 253
MAX_LABEL_LENGTH = 63

# RFC 5322 atext, plus any non-ASCII character (RFC 6532 allows UTF-8 local parts).
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~\-\u0080-\U0010ffff]"
_DOT_ATOM = re.compile(rf"{_ATEXT}+(?:\.{_ATEXT}+)*")
_QUOTED_LOCAL = re.compile(r'"(?:[^"\\\x00-\x1f\x7f]|\\[^\x00-\x1f\x7f])*"')
_LDH_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9\-]*[A-Za-z0-9])?")
_NAME_ADDR = re.compile(r'^\s*(?:"((?:[^"\\]|\\.)*)"|([^<>"]*?))\s*<([^<>]*)>\s*$', re.S)

# RFC 5322 msg-id without the obsolete forms: "<" dot-atom-text "@" (dot-atom-text or
# a domain literal) ">", all ASCII. Anything looser is read back differently by readers.
_ID_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~\-]"
_ID_DOT_ATOM = rf"{_ID_ATEXT}+(?:\.{_ID_ATEXT}+)*"
_MESSAGE_ID = re.compile(rf"<{_ID_DOT_ATOM}@(?:{_ID_DOT_ATOM}|\[[\x21-\x5a\x5e-\x7e]*\])>")
# "Message-ID: " plus the id must fit one header line of 998 octets.
MAX_MESSAGE_ID_LENGTH = 998 - len("Message-ID: ")


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


def check_message_id(value: str) -> str | None:
    """Return why ``value`` cannot be sent as a Message-ID, or None when it can.

    Surrounding whitespace is allowed (it is dropped); the rest must be
    ``<left@right>`` in RFC 5322's strict form, at most :data:`MAX_MESSAGE_ID_LENGTH`
    characters, so every reader parses back exactly this Message-ID.
    """
    if not isinstance(value, str):
        return f"expected a string, got {type(value).__name__}"
    value = value.strip(" ")
    if len(value) > MAX_MESSAGE_ID_LENGTH:
        return f"it is longer than {MAX_MESSAGE_ID_LENGTH} characters"
    if _MESSAGE_ID.fullmatch(value) is None:
        return (
            "it must look like <left@right>: one '@', and on either side only letters, "
            "digits, dots (not doubled, not at an end) and !#$%&'*+/=?^_`{|}~- "
            "(or a [literal] after the '@'), nothing else around the '<>'"
        )
    return None


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
