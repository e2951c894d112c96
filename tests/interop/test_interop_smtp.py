"""Our SMTP handler against a real Postfix 3.7, read back through a real Dovecot 2.3.

* Round trips: a rich message (non-ASCII names, subject and file names, text and
  HTML, inline and attached files, Reply-To, custom headers, a Bcc) sent in every
  SMTP encryption mode and fetched in every POP3 encryption mode, compared field by
  field and byte for byte.
* Postfix's own verdicts (unknown user, full mailbox, size limit, relay denied,
  wrong password) and the statuses our handler turns them into.
* What the 'none' mode does with a password when Postfix only offers AUTH after
  STARTTLS: it fails, and the password never crosses the wire.

The servers' own logs and Received headers are the evidence for what happened on
their side; a :class:`~.support.WireTap` shows what our client sent in clear.
"""

from __future__ import annotations

import base64
import email
import email.policy
import logging
import os
import re
from email.message import EmailMessage
from typing import Any

import pytest

from src.handlers._mime.builder import build_message
from src.handlers.smtp import SMTPDeliveryStatus

from .mailstack import MailStack
from .support import (
    WireTap,
    delivered,
    maildir_texts,
    pop3_handler,
    secret_forms,
    smtp_handler,
    token,
    wait_for_log,
)

SMTP_MODES = ("tls", "ssl", "none")
POP3_MODES = ("tls", "ssl", "none")

# Received: ... with <protocol>; RFC 3848 names TLS (S) and AUTH (A) in it.
_RECEIVED_PROTOCOL = {"tls": "ESMTPSA", "ssl": "ESMTPSA", "none": "ESMTP"}


def _parse(raw: bytes) -> EmailMessage:
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


def _rich_message(marker: str, stack: MailStack) -> dict[str, Any]:
    """send_message() arguments that exercise headers, bodies and attachments."""
    pdf = b"%PDF-1.7\n" + os.urandom(3000) + b"\n%%EOF\n"
    return {
        "to_addresses": [f'"Ålice Ünïcode, Esq." <{stack.address("alice")}>'],
        "bcc_addresses": [stack.address("bob")],
        "reply_to": '"Support Désk" <support@example.test>',
        "subject": f"Grüße aus Köln – 東京 ✓ {marker}",
        "text_body": (
            f"Hallo Älice, {marker}\n"
            ".a line that starts with a dot\n"
            "..two dots\n"
            ".\n"
            "the line above is a lone dot, which must not end the message\n"
            + "long " * 300
            + "\nend"
        ),
        "html_body": f'<p>Grüße {marker}</p><img src="cid:logo-{marker}">',
        "attachments": [
            {
                "filename": "Überweisung März 2024.pdf",
                "contentType": "application/pdf",
                "data": base64.b64encode(pdf).decode(),
            },
            {"filename": "logo.png", "content": _PNG, "contentId": f"logo-{marker}"},
            {"filename": "every-byte.bin", "content": bytes(range(256)) * 7},
            {"filename": "dots.txt", "content": b".\r\n..\r\nbare\nlf\n.\n"},
        ],
        "custom_headers": {"X-Campaign": "spring-2024", "X-Ticket": "Ticket 42 für Jörg"},
        "_pdf": pdf,
    }


_PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR4nGNgYGBgAAAABQABpfZFQAAAAABJRU5ErkJggg=="
)


