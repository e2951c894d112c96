"""SMTP tests that need no server: validation, results, retry policy, MIME building,
pool bookkeeping and the handler's mapping of failures to delivery statuses.

Everything here runs without a socket: the pool gets a fake opener and clock, the
handler a mocked pool, and ``sleep`` is always a recorder, so nothing waits.
"""

from __future__ import annotations

import base64
import dataclasses
import email.parser
import email.policy
import json
import logging
import os
import socket
import ssl
import threading
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from email.header import decode_header, make_header
from email.message import EmailMessage
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from src.handlers._mime.builder import OutgoingMessage, PendingMessage, build_message
from src.handlers._smtp.connection import SMTPConnection, TransactionOutcome
from src.handlers._smtp.pool import SMTPConnectionPool
from src.handlers._smtp.settings import ConnectionKey, SessionSettings
from src.handlers.errors import (
    ConfigurationError,
    MailAuthenticationError,
    MailConnectionError,
    MailProtocolError,
    MailSecurityError,
    MailTimeoutError,
    MailValidationError,
    OutcomeUnknownError,
    PoolTimeoutError,
    POP3MailboxBusyError,
    SMTPDataRefused,
    SMTPRecipientsRefused,
    SMTPResponseError,
    SMTPSenderRefused,
)
from src.handlers.retry import (
    MAX_RETRIES,
    RETRY_DELAYS,
    RETRYABLE_CODES,
    RetryPolicy,
    call_with_retry,
    is_retryable,
)
from src.handlers.smtp import (
    DeliveryResult,
    SMTPDeliveryStatus,
    SMTPEncryption,
    SMTPProtocolHandler,
)
from src.handlers.validation import SMTPMessageValidator, decode_attachments

V = SMTPMessageValidator
MIB = 1024 * 1024
PASSWORD = "hunter2-Sup3r-s3cret"
PARSER = email.parser.BytesParser(policy=email.policy.default)
RAW_PARSER = email.parser.BytesParser(policy=email.policy.compat32)


def quote(name: str) -> str:
    """A display name as an RFC 5322 quoted string."""
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def long_address(total: int) -> str:
    """An address of exactly ``total`` characters with a 64-character local part."""
    last_label = total - len("@") - 64 - (63 + 1) * 2 - len(".com")
    address = f"{'l' * 64}@{'a' * 63}.{'b' * 63}.{'c' * last_label}.com"
    assert len(address) == total
    return address


# =========================================================================== validator


@pytest.mark.parametrize(
    "address", ["user@example.com", "test.user@example.co.uk", "user+tag@sub.example.com"]
)
def test_spec_examples_of_valid_addresses(address: str) -> None:
    assert V.validate_email_address(address) == (True, None)


@pytest.mark.parametrize(
    ("address", "problem"),
    [
        ("user@example", "no top-level domain"),
        ("@example.com", "before '@' is empty"),
        ("user@@example.com", "more than one '@'"),
        ("userexample.com", "no '@'"),
        ("user@", "domain after '@' is empty"),
        ("user..dot@example.com", "misplaced dot"),
        ("user@example..com", "empty label"),
        ("us er@example.com", "need quoting"),
        ("user@exa_mple.com", "not allowed in a host name"),
        ("", "empty"),
    ],
)
def test_invalid_addresses_are_refused_with_the_reason(address: str, problem: str) -> None:
    valid, error = V.validate_email_address(address)
    assert valid is False
    assert error is not None
    assert problem in error


@pytest.mark.parametrize(
    "address",
    [
        "user@bücher.de",
        "用户@例子.广告",
        "Pelé@example.com",
        "δοκιμή@παράδειγμα.δοκιμή",
        '"john doe"@example.com',
        "user@[192.0.2.1]",
    ],
)
def test_internationalised_and_quoted_addresses_are_valid(address: str) -> None:
    assert V.validate_email_address(address) == (True, None)


def test_address_length_limit_is_254_characters() -> None:
    assert V.validate_email_address(long_address(254)) == (True, None)
    valid, error = V.validate_email_address(long_address(255))
    assert valid is False
    assert error is not None and "254" in error


def test_local_part_limit_is_64_characters() -> None:
    assert V.validate_email_address(f"{'l' * 64}@example.com") == (True, None)
    valid, error = V.validate_email_address(f"{'l' * 65}@example.com")
    assert valid is False
    assert error is not None and "64" in error


def test_subject_limit_is_998_characters() -> None:
    assert V.validate_subject("s" * 998) == (True, None)
    valid, error = V.validate_subject("s" * 999)
    assert valid is False
    assert error is not None and "subject" in error and "998" in error


@pytest.mark.parametrize("field", ["text_body", "html_body"])
def test_each_body_may_be_100_mb(field: str) -> None:
    at_limit = "a" * (100 * MIB)
    assert V.validate_body(**{"text_body": None, field: at_limit}) == (True, None)
    over = at_limit + "a"
    del at_limit
    valid, error = V.validate_body(**{"text_body": None, field: over})
    assert valid is False
    assert error is not None and field in error


def test_body_limit_counts_utf8_bytes_not_characters() -> None:
    at_limit = "é" * (50 * MIB)  # two bytes each in UTF-8
    assert V.validate_body(text_body=at_limit) == (True, None)
    valid, _ = V.validate_body(text_body=at_limit + "é")
    assert valid is False


def test_single_attachment_limit_is_25_mb() -> None:
    at_limit = bytes(25 * MIB)
    assert V.validate_attachments([{"filename": "a.bin", "content": at_limit}]) == (True, None)
    valid, error = V.validate_attachments([{"filename": "a.bin", "content": at_limit + b"x"}])
    assert valid is False
    assert error is not None and "attachments[0]" in error and "25 MB" in error


def test_total_attachment_limit_is_100_mb() -> None:
    chunk = bytes(25 * MIB)
    four = [{"filename": f"{i}.bin", "content": chunk} for i in range(4)]
    assert V.validate_attachments(four) == (True, None)
    valid, error = V.validate_attachments([*four, {"filename": "one-more.bin", "content": b"x"}])
    assert valid is False
    assert error is not None and "100 MB" in error


@pytest.mark.parametrize("overflowing", ["to", "cc", "bcc"])
def test_recipient_limit_is_100_over_to_cc_and_bcc(overflowing: str) -> None:
    lists = {
        "to": [f"to{i}@example.com" for i in range(40)],
        "cc": [f"cc{i}@example.com" for i in range(30)],
        "bcc": [f"bcc{i}@example.com" for i in range(30)],
    }
    assert V.validate_recipients(lists["to"], lists["cc"], lists["bcc"]) == (True, None)
    lists[overflowing].append("extra@example.com")
    valid, error = V.validate_recipients(lists["to"], lists["cc"], lists["bcc"])
    assert valid is False
    assert error is not None and "101" in error and "100" in error


def test_display_name_forms_are_accepted_for_recipients() -> None:
    recipients = [
        '"Ann Smith" <ann@example.com>',
        "Bob Jones <bob@example.com>",
        '"Smith, Carol \\"CJ\\"" <carol@example.com>',
        "Jürgen Müller <jurgen@bücher.de>",
    ]
    assert V.validate_recipients(recipients, ["<dan@example.com>"]) == (True, None)
    assert V.validate_email_address('"Ann" <ann@example>')[0] is False


def test_no_recipient_at_all_is_refused() -> None:
    valid, error = V.validate_recipients([], None, [])
    assert valid is False
    assert error is not None and "recipient" in error


CONTROL_CHARACTERS = [("\r", "CR"), ("\n", "LF"), ("\x00", "NUL")]


@pytest.mark.parametrize(("char", "name"), CONTROL_CHARACTERS)
def test_control_characters_in_addresses_are_refused(char: str, name: str) -> None:
    for address in (
        f"user{char}@example.com",
        f"user@example.com{char}Bcc: victim@example.com",
        f'"Ann{char}" <ann@example.com>',
    ):
        valid, error = V.validate_email_address(address)
        assert valid is False, address
        assert error is not None and name in error


@pytest.mark.parametrize(("char", "name"), CONTROL_CHARACTERS)
def test_control_characters_in_subject_are_refused(char: str, name: str) -> None:
    valid, error = V.validate_subject(f"Hello{char}Bcc: victim@example.com")
    assert valid is False
    assert error is not None and "subject" in error and name in error


def test_tab_in_subject_is_allowed() -> None:
    assert V.validate_subject("a\tb") == (True, None)


