"""The other clients we are measured against, and the messages everyone sends.

Each peer is used the way its documentation shows, with one open connection where
the target says so. Nothing here is tuned to look worse than it is: smtplib is given
pre-built bytes (it cannot build), Django builds its own message as it always does.
"""

from __future__ import annotations

import asyncio
import base64
import email
import poplib
import smtplib
from email import policy
from email.message import EmailMessage
from email.mime.application import MIMEApplication
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from typing import Any

SENDER = "sender@example.test"
SUBJECT = "Benchmark message"
_LINE = "The quick brown fox jumps over the lazy dog; pack my box with five dozen jugs.\n"
#: About 2 KB of plain text (the SMTP targets' message).
TEXT_2KB = (_LINE * 27)[:2048]
HTML_2KB = "<html><body><p>" + TEXT_2KB.replace("\n", "<br>\n") + "</p></body></html>"
#: 100 KB of incompressible bytes (target 5's attachment).
ATTACHMENT_100KB = bytes((i * 7919 + (i >> 8) * 104729) % 251 for i in range(100 * 1024))


def recipients(count: int) -> list[str]:
    return [f"rcpt{i}@example.test" for i in range(count)]


# ----------------------------------------------------------------------- Django


def django_setup() -> None:
    """Configure Django once, for e-mail only (no apps, no database)."""
    from django.conf import settings

    if not settings.configured:
        settings.configure(
            EMAIL_BACKEND="django.core.mail.backends.smtp.EmailBackend",
            DEFAULT_CHARSET="utf-8",
            DEFAULT_FROM_EMAIL=SENDER,
            EMAIL_TIMEOUT=30,
        )


def django_backend(host: str, port: int, **options: Any) -> Any:
    django_setup()
    from django.core.mail.backends.smtp import EmailBackend

    return EmailBackend(host=host, port=port, fail_silently=False, timeout=30, **options)


def django_send_on(backend: Any, to: list[str]) -> None:
    """One message through an already opened backend (Django builds it)."""
    from django.core.mail import EmailMessage as DjangoMessage

    sent = DjangoMessage(SUBJECT, TEXT_2KB, SENDER, to, connection=backend).send()
    assert sent == 1


def django_send_mail(host: str, port: int, user: str, password: str, to: list[str]) -> None:
    """``django.core.mail.send_mail`` as a view would call it: new connection each time."""
    django_setup()
    from django.conf import settings
    from django.core.mail import send_mail

    settings.EMAIL_HOST, settings.EMAIL_PORT = host, port
    settings.EMAIL_USE_TLS = True
    sent = send_mail(SUBJECT, TEXT_2KB, SENDER, to, auth_user=user, auth_password=password)
    assert sent == 1


def django_build(text: str, html: str, attachment: bytes) -> bytes:
    django_setup()
    from django.core.mail import EmailMultiAlternatives

    message = EmailMultiAlternatives(SUBJECT, text, SENDER, ["rcpt0@example.test"])
    message.attach_alternative(html, "text/html")
    message.attach("report.pdf", attachment, "application/pdf")
    return message.message().as_bytes()


# ----------------------------------------------------------------------- stdlib builders


def stdlib_build(text: str, html: str, attachment: bytes) -> bytes:
    """``email.message.EmailMessage`` (policy.default), as the stdlib docs show."""
    message = EmailMessage()
    message["From"], message["To"], message["Subject"] = SENDER, "rcpt0@example.test", SUBJECT
    message.set_content(text)
    message.add_alternative(html, subtype="html")
    message.add_attachment(attachment, maintype="application", subtype="pdf", filename="report.pdf")
    return message.as_bytes()


def legacy_mime_build(text: str, html: str, attachment: bytes) -> bytes:
    """The legacy ``email.mime`` classes (compat32)."""
    root = MIMEMultipart("mixed")
    root["From"], root["To"], root["Subject"] = SENDER, "rcpt0@example.test", SUBJECT
    alternative = MIMEMultipart("alternative")
    alternative.attach(MIMEText(text, "plain", "utf-8"))
    alternative.attach(MIMEText(html, "html", "utf-8"))
    root.attach(alternative)
    part = MIMEApplication(attachment, "pdf")
    part.add_header("Content-Disposition", "attachment", filename="report.pdf")
    root.attach(part)
    return root.as_bytes()


def hand_build(text: str, html: str, attachment: bytes) -> bytes:
    """The issue's floor: joining pre-encoded parts with ``base64.encodebytes``."""
    boundary, inner = b"=_outer", b"=_inner"
    return b"".join(
        [
            b"From: "
            + SENDER.encode()
            + b"\r\nTo: rcpt0@example.test\r\nSubject: "
            + SUBJECT.encode()
            + b"\r\nMIME-Version: 1.0\r\n",
            b'Content-Type: multipart/mixed; boundary="' + boundary + b'"\r\n\r\n',
            b"--"
            + boundary
            + b'\r\nContent-Type: multipart/alternative; boundary="'
            + inner
            + b'"\r\n\r\n',
            b"--" + inner + b"\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n",
            text.encode().replace(b"\n", b"\r\n"),
            b"\r\n--" + inner + b"\r\nContent-Type: text/html; charset=utf-8\r\n\r\n",
            html.encode().replace(b"\n", b"\r\n"),
            b"\r\n--" + inner + b"--\r\n",
            b"--" + boundary + b"\r\nContent-Type: application/pdf\r\n"
            b"Content-Transfer-Encoding: base64\r\n\r\n",
            base64.encodebytes(attachment).replace(b"\n", b"\r\n"),
            b"--" + boundary + b"--\r\n",
        ]
    )


