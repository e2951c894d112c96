"""Tests for the message parser: one per file in tests/data, edge cases, and properties."""

from __future__ import annotations

import logging
import time
from dataclasses import FrozenInstanceError
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from message_keys import SPEC_KEYS
from parser_log import parser_log
from paths import DATA

from src.handlers._mime.address_list import _scan, address_list
from src.handlers._mime.charsets import decode_text
from src.handlers._mime.parser import ParseLimits, parse_header_summary, parse_message
from src.handlers._mime.uuencode import split_blocks, uudecode

DATA_FILES = sorted(DATA.glob("*.eml"))
HEADER_KEYS = ["messageIdHeader", "from", "to", "cc", "bcc", "subject", "receivedAt"]


def load(name: str) -> bytes:
    return (DATA / name).read_bytes()


def parse(name: str, **options: Any) -> dict[str, Any]:
    return parse_message(load(name), 7, **options)


def assert_well_formed(result: dict[str, Any]) -> None:
    """The shape every result must have, whatever the input was."""
    assert [key for key in result if key not in ("raw",)] == SPEC_KEYS
    for key in ("messageIdHeader", "from", "subject", "textBody", "htmlBody"):
        assert isinstance(result[key], str)
    for key in ("to", "cc"):
        assert all(isinstance(address, str) and address for address in result[key])
    assert result["bcc"] == []
    assert isinstance(result["receivedAt"], int) and result["receivedAt"] >= 0
    assert result["attachmentCount"] == len(result["attachments"])
    for attachment in result["attachments"]:
        assert isinstance(attachment["filename"], str)
        assert "/" in attachment["contentType"]
        assert isinstance(attachment["size"], int) and attachment["size"] >= 0
    assert not any(result[flag] for flag in SPEC_KEYS[-6:])


def assert_no_internal_failure(records: list[logging.LogRecord]) -> None:
    failures = [r.getMessage() for r in records if "parsing failed" in r.getMessage()]
    assert failures == []


# ----------------------------------------------------------------- one test per data file


def test_plain_text() -> None:
    result = parse("plain_text.eml")
    assert_well_formed(result)
    assert result["messageId"] == result["popId"] == 7
    assert result["messageIdHeader"] == "<plain-1@example.org>"
    assert result["from"] == "bob@example.org"
    assert result["to"] == ["alice@example.com", "carol@example.com"]
    assert result["cc"] == ["dave@example.com"]
    assert result["subject"] == "Quarterly numbers"
    assert result["textBody"] == "Hi Alice,\n\nthe numbers follow in the next mail.\n\nBob"
    assert result["htmlBody"] == ""
    # The top-most Received header wins over Date (12:19:55 UTC).
    assert result["receivedAt"] == 1674476400000
    assert result["size"] == len(load("plain_text.eml"))
    assert result["attachments"] == []


def test_html_alternative() -> None:
    result = parse("html_alternative.eml")
    assert result["textBody"] == (
        "Your order of one café table has shipped. This line is long enough to need a soft break."
    )
    assert result["htmlBody"] == (
        "<html><body><p>Your order of one café table has shipped.</p></body></html>"
    )
    # Only text/plain and text/html are bodies; every other leaf is an attachment.
    assert result["attachments"] == [{"filename": "", "contentType": "text/enriched", "size": 23}]
    assert result["receivedAt"] == 1674565200000  # Date: 08:00 -0500


def test_attachments() -> None:
    result = parse("attachments.eml")
    assert result["from"] == "reports@example.com"
    assert result["textBody"] == "See attached.\n-- \nFooter"
    assert result["attachmentCount"] == 4
    assert result["attachments"] == [
        {"filename": "report.pdf", "contentType": "application/pdf", "size": 21},
        {"filename": "logo.png", "contentType": "image/png", "size": 16},
        {"filename": "data.csv", "contentType": "text/csv", "size": 8},
        {"filename": "", "contentType": "application/octet-stream", "size": 3},
    ]


def test_non_ascii_names() -> None:
    result = parse("non_ascii_names.eml")
    assert result["from"] == "joerg@example.de"
    assert result["to"] == ["rene@example.fr"]
    assert result["subject"] == "Résumé für Grüße"
    assert result["textBody"] == "Grüße aus Köln"
    assert [(a["filename"], a["size"]) for a in result["attachments"]] == [
        ("日本語の資料.pdf", 5),  # RFC 2231 continuations, mixed encoded and plain sections
        ("фото.jpg", 3),  # RFC 2047 word inside a quoted name parameter
        ("café.txt", 4),  # RFC 2231 with a Latin-1 charset and a language tag
    ]


