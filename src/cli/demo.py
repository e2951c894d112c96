"""``mailhandlers demo``: send a message and fetch it back, all on loopback.

Two embedded servers run in this process: SMTP with STARTTLS and AUTH, POP3 with
TLS from the first byte, both with a certificate from a throw-away CA that the
clients are told to trust (verification stays on). Whatever the SMTP server accepts
lands in the POP3 mailbox. The library's handlers do the sending and the fetching.
Needs the ``testing`` extra (aiosmtpd, trustme).
"""

from __future__ import annotations

import argparse
import secrets
import ssl
from typing import Any

from ..handlers.pop3 import POP3ProtocolHandler
from ..handlers.retry import RetryPolicy
from ..handlers.smtp import DeliveryResult, SMTPConnectionPool, SMTPProtocolHandler
from .common import CLIError, ExitCode, add_verbose_option
from .output import print_json, to_json
from .verbose import Redactor

DESCRIPTION = """\
Start an SMTP and a POP3 server on loopback, send a text + HTML message with an
attachment through SMTP, fetch it back through POP3, and print the DeliveryResult
and the fetched message, then a one-line verdict: "demo: OK — ..." (exit status 0)
or "demo: FAILED — <why>" (exit status 1). Nothing leaves this machine."""

USER = "demo"
SUBJECT = "Monthly report"
TEXT_BODY = "Hi Ada,\n\nthe report is attached.\n"
HTML_BODY = "<p>Hi Ada,</p><p>the report is <b>attached</b>.</p>"
REPORT_CSV = b"month,total\n2026-10,42\n2026-11,57\n"
VERIFIED = "sent 1 message over STARTTLS+AUTH and fetched it back over POP3S, verified"


def add_parser(commands: Any) -> None:
    """Register ``demo`` on the subcommand table."""
    parser: argparse.ArgumentParser = commands.add_parser(
        "demo",
        help="send and fetch back a message through embedded loopback servers",
        description=DESCRIPTION,
        allow_abbrev=False,
    )
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    add_verbose_option(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace, redactor: Redactor) -> int:
    """Run the round trip; 0 when the fetched message is the one that was sent."""
    try:
        from ..testing.pop3_server import POP3TestServer
        from ..testing.smtp_server import SMTPTestServer
        from ..testing.tls import TestCertificates
    except ImportError as error:
        raise CLIError(
            f"the demo needs the 'testing' extra ({error.name} is missing): "
            "pip install 'mailhandlers[testing]'",
            ExitCode.UNAVAILABLE,
        ) from None
    password = secrets.token_urlsafe(16)
    redactor.add(password, USER)
    certs = TestCertificates()
    users = {USER: password}
    with POP3TestServer(tls="implicit", ssl_context=certs.server_context(), users=users) as pop3:
        with SMTPTestServer(
            tls="starttls",
            ssl_context=certs.server_context(),
            users=users,
            require_starttls=True,
            auth_required=True,
            on_message=lambda received: pop3.add_message(received.data, user=USER),
        ) as smtp:
            result = _send(smtp.host, smtp.port, password, certs.client_context(), args.verbose)
            received = list(smtp.messages)
        fetched = _fetch(pop3.host, pop3.port, password, certs.client_context(), args.verbose)
        where = {"smtp": f"{smtp.host}:{smtp.port}", "pop3": f"{pop3.host}:{pop3.port}"}
    problem = _problem(result, received, fetched)
    verdict = f"demo: OK — {VERIFIED}" if problem is None else f"demo: FAILED — {problem}"
    _print(result, fetched, where, args.json, verdict)
    return ExitCode.OK if problem is None else ExitCode.FAILED


def _problem(
    result: DeliveryResult, received: list[Any], fetched: dict[str, Any] | None
) -> str | None:
    """Why the round trip did not prove what the verdict claims, or None when it did."""
    if not result.success:
        return f"the send ended {result.status.value}: {result.smtp_error}"
    if len(received) != 1:
        return f"the SMTP server accepted {len(received)} messages, expected 1"
    if not (received[0].secure and received[0].username == USER):
        return "the SMTP server got the message without STARTTLS and AUTH"
    if fetched is None:
        return "the POP3 mailbox was empty"
    expected = {
        "messageIdHeader": result.message_id,
        "subject": SUBJECT,
        "textBody": TEXT_BODY,
        "htmlBody": HTML_BODY,
        "attachments": [
            {"filename": "report.csv", "contentType": "text/csv", "size": len(REPORT_CSV)}
        ],
    }
    for key, value in expected.items():
        if fetched.get(key) != value:
            return f"the fetched message's {key} is {fetched.get(key)!r}, expected {value!r}"
    return None


def _send(
    host: str, port: int, password: str, context: ssl.SSLContext, trace: bool
) -> DeliveryResult:
    handler = SMTPProtocolHandler(
        host,
        port,
        username=USER,
        password=password,
        encryption="tls",
        from_address='"Demo Sender" <demo@example.test>',
        ssl_context=context,
        local_hostname="localhost",
        pool=SMTPConnectionPool(max_connections=1),
        trace=trace,
    )
    with handler:
        return handler.send_message(
            to_addresses=["Ada Lovelace <ada@example.test>"],
            subject=SUBJECT,
            text_body=TEXT_BODY,
            html_body=HTML_BODY,
            attachments=[{"filename": "report.csv", "content": REPORT_CSV}],
        )


def _fetch(
    host: str, port: int, password: str, context: ssl.SSLContext, trace: bool
) -> dict[str, Any] | None:
    handler = POP3ProtocolHandler(
        host,
        port,
        USER,
        password,
        "ssl",
        ssl_context=context,
        retry=RetryPolicy.never(),
        trace=trace,
    )
    messages = handler.fetch_messages()
    return messages[0] if messages else None


def _print(
    result: DeliveryResult,
    fetched: dict[str, Any] | None,
    where: dict[str, str],
    as_json: bool,
    verdict: str,
) -> None:
    if as_json:
        print_json({"delivery": result.to_dict(), "fetched": fetched, "verdict": verdict})
        return
    print(f"1. Sent through SMTP at {where['smtp']} (STARTTLS, AUTH as {USER}).")
    print("   DeliveryResult.to_dict():")
    print(to_json(result.to_dict()))
    print()
    print(f"2. Fetched back through POP3 at {where['pop3']} (TLS from the first byte).")
    print("   The message dict:")
    print(to_json(fetched))
    print()
    print(verdict)