@pytest.mark.parametrize(("char", "name"), CONTROL_CHARACTERS)
def test_control_characters_in_custom_headers_are_refused(char: str, name: str) -> None:
    bad_name = {f"X-Test{char}Bcc": "value"}
    bad_value = {"X-Test": f"value{char}Bcc: victim@example.com"}
    for headers in (bad_name, bad_value):
        valid, error = V.validate_message(
            ["rcpt@example.com"], "Hi", "Body", custom_headers=headers
        )
        assert valid is False, headers
        assert error is not None and "custom" in error
    error = V.validate_message(["rcpt@example.com"], "Hi", "Body", custom_headers=bad_value)[1]
    assert error is not None and name in error


@pytest.mark.parametrize("data", ["not base64!!", "abc", "é", "QUJD\x00"])
def test_bad_base64_makes_the_message_invalid_without_raising(data: str) -> None:
    valid, error = V.validate_attachments([{"filename": "a.bin", "data": data}])
    assert valid is False
    assert error is not None and "attachments[0]" in error and "base64" in error
    with pytest.raises(MailValidationError) as raised:
        decode_attachments([{"filename": "a.bin", "data": data}])
    assert raised.value.field == "attachments[0]"


def test_base64_with_line_breaks_is_decoded() -> None:
    payload = bytes(range(256)) * 3
    wrapped = base64.encodebytes(payload).decode("ascii")  # 76-column lines
    [attachment] = decode_attachments([{"filename": "a.bin", "data": wrapped}])
    assert attachment.content == payload
    assert attachment.content_type == "application/octet-stream"


@pytest.mark.parametrize(
    "name",
    [
        "Bcc",
        "bcc",
        "From",
        "To",
        "Cc",
        "Subject",
        "Reply-To",
        "Date",
        "Sender",
        "MIME-Version",
        "Content-Type",
        "Content-Transfer-Encoding",
    ],
)
def test_reserved_custom_headers_are_refused(name: str) -> None:
    valid, error = V.validate_message(
        ["rcpt@example.com"], "Hi", "Body", custom_headers={name: "x@example.com"}
    )
    assert valid is False
    assert error is not None and "custom header" in error


@pytest.mark.parametrize(
    "headers",
    [
        {"X-Tag": "a", "x-tag": "b"},
        {"Message-ID": "<a@example.com>", "message-id": "<b@example.com>"},
    ],
)
def test_a_custom_header_given_twice_in_different_case_is_refused(headers: dict[str, str]) -> None:
    valid, error = V.validate_message(["r@example.com"], "Hi", "Body", custom_headers=headers)
    assert valid is False
    assert error is not None and "same field" in error and repr(list(headers)[1]) in error


def test_ordinary_custom_headers_are_accepted() -> None:
    headers = {
        "X-Campaign": "spring",
        "List-Unsubscribe": "<mailto:unsubscribe@example.com>",
        "X-Tabbed": "a\tb",
        "Message-ID": "<abc.123@example.com>",
    }
    assert V.validate_message(["r@example.com"], "Hi", "Body", custom_headers=headers) == (
        True,
        None,
    )


@pytest.mark.parametrize(
    ("message_id", "valid"),
    [
        ("<abc.123@example.com>", True),
        ("abc.123@example.com", False),
        ("<abc.example.com>", False),
        ("<a b@example.com>", False),
        ("<ü@example.com>", False),
        ("<abc@example.com", False),
    ],
)
def test_custom_message_id_is_validated(message_id: str, valid: bool) -> None:
    verdict, error = V.validate_message(
        ["rcpt@example.com"], "Hi", "Body", custom_headers={"Message-ID": message_id}
    )
    assert verdict is valid
    if not valid:
        assert error is not None and "Message-ID" in error


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"to_addresses": ["ok@example.com", "bad@"]}, "to_addresses[1]"),
        ({"cc_addresses": ["nope"]}, "cc_addresses[0]"),
        ({"bcc_addresses": ["a@example.com", "b@example.com", "x@y"]}, "bcc_addresses[2]"),
        ({"reply_to": "nope"}, "reply_to"),
        ({"from_address": "nope@"}, "from_address"),
        ({"subject": "a\nb"}, "subject"),
        ({"text_body": None}, "text_body"),
        ({"html_body": 42}, "html_body"),
        ({"attachments": [{"filename": "", "data": ""}]}, "attachments[0]"),
        ({"custom_headers": {"Bcc": "x@example.com"}}, "custom header 'Bcc'"),
        ({"to_addresses": 42}, "to_addresses"),
    ],
)
def test_validate_message_names_the_faulty_field(changes: dict[str, Any], field: str) -> None:
    message: dict[str, Any] = {
        "to_addresses": ["rcpt@example.com"],
        "subject": "Hi",
        "text_body": "Body",
    }
    message.update(changes)
    result = V.validate_message(**message)
    assert isinstance(result, tuple) and len(result) == 2
    valid, error = result
    assert valid is False
    assert isinstance(error, str) and field in error


def test_validate_message_accepts_a_complete_message() -> None:
    assert V.validate_message(
        to_addresses=["Ann <ann@example.com>"],
        subject="Report",
        text_body="See attached",
        html_body="<p>See attached</p>",
        cc_addresses=["cc@example.com"],
        bcc_addresses=["bcc@example.com"],
        attachments=[{"filename": "r.pdf", "data": base64.b64encode(b"%PDF").decode()}],
        from_address="sender@example.com",
        reply_to="replies@example.com",
        custom_headers={"X-Campaign": "q1"},
    ) == (True, None)


# =========================================================================== DeliveryResult


def test_delivery_result_to_dict_is_json_ready() -> None:
    sent_at = datetime(2026, 1, 24, 12, 30, 5, tzinfo=timezone(timedelta(hours=2)))
    result = DeliveryResult(
        status=SMTPDeliveryStatus.SUCCESS,
        message_id="<a.1@example.com>",
        smtp_code=250,
        recipient_failures={"gone@example.com": "550 5.1.1 no such user"},
        sent_at=sent_at,
        retry_count=1,
        enhanced_status_code="2.0.0",
    )
    data = result.to_dict()
    assert json.loads(json.dumps(data)) == data  # no default= needed
    assert data["status"] == "success"
    assert data["sent_at"] == "2026-01-24T10:30:05+00:00"
    assert datetime.fromisoformat(data["sent_at"]) == sent_at
    assert type(data["recipient_failures"]) is dict
    data["recipient_failures"]["other@example.com"] = "x"
    assert "other@example.com" not in result.recipient_failures


@pytest.mark.parametrize("status", list(SMTPDeliveryStatus))
def test_every_status_serialises_as_its_value(status: SMTPDeliveryStatus) -> None:
    data = DeliveryResult(status=status).to_dict()
    assert json.loads(json.dumps(data))["status"] == status.value
    assert data["sent_at"] is None
    assert data["recipient_failures"] == {}


# =========================================================================== retry


def test_retry_constants_match_the_spec() -> None:
    assert MAX_RETRIES == 3
    assert RETRY_DELAYS == [1, 5, 30]
    assert frozenset({421, 450, 451, 452}) == RETRYABLE_CODES
    policy = RetryPolicy()
    assert policy.max_retries == 3
    assert list(policy.delays) == [1, 5, 30]


def test_policy_counts_delays_and_exhaustion_immutably() -> None:
    error = SMTPResponseError(451, "4.3.0 try later")
    first = RetryPolicy()
    delays = []
    policy = first
    while not policy.is_exhausted():
        delays.append(policy.next_delay())
        policy = policy.increment(error)
    assert delays == [1, 5, 30]
    assert policy.retries_done == 3
    assert policy.history == ("SMTPResponseError",) * 3
    assert first.retries_done == 0 and not first.is_exhausted()
    with pytest.raises(dataclasses.FrozenInstanceError):
        first.max_retries = 10  # type: ignore[misc]


def test_last_delay_repeats_and_never_allows_nothing() -> None:
    policy = RetryPolicy(max_retries=4, delays=(2, 7))
    seen = []
    for _ in range(4):
        seen.append(policy.next_delay())
        policy = policy.increment(TimeoutError())
    assert seen == [2, 7, 7, 7]
    assert RetryPolicy.never().is_exhausted()
    assert RetryPolicy.exponential(4, base=0.5).delays == (0.5, 1, 2, 4)
    with pytest.raises(ValueError):
        RetryPolicy(max_retries=-1)
    with pytest.raises(ValueError):
        RetryPolicy(delays=(1, -5))


