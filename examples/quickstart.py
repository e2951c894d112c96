"""Send a message through an embedded SMTP server and print what happened.

Everything runs on loopback: an in-process SMTP server with STARTTLS and AUTH, a
private certificate authority the client is told to trust (verification stays on),
and the library's handler sending a text + HTML message with an attachment.

    python examples/quickstart.py
"""

from __future__ import annotations

import base64
import json
import secrets

from src.handlers.smtp import SMTPConnectionPool, SMTPProtocolHandler
from src.testing.smtp_server import SMTPTestServer
from src.testing.tls import TestCertificates


def main() -> int:
    certs = TestCertificates()
    password = secrets.token_urlsafe(12)
    with SMTPTestServer(
        tls="starttls", ssl_context=certs.server_context(), users={"demo": password}
    ) as smtp_server:
        handler = SMTPProtocolHandler(
            smtp_server.host,
            smtp_server.port,
            username="demo",
            password=password,
            encryption="tls",
            from_address='"Demo Sender" <demo@example.test>',
            ssl_context=certs.client_context(),
            pool=SMTPConnectionPool(max_connections=2),
        )
        with handler:
            result = handler.send_message(
                to_addresses=["Ada <ada@example.test>"],
                subject="Hello from mailhandlers",
                text_body="Hi Ada,\n\nthe report is attached.\n",
                html_body="<p>Hi Ada,</p><p>the report is <b>attached</b>.</p>",
                attachments=[
                    {
                        "filename": "report.csv",
                        "contentType": "text/csv",
                        "data": base64.b64encode(b"month,total\n2026-10,42\n").decode(),
                    }
                ],
            )
        print("DeliveryResult.to_dict():")
        print(json.dumps(result.to_dict(), indent=2))
        [received] = smtp_server.wait_for_messages(1)
        message = received.message
        print("\nThe SMTP server received:")
        print(f"  envelope from {received.mail_from} to {received.rcpt_tos} (TLS: {received.secure})")
        for header in ("From", "To", "Subject", "Message-ID"):
            print(f"  {header}: {message[header]}")
        print(f"  structure: {message.get_content_type()} with parts "
              f"{[part.get_content_type() for part in message.walk()][1:]}")
    return 0 if result.success else 1


if __name__ == "__main__":
    raise SystemExit(main())
