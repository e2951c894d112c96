"""Smoke test of an installed mailhandlers: send a message and fetch it back.

Run by .ci/run with the interpreter of a fresh virtual environment that has the wheel
installed, from a directory outside the checkout; the checkout's path is the argument,
so a copy imported from there by mistake is caught.
"""

import sys
from pathlib import Path

import src.handlers
from src.handlers import SMTPConnectionPool, SMTPProtocolHandler
from src.handlers.pop3 import POP3ProtocolHandler
from src.testing.pop3_server import POP3TestServer
from src.testing.smtp_server import ReceivedMessage, SMTPTestServer

checkout = Path(sys.argv[1]).resolve()
package = Path(src.handlers.__file__).resolve()
if package.is_relative_to(checkout):
    sys.exit(f"smoke: FAILED — src.handlers was imported from the checkout ({package})")

with POP3TestServer(users={"user": "smoke-password"}) as pop3:

    def deliver(message: ReceivedMessage) -> None:
        pop3.add_message(message.data)

    with SMTPTestServer(on_message=deliver) as smtp:
        pool = SMTPConnectionPool(max_connections=1)
        sender = SMTPProtocolHandler(
            smtp.host, smtp.port, encryption="none", from_address="ci@example.test", pool=pool
        )
        result = sender.send_message(["user@example.test"], "Smoke", text_body="installed")
        pool.close_all()
    reader = POP3ProtocolHandler(pop3.host, pop3.port, "user", "smoke-password", "none")
    fetched = reader.fetch_messages()

if not result.success:
    sys.exit(f"smoke: FAILED — the send ended {result.status.value}: {result.smtp_error}")
if [m["messageIdHeader"] for m in fetched] != [result.message_id]:
    sys.exit(f"smoke: FAILED — fetched {fetched!r}, expected {result.message_id}")
print(f"smoke: OK — the installed package at {package.parent} sent and fetched a message")
