"""Property-based fuzzing of the validator, the MIME builder and the message parser.

Every property runs ``FUZZ_EXAMPLES`` examples (200 by default, so CI stays fast);
set the environment variable ``MAILHANDLERS_FUZZ_EXAMPLES`` for a deeper local run.

* validator: never raises, whatever it is given; what it accepts builds and is
  accepted by a real SMTP server; a CR, LF or NUL in any header field is refused;
* builder: the standard library parser reads back every field we put in, and so
  does our own parser;
* parser: never fails (no internal error caught and logged) on arbitrary bytes, nor
  on real and built messages mutated with structure in mind.
"""

from __future__ import annotations

import base64
import logging
import os
import re
import string
import unicodedata
from collections.abc import Callable, Iterator
from email import policy
from email.parser import BytesParser
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from message_keys import SPEC_KEYS
from parser_log import parser_log
from paths import DATA

from src.handlers._mime.builder import OutgoingMessage, build_message
from src.handlers._mime.parser import parse_header_summary, parse_message
from src.handlers.smtp import SMTPConnectionPool, SMTPDeliveryStatus, SMTPProtocolHandler
from src.handlers.validation import (
    SMTPMessageValidator,
    decode_attachments,
    envelope_address,
    split_display_name,
)
from src.testing.smtp_server import SMTPTestServer

FUZZ_EXAMPLES = int(os.environ.get("MAILHANDLERS_FUZZ_EXAMPLES", "200"))
FUZZ = settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
V = SMTPMessageValidator
PARSER = BytesParser(policy=policy.default)
DATA_FILES = sorted(DATA.glob("*.eml"))

# =====================================================================================
# Strategies
# =====================================================================================

_C0_BUT_TAB = "".join(chr(c) for c in range(32) if c != 9) + "\x7f"
#: Header text the validator accepts: anything but C0 controls (TAB allowed) and DEL.
header_text = st.text(
    st.characters(exclude_categories=["Cs"], exclude_characters=_C0_BUT_TAB), max_size=150
)
# Encoded display names longer than one encoded word read back from the stdlib parser
# with extra spaces (CPython gh-128110), so non-ASCII names stay within one word
# (11 characters of at most 4 bytes: 44 of its 45 bytes).
display_names = st.one_of(
    st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=100).filter(
        lambda n: "=?" not in n
    ),
    st.text(
        st.characters(exclude_categories=["Cs"], exclude_characters=_C0_BUT_TAB + "\t"),
        max_size=11,
    ),
)
# The stdlib strips whitespace around filenames when reading them.
filenames = st.text(
    st.characters(exclude_categories=["Cs"], exclude_characters=_C0_BUT_TAB + "\t"),
    min_size=1,
    max_size=80,
).filter(lambda n: n == n.strip() and n != "")
#: Leaf types only: multipart/* and message/* parts cannot be base64 (RFC 2045 6.4).
content_types = st.sampled_from(
    [
        None,
        "application/pdf",
        "image/png",
        "text/plain",
        "text/csv",
        "application/x-custom+json",
        "audio/ogg",
        "video/mp4",
        "application/octet-stream",
        "font/woff2",
    ]
)
body_text = st.text(st.characters(exclude_categories=["Cs"]), max_size=400)
_ALNUM = string.ascii_letters + string.digits
header_names = st.text(_ALNUM + "-", max_size=30).map(lambda tail: f"X-{tail}")
# Cheaper than st.emails(), and with the same shape: dot-atom local part, LDH domain.
_local_parts = st.lists(
    st.text(_ALNUM + "!#$%&'*+-/=?^_`{|}~", min_size=1, max_size=8), min_size=1, max_size=3
).map(".".join)
_domains = st.builds(
    lambda labels, tld: ".".join([*labels, tld]),
    st.lists(st.text(_ALNUM, min_size=1, max_size=10), min_size=1, max_size=3),
    st.sampled_from(["com", "org", "de", "example", "co.uk", "INFO", "xn--p1ai"]),
)
generated_addresses = st.builds(lambda local, domain: f"{local}@{domain}", _local_parts, _domains)
TRICKY_ADDRESSES = [
    "user@example.com",
    "first.last+tag@sub.example.co.uk",
    '"quoted local"@example.org',
    '"a\\"b"@example.org',
    "user@[127.0.0.1]",
    "user@[IPv6:2001:db8::1]",
    "user@bücher.de",
    "Pelé@example.com",
    "用户@例子.广告",
    "x@xn--bcher-kva.de",
    "!#$%&'*+-/=?^_`{|}~@example.net",
]
plain_addresses = st.one_of(generated_addresses, st.sampled_from(TRICKY_ADDRESSES))
# The POP3 parser splits quoted local parts at spaces and bare IP literals at their
# colons, and drops addresses holding "=?" (taken for undecoded encoded words), so its
# read-back property sticks to dot-atom addresses at host names without "=?".
dot_atom_addresses = st.one_of(
    generated_addresses,
    st.sampled_from([a for a in TRICKY_ADDRESSES if not set(a) & set('"[=')]),
).filter(lambda a: "=?" not in a)


