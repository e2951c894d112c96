"""A PendingMessage announces what its bytes will need before they exist.

The SMTP connection puts the envelope on the wire from these facts and builds the
message while the server answers, so they must never understate the built message:
``eight_bit`` is never False when the bytes carry 8-bit octets, ``smtputf8`` is
exact, and the size estimate stays close to the real size.
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from src.handlers._mime.attachments import Attachment
from src.handlers._mime.builder import build_message, plan_message

SENDER = "Sender <sender@example.com>"

texts = st.one_of(st.none(), st.text(st.characters(exclude_categories=["Cs"]), max_size=3000))
mailboxes = st.sampled_from(
    ["rcpt@example.com", "Zoë <zoe@example.org>", "jörg@bücher.example", "x@b.example"]
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    text=texts,
    html=texts,
    to=st.lists(mailboxes, min_size=1, max_size=3),
    subject=st.text(st.characters(exclude_categories=("Cs", "Cc")), max_size=100),
    eight_bit=st.booleans(),
    attached=st.binary(max_size=3000),
)
def test_announced_facts_never_understate_the_built_message(
    text: str | None,
    html: str | None,
    to: list[str],
    subject: str,
    eight_bit: bool,
    attached: bytes,
) -> None:
    if text is None and html is None:
        text = ""
    attachments = [Attachment("data.bin", "application/octet-stream", attached)]
    pending = plan_message(
        from_address=SENDER,
        to_addresses=to,
        subject=subject,
        text_body=text,
        html_body=html,
        attachments=attachments,
        eight_bit=eight_bit,
    )
    built = pending.built()
    assert built.smtputf8 == pending.smtputf8
    assert pending.eight_bit or not built.eight_bit
    assert (built.sender, built.recipients) == (pending.sender, pending.recipients)
    assert built.message_id == pending.message_id
    # An estimate (RFC 1870), but one that ASCII text gets close to from above and
    # nothing pushes below half of the real size.
    assert pending.estimated_size >= len(built.data) // 2
    if all(part is None or part.isascii() for part in (text, html, subject)):
        assert len(built.data) <= pending.estimated_size <= 2 * len(built.data) + 2048


def test_the_message_is_built_once_with_one_message_id() -> None:
    pending = plan_message(from_address=SENDER, to_addresses=["a@example.com"], subject="s")
    first = pending.built()
    assert pending.built() is first
    assert f"Message-ID: {pending.message_id}".encode() in first.data


def test_ascii_text_with_eight_bit_allowed_is_announced_as_7bit() -> None:
    pending = plan_message(
        from_address=SENDER,
        to_addresses=["a@example.com"],
        subject="Grüße",  # headers are encoded: no 8-bit octet on the wire
        text_body="plain",
        eight_bit=True,
    )
    assert not pending.eight_bit and not pending.built().eight_bit


def test_utf8_text_with_eight_bit_allowed_is_announced_as_8bit() -> None:
    pending = plan_message(
        from_address=SENDER,
        to_addresses=["a@example.com"],
        subject="s",
        text_body="Schöne Grüße",
        eight_bit=True,
    )
    assert pending.eight_bit and pending.built().eight_bit


def test_build_message_is_the_plan_built() -> None:
    built = build_message(
        from_address=SENDER, to_addresses=["a@example.com"], subject="s", message_id="<m@x>"
    )
    assert built.message_id == "<m@x>" and b"Message-ID: <m@x>" in built.data