def test_encoded_words_folded() -> None:
    result = parse("encoded_words_folded.eml")
    assert result["from"] == "anna@example.se"
    # An emoji split over two folded words, adjacent words in different charsets,
    # and a word broken by a fold in its middle.
    assert result["subject"] == "😂 is split, café crème and broken word"


def test_undeclared_8bit_headers() -> None:
    result = parse("undeclared_8bit_headers.eml")
    assert result["from"] == "juergen@example.de"
    assert result["subject"] == "Café “quoted” naïve"  # Windows-1252 fallback
    assert result["textBody"] == "Grüße"
    assert [a["filename"] for a in result["attachments"]] == ["résumé.txt", "oddname.bin"]


def test_bogus_charsets() -> None:
    result = parse("bogus_charsets.eml")
    assert result["subject"] == "café / uryyb / hi"
    assert result["textBody"] == "café ok"
    assert result["htmlBody"] == "<p>hi</p>"
    assert result["attachments"] == [{"filename": "xA.txt", "contentType": "text/plain", "size": 4}]


def test_broken_encodings() -> None:
    result = parse("broken_encodings.eml", include_attachment_content=True)
    assert result["textBody"] == "Hello world"  # base64 without padding
    assert result["htmlBody"].startswith("<p>50% off =ZZ")  # bad escapes kept literally
    contents = {a["filename"]: a["content"] for a in result["attachments"]}
    assert contents["bad-padding.bin"] == bytes(range(6))
    assert contents["garbage.bin"] == b""
    assert contents["uu.bin"] == b""  # a uuencoded part with no data lines


def test_deep_nesting_is_followed_by_default() -> None:
    result = parse("deep_nesting.eml")
    assert result["textBody"].startswith("text at level 0\nlevel 1\n")
    assert result["textBody"].endswith("level 29\ndeepest text")


def test_deep_nesting_stops_at_a_lowered_limit() -> None:
    with parser_log() as records:
        result = parse("deep_nesting.eml", limits=ParseLimits(max_depth=20))
    assert "level 19" in result["textBody"]
    assert "level 20" not in result["textBody"]
    assert "deepest text" not in result["textBody"]
    assert any(r.levelno == logging.WARNING and "deeper" in r.getMessage() for r in records)


def nested(levels: int, leaf: bytes) -> bytes:
    """A message whose only text is ``leaf``, ``levels`` multiparts down."""
    head = b"".join(
        b'Content-Type: multipart/mixed; boundary="b%d"\n\n--b%d\n' % (i, i) for i in range(levels)
    )
    tail = b"".join(b"\n--b%d--\n" % i for i in reversed(range(levels)))
    return b"From: a@example.com\n" + head + b"Content-Type: text/plain\n\n" + leaf + tail


@pytest.mark.parametrize("levels", [40, 99])
def test_text_many_levels_down_is_kept(levels: int) -> None:
    assert parse_message(nested(levels, b"deep text"), 1)["textBody"] == "deep text"


def test_nesting_beyond_the_limit_is_cheap() -> None:
    raw = nested(5000, b"too deep")
    started = time.perf_counter()
    result = parse_message(raw, 1)
    assert time.perf_counter() - started < 1.0
    assert result["textBody"] == ""


def test_many_parts_stops_at_part_limit() -> None:
    with parser_log() as records:
        result = parse("many_parts.eml")
    # The enclosing multipart counts as one of the 500 parts.
    assert result["attachmentCount"] == 499
    assert result["attachments"][-1]["filename"] == "p498.bin"
    assert any(r.levelno == logging.WARNING and "parts" in r.getMessage() for r in records)
    assert parse("many_parts.eml", limits=ParseLimits(max_parts=1000))["attachmentCount"] == 600