def quote(name: str) -> str:
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


@st.composite
def mailboxes(draw: st.DrawFn, addresses: st.SearchStrategy[str] = plain_addresses) -> str:
    address = draw(addresses)
    name = draw(st.one_of(st.none(), display_names))
    return address if name is None else f"{quote(name)} <{address}>"


@st.composite
def attachment_dicts(draw: st.DrawFn) -> dict[str, Any]:
    item: dict[str, Any] = {"filename": draw(filenames)}
    content = draw(st.binary(max_size=1000))
    if draw(st.booleans()):
        item["content"] = content
    else:
        item["data"] = base64.encodebytes(content).decode("ascii")
    content_type = draw(content_types)
    if content_type is not None:
        item["contentType"] = content_type
    if draw(st.integers(0, 3)) == 0:
        item["contentId"] = draw(st.text(_ALNUM, min_size=1, max_size=12)) + "@example"
    return item


@st.composite
def messages(
    draw: st.DrawFn, addresses: st.SearchStrategy[str] = plain_addresses
) -> dict[str, Any]:
    """Keyword arguments for ``validate_message`` and ``send_message`` (valid ones)."""
    text = draw(st.one_of(st.none(), body_text))
    html = draw(st.one_of(st.none(), body_text))
    if text is None and html is None:
        text = ""
    return {
        "from_address": draw(mailboxes(addresses)),
        "to_addresses": draw(st.lists(mailboxes(addresses), min_size=1, max_size=3)),
        "cc_addresses": draw(st.lists(mailboxes(addresses), max_size=2)),
        "bcc_addresses": draw(st.lists(addresses, max_size=2)),
        "reply_to": draw(st.one_of(st.none(), mailboxes(addresses))),
        "subject": draw(header_text),
        "text_body": text,
        "html_body": html,
        # Names that differ only in case are one field, which the handler refuses.
        "custom_headers": draw(
            st.dictionaries(header_names, header_text, max_size=3).filter(
                lambda headers: len({name.lower() for name in headers}) == len(headers)
            )
        ),
        "attachments": draw(st.lists(attachment_dicts(), max_size=3)),
    }


# Anything at all, for "never raises".
junk: st.SearchStrategy[Any] = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.floats(),
        st.text(),
        st.binary(),
        st.binary(max_size=50).map(bytearray),
        st.just(object()),
        st.sampled_from(TRICKY_ADDRESSES),
    ),
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.tuples(children, children),
        st.dictionaries(
            st.one_of(
                st.text(max_size=12),
                st.sampled_from(
                    ["filename", "content", "data", "contentType", "content_type", "contentId"]
                ),
            ),
            children,
            max_size=4,
        ),
        st.frozensets(st.text(max_size=5), max_size=3),
    ),
    max_leaves=8,
)


# =====================================================================================
# Validator
# =====================================================================================

VALIDATE_METHODS = sorted(name for name in dir(V) if name.startswith("validate_"))