@pytest.mark.parametrize(
    ("error", "retryable"),
    [
        (OutcomeUnknownError("body sent, no reply"), False),
        (MailAuthenticationError(535, "5.7.8 bad credentials"), False),
        (MailAuthenticationError(454, "4.7.0 temporary auth failure"), True),
        (MailSecurityError("STARTTLS not offered"), False),
        (ssl.SSLCertVerificationError("bad cert"), False),
        (SMTPResponseError(421, "4.3.2 closing"), True),
        (SMTPResponseError(450, "4.2.1 mailbox busy"), True),
        (SMTPResponseError(451, "4.3.0 local error"), True),
        (SMTPResponseError(452, "4.3.1 no storage"), True),
        (SMTPSenderRefused(451, "4.1.8 try later", "s@example.com"), True),
        (SMTPResponseError(453, "4.x not listed"), False),
        (SMTPResponseError(550, "5.1.1 no such user"), False),
        (SMTPDataRefused(554, "5.6.0 rejected"), False),
        (SMTPRecipientsRefused(550, "no", {"a@example.com": (550, "no")}), False),
        (MailConnectionError("connection lost"), True),
        (MailTimeoutError("timed out"), True),
        (PoolTimeoutError("pool busy"), True),
        (ConnectionResetError(104, "reset"), True),
        (ConnectionRefusedError(111, "refused"), True),
        (TimeoutError("timed out"), True),
        (socket.gaierror(-3, "temporary failure in name resolution"), True),
        (POP3MailboxBusyError("[IN-USE] locked", "IN-USE"), True),
        (MailProtocolError("garbage"), False),
        (ValueError("bug"), False),
    ],
)
def test_is_retryable_decides_from_the_kind_of_error(error: BaseException, retryable: bool) -> None:
    assert is_retryable(error) is retryable
    assert RetryPolicy().is_retryable(error) is retryable


def test_call_with_retry_records_delays_without_waiting() -> None:
    slept: list[float] = []
    notices: list[tuple[str, int, float]] = []
    attempts: Iterator[BaseException | str] = iter(
        [SMTPResponseError(421, "busy"), ConnectionResetError(), "done"]
    )

    def operation() -> str:
        outcome = next(attempts)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    result = call_with_retry(
        operation,
        RetryPolicy(),
        sleep=slept.append,
        on_retry=lambda error, number, delay: notices.append((type(error).__name__, number, delay)),
    )
    assert result == "done"
    assert slept == [1, 5]
    assert notices == [("SMTPResponseError", 1, 1), ("ConnectionResetError", 2, 5)]


def test_call_with_retry_gives_up_after_three_retries() -> None:
    slept: list[float] = []
    calls = 0

    def operation() -> None:
        nonlocal calls
        calls += 1
        raise SMTPResponseError(451, "4.3.0 again")

    with pytest.raises(SMTPResponseError):
        call_with_retry(operation, RetryPolicy(), sleep=slept.append)
    assert calls == 4
    assert slept == [1, 5, 30]


@pytest.mark.parametrize(
    "error", [OutcomeUnknownError("maybe sent"), SMTPResponseError(550, "no"), KeyError("bug")]
)
def test_call_with_retry_raises_unretryable_errors_at_once(error: Exception) -> None:
    slept: list[float] = []
    calls = 0

    def operation() -> None:
        nonlocal calls
        calls += 1
        raise error

    with pytest.raises(type(error)):
        call_with_retry(operation, RetryPolicy(), sleep=slept.append)
    assert calls == 1
    assert slept == []


# =========================================================================== message builder


def build(**changes: Any) -> OutgoingMessage:
    message: dict[str, Any] = {
        "from_address": "Sender <sender@example.com>",
        "to_addresses": ["rcpt@example.com"],
        "subject": "Hello",
        "text_body": "Body text",
    }
    message.update(changes)
    return build_message(**message)


def parse(message: OutgoingMessage) -> EmailMessage:
    parsed = PARSER.parsebytes(message.data)
    assert isinstance(parsed, EmailMessage)
    return parsed


def assert_wire_safe(data: bytes) -> None:
    """Every line ends in CRLF and none is longer than RFC 5322's 998 characters."""
    lines = data.split(b"\r\n")
    assert all(b"\r" not in line and b"\n" not in line for line in lines), "bare CR or LF"
    assert max(len(line) for line in lines) <= 998


