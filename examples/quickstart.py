"""Send a message through SMTP, fetch it back through POP3, print both ends.

Everything runs on loopback: an in-process SMTP server with STARTTLS and AUTH, an
in-process POP3 server with TLS from the first byte, and a private certificate
authority the clients are told to trust (verification stays on). The SMTP server
drops every message it accepts into the POP3 mailbox, as a real mail system would.
``mailhandlers demo`` does the same from the command line.

    python examples/quickstart.py
"""

from __future__ import annotations

import json
import secrets
from typing import Any

from src.handlers.pop3 import POP3ProtocolHandler
from src.handlers.smtp import DeliveryResult, SMTPConnectionPool, SMTPProtocolHandler
from src.testing.pop3_server import POP3TestServer
from src.testing.smtp_server import SMTPTestServer
from src.testing.tls import TestCertificates


def send(smtp: SMTPTestServer, password: str, certs: TestCertificates) -> DeliveryResult:
    """Validate, build and send a message over a verified STARTTLS connection."""
    with SMTPProtocolHandler(
        smtp.host,
        smtp.port,
        username="demo",
        password=password,
        encryption="tls",
        from_address='"Demo Sender" <demo@example.test>',
        ssl_context=certs.client_context(),
        pool=SMTPConnectionPool(max_connections=1),
    ) as handler:
        return handler.send_message(
            to_addresses=["Ada <ada@example.test>"],
            subject="Hello from mailhandlers",
            text_body="Hi Ada,\n\nthe report is attached.\n",
            html_body="<p>Hi Ada,</p><p>the report is <b>attached</b>.</p>",
            attachments=[{"filename": "report.csv", "content": b"month,total\n2026-10,42\n"}],
        )


def fetch(pop3: POP3TestServer, password: str, certs: TestCertificates) -> list[dict[str, Any]]:
    """A stateless call: open a TLS session, log in, fetch everything, QUIT."""
    handler = POP3ProtocolHandler(
        pop3.host, pop3.port, "demo", password, "ssl", ssl_context=certs.client_context()
    )
    return handler.fetch_messages()


def main() -> int:
    certs = TestCertificates()
    password = secrets.token_urlsafe(12)
    users = {"demo": password}
    with POP3TestServer(tls="implicit", ssl_context=certs.server_context(), users=users) as pop3:
        with SMTPTestServer(
            tls="starttls",
            ssl_context=certs.server_context(),
            users=users,
            on_message=lambda received: pop3.add_message(received.data, user="demo"),
        ) as smtp:
            result = send(smtp, password, certs)
        print("DeliveryResult.to_dict():")
        print(json.dumps(result.to_dict(), indent=2))
        [message] = fetch(pop3, password, certs)
    print("\nFetched back over POP3:")
    print(json.dumps(message, indent=2))
    return 0 if result.success and message["messageIdHeader"] == result.message_id else 1


if __name__ == "__main__":
    raise SystemExit(main())