@pytest.mark.parametrize("method", VALIDATE_METHODS)
@FUZZ
@given(data=st.data())
def test_validator_never_raises(method: str, data: st.DataObject) -> None:
    validate = getattr(V, method)
    arity = validate.__code__.co_argcount - 1  # minus cls
    arguments = [data.draw(junk, label=f"argument {i}") for i in range(arity)]
    verdict = validate(*arguments)
    assert verdict in ((True, None),) or (
        verdict[0] is False and isinstance(verdict[1], str) and verdict[1]
    )


@pytest.fixture(scope="module")
def smtp_server() -> Iterator[SMTPTestServer]:
    with SMTPTestServer(smtputf8=True) as server:
        yield server


@pytest.fixture(scope="module")
def smtp_handler(smtp_server: SMTPTestServer) -> Iterator[SMTPProtocolHandler]:
    handler = SMTPProtocolHandler(
        smtp_server.host,
        smtp_server.port,
        encryption="none",
        timeout=5,
        pool=SMTPConnectionPool(max_connections=1),
        sleep=lambda _: None,
    )
    yield handler
    handler.close()


# Characters that are legal somewhere and dangerous elsewhere: lone surrogates, Unicode
# line breaks, C0/C1 controls, invisible and bidi characters, address punctuation.
ODD_CHARACTERS = [
    "\ud800",
    "\udfff",
    "\x85",
    "\u2028",
    "\u2029",
    "\x9b",
    "\t",
    "\x0b",
    "\x0c",
    "\x1b",
    "\x7f",
    "\u200b",
    "\ufeff",
    "\u202e",
    " ",
    '"',
    "<",
    ">",
    "@",
    ",",
    ";",
    ":",
    "\\",
    "=?",
]


def _insert_odd(message: dict[str, Any], field: str, char: str, position: int) -> None:
    """Put ``char`` inside the first string of ``field`` (in place)."""
    value = message[field]
    if field == "reply_to" and value is None:
        message[field] = _inject("help@example.org", char, position)
    elif isinstance(value, str):
        message[field] = _inject(value, char, position)
    elif field == "custom_headers" and value:
        name = next(iter(value))
        value[name] = _inject(value[name], char, position)
    elif field == "attachments" and value:
        value[0]["filename"] = _inject(value[0]["filename"], char, position)
    elif isinstance(value, list) and value:
        value[0] = _inject(value[0], char, position)


@st.composite
def maybe_broken_messages(draw: st.DrawFn) -> dict[str, Any]:
    """Valid messages; some with an odd character slipped into one field, some with one
    field replaced by arbitrary text."""
    message = draw(messages())
    mode = draw(st.sampled_from(["valid", "odd", "replaced"]))
    if mode == "odd":
        field = draw(st.sampled_from(sorted(message)))
        _insert_odd(message, field, draw(st.sampled_from(ODD_CHARACTERS)), draw(st.integers(0, 60)))
    elif mode == "replaced":
        field = draw(st.sampled_from(sorted(message)))
        message[field] = draw(st.one_of(st.text(max_size=40), st.lists(st.text(max_size=30))))
    return message


def unquote_pairs(address: str) -> str:
    return re.sub(r"\\(.)", r"\1", address)


def _envelope(mailbox: str) -> str:
    return envelope_address(split_display_name(mailbox)[1])


@FUZZ
@given(message=maybe_broken_messages())
def test_what_the_validator_accepts_builds_and_is_delivered(
    smtp_server: SMTPTestServer, smtp_handler: SMTPProtocolHandler, message: dict[str, Any]
) -> None:
    valid, error = V.validate_message(**message)
    if not valid:
        assert error
        return
    built = build(message)
    assert_wire_shape(built)
    before = len(smtp_server.messages)
    result = smtp_handler.send_message(**message, retry=False)
    assert result.status is SMTPDeliveryStatus.SUCCESS, result.smtp_error
    received = smtp_server.wait_for_messages(before + 1)[before]
    # Servers may unescape quoted pairs ("\\q" is "q"), so compare without them.
    assert unquote_pairs(received.mail_from) == unquote_pairs(built.sender)
    assert list(map(unquote_pairs, received.rcpt_tos)) == list(map(unquote_pairs, built.recipients))
    assert received["Subject"] is not None