def test_nested_rfc822() -> None:
    raw = load("nested_rfc822.eml")
    result = parse_message(raw, 1, include_attachment_content=True)
    assert result["textBody"] == "See the two forwarded messages."
    assert result["htmlBody"] == "<p>See the two forwarded messages.</p>"
    assert "inner" not in result["textBody"]
    first, second = result["attachments"]
    inner = raw.split(b"--outer\r\n")[2].split(b"\r\n\r\n", 1)[1].removesuffix(b"\r\n")
    assert first == {
        "filename": "Budget 2023_Q1.eml",  # from the subject, "/" made harmless
        "contentType": "message/rfc822",
        "size": len(inner),
        "content": inner,
    }
    assert second["filename"] == "message.eml"
    assert second["content"] == b"From: nosubject@example.org\r\n\r\nno subject here"


def test_long_header_line() -> None:
    result = parse("long_header_line.eml")
    assert result["subject"] == " ".join(f"word{i:04d}" for i in range(555))
    assert len(result["to"]) == 250
    assert result["to"][-1] == "user249@example.com"
    assert result["textBody"] == "short"


def test_nul_bytes() -> None:
    result = parse("nul_bytes.eml", include_attachment_content=True)
    assert result["from"] == "null@example.com"
    assert result["subject"] == "Has NUL"
    assert result["textBody"] == "body with NUL"
    assert result["attachments"][0]["content"] == b"\x00\x00\x00"


def test_empty_input() -> None:
    result = parse("empty.eml")
    assert_well_formed(result)
    assert result["from"] == result["subject"] == result["textBody"] == ""
    assert result["size"] == 0
    assert result["receivedAt"] == 0


def test_not_a_message() -> None:
    result = parse("not_a_message.eml")
    assert_well_formed(result)
    assert result["from"] == ""
    assert result["subject"] == ""
    # No charset declared: UTF-8 fails, Windows-1252 reads every byte (no U+FFFD).
    assert result["textBody"].startswith("%PDF-1.4\n%âãÏÓ")


def test_malformed_headers() -> None:
    result = parse("malformed_headers.eml")
    assert result["from"] == "ok@example.com"
    assert result["subject"] == "Still parsed"
    assert result["to"] == ["first@example.com", "second@example.com"]
    assert result["receivedAt"] == 0  # unparseable Date, no Received
    assert result["textBody"] == "body"


def test_received_dates() -> None:
    # The first Received header whose date parses: 10:00 -0200 is 12:00 UTC.
    assert parse("received_dates.eml")["receivedAt"] == 1675252800000


def test_multipart_without_boundary() -> None:
    assert parse("multipart_without_boundary.eml")["textBody"] == "Just text after all."


def test_boundary_not_found() -> None:
    result = parse("boundary_not_found.eml")
    assert result["textBody"].startswith("--some-other-boundary\n")
    assert result["attachments"] == []


def test_unterminated_multipart() -> None:
    result = parse("unterminated_multipart.eml", include_attachment_content=True)
    assert result["textBody"] == "first"
    assert result["attachments"][0]["content"] == bytes(range(30))


def test_mbox_envelope() -> None:
    result = parse("mbox_envelope.eml")
    assert result["from"] == "sender@example.org"
    assert result["subject"] == "Envelope line"
    assert result["receivedAt"] == 1674475200000


def test_digest() -> None:
    result = parse("digest.eml")
    assert [(a["filename"], a["contentType"]) for a in result["attachments"]] == [
        ("First.eml", "message/rfc822"),
        ("Second.eml", "message/rfc822"),
    ]


def test_addresses() -> None:
    result = parse("addresses.eml")
    assert result["from"] == "zoe@example.nz"  # the whole header was one encoded word
    assert result["to"] == ["ann@example.com", "john@example.com"]
    assert result["cc"] == ["route@example.com", "plain@example.com"]


# ----------------------------------------------------------------- interface and edge cases


def test_spec_mock_example() -> None:
    raw = b"\r\n".join([b"From: sender@example.com", b"Subject: Test", b"", b"Body"])
    result = parse_message(raw, 1)
    assert list(result) == SPEC_KEYS
    assert result["from"] == "sender@example.com"
    assert result["subject"] == "Test"
    assert result["textBody"] == "Body"
    assert result["messageId"] == result["popId"] == 1
    assert result["size"] == len(raw)
    # The POP3 handler ends the last line with CRLF too; the text stays the same.
    assert parse_message(raw + b"\r\n", 1)["textBody"] == "Body"