def normalise(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n").removesuffix("\n")


def shape(part: EmailMessage) -> Any:
    if part.is_multipart():
        return (part.get_content_type(), [shape(p) for p in part.iter_parts()])  # type: ignore[arg-type]
    return part.get_content_type()


def unfolded_raw_header(message: OutgoingMessage, name: str) -> str:
    value = RAW_PARSER.parsebytes(message.data)[name]
    return str(value).replace("\r\n", "").replace("\n", "")


def test_text_only_message() -> None:
    message = build(text_body="Just text")
    parsed = parse(message)
    assert shape(parsed) == "text/plain"
    assert parsed.get_content_charset() == "utf-8"
    assert normalise(parsed.get_content()) == "Just text"
    assert parsed["MIME-Version"] == "1.0"
    assert parsed["Date"].datetime.tzinfo is not None
    assert_wire_safe(message.data)


def test_html_only_message() -> None:
    parsed = parse(build(text_body=None, html_body="<p>Hi</p>"))
    assert shape(parsed) == "text/html"
    assert normalise(parsed.get_content()) == "<p>Hi</p>"


def test_text_and_html_make_an_alternative() -> None:
    parsed = parse(build(text_body="plain", html_body="<b>rich</b>"))
    assert shape(parsed) == ("multipart/alternative", ["text/plain", "text/html"])
    body = parsed.get_body(("html",))
    assert body is not None and normalise(body.get_content()) == "<b>rich</b>"


def test_attachments_make_a_mixed_message() -> None:
    attachments = decode_attachments(
        [
            {"filename": "report.pdf", "content": b"%PDF-1.7", "contentType": "application/pdf"},
            {"filename": "data.csv", "data": base64.b64encode(b"a,b\r\n1,2\r\n").decode()},
        ]
    )
    parsed = parse(build(text_body="t", html_body="<p>h</p>", attachments=attachments))
    assert shape(parsed) == (
        "multipart/mixed",
        [("multipart/alternative", ["text/plain", "text/html"]), "application/pdf", "text/csv"],
    )
    found = {part.get_filename(): part for part in parsed.iter_attachments()}
    assert found["report.pdf"].get_content() == b"%PDF-1.7"
    assert found["data.csv"].get_content_disposition() == "attachment"
    assert found["data.csv"].get_payload(decode=True) == b"a,b\r\n1,2\r\n"


def test_inline_parts_with_content_id_make_a_related_html() -> None:
    attachments = decode_attachments(
        [
            {"filename": "logo.png", "content": b"\x89PNG", "contentId": "<logo@example.com>"},
            {"filename": "terms.pdf", "content": b"%PDF"},
        ]
    )
    parsed = parse(
        build(text_body="t", html_body='<img src="cid:logo@example.com">', attachments=attachments)
    )
    assert shape(parsed) == (
        "multipart/mixed",
        [
            (
                "multipart/alternative",
                ["text/plain", ("multipart/related", ["text/html", "image/png"])],
            ),
            "application/pdf",
        ],
    )
    image = next(p for p in parsed.walk() if p.get_content_type() == "image/png")
    assert image["Content-ID"] == "<logo@example.com>"
    assert image.get_content_disposition() == "inline"
    assert image.get_content() == b"\x89PNG"


@pytest.mark.parametrize(
    "subject",
    [
        "Plain ASCII subject",
        " ".join(["word"] * 150),
        "Grüße aus Köln – 日本語 👋",
        "literal =?utf-8?q?not-encoded?= text",
        "x" * 998,
        "é" * 998,
        " leading space",
        "\tleading tab",
        "trailing space ",
        "double  space",
        "",
    ],
)
def test_subject_reads_back_unchanged(subject: str) -> None:
    message = build(subject=subject)
    assert parse(message)["Subject"] == subject
    assert_wire_safe(message.data)


@pytest.mark.parametrize(
    "name",
    [
        "Jürgen Müller",
        "Doe, John",
        'The "Boss"',
        "back\\slash",
        "Dr. Who",
        "日本 太郎",
        "two  spaces",
        "=?utf-8?b?YQ==?=",
    ],
)
def test_display_names_read_back_unchanged(name: str) -> None:
    message = build(
        from_address=f"{quote(name)} <sender@example.com>",
        to_addresses=[f"{quote(name)} <rcpt@example.com>", "Other <other@example.com>"],
    )
    parsed = parse(message)
    assert parsed["From"].addresses[0].display_name == name
    assert parsed["From"].addresses[0].addr_spec == "sender@example.com"
    to = parsed["To"].addresses
    assert [(a.display_name, a.addr_spec) for a in to] == [
        (name, "rcpt@example.com"),
        ("Other", "other@example.com"),
    ]
    assert_wire_safe(message.data)


@pytest.mark.parametrize(
    "name", ["A" * 1500, "é" * 600, " ".join(["word"] * 300), "x" * 150 + " " + "ü" * 100]
)
def test_long_display_names_are_folded_within_the_line_limit(name: str) -> None:
    message = build(to_addresses=[f"{quote(name)} <rcpt@example.com>"])
    assert_wire_safe(message.data)
    # Decoded with the RFC 2047 decoder: the modern stdlib parser inserts spaces between
    # adjacent encoded words in display names (CPython gh-128110).
    decoded = str(make_header(decode_header(unfolded_raw_header(message, "To"))))
    assert decoded.replace('"', "") == f"{name} <rcpt@example.com>"
    assert parse(message)["To"].addresses[0].addr_spec == "rcpt@example.com"


def test_custom_headers_read_back() -> None:
    headers = {
        "X-Campaign": "spring-2026",
        "X-Note": "Grüße =?utf-8?q?x?= and more",
        "X-Long": " ".join(["token"] * 100),
    }
    message = build(custom_headers=headers)
    parsed = parse(message)
    for name, value in headers.items():
        assert parsed[name] == value
    assert_wire_safe(message.data)


@pytest.mark.parametrize(
    "filename",
    [
        'report "final" v2.pdf',
        "back\\slash.txt",
        "semi;colon=value.txt",
        "=?utf-8?b?YQ==?=.txt",
        "Überweisungsbestätigung für März – " + "ünïcödé " * 12 + ".pdf",
    ],
)
def test_filenames_read_back_unchanged(filename: str) -> None:
    [attachment] = decode_attachments([{"filename": filename, "content": b"data"}])
    message = build(attachments=[attachment])
    [part] = parse(message).iter_attachments()
    assert part.get_filename() == filename
    assert part.get_param("name") is not None
    assert_wire_safe(message.data)


def test_long_non_ascii_filename_uses_rfc2231_continuations() -> None:
    filename = "Überweisungsbestätigung " * 6 + ".pdf"
    [attachment] = decode_attachments([{"filename": filename, "content": b"x"}])
    message = build(attachments=[attachment])
    assert b"filename*0*=utf-8''" in message.data
    assert b"filename*1*=" in message.data
    [part] = parse(message).iter_attachments()
    assert part.get_filename() == filename


def test_attachment_bytes_are_byte_exact() -> None:
    payload = bytes(range(256)) * 64 + b"\r\n\n\r.\r\n" + bytes(range(255, -1, -1))
    [attachment] = decode_attachments(
        [{"filename": "all-bytes.bin", "data": base64.b64encode(payload).decode("ascii")}]
    )
    message = build(attachments=[attachment])
    [part] = parse(message).iter_attachments()
    assert part.get_content_type() == "application/octet-stream"
    assert part.get_content() == payload
    assert_wire_safe(message.data)


@pytest.mark.parametrize(
    "text",
    [
        "x" * 5000 + "\n" + "y" * 999 + "\nshort",
        ".\n..two dots\n.leading dot\nend.\n.",
        "Grüße, 日本語 👋\nzweite Zeile\n",
        "a\r\nb\rc\nd\r\n",
        "NUL \x00 and DEL \x7f and form feed \x0c",
        "trailing spaces   \nand tabs\t\t\n",
        "=3D is not an escape; neither is =\n",
    ],
)
def test_text_bodies_read_back_modulo_line_endings(text: str) -> None:
    message = build(text_body=text, html_body=f"<pre>{text}</pre>")
    assert_wire_safe(message.data)
    parsed = parse(message)
    plain = parsed.get_body(("plain",))
    html = parsed.get_body(("html",))
    assert plain is not None and html is not None
    assert normalise(plain.get_content()) == normalise(text)
    assert normalise(html.get_content()) == normalise(f"<pre>{text}</pre>")


def test_bcc_never_appears_in_the_message() -> None:
    message = build(
        to_addresses=["rcpt@example.com"],
        bcc_addresses=["Hidden Person <hidden@example.org>", "secret2@example.net"],
    )
    assert b"hidden@example.org" not in message.data
    assert b"secret2@example.net" not in message.data
    assert b"Hidden Person" not in message.data
    assert b"bcc:" not in message.data.lower()
    assert message.recipients == ("rcpt@example.com", "hidden@example.org", "secret2@example.net")


def test_message_id_is_unique_per_build_and_in_the_header() -> None:
    messages = [build() for _ in range(50)]
    ids = {m.message_id for m in messages}
    assert len(ids) == 50
    for message in messages[:3]:
        assert parse(message)["Message-ID"] == message.message_id
        assert message.message_id.startswith("<") and message.message_id.endswith("@example.com>")


@pytest.mark.parametrize("header_name", ["Message-ID", "message-id"])
def test_custom_message_id_is_used(header_name: str) -> None:
    message = build(custom_headers={header_name: "<fixed.1@example.com>", "X-Other": "y"})
    assert message.message_id == "<fixed.1@example.com>"
    parsed = parse(message)
    assert parsed.get_all("Message-ID") == ["<fixed.1@example.com>"]
    assert parsed["X-Other"] == "y"


def test_envelope_recipients_are_deduplicated_in_order() -> None:
    message = build(
        to_addresses=["a@example.com", "Bee <b@example.com>"],
        cc_addresses=["A Again <a@EXAMPLE.com>", "c@example.com"],
        bcc_addresses=["b@example.com", "d@example.com", "A@example.com"],
    )
    assert message.recipients == (
        "a@example.com",
        "b@example.com",
        "c@example.com",
        "d@example.com",
        "A@example.com",  # local parts are case-sensitive
    )
    assert message.sender == "sender@example.com"


@pytest.mark.parametrize(
    ("sender", "recipient", "smtputf8"),
    [
        ("sender@example.com", "rcpt@example.com", False),
        ("sender@example.com", "user@bücher.de", False),
        ("sender@example.com", "Pelé@example.com", True),
        ("用户@例子.广告", "rcpt@example.com", True),
    ],
)
def test_smtputf8_only_for_non_ascii_local_parts(
    sender: str, recipient: str, smtputf8: bool
) -> None:
    assert build(from_address=sender, to_addresses=[recipient]).smtputf8 is smtputf8


def test_idn_domains_are_punycoded() -> None:
    message = build(from_address="Grüße <info@müller.de>", to_addresses=["Jürgen <user@bücher.de>"])
    assert message.sender == "info@xn--mller-kva.de"
    assert message.recipients == ("user@xn--bcher-kva.de",)
    assert "bücher".encode() not in message.data
    parsed = parse(message)
    assert parsed["To"].addresses[0].addr_spec == "user@xn--bcher-kva.de"
    assert parsed["From"].addresses[0].display_name == "Grüße"


_C0_BUT_TAB = "".join(chr(c) for c in range(32) if c != 9) + "\x7f"
header_text = st.text(
    st.characters(exclude_categories=["Cs"], exclude_characters=_C0_BUT_TAB), max_size=200
)
# Encoded display names longer than one encoded word read back with extra spaces in
# the stdlib parser (CPython gh-128110), so the property keeps them to one word.
display_names = (
    st.text(
        st.characters(exclude_categories=["Cs"], exclude_characters=_C0_BUT_TAB + "\t"),
        max_size=120,
    )
    .filter(lambda n: len(n.encode()) <= 45 or (n.isascii() and len(n) <= 150 and "=?" not in n))
    .filter(
        # The stdlib folds runs of whitespace inside an encoded-word display name ("  \x80"
        # reads back as " \x80"); the encoded word we write decodes to the exact text.
        lambda n: n.isascii() or (n == n.strip() and "  " not in n)
    )
)
# The stdlib strips whitespace around filenames on reading (Message.get_filename), and
# angle brackets around them too (email.utils.unquote turns "<>" into "").
filenames = st.text(
    st.characters(exclude_categories=["Cs"], exclude_characters=_C0_BUT_TAB + "\t"),
    min_size=1,
    max_size=120,
).filter(lambda n: n == n.strip() and n != "" and not (n.startswith("<") and n.endswith(">")))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    subject=header_text,
    header_value=header_text,
    name=display_names,
    text=st.text(st.characters(exclude_categories=["Cs"])),
    filename=filenames,
    content=st.binary(max_size=3000),
)
def test_stdlib_parser_reads_back_what_was_built(
    subject: str, header_value: str, name: str, text: str, filename: str, content: bytes
) -> None:
    sender = f"{quote(name)} <sender@example.com>"
    attachments = [{"filename": filename, "content": content}]
    headers = {"X-Property": header_value}
    assert V.validate_message(
        ["rcpt@example.com"],
        subject,
        text,
        attachments=attachments,
        from_address=sender,
        custom_headers=headers,
    ) == (True, None)
    message = build(
        from_address=sender,
        subject=subject,
        text_body=text,
        attachments=decode_attachments(attachments),
        custom_headers=headers,
    )
    assert_wire_safe(message.data)
    parsed = parse(message)
    assert parsed["Subject"] == subject
    assert parsed["X-Property"] == header_value
    assert parsed["From"].addresses[0].display_name == name
    plain = parsed.get_body(("plain",))
    assert plain is not None and normalise(plain.get_content()) == normalise(text)
    [part] = parsed.iter_attachments()
    assert part.get_filename() == filename
    assert part.get_content() == content


