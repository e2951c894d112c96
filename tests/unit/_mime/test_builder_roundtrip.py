"""The hand-built MIME reads back identically through the stdlib parser (performance target 5).

The builder skips ``email.message`` for speed (docs/performance.md, target 5), so this
property test checks the message the benchmark builds, text plus HTML plus an
attachment of up to 100 KB, field for field with ``email.parser``.
"""

from __future__ import annotations

from email import policy
from email.message import EmailMessage
from email.parser import BytesParser

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from src.handlers._mime.builder import build_message
from src.handlers.validation import SMTPMessageValidator

PARSER = BytesParser(policy=policy.default)
SENDER = "Sender <sender@example.com>"
TO = ["rcpt@example.com"]

# Any text without surrogates: line breaks of every kind, NUL, non-ASCII, long lines.
texts = st.text(st.characters(exclude_categories=["Cs"]), max_size=3000)
# Message.get_filename() strips surrounding whitespace, so names come without it.
filenames = st.text(st.characters(exclude_categories=("Cs", "Cc")), min_size=1, max_size=60).filter(
    lambda name: name == name.strip() and name not in ("", ".", "..") and "/" not in name
)
# Mostly small, sometimes the benchmark's 100 KB.
contents = st.one_of(
    st.binary(max_size=4000),
    st.binary(min_size=16, max_size=64).map(lambda seed: (seed * 6400)[: 100 * 1024]),
)


def normalise(text: str) -> str:
    """What a reader gets back: line breaks as LF, without the final one."""
    return text.replace("\r\n", "\n").replace("\r", "\n").removesuffix("\n")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    subject=st.text(st.characters(exclude_categories=("Cs", "Cc")), max_size=200),
    text=texts,
    html=texts,
    filename=filenames,
    content=contents,
)
def test_text_html_and_attachment_read_back_identically(
    subject: str, text: str, html: str, filename: str, content: bytes
) -> None:
    attachments = [{"filename": filename, "content": content, "contentType": "application/pdf"}]
    decoded = SMTPMessageValidator.check_message(
        TO, subject, text, html, None, None, attachments, SENDER, None, None
    )
    message = build_message(
        from_address=SENDER,
        to_addresses=TO,
        subject=subject,
        text_body=text,
        html_body=html,
        attachments=decoded,
    )
    lines = message.data.split(b"\r\n")
    assert all(b"\r" not in line and b"\n" not in line for line in lines)
    assert max(len(line) for line in lines) <= 998

    parsed = PARSER.parsebytes(message.data)
    assert isinstance(parsed, EmailMessage)
    assert parsed.defects == []
    assert parsed["Subject"] == subject
    assert parsed["Message-ID"] == message.message_id
    assert parsed["From"].addresses[0].addr_spec == "sender@example.com"
    assert [a.addr_spec for a in parsed["To"].addresses] == TO
    plain = parsed.get_body(("plain",))
    rich = parsed.get_body(("html",))
    assert plain is not None and rich is not None
    assert normalise(plain.get_content()) == normalise(text)
    assert normalise(rich.get_content()) == normalise(html)
    [attachment] = list(parsed.iter_attachments())
    assert attachment.get_filename() == filename
    assert attachment.get_content_type() == "application/pdf"
    assert attachment.get_content() == content