def test_extras_only_on_request() -> None:
    raw = load("attachments.eml")
    plain = parse_message(raw, 1)
    assert "raw" not in plain
    assert all("content" not in a for a in plain["attachments"])
    full = parse_message(raw, 1, include_raw=True, include_attachment_content=True, size=99)
    assert full["raw"] == raw
    assert full["size"] == 99
    assert full["attachments"][1]["content"] == b"\x89PNG\r\n\x1a\n" + bytes(range(8))


def test_crlf_and_lf_give_the_same_result() -> None:
    lf = load("plain_text.eml")
    crlf = lf.replace(b"\n", b"\r\n")
    with_lf, with_crlf = parse_message(lf, 1), parse_message(crlf, 1)
    with_lf.pop("size")
    with_crlf.pop("size")
    assert with_lf == with_crlf


@pytest.mark.parametrize("path", DATA_FILES, ids=lambda path: path.stem)
def test_header_summary_agrees_with_full_parse(path: Path) -> None:
    raw = path.read_bytes()
    full = parse_message(raw, 3)
    summary = parse_header_summary(raw, 3, size=full["size"])
    assert list(summary) == SPEC_KEYS
    assert {key: summary[key] for key in HEADER_KEYS} == {key: full[key] for key in HEADER_KEYS}
    assert summary["textBody"] == summary["htmlBody"] == ""
    assert summary["attachments"] == [] and summary["attachmentCount"] == 0


def test_header_summary_of_top_response() -> None:
    top = b"From: a@example.com\r\nSubject: =?utf-8?q?Hi_there?=\r\n\r\n"
    summary = parse_header_summary(top, 4, size=5000)
    assert summary["from"] == "a@example.com"
    assert summary["subject"] == "Hi there"
    assert summary["size"] == 5000
    assert parse_header_summary(top, 4)["size"] == len(top)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (b"From: Mail Delivery System", "Mail Delivery System"),
        (b"From: =?utf-8?q?J=C3=B6rg?=", "Jörg"),
        (b"From: <>", ""),
        (b"From: Mailer Daemon <>", ""),
        (b"X-Other: a@example.com", ""),
    ],
)
def test_from_without_usable_address(header: bytes, expected: str) -> None:
    assert parse_message(header + b"\r\n\r\nbody", 1)["from"] == expected


@pytest.mark.parametrize(
    ("subject", "expected"),
    [
        (b"=?utf-8?q?a?= =?utf-8?q?b?=", "ab"),
        (b"=?utf-8?q?a?= x =?utf-8?q?b?=", "a x b"),
        (b"=?utf-8?q?line=0Abreak?=", "line break"),
        (b"=?utf-8?q?unterminated", "=?utf-8?q?unterminated"),
        (b"=?utf-16?b?//5oAGkA?=", "hi"),
    ],
)
def test_encoded_word_rules(subject: bytes, expected: str) -> None:
    assert parse_message(b"Subject: " + subject + b"\r\n\r\n", 1)["subject"] == expected


@pytest.mark.parametrize(
    ("date", "expected"),
    [
        (b"Mon, 23 Jan 2023 12:20:00", 1674476400000),  # no zone: read as UTC
        (b"Mon, 23 Jan 2023 12:20:00 GMT", 1674476400000),
        (b"Mon, 01 Jan 1900 00:00:00 +0000", 0),  # before the epoch
        (b"32 Foo 99999 99:99:99 +9999", 0),
    ],
)
def test_date_header_fallback(date: bytes, expected: int) -> None:
    assert parse_message(b"Date: " + date + b"\r\n\r\n", 1)["receivedAt"] == expected


def test_single_part_html_and_attachment_messages() -> None:
    html = parse_message(b"Content-Type: text/html\r\n\r\n<b>hi</b>", 1)
    assert (html["textBody"], html["htmlBody"]) == ("", "<b>hi</b>")
    pdf = parse_message(
        b"Content-Type: application/pdf\r\nContent-Transfer-Encoding: base64\r\n"
        b'Content-Disposition: attachment; filename="../../etc/pass\\wd"\r\n\r\nJVBERi0=',
        1,
    )
    assert pdf["textBody"] == ""
    assert pdf["attachments"] == [
        {"filename": ".._.._etc_passwd", "contentType": "application/pdf", "size": 5}
    ]