# ----------------------------------------------------------------------- SMTP peers


class SmtplibSender:
    """smtplib on one persistent connection, sending pre-built bytes."""

    def __init__(self, host: str, port: int, data: bytes) -> None:
        self.client = smtplib.SMTP(host, port, timeout=30)
        self.client.ehlo()
        self.data = data

    def send(self, to: list[str]) -> None:
        refused = self.client.sendmail(SENDER, to, self.data)
        assert not refused

    def close(self) -> None:
        self.client.quit()


class AiosmtplibSender:
    """aiosmtplib on one persistent connection, pre-built bytes, driven from sync code."""

    def __init__(self, host: str, port: int, data: bytes) -> None:
        import aiosmtplib

        self.loop = asyncio.new_event_loop()
        self.client = aiosmtplib.SMTP(hostname=host, port=port, timeout=30, start_tls=False)
        self.loop.run_until_complete(self.client.connect())
        self.data = data

    def send_many(self, to: list[str], count: int) -> None:
        async def run() -> None:
            for _ in range(count):
                refused, _ = await self.client.sendmail(SENDER, to, self.data)
                assert not refused

        self.loop.run_until_complete(run())

    def close(self) -> None:
        self.loop.run_until_complete(self.client.quit())
        self.loop.close()


# ----------------------------------------------------------------------- POP3 peers


def poplib_login(host: str, port: int, user: str, password: str) -> poplib.POP3:
    client = poplib.POP3(host, port, timeout=30)
    client.user(user)
    client.pass_(password)
    return client


def poplib_retrieve(client: poplib.POP3, number: int) -> bytes:
    """RETR as poplib users write it: the lines joined back into the message."""
    _, lines, _ = client.retr(number)
    return b"\r\n".join(lines) + b"\r\n"


def stdlib_parse(raw: bytes, number: int) -> dict[str, Any]:
    """``policy.default`` parsing into a dict like ``fetch_messages()`` gives."""
    message = email.message_from_bytes(raw, policy=policy.default)
    body = message.get_body(preferencelist=("plain",))
    html = message.get_body(preferencelist=("html",))
    attachments = []
    for part in message.iter_attachments():
        content = part.get_content()
        attachments.append(
            {
                "filename": part.get_filename(),
                "content_type": part.get_content_type(),
                "size": len(content) if isinstance(content, bytes | str) else 0,
            }
        )
    return {
        "id": number,
        "from": str(message.get("From", "")),
        "to": [str(a) for a in message.get("To", "").addresses] if message.get("To") else [],
        "subject": str(message.get("Subject", "")),
        "date": str(message.get("Date", "")),
        "body": body.get_content() if body is not None else "",
        "html_body": html.get_content() if html is not None else "",
        "attachments": attachments,
        "size": len(raw),
    }


# ----------------------------------------------------------------------- mailbox content


def small_message(index: int) -> bytes:
    """About 2 KB: text and HTML alternatives and a small attachment (LF endings)."""
    attachment = base64.encodebytes(bytes((index + i) % 256 for i in range(240)))
    return (
        (
            f"Return-Path: <{SENDER}>\n"
            f"From: Bench Sender <{SENDER}>\n"
            f"To: Reader <reader@example.test>\n"
            f"Subject: Small message {index}\n"
            f"Date: Mon, 02 Mar 2026 10:{index % 60:02d}:00 +0000\n"
            f"Message-ID: <small-{index}@example.test>\n"
            "MIME-Version: 1.0\n"
            'Content-Type: multipart/mixed; boundary="b1"\n\n'
            "--b1\n"
            'Content-Type: multipart/alternative; boundary="b2"\n\n'
            "--b2\n"
            'Content-Type: text/plain; charset="utf-8"\n\n' + _LINE * 8 + "--b2\n"
            'Content-Type: text/html; charset="utf-8"\n\n'
            "<p>" + _LINE * 5 + "</p>\n"
            "--b2--\n"
            "--b1\n"
            'Content-Type: application/octet-stream; name="data.bin"\n'
            "Content-Transfer-Encoding: base64\n"
            'Content-Disposition: attachment; filename="data.bin"\n\n'
        ).encode()
        + attachment
        + b"--b1--\n"
    )


def large_message(index: int, size: int) -> bytes:
    """A message of about ``size`` bytes: short text and one base64 attachment."""
    raw_size = size * 3 // 4
    chunk = bytes(range(256)) * 64
    payload = (chunk * (raw_size // len(chunk) + 1))[:raw_size]
    return (
        (
            f"From: Bench Sender <{SENDER}>\n"
            f"To: Reader <reader@example.test>\n"
            f"Subject: Large message {index}\n"
            f"Date: Mon, 02 Mar 2026 11:00:00 +0000\n"
            f"Message-ID: <large-{index}@example.test>\n"
            "MIME-Version: 1.0\n"
            'Content-Type: multipart/mixed; boundary="b1"\n\n'
            "--b1\n"
            'Content-Type: text/plain; charset="utf-8"\n\n'
            "See the attachment.\n"
            "--b1\n"
            'Content-Type: application/octet-stream; name="big.bin"\n'
            "Content-Transfer-Encoding: base64\n"
            'Content-Disposition: attachment; filename="big.bin"\n\n'
        ).encode()
        + base64.encodebytes(payload)
        + b"--b1--\n"
    )
