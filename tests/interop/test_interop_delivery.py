"""Pre-built messages through a real Postfix, read back over POP3 from Dovecot.

Postfix offers PIPELINING, CHUNKING and 8BITMIME on its submission port, so these sends
go out as one write of MAIL, RCPT and ``BDAT <size> LAST`` with the body; the protocol
trace proves it. A listener without CHUNKING takes a ``send_message`` built while
Postfix reads its envelope.
"""

from __future__ import annotations

import logging
import re
from email.message import EmailMessage

import pytest

from src.handlers.smtp import SMTPDeliveryStatus

from .mailstack import MailStack
from .support import pop3_handler, smtp_handler, token


def _fetch(stack: MailStack, user: str, marker: str) -> dict[str, object]:
    with pop3_handler(stack, "ssl", user, include_raw=True) as reader:
        found = [m for m in reader.fetch_messages() if marker in str(m.get("subject"))]
    assert len(found) == 1, found
    return found[0]


def test_email_message_with_8bit_body_and_bcc_over_bdat(
    mail_stack: MailStack, caplog: pytest.LogCaptureFixture
) -> None:
    stack = mail_stack
    stack.clear_mailbox("alice")
    stack.clear_mailbox("bob")
    marker = token()
    message = EmailMessage()
    message["From"] = f"Bob Sender <{stack.address('bob')}>"
    message["To"] = stack.address("alice")
    message["Bcc"] = stack.address("bob")
    message["Subject"] = f"Grüße {marker}"
    body = "Schöne Grüße aus Köln, ½ € – ✓\n" * 5
    message.set_content(body, cte="8bit")
    caplog.set_level(logging.DEBUG, logger="src.handlers.trace")
    with smtp_handler(stack, "tls", "bob", trace=True) as sender:
        capabilities = sender.capabilities()
        result = sender.send_email_message(message)
    assert result.status is SMTPDeliveryStatus.SUCCESS, result.to_dict()
    assert capabilities.offers("CHUNKING") and capabilities.offers("8BITMIME")
    sent = caplog.text
    assert re.search(r"BDAT \d+ LAST", sent) and "BODY=8BITMIME" in sent, sent
    assert "\nDATA" not in sent

    fetched = _fetch(stack, "alice", marker)
    assert fetched["messageIdHeader"] == result.message_id
    assert str(fetched["textBody"]).replace("\r\n", "\n") == body.rstrip("\n")
    raw = fetched["raw"]
    assert isinstance(raw, bytes)
    assert not re.search(rb"(?im)^bcc:", raw)
    assert "Schöne Grüße".encode() in raw  # 8-bit, not re-encoded
    bob_copy = _fetch(stack, "bob", marker)  # the Bcc recipient got it too
    assert bob_copy["messageIdHeader"] == result.message_id


def test_raw_bytes_without_message_id_get_one(mail_stack: MailStack) -> None:
    stack = mail_stack
    stack.clear_mailbox("alice")
    marker = token()
    raw = (
        f"From: {stack.address('bob')}\nTo: {stack.address('alice')}\n"
        f"Subject: raw {marker}\nMIME-Version: 1.0\n\n.a line with a leading dot\nbye\n"
    ).encode()
    with smtp_handler(stack, "tls", "bob") as sender:
        result = sender.send_raw(stack.address("bob"), [stack.address("alice")], raw)
    assert result.status is SMTPDeliveryStatus.SUCCESS, result.to_dict()
    assert result.message_id is not None
    fetched = _fetch(stack, "alice", marker)
    assert fetched["messageIdHeader"] == result.message_id
    text = str(fetched["textBody"]).replace("\r\n", "\n")
    assert text.rstrip("\n") == ".a line with a leading dot\nbye"


def test_requiretls_on_a_postfix_without_it_sends_nothing(mail_stack: MailStack) -> None:
    """Postfix 3.7 does not offer REQUIRETLS: the send fails before MAIL, over TLS too."""
    stack = mail_stack
    marker = token()
    with smtp_handler(stack, "tls", "bob") as sender:
        assert not sender.capabilities().offers("REQUIRETLS")
        result = sender.send_message(
            [stack.address("alice")], f"requiretls {marker}", "x", require_tls=True
        )
    assert result.status is SMTPDeliveryStatus.FAILED and not result.is_retryable
    assert "does not offer it" in (result.smtp_error or "")
    with pop3_handler(stack, "ssl", "alice") as reader:
        assert not [m for m in reader.fetch_messages() if marker in str(m.get("subject"))]


def test_send_message_built_while_postfix_reads_the_envelope(
    mail_stack: MailStack, caplog: pytest.LogCaptureFixture
) -> None:
    stack = mail_stack
    stack.clear_mailbox("alice")
    marker = token()
    text = "Grüße aus Köln\n" + "a line of plain text\n" * 100
    caplog.set_level(logging.DEBUG, logger="src.handlers.trace")
    with smtp_handler(
        stack, "tls", "bob", port=stack.unchunked_submission_port, trace=True, eight_bit=True
    ) as sender:
        capabilities = sender.capabilities()
        result = sender.send_message(
            [stack.address("alice")],
            f"in flight {marker}",
            text,
            attachments=[{"filename": "n.txt", "data": "aGVsbG8=", "contentType": "text/plain"}],
        )
    assert result.status is SMTPDeliveryStatus.SUCCESS, result.to_dict()
    assert capabilities.offers("PIPELINING") and capabilities.offers("SIZE")
    assert not capabilities.offers("CHUNKING")
    # MAIL announced the builder's estimate (RFC 1870) with BODY=8BITMIME; DATA carried it.
    mail = re.search(r"MAIL FROM:<[^>]+> BODY=8BITMIME SIZE=(\d+)", caplog.text)
    assert mail is not None, caplog.text
    assert "BDAT" not in caplog.text
    fetched = _fetch(stack, "alice", marker)
    assert fetched["messageIdHeader"] == result.message_id
    assert str(fetched["textBody"]).replace("\r\n", "\n").rstrip("\n") == text.rstrip("\n")
    attachments = fetched["attachments"]
    assert isinstance(attachments, list) and [a["filename"] for a in attachments] == ["n.txt"]
    raw = fetched["raw"]
    assert isinstance(raw, bytes)
    # What we sent starts at our first field, From (Postfix and Dovecot add theirs above
    # it); the estimate covered it.
    ours = raw[raw.index(b"\r\nFrom: ") + 2 :]
    assert len(ours) <= int(mail.group(1)) <= 2 * len(ours) + 2048