def test_extended_filename_wins_over_plain_one() -> None:
    raw = (
        b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n"
        b"Content-Type: application/octet-stream\r\n"
        b"Content-Disposition: attachment; filename=plain.bin; filename*=utf-8''%C3%A9.bin\r\n"
        b"\r\nx\r\n--b--\r\n"
    )
    assert parse_message(raw, 1)["attachments"][0]["filename"] == "é.bin"


def test_latin1_label_is_read_as_windows_1252() -> None:
    raw = b"Content-Type: text/plain; charset=iso-8859-1\r\n\r\n\x93quoted\x94 caf\xe9"
    assert parse_message(raw, 1)["textBody"] == "“quoted” café"


def test_non_bytes_input_is_accepted() -> None:
    raw = b"Subject: Test\r\n\r\nBody"
    for value in (bytearray(raw), memoryview(raw), raw.decode()):
        result = parse_message(value, 1)  # type: ignore[arg-type]
        assert (result["subject"], result["textBody"]) == ("Test", "Body")
    assert parse_message(None, 1)["subject"] == ""  # type: ignore[arg-type]


def test_message_text_never_logged() -> None:
    raw = (
        b"Subject: =?x-bogus?q?SECRET-SUBJECT?=\r\n"
        b"Content-Type: multipart/mixed; boundary=b\r\n\r\n"
        b"--b\r\nContent-Transfer-Encoding: base64\r\n\r\nSECRET-BODY*\r\n"
        b"--b\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: x-uuencode\r\n"
        b"\r\nSECRET\r\n"
    )
    with parser_log() as records:
        parse_message(raw, 1)
    assert records, "defects are expected to be logged"
    assert all("SECRET" not in r.getMessage() for r in records)


def test_parse_limits_defaults_and_immutability() -> None:
    limits = ParseLimits()
    assert (limits.max_depth, limits.max_parts) == (100, 500)
    assert limits.max_header_bytes >= 64 * 1024
    with pytest.raises(FrozenInstanceError):
        limits.max_depth = 1  # type: ignore[misc]


def test_oversized_header_section_is_cut() -> None:
    raw = (
        b"Subject: kept\r\n"
        + b"X-Filler: "
        + b"y" * 5000
        + b"\r\nFrom: lost@example.com\r\n\r\nbody"
    )
    result = parse_message(raw, 1, limits=ParseLimits(max_header_bytes=1000))
    assert (result["subject"], result["from"], result["textBody"]) == ("kept", "", "body")


# ----------------------------------------------------------------- properties


@st.composite
def mutated_data_file(draw: st.DrawFn) -> bytes:
    """A data file with a few random byte flips, insertions, deletions and splices."""
    data = bytearray(draw(st.sampled_from(DATA_FILES)).read_bytes())
    tokens = st.sampled_from(
        [b"\r\n", b"\n", b"=?", b"?=", b"--", b";", b"*0*=", b'"', b"\x00", b"\xff", b":"]
    )
    for _ in range(draw(st.integers(1, 6))):
        pos = draw(st.integers(0, len(data)))
        action = draw(st.sampled_from(["flip", "insert", "delete", "splice"]))
        if action == "flip" and data:
            data[min(pos, len(data) - 1)] = draw(st.integers(0, 255))
        elif action == "insert":
            data[pos:pos] = draw(st.one_of(tokens, st.binary(max_size=20)))
        elif action == "delete":
            del data[pos : pos + draw(st.integers(1, 64))]
        else:
            source = draw(st.integers(0, len(data)))
            data[pos:pos] = data[source : source + draw(st.integers(1, 256))]
    return bytes(data)


def _check_never_fails(raw: bytes) -> None:
    with parser_log() as records:
        result = parse_message(raw, 1, include_raw=True, include_attachment_content=True)
        summary = parse_header_summary(raw, 1)
    assert_no_internal_failure(records)
    assert_well_formed(result)
    assert_well_formed(summary)
    assert result["raw"] == raw
    assert result["size"] == len(raw)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=4096))
def test_never_raises_on_arbitrary_bytes(raw: bytes) -> None:
    _check_never_fails(raw)


@settings(max_examples=200, deadline=None)
@given(mutated_data_file())
def test_never_raises_on_mutated_data_files(raw: bytes) -> None:
    _check_never_fails(raw)


# ----------------------------------------------------------------- real-world decoding rules