# =========================================================================== pool


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class FakeConnection:
    """Has exactly what the pool uses of an SMTPConnection."""

    def __init__(self, key: object, clock: float, serial: int) -> None:
        self.key = key
        self.created_at = clock
        self.last_used = clock
        self.pid = os.getpid()
        self.broken = False
        self.retired = False
        self.messages_sent = 0
        self.generation = 0
        self.dropped = False
        self.closes: list[bool] = []  # the polite flag of each close() call
        self.serial = serial

    def is_dropped(self) -> bool:
        return self.dropped

    def close(self, polite: bool = True) -> None:
        self.closes.append(polite)
        self.broken = True

    def __repr__(self) -> str:
        return f"<FakeConnection {self.serial}>"


class FakeOpener:
    def __init__(self) -> None:
        self.opened: list[FakeConnection] = []
        self.options: list[dict[str, Any]] = []
        self.fail_next: BaseException | None = None

    def __call__(self, settings: SessionSettings, **options: Any) -> FakeConnection:
        endpoint, credentials = settings.endpoint, settings.credentials
        password = credentials.password.reveal() if credentials.password else None
        self.options.append(
            {
                "host": endpoint.host,
                "port": endpoint.port,
                "encryption": endpoint.encryption,
                "username": credentials.username,
                "password": password,
                "timeout": settings.timeouts.socket,
                "local_hostname": settings.local_hostname,
                "settings": settings,
                **options,
            }
        )
        if self.fail_next is not None:
            error, self.fail_next = self.fail_next, None
            raise error
        connection = FakeConnection(options["key"], options["clock"], len(self.opened))
        self.opened.append(connection)
        return connection


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def opener() -> FakeOpener:
    return FakeOpener()


def make_pool(clock: FakeClock, opener: FakeOpener, **options: Any) -> SMTPConnectionPool:
    settings_: dict[str, Any] = {"max_connections": 3, "wait_timeout": 0.2}
    settings_.update(options)
    return SMTPConnectionPool(clock=clock, opener=opener, **settings_)  # type: ignore[arg-type]


@pytest.fixture
def pool(clock: FakeClock, opener: FakeOpener) -> SMTPConnectionPool:
    return make_pool(clock, opener)


def get(
    pool: SMTPConnectionPool,
    host: str = "smtp.example.com",
    username: str | None = "user",
    password: str | None = "pw",
    **options: Any,
) -> Any:
    return pool.get_connection(host, 587, username, password, "tls", **options)


def put(pool: SMTPConnectionPool, connection: Any) -> None:
    pool.release_connection("smtp.example.com", 587, connection)


def test_pool_opens_with_the_callers_settings(pool: SMTPConnectionPool, opener: FakeOpener) -> None:
    connection = get(pool, timeout=12.5, local_hostname="client.example.com")
    [options] = opener.options
    assert options["host"] == "smtp.example.com" and options["port"] == 587
    assert options["encryption"] is SMTPEncryption.STARTTLS
    assert options["username"] == "user" and options["password"] == "pw"
    assert options["timeout"] == 12.5 and options["local_hostname"] == "client.example.com"
    assert options["clock"] == 1000.0
    assert isinstance(connection.key, ConnectionKey)


def test_pool_reuses_released_connections_lifo(
    pool: SMTPConnectionPool, opener: FakeOpener
) -> None:
    first, second = get(pool), get(pool)
    assert first is not second
    put(pool, first)
    put(pool, second)
    assert get(pool) is second  # the warmest first
    assert get(pool) is first
    assert len(opener.opened) == 2
    stats = pool.get_stats()
    assert (stats["created"], stats["reused"], stats["in_use"], stats["idle"]) == (2, 2, 2, 0)


def test_pool_keys_connections_by_server_and_credentials(
    pool: SMTPConnectionPool, opener: FakeOpener
) -> None:
    pool.max_connections = 10
    original = get(pool)
    put(pool, original)
    other_password = get(pool, password="other-pw")
    other_user = get(pool, username="someone-else")
    other_host = get(pool, host="mail.example.org")
    assert len({id(c) for c in (original, other_password, other_user, other_host)}) == 4
    assert get(pool, host="SMTP.Example.COM") is original  # host names are case-insensitive


def test_password_never_appears_in_keys_or_stats(pool: SMTPConnectionPool) -> None:
    connection = get(pool, password=PASSWORD)
    for text in (repr(connection.key), str(connection.key), repr(pool), repr(pool.get_stats())):
        assert PASSWORD not in text
        assert "CredentialIdentity" not in text and "identity" not in text
    put(pool, connection)
    assert PASSWORD not in repr(pool.get_stats())


def test_idle_connection_past_idle_timeout_is_replaced(
    pool: SMTPConnectionPool, opener: FakeOpener, clock: FakeClock
) -> None:
    first = get(pool)
    put(pool, first)
    clock.advance(299)
    assert get(pool) is first
    put(pool, first)
    clock.advance(301)
    replacement = get(pool)
    assert replacement is not first
    assert first.closes == [True]  # a healthy connection gets a polite QUIT
    stats = pool.get_stats()
    assert (stats["expired"], stats["open"], stats["in_use"]) == (1, 1, 1)


def test_connection_past_stale_timeout_is_replaced_even_if_busy(
    pool: SMTPConnectionPool, opener: FakeOpener, clock: FakeClock
) -> None:
    first = get(pool)
    put(pool, first)
    for step in range(1, 16):
        clock.advance(250)  # never idle for long, but getting older
        connection = get(pool)
        assert (connection is first) is (step * 250 <= 3600), step
        put(pool, connection)
    assert len(opener.opened) == 2
    assert first.closes == [True]


def test_connection_dropped_by_the_server_is_replaced(
    pool: SMTPConnectionPool, opener: FakeOpener
) -> None:
    first = get(pool)
    put(pool, first)
    first.dropped = True
    replacement = get(pool)
    assert replacement is not first
    assert first.closes == [False]  # nobody is listening: no QUIT
    assert pool.get_stats()["dropped"] == 1


def test_broken_connection_is_closed_on_release_and_never_reused(
    pool: SMTPConnectionPool, opener: FakeOpener
) -> None:
    first = get(pool)
    first.broken = True
    put(pool, first)
    assert first.closes == [False]
    stats = pool.get_stats()
    assert (stats["idle"], stats["open"], stats["in_use"], stats["discarded"]) == (0, 0, 0, 1)
    assert get(pool) is not first
    assert len(opener.opened) == 2


def test_opener_failure_gives_the_slot_back(clock: FakeClock, opener: FakeOpener) -> None:
    pool = make_pool(clock, opener, max_connections=1)
    opener.fail_next = MailConnectionError("refused")
    with pytest.raises(MailConnectionError):
        get(pool)
    assert pool.get_stats()["open"] == 0
    assert get(pool) is opener.opened[0]  # would time out if the slot had leaked


def test_max_connections_is_a_hard_bound(clock: FakeClock, opener: FakeOpener) -> None:
    pool = make_pool(clock, opener, max_connections=2)
    get(pool)
    get(pool, password="other")
    with pytest.raises(PoolTimeoutError) as raised:
        get(pool, host="third.example.com", wait_timeout=0.2)
    assert isinstance(raised.value, TimeoutError)
    assert isinstance(raised.value, MailConnectionError)
    assert len(opener.opened) == 2
    stats = pool.get_stats()
    assert (stats["open"], stats["in_use"]) == (2, 2)
    assert stats["waits"] >= 1


def test_waiting_thread_gets_the_released_connection(
    clock: FakeClock, opener: FakeOpener, mocker: Any
) -> None:
    pool = make_pool(clock, opener, max_connections=1, wait_timeout=30)
    held = get(pool)
    waiting = threading.Event()
    real_wait = pool._freed.wait

    def wait_and_report(timeout: float | None = None) -> bool:
        waiting.set()
        return real_wait(timeout)

    mocker.patch.object(pool._freed, "wait", side_effect=wait_and_report)
    received: list[Any] = []
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            received.append(get(pool))
        except BaseException as error:
            errors.append(error)

    thread = threading.Thread(target=worker)
    thread.start()
    assert waiting.wait(30), "the second caller never waited"
    assert received == []
    put(pool, held)
    thread.join(30)
    assert not thread.is_alive()
    assert errors == []
    assert received == [held]
    assert len(opener.opened) == 1


