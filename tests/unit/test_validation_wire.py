"""What the validator accepts, the builder can send: no line over 998 octets, and the
Message-ID a reader parses is the one ``DeliveryResult.message_id`` reports.

Also: attachment ``data`` is base64 text only; raw bytes belong in ``content``.
"""

from __future__ import annotations

import base64
import string
from collections.abc import Iterator
from email import message_from_bytes, policy
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from src.handlers.errors import MailValidationError
from src.handlers.smtp import SMTPConnectionPool, SMTPDeliveryStatus, SMTPProtocolHandler
from src.handlers.validation import SMTPMessageValidator
from src.testing.smtp_server import SMTPTestServer

SENDER = "Sender <sender@example.com>"
TO = ["rcpt@example.com"]


def check(**fields: Any) -> Any:
    """Run the whole-message check with a valid message plus ``fields``."""
    message: dict[str, Any] = {
        "to_addresses": TO,
        "subject": "Hi",
        "text_body": "Body",
        "from_address": SENDER,
    }
    message.update(fields)
    return SMTPMessageValidator.check_message(**message)


def build(**fields: Any) -> Any:
    """Validate and build like ``send_message`` does; return the OutgoingMessage."""
    from src.handlers._mime.builder import build_message

    decoded = check(**fields)
    return build_message(
        from_address=fields.get("from_address", SENDER),
        to_addresses=fields.get("to_addresses", TO),
        subject=fields.get("subject", "Hi"),
        text_body=fields.get("text_body", "Body"),
        html_body=fields.get("html_body"),
        reply_to=fields.get("reply_to"),
        attachments=decoded,
        custom_headers=fields.get("custom_headers"),
    )


@pytest.fixture
def handler() -> Iterator[tuple[SMTPProtocolHandler, SMTPTestServer]]:
    pool = SMTPConnectionPool(max_connections=1)
    with SMTPTestServer() as server:
        mailer = SMTPProtocolHandler(
            server.host, server.port, encryption="none", from_address=SENDER, pool=pool
        )
        yield mailer, server
        pool.close_all()


# -- lines the builder could not keep under 998 octets ---------------------------------


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        (
            {"attachments": [{"filename": "a.png", "content": b"x", "contentId": "c" * 3000}]},
            "attachments[0].contentId",
        ),
        (
            {"custom_headers": {"Message-ID": f"<{'m' * 3000}@example.com>"}},
            "Message-ID",
        ),
        (
            {"attachments": [{"filename": "a", "content": b"x", "contentType": f"a/{'b' * 3000}"}]},
            "attachments[0].contentType",
        ),
    ],
    ids=["contentId", "Message-ID", "contentType"],
)
def test_a_field_too_long_for_one_header_line_is_invalid_before_sending(
    handler: tuple[SMTPProtocolHandler, SMTPTestServer], fields: dict[str, Any], named: str
) -> None:
    mailer, server = handler
    result = mailer.send_message(TO, "Hi", text_body="Body", retry=False, **fields)
    assert result.status is SMTPDeliveryStatus.INVALID, result.smtp_error
    assert result.smtp_error is not None and named in result.smtp_error
    assert server.messages == []


# -- Message-IDs a reader would read differently ---------------------------------------


@pytest.mark.parametrize(
    "message_id",
    ["<a\tb@x.example>", "<a>b@x.example>", "<a@x.example>,<b@y.example>", "<a@b@x.example>"],
)
def test_a_message_id_a_reader_would_read_differently_is_invalid(message_id: str) -> None:
    with pytest.raises(MailValidationError) as caught:
        check(custom_headers={"Message-ID": message_id})
    assert caught.value.field == "custom_headers"
    assert "Message-ID" in str(caught.value)


@pytest.mark.parametrize(
    "message_id",
    [
        "<abc.123@example.com>",
        "<a!#$%&'*+/=?^_`{|}~-b@mail.example.com>",
        "<1.2.3@[127.0.0.1]>",
        "  <padded@example.com>  ",
    ],
)
def test_a_well_formed_message_id_is_sent_and_read_back_unchanged(message_id: str) -> None:
    message = build(custom_headers={"Message-ID": message_id})
    parsed = message_from_bytes(message.data, policy=policy.default)
    assert message.message_id == message_id.strip()
    assert parsed["Message-ID"] == message.message_id


# Every printable ASCII character and then some: space, TAB, non-ASCII, the specials.
_ID_CHARS = st.sampled_from([*string.printable.replace("\r", "").replace("\n", ""), "é", "\x7f"])
_ID_PART = st.text(_ID_CHARS, min_size=0, max_size=20)
message_ids = st.one_of(
    st.builds(lambda left, right: f"<{left}@{right}>", _ID_PART, _ID_PART),
    st.builds(lambda left, right: f"<{left}@[{right}]>", _ID_PART, _ID_PART),
    st.text(_ID_CHARS, max_size=40),
)