HEADER_FIELDS = [
    "subject",
    "to",
    "to-name",
    "cc",
    "bcc",
    "from",
    "from-name",
    "reply_to",
    "header-name",
    "header-value",
    "filename",
    "content-type",
    "content-id",
]


def _inject(value: str, char: str, position: int) -> str:
    position %= len(value) + 1
    return value[:position] + char + value[position:]


def _break_field(message: dict[str, Any], field: str, char: str, position: int) -> None:
    """Put ``char`` into ``field`` of ``message`` (in place)."""
    first = message["to_addresses"]
    if field == "subject":
        message["subject"] = _inject(message["subject"], char, position)
    elif field in ("to", "to-name"):
        address = split_display_name(first[0])[1]
        first[0] = (
            f"{quote(_inject('Name', char, position))} <{address}>"
            if field == "to-name"
            else _inject(address, char, position)
        )
    elif field in ("cc", "bcc"):
        message[f"{field}_addresses"] = [_inject("copy@example.org", char, position)]
    elif field in ("from", "from-name"):
        message["from_address"] = (
            f"{quote(_inject('Me', char, position))} <me@example.org>"
            if field == "from-name"
            else _inject("me@example.org", char, position)
        )
    elif field == "reply_to":
        message["reply_to"] = _inject("help@example.org", char, position)
    elif field == "header-name":
        message["custom_headers"] = {_inject("X-Fuzz", char, position): "value"}
    elif field == "header-value":
        message["custom_headers"] = {"X-Fuzz": _inject("some value", char, position)}
    else:
        key = {"filename": "filename", "content-type": "contentType", "content-id": "contentId"}[
            field
        ]
        start = {
            "filename": "report.pdf",
            "contentType": "application/pdf",
            "contentId": "part1@example",
        }[key]
        message["attachments"] = [
            {"filename": "report.pdf", "content": b"%PDF", key: _inject(start, char, position)}
        ]


@FUZZ
@given(
    message=messages(),
    field=st.sampled_from(HEADER_FIELDS),
    char=st.sampled_from(["\r", "\n", "\r\n", "\x00", "\n ", "\r\n\t"]),
    position=st.integers(0, 200),
)
def test_cr_lf_or_nul_in_any_header_field_is_refused(
    message: dict[str, Any], field: str, char: str, position: int
) -> None:
    _break_field(message, field, char, position)
    valid, error = V.validate_message(**message)
    assert not valid and error


# =====================================================================================
# MIME builder: what we build reads back
# =====================================================================================


def build(message: dict[str, Any]) -> OutgoingMessage:
    return build_message(
        from_address=message["from_address"],
        to_addresses=message["to_addresses"],
        subject=message["subject"],
        text_body=message["text_body"],
        html_body=message["html_body"],
        cc_addresses=message["cc_addresses"],
        bcc_addresses=message["bcc_addresses"],
        reply_to=message["reply_to"],
        attachments=decode_attachments(message["attachments"]),
        custom_headers=message["custom_headers"],
    )


def assert_wire_shape(built: OutgoingMessage) -> None:
    """CRLF only, lines within RFC 5322's 998, 8-bit only where SMTPUTF8 allows it."""
    data = built.data
    assert re.search(rb"\r(?!\n)|(?<!\r)\n", data) is None
    assert max(len(line) for line in data.split(b"\r\n")) <= 998
    assert b"\x00" not in data
    assert data.isascii() or built.smtputf8