def test_full_pool_evicts_the_oldest_idle_connection_of_another_server(
    clock: FakeClock, opener: FakeOpener
) -> None:
    pool = make_pool(clock, opener, max_connections=2)
    a = get(pool, host="a.example.com")
    b = get(pool, host="b.example.com")
    put(pool, a)
    clock.advance(10)
    put(pool, b)
    c = get(pool, host="c.example.com")
    assert c is opener.opened[2]
    assert a.closes == [True]
    assert b.closes == []
    stats = pool.get_stats()
    assert (stats["open"], stats["idle"], stats["in_use"]) == (2, 1, 1)
    assert get(pool, host="b.example.com") is b


def test_close_all_closes_idle_now_and_in_use_on_release(
    pool: SMTPConnectionPool, opener: FakeOpener
) -> None:
    idle, busy = get(pool), get(pool)
    put(pool, idle)
    pool.close_all()
    assert idle.closes == [True]
    assert busy.closes == []
    assert pool.get_stats()["open"] == 1
    put(pool, busy)
    assert len(busy.closes) == 1
    stats = pool.get_stats()
    assert (stats["open"], stats["idle"], stats["in_use"]) == (0, 0, 0)
    fresh = get(pool)
    assert fresh not in (idle, busy)


def test_get_stats_counts_everything(
    pool: SMTPConnectionPool, opener: FakeOpener, clock: FakeClock
) -> None:
    a = get(pool)
    b = get(pool)
    put(pool, a)
    get(pool)  # reuses a
    b.broken = True
    put(pool, b)
    stats = pool.get_stats()
    assert stats == {
        "created": 2,
        "reused": 1,
        "closed": 1,
        "expired": 0,
        "dropped": 0,
        "discarded": 1,
        "retired": 0,
        "waits": 0,
        "in_use": 1,
        "idle": 0,
        "open": 1,
        "max_connections": 3,
    }
    assert "in use: 1" in repr(pool)


def test_pool_after_fork_forgets_inherited_connections_without_closing_them(
    pool: SMTPConnectionPool, opener: FakeOpener, mocker: Any
) -> None:
    first, second = get(pool), get(pool)
    put(pool, first)
    put(pool, second)
    mocker.patch.object(os, "getpid", return_value=os.getpid() + 1)
    pool._after_fork_in_child()  # what the fork-safety registry runs in a child
    stats = pool.get_stats()
    assert (stats["idle"], stats["open"], stats["in_use"]) == (0, 0, 0)
    fresh = get(pool)
    assert fresh not in (first, second)
    assert first.closes == [] and second.closes == []  # the parent still owns them


def test_releasing_an_inherited_connection_after_fork_keeps_the_bound(
    clock: FakeClock, opener: FakeOpener, mocker: Any
) -> None:
    pool = make_pool(clock, opener, max_connections=1)
    inherited = get(pool)  # in use by the thread that forks
    mocker.patch.object(os, "getpid", return_value=os.getpid() + 1)
    pool._after_fork_in_child()  # what the fork-safety registry runs in a child
    own = get(pool)
    put(pool, inherited)
    assert inherited not in pool._idle.get(inherited.key, [])
    stats = pool.get_stats()
    assert (stats["open"], stats["in_use"]) == (1, 1)
    with pytest.raises(PoolTimeoutError):
        get(pool, password="other")  # ``own`` is still the one open connection
    put(pool, own)
    assert get(pool) is own


def test_pool_rejects_bad_settings(clock: FakeClock, opener: FakeOpener) -> None:
    with pytest.raises(ValueError):
        make_pool(clock, opener, max_connections=0)
    with pytest.raises(ValueError):
        make_pool(clock, opener).get_connection("smtp.example.com", 587, encryption="bogus")


# =========================================================================== handler


@pytest.fixture
def connection(mocker: Any) -> Any:
    conn = mocker.Mock(spec=SMTPConnection)
    conn.broken = False
    conn.send.return_value = TransactionOutcome(
        code=250, text="2.0.0 Ok: queued as ABC", accepted=["rcpt@example.com"]
    )
    return conn


@pytest.fixture
def mock_pool(mocker: Any, connection: Any) -> Any:
    fake = mocker.Mock(spec=SMTPConnectionPool)
    fake.checkout.return_value = connection
    return fake


@pytest.fixture
def sleep(mocker: Any) -> Any:
    return mocker.Mock()


def make_handler(pool: Any, sleep: Any = None, **options: Any) -> SMTPProtocolHandler:
    settings_: dict[str, Any] = {
        "hostname": "smtp.example.com",
        "port": 587,
        "username": "user@example.com",
        "password": PASSWORD,
        "encryption": "tls",
        "from_address": "sender@example.com",
        "pool": pool,
        "local_hostname": "client.example.com",
    }
    if sleep is not None:
        settings_["sleep"] = sleep
    settings_.update(options)
    return SMTPProtocolHandler(**settings_)


def send(handler: SMTPProtocolHandler, **changes: Any) -> DeliveryResult:
    message: dict[str, Any] = {
        "to_addresses": ["rcpt@example.com", "other@example.net"],
        "subject": "Hello",
        "text_body": "Body",
    }
    message.update(changes)
    return handler.send_message(**message)


def sent_messages(connection: Any) -> list[OutgoingMessage]:
    # send_message hands the connection a PendingMessage: the bytes are built on the wire.
    sent = [c.args[0] for c in connection.send.call_args_list]
    return [m.built() if isinstance(m, PendingMessage) else m for m in sent]


@pytest.mark.parametrize("encryption", ["tls1.3", "", "bogus", 3, None])
def test_handler_rejects_unknown_encryption(mock_pool: Any, encryption: Any) -> None:
    with pytest.raises(ValueError):
        make_handler(mock_pool, encryption=encryption)


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (SMTPEncryption.STARTTLS, SMTPEncryption.STARTTLS),
        ("tls", SMTPEncryption.STARTTLS),
        ("STARTTLS", SMTPEncryption.STARTTLS),
        ("ssl", SMTPEncryption.IMPLICIT_SSL),
        (SMTPEncryption.IMPLICIT_SSL, SMTPEncryption.IMPLICIT_SSL),
        ("none", SMTPEncryption.NONE),
        (SMTPEncryption.NONE, SMTPEncryption.NONE),
    ],
)
def test_handler_accepts_encryption_as_enum_or_string(
    mock_pool: Any, given: Any, expected: SMTPEncryption
) -> None:
    assert make_handler(mock_pool, encryption=given).encryption is expected


@pytest.mark.parametrize(
    "hostname",
    [
        "smtp.example.com\r\nQUIT",
        "smtp.example.com\n",
        "smtp\x00.example.com",
        "smtp example.com",
        "",
    ],
)
def test_handler_rejects_hostnames_that_could_inject(mock_pool: Any, hostname: str) -> None:
    with pytest.raises(ValueError):
        make_handler(mock_pool, hostname=hostname)