def headers_only(*lines: bytes) -> dict[str, Any]:
    return parse_message(b"\r\n".join([*lines, b"", b"body"]), 1)


def test_raw_8bit_byte_inside_encoded_word_uses_the_words_charset() -> None:
    result = headers_only(b"Subject: Die Hasen und die =?iso-8859-1?Q?Fr\xf6sche?=")
    assert result["subject"] == "Die Hasen und die Frösche"


@pytest.mark.parametrize(
    ("charset", "body", "text"),
    [
        (None, "Grüße".encode("cp1252"), "Grüße"),
        (None, "Grüße".encode(), "Grüße"),
        ("x-unknown-charset", "Grüße".encode("cp1252"), "Grüße"),
        ("us-ascii", "Grüße".encode(), "Grüße"),
        ("utf-8", "Grüße".encode("cp1252"), "Gr\ufffd\ufffde"),
        ("iso-8859-1", b"\x80 \x81", "€ \x81"),
        ("iso-8859-8-i", "שלום".encode("iso8859_8"), "שלום"),
        ("x-mac-roman", "café".encode("mac_roman"), "café"),
        ("x-mac-cyrillic", "Привет".encode("mac_cyrillic"), "Привет"),
        ("iso-2022-jp", b"\x1b$B-b\x1b(B1", "№1"),
        ("iso-2022-jp", "日本".encode("iso2022_jp"), "日本"),
        ("shift_jis", "①".encode("cp932"), "①"),
    ],
)
def test_body_charset_rule(charset: str | None, body: bytes, text: str) -> None:
    declared = b"" if charset is None else b"; charset=" + charset.encode()
    raw = b"Subject: x\r\nContent-Type: text/plain" + declared + b"\r\n\r\n" + body
    assert parse_message(raw, 1)["textBody"] == text


def test_headers_use_the_same_charset_rule() -> None:
    result = headers_only(
        b"Subject: =?x-mac-roman?Q?caf=8E?= =?iso-2022-jp?B?GyRCLWIbKEI=?= \x80uro"
    )
    assert result["subject"] == "café№ €uro"


def test_rfc5322_appendix_a_addresses() -> None:
    result = headers_only(
        b"From: Pete(A nice \\) chap) <pete(his account)@silly.test(his host)>",
        b"To: A Group(Some people):Chris Jones <c@(Chris's host.)public.example>,",
        b"    joe@example.org, John <jdoe@one.test> (my dear friend); (the end of the group)",
        b"Cc:(Empty list)(start)Hidden recipients  :(nobody(that I know))  ;",
    )
    assert result["from"] == "pete@silly.test"
    assert result["to"] == ["c@public.example", "joe@example.org", "jdoe@one.test"]
    assert result["cc"] == []


def test_obsolete_whitespace_around_dots_in_addresses() -> None:
    result = headers_only(b"To: Mary Smith <@node.test:mary@example.net>, , jdoe@test  . example")
    assert result["to"] == ["mary@example.net", "jdoe@test.example"]


def test_colon_inside_encoded_word_is_no_group() -> None:
    result = headers_only(
        b'To: "test" <test@test.com>,',
        b"\t=?utf-8?Q?date=3E2017-08-20T10:08:28.617=3C/pr?=",
        b"Cc: =?utf-8?Q?Sales:_Team?= sales@example.com, =?utf-8?Q?a:b?= <ab@example.com>",
    )
    assert result["to"] == ["test@test.com"]
    assert result["cc"] == ["sales@example.com", "ab@example.com"]


def test_quoted_local_part_is_kept_whole() -> None:
    result = headers_only(b'To: "john doe"@example.com, "Doe, Jane" <jane@example.com>')
    assert result["to"] == ['"john doe"@example.com', "jane@example.com"]


UU_BLUEBALL = b"""begin 644 dot.bin
#86)C
`
end
"""


def test_uuencoded_part_is_decoded() -> None:
    raw = (
        b"From: a@example.com\nContent-Type: multipart/mixed; boundary=b\n\n--b\n"
        b"Content-Type: text/plain\n\nsee attached\n--b\n"
        b"Content-Type: application/octet-stream\nContent-Transfer-Encoding: x-uuencode\n\n"
        + UU_BLUEBALL
        + b"--b--\n"
    )
    result = parse_message(raw, 1, include_attachment_content=True)
    assert result["attachments"] == [
        {
            "filename": "dot.bin",
            "contentType": "application/octet-stream",
            "size": 3,
            "content": b"abc",
        }
    ]