def unescape(text: str) -> str:
    """Undo the surrogate escapes the stdlib leaves for raw UTF-8 (RFC 6532) headers."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8")


def normalise(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n").rstrip("\n")


def _bcc_distinct(message: dict[str, Any]) -> dict[str, Any]:
    visible = {_envelope(m).lower() for m in message["to_addresses"] + message["cc_addresses"]}
    if message["reply_to"]:
        visible.add(_envelope(message["reply_to"]).lower())
    visible.add(_envelope(message["from_address"]).lower())
    message["bcc_addresses"] = [
        f"hidden.{i}@bcc.example" for i, _ in enumerate(message["bcc_addresses"])
    ]
    assume(not any(b in visible for b in message["bcc_addresses"]))
    return message


def _expected_leaves(message: dict[str, Any]) -> list[tuple[str, str, bytes]]:
    """Attachments in the order the builder writes them: inline parts first."""
    decoded = decode_attachments(message["attachments"])
    ordered = [a for a in decoded if a.inline] + [a for a in decoded if not a.inline]
    return [(a.filename, a.content_type, a.content) for a in ordered]


def _check_addresses(header: Any, mailboxes_: list[str]) -> None:
    got = [(a.display_name, unescape(a.addr_spec)) for a in header.addresses]
    expected = [(split_display_name(m)[0], _envelope(m)) for m in mailboxes_]
    assert got == expected


@FUZZ
@given(message=messages())
def test_stdlib_parser_reads_back_every_field(message: dict[str, Any]) -> None:
    message = _bcc_distinct(message)
    built = build(message)
    assert_wire_shape(built)
    parsed = PARSER.parsebytes(built.data)
    assert parsed["Subject"] == message["subject"]
    _check_addresses(parsed["From"], [message["from_address"]])
    _check_addresses(parsed["To"], message["to_addresses"])
    if message["cc_addresses"]:
        _check_addresses(parsed["Cc"], message["cc_addresses"])
    if message["reply_to"]:
        _check_addresses(parsed["Reply-To"], [message["reply_to"]])
    assert parsed["Bcc"] is None and b"bcc.example" not in built.data
    for name, value in message["custom_headers"].items():
        assert parsed[name] == value
    for subtype in ("plain", "html"):
        given_body = message["text_body" if subtype == "plain" else "html_body"]
        body = parsed.get_body((subtype,))
        if given_body is None:
            assert body is None or body.get_content_type() != f"text/{subtype}"
        else:
            assert body is not None and normalise(body.get_content()) == normalise(given_body)
    # The parameter as parsed, not get_filename(): that one also strips a pair of
    # angle brackets, so a file named "<>" would read back as "".
    leaves = [
        (
            part["Content-Disposition"].params.get("filename"),
            part.get_content_type(),
            part.get_payload(decode=True),
        )
        for part in parsed.walk()
        if part.get_content_disposition() in ("attachment", "inline")
    ]
    assert leaves == _expected_leaves(message)


def _parser_clean(text: str) -> str:
    """What the POP3 parser makes of header text: controls out, folding tabs to spaces."""
    return "".join(
        " " if c in "\t\n\r" else "" if unicodedata.category(c) == "Cc" else c for c in text
    ).strip()


@FUZZ
@given(message=messages(dot_atom_addresses))
def test_our_parser_reads_back_what_we_build(message: dict[str, Any]) -> None:
    message = _bcc_distinct(message)
    built = build(message)
    with parser_log() as records:
        result = parse_message(built.data, 1, include_attachment_content=True)
    assert_no_internal_failure(records)
    assert result["subject"] == _parser_clean(message["subject"])
    assert result["from"] == _envelope(message["from_address"])
    assert result["to"] == [_envelope(m) for m in message["to_addresses"]]
    assert result["cc"] == [_envelope(m) for m in message["cc_addresses"]]
    for key, given_body in (("textBody", message["text_body"]), ("htmlBody", message["html_body"])):
        expected = normalise((given_body or "").replace("\x00", ""))
        assert normalise(result[key]) == expected
    expected_leaves = [
        (_parser_clean(name).replace("/", "_").replace("\\", "_")[:255], ctype, content)
        for name, ctype, content in _expected_leaves(message)
    ]
    got = [(a["filename"], a["contentType"], a["content"]) for a in result["attachments"]]
    assert got == expected_leaves


# =====================================================================================
# Parser: never fails on hostile input
# =====================================================================================


def assert_no_internal_failure(records: list[logging.LogRecord]) -> None:
    assert [r.getMessage() for r in records if "parsing failed" in r.getMessage()] == []


def assert_well_formed(result: dict[str, Any], raw: bytes) -> None:
    assert set(result) - {"raw"} == set(SPEC_KEYS)
    assert result["size"] == len(raw)
    for key in ("messageIdHeader", "from", "subject", "textBody", "htmlBody"):
        assert isinstance(result[key], str)
    for key in ("to", "cc"):
        assert all(isinstance(a, str) and a for a in result[key])
    assert isinstance(result["receivedAt"], int) and result["receivedAt"] >= 0
    assert result["attachmentCount"] == len(result["attachments"])
    for attachment in result["attachments"]:
        name = attachment["filename"]
        assert isinstance(name, str) and "/" not in name and "\\" not in name
        assert not any(unicodedata.category(c) == "Cc" for c in name)
        assert attachment["size"] == len(attachment["content"])


def check_parser(raw: bytes) -> None:
    with parser_log() as records:
        result = parse_message(raw, 1, include_attachment_content=True)
        summary = parse_header_summary(raw, 1)
    assert_no_internal_failure(records)
    assert_well_formed(result, raw)
    assert summary["subject"] == result["subject"] and summary["from"] == result["from"]


@FUZZ
@given(st.binary(max_size=20_000))
def test_parser_never_fails_on_arbitrary_bytes(raw: bytes) -> None:
    check_parser(raw)


# ----------------------------------------------------------- structure-aware mutation


def _seed_messages() -> list[bytes]:
    """Real-world fixtures plus a few messages of our own builder's making."""
    seeds = [path.read_bytes() for path in DATA_FILES]
    attachments = decode_attachments(
        [
            {"filename": "résumé.pdf", "content": b"%PDF-1.4\n" + bytes(range(256))},
            {"filename": "logo.png", "content": b"\x89PNG\r\n", "contentId": "logo@x"},
        ]
    )
    for text, html in (("plain only", None), ("both", "<p>both</p>"), (None, "<i>html</i>")):
        seeds.append(
            build_message(
                from_address='"Ünïcode Sender" <sender@example.com>',
                to_addresses=["Bob <bob@example.org>", "carol@bücher.de"],
                subject="Grüße =?utf-8?q?x?= " + "long " * 30,
                text_body=text,
                html_body=html,
                attachments=attachments,
                custom_headers={"X-Trace": "é" * 40},
            ).data
        )
    return seeds