@pytest.mark.parametrize("pop3_mode", POP3_MODES)
@pytest.mark.parametrize("smtp_mode", SMTP_MODES)
def test_round_trip_in_every_encryption_mode(
    mail_stack: MailStack, smtp_mode: str, pop3_mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    stack = mail_stack
    stack.clear_mailbox("alice")
    stack.clear_mailbox("bob")
    marker = token()
    arguments = _rich_message(marker, stack)
    pdf = arguments.pop("_pdf")
    # 'none' goes to the MX-like listener, which takes local mail without AUTH.
    sender = smtp_handler(
        stack,
        smtp_mode,
        None if smtp_mode == "none" else "carol",
        from_address=f"Cärol Sender <{stack.address('carol')}>",
    )
    with sender:
        result = sender.send_message(**arguments)
    assert result.status is SMTPDeliveryStatus.SUCCESS, result.to_dict()
    assert result.recipient_failures == {}
    # Read the copies now: Dovecot moves them from new/ to cur/ once it has seen them.
    [alice_copy] = [path.read_bytes() for path in delivered(stack, "alice", marker)]
    [bob_copy] = [path.read_bytes() for path in delivered(stack, "bob", marker)]

    mark = stack.log_mark()
    caplog.set_level(logging.WARNING, logger="src.handlers.pop3")
    reader = pop3_handler(
        stack, pop3_mode, "alice", include_raw=True, include_attachment_content=True
    )
    with reader:
        [fetched] = reader.fetch_messages()

    # What Dovecot saw: TLS, or a plain session it counts as secured on loopback.
    [login] = wait_for_log(stack, mark, r"Login: user=<alice>, .*?, (TLS|secured), session")
    assert login.group(1) == ("secured" if pop3_mode == "none" else "TLS")
    plaintext_warnings = [r for r in caplog.records if "without encryption" in r.getMessage()]
    assert len(plaintext_warnings) == (1 if pop3_mode == "none" else 0)
    assert stack.users["alice"] not in caplog.text

    # The parsed dict.
    assert fetched["messageIdHeader"] == result.message_id
    assert fetched["subject"] == arguments["subject"]
    assert fetched["from"] == stack.address("carol")
    assert fetched["to"] == [stack.address("alice")]
    assert fetched["bcc"] == []
    assert fetched["textBody"].replace("\r\n", "\n") == arguments["text_body"]
    assert fetched["htmlBody"] == arguments["html_body"]
    contents = {a["filename"]: a for a in fetched["attachments"]}
    assert contents["Überweisung März 2024.pdf"]["content"] == pdf
    assert contents["Überweisung März 2024.pdf"]["contentType"] == "application/pdf"
    for attachment in arguments["attachments"][1:]:
        assert contents[attachment["filename"]]["content"] == attachment["content"]
    assert fetched["raw"] == alice_copy.replace(b"\n", b"\r\n")

    # The headers, read with the standard library.
    message = _parse(fetched["raw"])
    assert message["Message-ID"] == result.message_id
    [to] = message["To"].addresses
    assert (to.display_name, to.addr_spec) == ("Ålice Ünïcode, Esq.", stack.address("alice"))
    [sender_address] = message["From"].addresses
    assert sender_address.display_name == "Cärol Sender"
    [reply_to] = message["Reply-To"].addresses
    assert (reply_to.display_name, reply_to.addr_spec) == ("Support Désk", "support@example.test")
    assert message["X-Campaign"] == "spring-2024"
    assert message["X-Ticket"] == "Ticket 42 für Jörg"
    received_headers = message.get_all("Received")
    assert received_headers is not None
    received = received_headers[0]
    assert f"with {_RECEIVED_PROTOCOL[smtp_mode]} id" in received

    # The Bcc: delivered, and nowhere in sight except Postfix's own delivery trace
    # in the Bcc recipient's copy (Delivered-To / X-Original-To name the mailbox).
    bob = stack.address("bob").encode()
    for copy in (alice_copy, bob_copy):
        assert not re.search(rb"(?im)^bcc:", copy)
    assert bob not in alice_copy.lower()
    traced = [line for line in bob_copy.split(b"\n") if bob in line.lower()]
    assert traced == [b"X-Original-To: " + bob, b"Delivered-To: " + bob]
    assert _parse(bob_copy)["Message-ID"] == result.message_id


def test_message_id_survives_and_headers_are_unique(mail_stack: MailStack) -> None:
    """Postfix adds no second Message-ID or Date to what our builder wrote."""
    stack = mail_stack
    marker = token()
    with smtp_handler(stack, "tls", "bob") as sender:
        result = sender.send_message([stack.address("alice")], f"ids {marker}", text_body=marker)
    assert result.success
    [copy] = delivered(stack, "alice", marker)
    message = _parse(copy.read_bytes())
    for name in ("Message-ID", "Date", "From", "To", "Subject", "MIME-Version"):
        assert len(message.get_all(name) or []) == 1, name
    assert message["Message-ID"] == result.message_id


# ---------------------------------------------------------------- 'none' with a password


def test_none_mode_with_password_fails_before_any_auth(
    mail_stack: MailStack, caplog: pytest.LogCaptureFixture
) -> None:
    """Postfix offers AUTH on the submission port only after STARTTLS.

    Our 'none' mode never upgrades, so it sees no AUTH, fails at once with a
    message that points at encryption='tls', and never sends the credentials.
    """
    stack = mail_stack
    caplog.set_level(logging.DEBUG)
    mark = stack.log_mark()
    with WireTap(stack.host, stack.smtp_submission_port) as tap:
        sender = smtp_handler(stack, "none", "bob", port=tap.port)
        result = sender.send_message([stack.address("alice")], "in clear?", text_body="no")
        assert not sender.connect()
        sender.close()
    assert result.status is SMTPDeliveryStatus.FAILED
    assert not result.is_retryable and result.retry_count == 0
    assert result.smtp_code is None
    assert "STARTTLS" in (result.smtp_error or "") and "'tls'" in (result.smtp_error or "")
    assert sender.last_error == result.smtp_error
    # On the wire: EHLO and QUIT, never AUTH, never MAIL, and no form of the secret.
    wire = bytes(tap.sent).upper()
    assert tap.connections == 2 and wire.count(b"EHLO ") == 2
    assert b"AUTH" not in wire and b"MAIL FROM" not in wire
    for form in secret_forms("bob", stack.users["bob"]):
        assert form.upper() not in wire
    # Postfix agrees: both sessions ended with no AUTH command counted.
    # (Ours are the sessions without STARTTLS; an earlier test's may still be logged.)
    sessions = wait_for_log(
        stack, mark, r"postfix/submission/smtpd.* disconnect from \S+ (?!.*starttls)(.*)", 2
    )
    assert [match.group(1) for match in sessions if "auth=" in match.group(1)] == []
    # Nothing claimed that credentials went out in clear.
    assert "without encryption" not in caplog.text
    assert stack.users["bob"] not in caplog.text
    assert stack.users["bob"] not in repr(result.to_dict())


def test_none_mode_without_login_sends_to_the_mx_in_clear(mail_stack: MailStack) -> None:
    """A plain MX (STARTTLS offered, not required): 'none' sends without upgrading."""
    stack = mail_stack
    marker = token()
    with (
        WireTap(stack.host, stack.smtp_plain_port) as tap,
        smtp_handler(stack, "none", None, port=tap.port) as sender,
    ):
        result = sender.send_message([stack.address("alice")], marker, text_body=marker)
    assert result.status is SMTPDeliveryStatus.SUCCESS
    assert marker.encode() in bytes(tap.sent)  # really in clear
    assert b"STARTTLS" not in bytes(tap.sent).upper()
    delivered(stack, "alice", marker)


def test_none_mode_with_password_on_a_server_without_auth(mail_stack: MailStack) -> None:
    """The MX offers no AUTH at all: a clear, permanent failure, nothing sent."""
    stack = mail_stack
    with smtp_handler(stack, "none", "bob", port=stack.smtp_plain_port) as sender:
        result = sender.send_message([stack.address("alice")], "x", text_body="y")
    assert result.status is SMTPDeliveryStatus.FAILED
    assert not result.is_retryable
    assert "AUTH" in (result.smtp_error or "")


# ---------------------------------------------------------------- the wrong mode for a port


def test_implicit_tls_on_a_starttls_port_fails_at_once(mail_stack: MailStack) -> None:
    """'ssl' on submission: Postfix greets in plain text, the handshake fails."""
    stack = mail_stack
    with smtp_handler(stack, "ssl", "bob", port=stack.smtp_submission_port) as sender:
        result = sender.send_message([stack.address("alice")], "x", text_body="y")
    assert result.status is SMTPDeliveryStatus.FAILED
    assert not result.is_retryable and result.retry_count == 0
    assert "plain text" in (result.smtp_error or "")
    assert "encryption='tls'" in (result.smtp_error or "")


def test_starttls_on_an_implicit_tls_port_fails_at_once(mail_stack: MailStack) -> None:
    """'tls' on smtps: no plain greeting comes; the port answers a TLS ClientHello.

    The mode is wrong for the port, which no retry can mend: FAILED, not retryable,
    and the message names the fix.
    """
    stack = mail_stack
    sender = smtp_handler(stack, "tls", "bob", port=stack.smtps_port, timeout=1)
    with sender:
        result = sender.send_message([stack.address("alice")], "x", text_body="y")
    assert result.status is SMTPDeliveryStatus.FAILED
    assert not result.is_retryable and result.retry_count == 0
    assert "encryption='ssl'" in (result.smtp_error or "")


# ---------------------------------------------------------------- Postfix's verdicts


def test_unknown_local_recipient_is_rejected(mail_stack: MailStack) -> None:
    stack = mail_stack
    nobody = stack.address("nobody")
    with smtp_handler(stack, "tls", "bob") as sender:
        result = sender.send_message([nobody], "to nobody", text_body="x")
    assert result.status is SMTPDeliveryStatus.REJECTED
    assert (result.smtp_code, result.enhanced_status_code) == (550, "5.1.1")
    assert not result.is_retryable and result.retry_count == 0
    assert list(result.recipient_failures) == [nobody]
    assert result.recipient_failures[nobody].startswith("550 5.1.1 ")
    assert "User unknown" in result.recipient_failures[nobody]


def test_unknown_recipient_beside_a_good_one_is_listed(mail_stack: MailStack) -> None:
    stack = mail_stack
    marker = token()
    nobody = stack.address("nobody")
    with smtp_handler(stack, "ssl", "bob") as sender:
        result = sender.send_message([nobody, stack.address("alice")], marker, text_body=marker)
    assert result.status is SMTPDeliveryStatus.SUCCESS
    assert list(result.recipient_failures) == [nobody]
    delivered(stack, "alice", marker)


def test_recipient_over_quota_alone_is_rejected(mail_stack: MailStack) -> None:
    stack = mail_stack
    carol = stack.address("carol")
    with smtp_handler(stack, "tls", "bob") as sender:
        result = sender.send_message([carol], "to a full mailbox", text_body="x")
    assert result.status is SMTPDeliveryStatus.REJECTED
    assert (result.smtp_code, result.enhanced_status_code) == (552, "5.2.2")
    assert not result.is_retryable
    assert result.recipient_failures[carol].startswith("552 5.2.2 ")
    assert stack.messages("carol") == []


def test_recipient_over_quota_beside_a_good_one(mail_stack: MailStack) -> None:
    stack = mail_stack
    marker = token()
    carol = stack.address("carol")
    with smtp_handler(stack, "tls", "bob") as sender:
        result = sender.send_message(
            [stack.address("alice")], marker, text_body=marker, cc_addresses=[carol]
        )
    assert result.status is SMTPDeliveryStatus.SUCCESS
    assert result.smtp_code == 250
    assert list(result.recipient_failures) == [carol]
    assert result.recipient_failures[carol].startswith("552 5.2.2 ")
    [copy] = delivered(stack, "alice", marker)
    assert carol.encode() in copy.read_bytes()  # still named in Cc, as sent


def _body_of_size(stack: MailStack, size: int, marker: str) -> str:
    """A text body that makes our message exactly ``size`` bytes, as the handler builds it."""
    fields: dict[str, Any] = {
        "from_address": stack.address("bob"),
        "to_addresses": [stack.address("alice")],
        "subject": marker,
        "custom_headers": {"Message-ID": f"<{marker}@example.test>"},
    }
    overhead = len(build_message(text_body="", **fields).data)
    line = "0123456789" * 7 + "\r\n"
    missing = size - overhead
    body = (line * (missing // len(line) + 1))[:missing]
    assert len(build_message(text_body=body, **fields).data) == size
    return body


def test_message_over_the_size_limit_fails_before_data(mail_stack: MailStack) -> None:
    """Postfix advertises SIZE; a bigger message is refused before MAIL FROM."""
    stack = mail_stack
    limit = stack.limited_message_size
    marker = token()
    body = _body_of_size(stack, limit + 1, marker)
    with WireTap(stack.host, stack.limited_submission_port) as tap:
        sender = smtp_handler(stack, "tls", "bob", port=tap.port)
        with sender:
            assert sender.connect()
            too_big = sender.send_message(
                [stack.address("alice")],
                marker,
                text_body=body,
                custom_headers={"Message-ID": f"<{marker}@example.test>"},
            )
    assert too_big.status is SMTPDeliveryStatus.FAILED
    assert not too_big.is_retryable and too_big.retry_count == 0
    assert too_big.smtp_code is None
    assert f"at most {limit}" in (too_big.smtp_error or "")
    # The session is encrypted, so count bytes: the handshake and the login went
    # out, nothing near the size of the message.
    assert len(tap.sent) < limit // 4


def test_message_at_the_size_limit_gets_552_after_data(mail_stack: MailStack) -> None:
    """SIZE bytes exactly pass our check (RFC 1870 counts CRLF), but Postfix counts its
    queue file, with the envelope and its own Received header: 552 5.3.4 after DATA."""
    stack = mail_stack
    limit = stack.limited_message_size
    marker = token()
    body = _body_of_size(stack, limit, marker)
    mark = stack.log_mark()
    with WireTap(stack.host, stack.limited_submission_port) as tap:
        sender = smtp_handler(stack, "tls", "bob", port=tap.port)
        with sender:
            result = sender.send_message(
                [stack.address("alice")],
                marker,
                text_body=body,
                custom_headers={"Message-ID": f"<{marker}@example.test>"},
            )
    assert result.status is SMTPDeliveryStatus.FAILED
    assert (result.smtp_code, result.enhanced_status_code) == (552, "5.3.4")
    assert not result.is_retryable and result.retry_count == 0
    assert len(tap.sent) > limit  # the whole message went out before the verdict
    # Postfix's side: cleanup started a queue file, smtpd dropped it as too big.
    wait_for_log(stack, mark, r"postfix/limited/smtpd.*: queue file size limit exceeded")
    assert all(marker.encode() not in text for text in maildir_texts(stack, "alice"))


def test_message_comfortably_under_the_size_limit_is_delivered(mail_stack: MailStack) -> None:
    stack = mail_stack
    marker = token()
    body = _body_of_size(stack, stack.limited_message_size - 2048, marker)
    with smtp_handler(stack, "tls", "bob", port=stack.limited_submission_port) as sender:
        result = sender.send_message(
            [stack.address("alice")],
            marker,
            text_body=body,
            custom_headers={"Message-ID": f"<{marker}@example.test>"},
        )
    assert result.status is SMTPDeliveryStatus.SUCCESS, result.to_dict()
    delivered(stack, "alice", marker)


def test_relay_denied_for_an_authenticated_sender(mail_stack: MailStack) -> None:
    stack = mail_stack
    with smtp_handler(stack, "tls", "bob") as sender:
        result = sender.send_message(["friend@elsewhere.test"], "off site", text_body="x")
    assert result.status is SMTPDeliveryStatus.REJECTED
    assert (result.smtp_code, result.enhanced_status_code) == (550, "5.7.1")
    assert not result.is_retryable


def test_relay_denied_without_login(mail_stack: MailStack) -> None:
    stack = mail_stack
    with smtp_handler(stack, "tls", None, from_address="someone@elsewhere.test") as sender:
        result = sender.send_message(["friend@elsewhere.test"], "relay me", text_body="x")
    assert result.status is SMTPDeliveryStatus.REJECTED
    assert (result.smtp_code, result.enhanced_status_code) == (554, "5.7.1")
    assert "Access denied" in (result.smtp_error or "")
    assert not result.is_retryable


def test_mx_refuses_to_relay(mail_stack: MailStack) -> None:
    stack = mail_stack
    with smtp_handler(stack, "none", None) as sender:
        result = sender.send_message(["friend@elsewhere.test"], "relay me", text_body="x")
    assert result.status is SMTPDeliveryStatus.REJECTED
    assert (result.smtp_code, result.enhanced_status_code) == (554, "5.7.1")
    assert "Relay access denied" in (result.smtp_error or "")


@pytest.mark.parametrize("mode", ["tls", "ssl"])
def test_wrong_password_fails_once_and_is_not_retried(
    mail_stack: MailStack, mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    stack = mail_stack
    caplog.set_level(logging.DEBUG)
    wrong = "not-" + stack.users["bob"]
    sleeps: list[float] = []
    mark = stack.log_mark()
    sender = smtp_handler(stack, mode, "bob", password=wrong, sleeps=sleeps)
    with sender:
        result = sender.send_message([stack.address("alice")], "x", text_body="y")
    assert result.status is SMTPDeliveryStatus.FAILED
    assert (result.smtp_code, result.enhanced_status_code) == (535, "5.7.8")
    assert not result.is_retryable and result.retry_count == 0 and sleeps == []
    # One AUTH command, not one per mechanism: each failure counts against the
    # account at the server (rate limits, lockouts).
    listener = "smtps" if mode == "ssl" else "submission"
    [session] = wait_for_log(
        stack, mark, rf"postfix/{listener}/smtpd.* disconnect from .* auth=(\d+)/(\d+)"
    )
    assert session.groups() == ("0", "1")
    for shown in (result.smtp_error or "", repr(result.to_dict()), caplog.text, repr(sender)):
        assert wrong not in shown


@pytest.mark.parametrize("mode", ["tls", "ssl"])
def test_connect_authenticate_and_test_connection(mail_stack: MailStack, mode: str) -> None:
    stack = mail_stack
    with smtp_handler(stack, mode, "bob") as handler:
        assert handler.connect() and handler.authenticate(), handler.last_error
        assert handler.test_connection(), handler.last_error
        assert handler.last_error is None
    wrong = smtp_handler(stack, mode, "bob", password="wrong")
    assert not wrong.test_connection()
    assert wrong.last_error is not None and "535" in wrong.last_error
    wrong.close()


def test_login_with_the_full_address(mail_stack: MailStack) -> None:
    stack = mail_stack
    marker = token()
    with smtp_handler(
        stack, "ssl", "bob", login_as=stack.address("bob"), from_address=stack.address("bob")
    ) as sender:
        result = sender.send_message([stack.address("alice")], marker, text_body=marker)
    assert result.success, result.to_dict()
    delivered(stack, "alice", marker)


def test_pool_reuses_the_postfix_session(mail_stack: MailStack) -> None:
    """Several sends share one TLS session; Postfix takes them one after the other."""
    stack = mail_stack
    marker = token()
    with smtp_handler(stack, "tls", "bob") as sender:
        results = [
            sender.send_message([stack.address("alice")], f"{marker} {n}", text_body=marker)
            for n in range(5)
        ]
        stats = sender.pool.get_stats()
    assert all(r.success for r in results)
    assert len({r.message_id for r in results}) == 5
    assert stats["created"] == 1 and stats["reused"] == 4
    delivered(stack, "alice", marker, count=5)