def test_uuencoded_block_in_plain_text_becomes_an_attachment() -> None:
    raw = b"From: a@example.com\n\nHello\n\n" + UU_BLUEBALL + b"\nBye\n"
    result = parse_message(raw, 1, include_attachment_content=True)
    assert result["textBody"] == "Hello\n\n\nBye"
    assert result["attachments"] == [
        {
            "filename": "dot.bin",
            "contentType": "application/octet-stream",
            "size": 3,
            "content": b"abc",
        }
    ]


def test_begin_line_without_end_stays_text() -> None:
    raw = b"From: a@example.com\n\nbegin 644 plan.txt\nis a sentence\n"
    result = parse_message(raw, 1)
    assert result["textBody"] == "begin 644 plan.txt\nis a sentence"
    assert result["attachments"] == []


APPLE_MAIL = b"""From: a@example.com
Content-Type: multipart/alternative; boundary=alt

--alt
Content-Type: text/plain

Hello  This could be a signature
--alt
Content-Type: multipart/mixed; boundary=mix

--mix
Content-Type: text/html

<p>Hello</p>
--mix
Content-Type: image/png; name=a.png
Content-Disposition: inline; filename=a.png

PNG
--mix
Content-Type: text/html

<p>This could be</p>
--mix
Content-Type: image/png; name=b.png
Content-Disposition: inline; filename=b.png

PNG
--mix
Content-Type: text/html

<p>a signature</p>
--mix--
--alt--
"""


def test_html_fragments_of_the_chosen_alternative_are_joined() -> None:
    result = parse_message(APPLE_MAIL, 1)
    assert result["textBody"] == "Hello  This could be a signature"
    assert result["htmlBody"] == "<p>Hello</p>\n<p>This could be</p>\n<p>a signature</p>"
    assert [a["filename"] for a in result["attachments"]] == ["a.png", "b.png"]


def test_other_renderings_in_an_alternative_are_not_bodies_twice() -> None:
    raw = APPLE_MAIL.replace(b"--alt--", b"--alt\nContent-Type: text/html\n\n<p>again</p>\n--alt--")
    assert "again" not in parse_message(raw, 1)["htmlBody"]


def test_calendar_invitation_in_alternative_is_an_attachment() -> None:
    raw = (
        b"From: a@example.com\nContent-Type: multipart/alternative; boundary=b\n\n"
        b"--b\nContent-Type: text/plain\n\nMeeting\n"
        b"--b\nContent-Type: text/html\n\n<p>Meeting</p>\n"
        b"--b\nContent-Type: text/calendar; method=REQUEST\n\nBEGIN:VCALENDAR\nEND:VCALENDAR\n"
        b"--b--\n"
    )
    result = parse_message(raw, 1)
    assert result["textBody"] == "Meeting"
    assert result["attachments"] == [{"filename": "", "contentType": "text/calendar", "size": 29}]


@settings(max_examples=300, deadline=None)
@given(
    st.text(alphabet=st.sampled_from(list('ab@.:;,<>()"\\ \t=?QB\u00e9')), max_size=80),
    st.binary(max_size=80),
    st.sampled_from(["", "utf-8", "iso-2022-jp", "x-mac-roman", "gb2312", "bogus", "utf-16"]),
)
def test_building_blocks_never_raise(text: str, data: bytes, label: str) -> None:
    assert all(isinstance(address, str) for address in address_list(text))
    assert isinstance(decode_text(data, label), str)
    assert isinstance(decode_text(b"\x1b$B" + data, "iso-2022-jp"), str)
    kept, blocks = split_blocks(b"begin 644 x\n" + data + b"\nend\n")
    assert isinstance(kept, bytes) and all(isinstance(name, str) for name, _ in blocks)
    assert isinstance(uudecode(data)[0], bytes)


@settings(max_examples=500, deadline=None)
@given(st.text(alphabet=st.sampled_from(list('ab@.<>,;" \t\\')), max_size=60))
def test_the_address_fast_path_reads_as_the_scanner_does(text: str) -> None:
    assert address_list(text) == _scan(text)