SEEDS = _seed_messages()
CHARSETS = [
    "utf-8",
    "utf-7",
    "utf-16",
    "utf-32-be",
    "iso-2022-jp",
    "x-unknown",
    "",
    "cp1252",
    "latin1",
    "gb2312",
    "ks_c_5601-1987",
    "../../etc/passwd",
    "a" * 200,
    "utf-8''",
    "\xff",
]
ENCODINGS = [
    b"base64",
    b"quoted-printable",
    b"7bit",
    b"8bit",
    b"binary",
    b"x-uuencode",
    b"BASE64 ",
    b'"base64"',
    b"",
]


def _header_end(data: bytes) -> int:
    match = re.search(rb"\r?\n\r?\n", data)
    return len(data) if match is None else match.start()


def _duplicate_header(data: bytearray, draw: st.DrawFn) -> None:
    end = _header_end(bytes(data))
    lines = bytes(data[:end]).split(b"\n")
    if not lines:
        return
    line = draw(st.sampled_from(lines)).rstrip(b"\r") + b"\r\n"
    where = draw(st.sampled_from([0, end]))
    data[where:where] = line * draw(st.integers(1, 50))


def _corrupt_boundary(data: bytearray, draw: st.DrawFn) -> None:
    boundaries = re.findall(rb'boundary="?([^";\r\n]+)"?', bytes(data), re.I)
    if not boundaries:
        return
    boundary = draw(st.sampled_from(boundaries))
    how = draw(
        st.sampled_from(
            [
                "rename-declared",
                "drop-closing",
                "drop-first",
                "empty",
                "nest-same",
                "truncate-delimiter",
            ]
        )
    )
    text = bytes(data)
    if how == "rename-declared":
        text = text.replace(b'boundary="' + boundary, b'boundary="' + boundary[:-1] + b"Z", 1)
    elif how == "drop-closing":
        text = text.replace(b"--" + boundary + b"--", b"")
    elif how == "drop-first":
        text = text.replace(b"--" + boundary + b"\r\n", b"", 1)
    elif how == "empty":
        text = text.replace(b'boundary="' + boundary + b'"', b'boundary=""')
    elif how == "nest-same":
        inner = (
            b"--"
            + boundary
            + b'\r\nContent-Type: multipart/mixed; boundary="'
            + boundary
            + b'"\r\n\r\n'
        )
        text = text.replace(b"--" + boundary + b"\r\n", inner, 1)
    else:
        text = text.replace(b"--" + boundary, b"--" + boundary[: len(boundary) // 2])
    data[:] = text


def _truncate(data: bytearray, draw: st.DrawFn) -> None:
    del data[draw(st.integers(0, len(data))) :]


def _swap_charset(data: bytearray, draw: st.DrawFn) -> None:
    charset = draw(st.sampled_from(CHARSETS)).encode("latin-1")
    text = re.sub(rb'charset="?[^";\r\n]*"?', b'charset="' + charset + b'"', bytes(data), count=1)
    text = re.sub(rb"=\?[^?]+\?", b"=?" + charset + b"?", text, count=draw(st.integers(0, 3)))
    data[:] = text


def _swap_encoding(data: bytearray, draw: st.DrawFn) -> None:
    encoding = draw(st.sampled_from(ENCODINGS))
    data[:] = re.sub(
        rb"(?i)(content-transfer-encoding:)[^\r\n]*",
        rb"\1 " + encoding,
        bytes(data),
        count=draw(st.integers(1, 3)),
    )


def _swap_line_endings(data: bytearray, draw: st.DrawFn) -> None:
    ending = draw(st.sampled_from([b"\n", b"\r", b"\r\r\n", b"\n\r"]))
    data[:] = bytes(data).replace(b"\r\n", ending)


def _wrap_in_multiparts(data: bytearray, draw: st.DrawFn) -> None:
    depth = draw(st.integers(1, 40))
    kind = draw(
        st.sampled_from(
            [b"multipart/mixed", b"multipart/alternative", b"multipart/digest", b"message/rfc822"]
        )
    )
    text = bytes(data)
    for level in range(depth):
        if kind == b"message/rfc822":
            text = b"Content-Type: message/rfc822\r\n\r\n" + text
        else:
            b = b"w%d" % level
            text = (
                b"Content-Type: "
                + kind
                + b'; boundary="'
                + b
                + b'"\r\n\r\n--'
                + b
                + b"\r\n"
                + text
                + b"\r\n--"
                + b
                + b"--\r\n"
            )
    data[:] = text


def _damage_bytes(data: bytearray, draw: st.DrawFn) -> None:
    token = draw(
        st.sampled_from(
            [
                b"\x00",
                b"\xff",
                b"\r\n ",
                b":",
                b"=?",
                b"?=",
                b"*0*=",
                b"\r\n\r\n",
                b'"',
                b"\\",
                b"=\r\n",
                b"--",
            ]
        )
    )
    position = draw(st.integers(0, len(data)))
    data[position:position] = token * draw(st.integers(1, 8))


MUTATIONS: list[Callable[[bytearray, st.DrawFn], None]] = [
    _duplicate_header,
    _corrupt_boundary,
    _truncate,
    _swap_charset,
    _swap_encoding,
    _swap_line_endings,
    _wrap_in_multiparts,
    _damage_bytes,
]


@st.composite
def mutated_messages(draw: st.DrawFn, seeds: st.SearchStrategy[bytes]) -> bytes:
    data = bytearray(draw(seeds))
    for mutation in draw(st.lists(st.sampled_from(MUTATIONS), min_size=1, max_size=4)):
        mutation(data, draw)
    return bytes(data)


@FUZZ
@given(mutated_messages(st.sampled_from(SEEDS)))
def test_parser_never_fails_on_mutated_real_and_built_messages(raw: bytes) -> None:
    check_parser(raw)


@FUZZ
@given(mutated_messages(messages().map(lambda m: build(m).data)))
def test_parser_never_fails_on_mutated_generated_messages(raw: bytes) -> None:
    check_parser(raw)