@settings(max_examples=400, deadline=None)
@given(message_id=message_ids)
def test_any_message_id_the_validator_accepts_parses_back_identically(message_id: str) -> None:
    try:
        message = build(custom_headers={"Message-ID": message_id})
    except MailValidationError as error:
        assert error.field is not None and error.field.startswith("custom_headers")
        return
    parsed = message_from_bytes(message.data, policy=policy.default)
    assert parsed["Message-ID"] == message.message_id
    assert parsed.get_all("Message-ID") == [message.message_id]


# -- no line over 998 octets, whatever the validator lets through -----------------------

_ANY_TEXT = st.text(st.characters(exclude_categories=["Cs"]), max_size=1200)
_NO_CONTROLS = st.text(st.characters(exclude_categories=("Cs", "Cc")), max_size=1200)
_LONG_ASCII = st.text(st.sampled_from('ab .-_\t<>@"\\()[];:,=?'), max_size=1200)
_LONG_WORD = st.integers(0, 3000).map(lambda n: "x" * n)


def sometimes(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """None (the field keeps its plain default) three times in four, so most examples
    get through the validator and each odd field is tried on an otherwise fine message."""
    return st.one_of(st.none(), st.none(), st.none(), strategy)


_values = sometimes(st.one_of(_ANY_TEXT, _NO_CONTROLS, _LONG_ASCII, _LONG_WORD))
_header_names = st.text(
    st.sampled_from(string.ascii_letters + string.digits + "-_"), min_size=1, max_size=90
)
_long_message_ids = st.integers(0, 1100).map(lambda n: f"<{'i' * n}@x.example>")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    subject=_values,
    display_name=_values,
    header=sometimes(st.tuples(_header_names, _values.map(lambda v: v or ""))),
    filename=sometimes(st.one_of(_NO_CONTROLS.filter(str.strip), _LONG_WORD.filter(bool))),
    content_type=sometimes(st.builds(lambda n: f"application/{'x' * n}", st.integers(1, 300))),
    content_id=_values,
    message_id=sometimes(st.one_of(message_ids, _long_message_ids)),
)
def test_every_line_of_an_accepted_message_is_at_most_998_octets(
    subject: str | None,
    display_name: str | None,
    header: tuple[str, str] | None,
    filename: str | None,
    content_type: str | None,
    content_id: str | None,
    message_id: str | None,
) -> None:
    headers = dict([header] if header else [])
    if message_id is not None:
        headers["Message-ID"] = message_id
    escaped = (display_name or "").replace("\\", "\\\\").replace('"', '\\"')
    attachment: dict[str, Any] = {"filename": filename or "a.pdf", "content": b"payload"}
    if content_type is not None:
        attachment["contentType"] = content_type
    if content_id is not None:
        attachment["contentId"] = content_id
    try:
        message = build(
            subject=subject,
            from_address=f'"{escaped}" <sender@example.com>',
            reply_to=f'"{escaped}" <reply@example.com>',
            html_body="<p>hi</p>",
            custom_headers=headers,
            attachments=[attachment],
        )
    except MailValidationError:
        return
    longest = max(message.data.split(b"\r\n"), key=len)
    assert len(longest) <= 998, longest[:120]


# -- attachment data is base64 text ----------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [b"abcd", base64.b64encode(b"%PDF-1.7"), bytearray(b"QUJD"), b"\x89PNG\r\n\x1a\n"],
    ids=["bytes-that-look-like-base64", "base64-as-bytes", "bytearray", "png-bytes"],
)
def test_attachment_data_given_as_bytes_is_invalid_and_points_to_content(
    handler: tuple[SMTPProtocolHandler, SMTPTestServer], data: bytes
) -> None:
    mailer, server = handler
    attachments = [{"filename": "report.pdf", "data": data}]
    result = mailer.send_message(TO, "Hi", text_body="Body", attachments=attachments)
    assert result.status is SMTPDeliveryStatus.INVALID
    assert result.smtp_error is not None
    assert "attachments[0].data" in result.smtp_error and "'content'" in result.smtp_error
    assert server.messages == []


def test_base64_text_in_data_and_raw_bytes_in_content_still_work() -> None:
    [as_text, as_bytes] = check(
        attachments=[
            {"filename": "a.bin", "data": base64.b64encode(b"\x00\x01raw").decode()},
            {"filename": "b.bin", "content": b"\x00\x01raw"},
        ]
    )
    assert as_text.content == as_bytes.content == b"\x00\x01raw"