@pytest.mark.parametrize(
    "options",
    [
        {"port": 0},
        {"port": 65536},
        {"port": "587"},
        {"port": True},
        {"pool_size": 0},
        {"timeout": 0},
        {"from_address": "not-an-address"},
        {"username": "user\r\nRSET"},
    ],
)
def test_handler_rejects_bad_options(mock_pool: Any, options: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        make_handler(mock_pool, **options)


def test_control_characters_in_password_are_refused_without_echoing_it(mock_pool: Any) -> None:
    secret = PASSWORD + "\r\nAUTH"
    with pytest.raises(ValueError) as raised:
        make_handler(mock_pool, password=secret)
    assert PASSWORD not in str(raised.value)


def test_handler_init_does_no_network_io(mocker: Any) -> None:
    forbidden = AssertionError("network I/O in __init__")
    create = mocker.patch("socket.create_connection", side_effect=forbidden)
    lookup = mocker.patch("socket.getaddrinfo", side_effect=forbidden)
    fqdn = mocker.patch("socket.getfqdn", side_effect=forbidden)
    handler = SMTPProtocolHandler(
        "smtp.example.com", 587, "user@example.com", PASSWORD, "tls", "sender@example.com", 5
    )
    other = SMTPProtocolHandler("smtp.example.com", 465, encryption=SMTPEncryption.IMPLICIT_SSL)
    assert handler.pool is other.pool  # the shared pool, created without connecting
    create.assert_not_called()
    lookup.assert_not_called()
    fqdn.assert_not_called()


def test_repr_and_str_never_show_the_password(mock_pool: Any) -> None:
    handler = make_handler(mock_pool)
    for text in (repr(handler), str(handler), f"{handler!r}"):
        assert PASSWORD not in text
        assert "smtp.example.com" in text


def test_connect_and_test_connection_report_failures_as_false(
    mock_pool: Any, connection: Any
) -> None:
    handler = make_handler(mock_pool)
    assert handler.connect() is True
    mock_pool.release_connection.assert_called_once_with("smtp.example.com", 587, connection)
    connection.noop.return_value = False
    assert handler.test_connection() is False
    assert handler.last_error is not None
    mock_pool.checkout.side_effect = MailAuthenticationError(535, "5.7.8 bad credentials")
    assert handler.authenticate() is False
    assert handler.last_error is not None and "5.7.8" in handler.last_error
    assert PASSWORD not in handler.last_error


def test_close_closes_an_own_pool_but_not_the_shared_one(mock_pool: Any, mocker: Any) -> None:
    with make_handler(mock_pool) as handler:
        assert handler.pool is mock_pool
    mock_pool.close_all.assert_called_once_with()  # type: ignore[attr-defined]
    shared = make_handler(None)
    close_shared = mocker.patch.object(shared.pool, "close_all")
    shared.close()
    close_shared.assert_not_called()


@pytest.mark.parametrize(
    "changes",
    [
        {"to_addresses": ["bad@"]},
        {"to_addresses": []},
        {"subject": "Hi\r\nBcc: victim@example.com"},
        {"text_body": None},
        {"attachments": [{"filename": "a.bin", "data": "%%% not base64"}]},
        {"custom_headers": {"Bcc": "victim@example.com"}},
        {"cc_addresses": ["x" * 65 + "@example.com"]},
        {"from_address": "bad sender"},
    ],
)
def test_invalid_input_is_reported_without_touching_the_pool(
    mock_pool: Any, sleep: Any, changes: dict[str, Any]
) -> None:
    result = send(make_handler(mock_pool, sleep), **changes)
    assert result.status is SMTPDeliveryStatus.INVALID
    assert result.smtp_error
    assert result.is_retryable is False
    assert mock_pool.mock_calls == []
    sleep.assert_not_called()


def test_missing_sender_is_invalid(mock_pool: Any) -> None:
    handler = make_handler(mock_pool, username="bob", from_address=None)
    result = send(handler)
    assert result.status is SMTPDeliveryStatus.INVALID
    assert result.smtp_error is not None and "from_address" in result.smtp_error
    assert mock_pool.mock_calls == []


def test_username_that_is_an_address_is_the_default_sender(mock_pool: Any, connection: Any) -> None:
    handler = make_handler(mock_pool, from_address=None, username="me@example.com")
    assert send(handler).status is SMTPDeliveryStatus.SUCCESS
    assert sent_messages(connection)[0].sender == "me@example.com"


def test_the_handlers_sender_is_checked_when_set_not_per_send(
    mock_pool: Any, connection: Any, mocker: Any
) -> None:
    handler = make_handler(mock_pool)
    with pytest.raises(ConfigurationError) as refused:
        handler.from_address = "bad sender"
    assert refused.value.field == "from_address"
    assert handler.from_address == "sender@example.com"
    handler.from_address = "Sender <other@example.com>"
    checks = mocker.spy(SMTPMessageValidator, "check_single_address")
    assert send(handler).status is SMTPDeliveryStatus.SUCCESS
    assert sent_messages(connection)[0].sender == "other@example.com"
    assert [c.args for c in checks.call_args_list] == [(None, "from_address"), (None, "reply_to")]
    # A sender named for one send is still checked.
    assert send(handler, from_address="nope@").status is SMTPDeliveryStatus.INVALID
    raw = handler.send_raw(
        "nope@", ["rcpt@example.com"], b"From: a@example.com\r\nSubject: x\r\n\r\nHi\r\n"
    )
    assert raw.status is SMTPDeliveryStatus.INVALID and "envelope sender" in (raw.smtp_error or "")


def test_successful_send(mock_pool: Any, connection: Any, sleep: Any) -> None:
    result = send(make_handler(mock_pool, sleep), bcc_addresses=["hidden@example.org"])
    assert result.status is SMTPDeliveryStatus.SUCCESS and result.success
    assert result.smtp_code == 250
    assert result.enhanced_status_code == "2.0.0"
    assert result.recipient_failures == {}
    assert result.retry_count == 0 and result.is_retryable is False
    assert result.sent_at is not None and result.sent_at.utcoffset() == timedelta(0)
    [message] = sent_messages(connection)
    assert result.message_id == message.message_id
    assert message.recipients == ("rcpt@example.com", "other@example.net", "hidden@example.org")
    assert b"hidden@example.org" not in message.data
    settings = mock_pool.checkout.call_args.args[0]
    assert settings.credentials.password.reveal() == PASSWORD  # the pool needs it to log in
    mock_pool.release_connection.assert_called_once_with("smtp.example.com", 587, connection)
    sleep.assert_not_called()


def test_iterators_of_recipients_are_read_once(mock_pool: Any, connection: Any) -> None:
    result = send(
        make_handler(mock_pool),
        to_addresses=iter(["rcpt@example.com"]),
        cc_addresses=(a for a in ["cc@example.com"]),
        bcc_addresses=(a for a in ["hidden@example.org"]),
    )
    assert result.status is SMTPDeliveryStatus.SUCCESS
    [message] = sent_messages(connection)
    assert message.recipients == ("rcpt@example.com", "cc@example.com", "hidden@example.org")
    assert b"cc@example.com" in message.data


def test_partial_recipient_failures_are_success_with_details(
    mock_pool: Any, connection: Any
) -> None:
    connection.send.return_value = TransactionOutcome(
        code=250,
        text="Ok",
        accepted=["rcpt@example.com"],
        refused={"other@example.net": (550, "5.1.1 no such user")},
    )
    result = send(make_handler(mock_pool))
    assert result.status is SMTPDeliveryStatus.SUCCESS
    assert result.recipient_failures == {"other@example.net": "550 5.1.1 no such user"}
    assert json.loads(json.dumps(result.to_dict()))["recipient_failures"] == {
        "other@example.net": "550 5.1.1 no such user"
    }


def test_sender_refused_is_rejected(mock_pool: Any, connection: Any, sleep: Any) -> None:
    connection.send.side_effect = SMTPSenderRefused(
        553, "5.7.1 sender not allowed", "sender@example.com"
    )
    result = send(make_handler(mock_pool, sleep))
    assert result.status is SMTPDeliveryStatus.REJECTED
    assert (result.smtp_code, result.smtp_error) == (553, "5.7.1 sender not allowed")
    assert result.enhanced_status_code == "5.7.1"
    assert result.is_retryable is False
    assert connection.send.call_count == 1
    sleep.assert_not_called()


def test_all_recipients_refused_is_rejected_with_each_reason(
    mock_pool: Any, connection: Any, sleep: Any
) -> None:
    failures = {
        "rcpt@example.com": (550, "5.1.1 unknown"),
        "other@example.net": (553, "5.1.3 bad address"),
    }
    connection.send.side_effect = SMTPRecipientsRefused(550, "5.1.1 unknown", failures)
    result = send(make_handler(mock_pool, sleep))
    assert result.status is SMTPDeliveryStatus.REJECTED
    assert result.recipient_failures == {
        "rcpt@example.com": "550 5.1.1 unknown",
        "other@example.net": "553 5.1.3 bad address",
    }
    assert result.is_retryable is False
    sleep.assert_not_called()


def test_421_then_success_is_retried_once(mock_pool: Any, connection: Any, sleep: Any) -> None:
    outcome = TransactionOutcome(code=250, text="2.0.0 Ok", accepted=["rcpt@example.com"])
    connection.send.side_effect = [SMTPResponseError(421, "4.3.2 shutting down"), outcome]
    result = send(make_handler(mock_pool, sleep))
    assert result.status is SMTPDeliveryStatus.SUCCESS
    assert result.retry_count == 1
    sleep.assert_called_once_with(1)
    assert mock_pool.checkout.call_count == 2
    assert mock_pool.release_connection.call_count == 2


def test_repeated_451_ends_temp_failed_after_three_retries(
    mock_pool: Any, connection: Any, sleep: Any
) -> None:
    connection.send.side_effect = SMTPResponseError(451, "4.3.0 local problem")
    result = send(make_handler(mock_pool, sleep))
    assert result.status is SMTPDeliveryStatus.TEMP_FAILED
    assert result.is_retryable is True
    assert result.retry_count == 3
    assert (result.smtp_code, result.enhanced_status_code) == (451, "4.3.0")
    assert [c.args for c in sleep.call_args_list] == [(1,), (5,), (30,)]
    assert connection.send.call_count == 4
    assert mock_pool.release_connection.call_count == 4


def test_same_message_id_and_bytes_on_every_attempt(
    mock_pool: Any, connection: Any, sleep: Any
) -> None:
    connection.send.side_effect = MailConnectionError("connection reset")
    result = send(make_handler(mock_pool, sleep))
    messages = sent_messages(connection)
    assert len(messages) == 4
    assert {m.message_id for m in messages} == {result.message_id}
    assert len({m.data for m in messages}) == 1


def test_retry_false_returns_retry_status_at_once(
    mock_pool: Any, connection: Any, sleep: Any
) -> None:
    connection.send.side_effect = SMTPResponseError(450, "4.2.1 mailbox busy")
    result = send(make_handler(mock_pool, sleep), retry=False)
    assert result.status is SMTPDeliveryStatus.RETRY
    assert result.is_retryable is True
    assert result.retry_count == 0
    assert connection.send.call_count == 1
    sleep.assert_not_called()


def test_permanent_data_refusal_is_failed(mock_pool: Any, connection: Any, sleep: Any) -> None:
    connection.send.side_effect = SMTPDataRefused(554, "5.6.0 message content rejected")
    result = send(make_handler(mock_pool, sleep))
    assert result.status is SMTPDeliveryStatus.FAILED
    assert result.smtp_code == 554
    assert result.is_retryable is False
    assert connection.send.call_count == 1
    sleep.assert_not_called()


def test_authentication_failure_is_failed_and_not_retryable(
    mock_pool: Any, connection: Any, sleep: Any
) -> None:
    mock_pool.checkout.side_effect = MailAuthenticationError(535, "5.7.8 bad credentials")
    result = send(make_handler(mock_pool, sleep))
    assert result.status is SMTPDeliveryStatus.FAILED
    assert result.is_retryable is False
    assert result.smtp_code == 535
    assert mock_pool.checkout.call_count == 1
    connection.send.assert_not_called()
    sleep.assert_not_called()
    assert PASSWORD not in json.dumps(result.to_dict())


def test_unknown_outcome_is_failed_and_never_resent(
    mock_pool: Any, connection: Any, sleep: Any
) -> None:
    connection.send.side_effect = OutcomeUnknownError("lost after the final dot")
    result = send(make_handler(mock_pool, sleep))
    assert result.status is SMTPDeliveryStatus.FAILED
    assert result.outcome_unknown is True
    assert result.is_retryable is False
    assert connection.send.call_count == 1
    assert connection.broken is True  # the stream is out of step
    mock_pool.release_connection.assert_called_once()
    sleep.assert_not_called()
    assert result.to_dict()["outcome_unknown"] is True


@pytest.mark.parametrize("where", ["send", "get_connection"])
def test_unexpected_exception_becomes_a_failed_result(
    mock_pool: Any, connection: Any, sleep: Any, where: str
) -> None:
    if where == "send":
        connection.send.side_effect = RuntimeError("boom")
    else:
        mock_pool.checkout.side_effect = KeyError("boom")
    result = send(make_handler(mock_pool, sleep))
    assert result.status is SMTPDeliveryStatus.FAILED
    assert result.is_retryable is False
    assert result.smtp_error is not None
    assert result.message_id is not None
    sleep.assert_not_called()
    if where == "send":
        assert connection.broken is True
        mock_pool.release_connection.assert_called_once()


def test_result_never_contains_the_password(mock_pool: Any, connection: Any, sleep: Any) -> None:
    handler = make_handler(mock_pool, sleep)
    success = send(handler)
    connection.send.side_effect = MailConnectionError("reset")
    failure = send(handler)
    for result in (success, failure):
        assert PASSWORD not in json.dumps(result.to_dict())
        assert PASSWORD not in repr(result)


# =========================================================================== logging


def test_failing_connects_log_no_password(
    mocker: Any, caplog: pytest.LogCaptureFixture, sleep: Any
) -> None:
    create = mocker.patch(
        "src.handlers._smtp.client.open_connection",
        side_effect=ConnectionRefusedError(111, "Connection refused"),
    )
    caplog.set_level(logging.DEBUG)
    handler = make_handler(SMTPConnectionPool(max_connections=2), sleep)
    result = send(handler)
    assert result.status is SMTPDeliveryStatus.TEMP_FAILED
    assert create.call_count == 4
    assert caplog.records, "expected the retries to be logged"
    assert PASSWORD not in caplog.text
    assert all(PASSWORD not in str(record.args) for record in caplog.records)
    assert PASSWORD not in json.dumps(result.to_dict())


class FakeSMTP:
    """Stands in for the library's smtplib client: greets, offers STARTTLS and AUTH,
    refuses the login.

    It has the parts of smtplib.SMTP the library uses (send/getreply, esmtp_features,
    docmd), so the library runs its real code paths on it.
    """

    logins: list[tuple[str, str]] = []

    def __init__(self, label: str, **options: Any) -> None:
        self.sock = None
        self.esmtp_features = {"starttls": "", "auth": " PLAIN LOGIN"}
        self.user = self.password = ""

    def send(self, data: str | bytes) -> None:
        pass

    def getreply(self) -> tuple[int, bytes]:
        return 250, b"OK"

    def connect(self, host: str, port: int) -> tuple[int, bytes]:
        return 220, b"smtp.example.com ESMTP ready"

    def ehlo(self) -> tuple[int, bytes]:
        return 250, b"smtp.example.com"

    def has_extn(self, name: str) -> bool:
        return name.lower() in self.esmtp_features

    def starttls(self, context: ssl.SSLContext) -> tuple[int, bytes]:
        return 220, b"go ahead"

    def auth_plain(self, challenge: bytes | None = None) -> str:
        return f"\0{self.user}\0{self.password}"

    def auth_login(self, challenge: bytes | None = None) -> str:
        return self.user if challenge is None else self.password

    def docmd(self, command: str, argument: str = "") -> tuple[int, bytes]:
        if command == "AUTH":
            _mechanism, _, response = argument.partition(" ")
            user, password = base64.b64decode(response).decode().split("\0")[1:]
            FakeSMTP.logins.append((user, password))
        return 535, b"5.7.8 Authentication credentials invalid"

    def close(self) -> None:
        pass


@pytest.fixture
def fake_smtp(mocker: Any) -> Iterator[type[FakeSMTP]]:
    FakeSMTP.logins = []
    mocker.patch("src.handlers._smtp.connect.SMTPClient", FakeSMTP)
    yield FakeSMTP


def test_refused_login_logs_no_password(
    fake_smtp: type[FakeSMTP], caplog: pytest.LogCaptureFixture, sleep: Any
) -> None:
    caplog.set_level(logging.DEBUG)
    # The fake's STARTTLS leaves no TLS socket behind, so PLAIN needs the consent.
    handler = make_handler(SMTPConnectionPool(max_connections=2), sleep, allow_cleartext=True)
    result = send(handler)
    assert fake_smtp.logins == [("user@example.com", PASSWORD)]
    assert result.status is SMTPDeliveryStatus.FAILED
    assert result.smtp_code == 535
    assert result.is_retryable is False
    assert handler.last_error is not None and PASSWORD not in handler.last_error
    assert PASSWORD not in caplog.text
    assert all(PASSWORD not in str(record.args) for record in caplog.records)
    assert PASSWORD not in json.dumps(result.to_dict())
    assert handler.pool.get_stats()["open"] == 0


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"encryption": "starttls2"}, "encryption"),
        ({"pool_size": 0}, "pool_size"),
        ({"timeout": -1}, "timeout"),
        ({"operation_timeout": 0}, "operation_timeout"),
        ({"pool_wait_timeout": float("nan")}, "pool_wait_timeout"),
        ({"local_hostname": "bad name"}, "local_hostname"),
        ({"retry": 3}, "retry"),
        ({"port": 70000}, "port"),
        ({"password": "pw", "oauth2_token": "token"}, "password"),
    ],
)
def test_bad_handler_settings_are_configuration_errors(
    mock_pool: Any, options: dict[str, Any], field: str
) -> None:
    with pytest.raises(ConfigurationError) as caught:
        make_handler(mock_pool, **options)
    assert caught.value.field == field
    assert isinstance(caught.value, ValueError)
    if field == "encryption":
        assert {"tls", "ssl", "none"} <= set(caught.value.choices)


@pytest.mark.parametrize(
    "options",
    [{"max_connections": 0}, {"idle_timeout": -5}, {"wait_timeout": 0}, {"max_connections": 1.5}],
)
def test_bad_pool_settings_are_configuration_errors(options: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        SMTPConnectionPool(**options)


def test_the_pool_key_is_built_once_per_handler(mock_pool: Any, connection: Any) -> None:
    handler = make_handler(mock_pool)
    for _ in range(3):
        send(handler)
    keys = {id(call.args[1]) for call in mock_pool.checkout.call_args_list}
    settings = {id(call.args[0]) for call in mock_pool.checkout.call_args_list}
    assert len(keys) == 1 and len(settings) == 1
