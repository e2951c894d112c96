"""Delivery status notifications from a real Postfix, fetched over POP3 and parsed.

Alice sends one message to bob (who exists) and to an address that does not, through
the stack's ``accepting`` listener with the SMTP handler's ``dsn=DSNOptions(...)``:
Postfix takes both recipients at RCPT, and its virtual(8) then delivers to bob and
bounces the other (5.1.1). With ``NOTIFY=SUCCESS,FAILURE`` Postfix writes a report for
each outcome into alice's mailbox; a POP3 sync picks them up and
:func:`parse_delivery_report` must say one delivered and one failed with 5.1.1, both
linked to the Message-ID that was sent and to the envelope ID.
"""

from __future__ import annotations

import secrets
import time
from typing import Any

from src.handlers import DSNOptions
from src.handlers._mime.dsn import DeliveryAction, DeliveryReport, parse_delivery_report
from src.handlers._sync.uid_store import MemoryUIDStore
from src.handlers.smtp import SMTPDeliveryStatus

from .mailstack import MailStack
from .support import TIMEOUT, pop3_handler, smtp_handler


def _send_with_dsn(stack: MailStack, envelope_id: str, unknown: str) -> str:
    handler = smtp_handler(stack, "tls", "alice", port=stack.smtp_accepting_port)
    try:
        assert handler.capabilities().offers("DSN")
        result = handler.send_message(
            [stack.address("bob"), unknown],
            f"DSN check {envelope_id}",
            "One of these recipients does not exist.\n",
            dsn=DSNOptions(
                notify=("SUCCESS", "FAILURE"), ret="HDRS", envid=envelope_id, required=True
            ),
        )
    finally:
        handler.close()
    assert result.status is SMTPDeliveryStatus.SUCCESS, result
    assert result.recipient_failures == {}  # both accepted at RCPT: the bounce comes later
    assert result.message_id is not None
    return result.message_id


def _reports(stack: MailStack, envelope_id: str, count: int) -> list[DeliveryReport]:
    """Sync alice's mailbox over POP3 until ``count`` reports about ``envelope_id`` came."""
    store = MemoryUIDStore()
    found: list[DeliveryReport] = []

    def collect(message: dict[str, Any]) -> None:
        report = parse_delivery_report(message["raw"])
        if report is not None and report.envelope_id == envelope_id:
            found.append(report)

    deadline = time.monotonic() + TIMEOUT
    while len(found) < count:
        result = pop3_handler(stack, "ssl", "alice", include_raw=True).sync(store, collect)
        assert result.failed == 0, result
        if len(found) >= count:
            break
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{len(found)} of {count} reports\n" + stack.log_tail())
        time.sleep(0.1)
    return found


def test_postfix_reports_one_delivered_and_one_failed(mail_stack: MailStack) -> None:
    token = secrets.token_hex(6)
    envelope_id = f"env-{token}"
    unknown = mail_stack.address(f"nobody-{token}")
    message_id = _send_with_dsn(mail_stack, envelope_id, unknown)

    reports = _reports(mail_stack, envelope_id, count=2)

    by_recipient = {
        recipient.recipient.lower(): (report, recipient)
        for report in reports
        for recipient in report.recipients
    }
    assert set(by_recipient) == {mail_stack.address("bob"), unknown}

    report, bob = by_recipient[mail_stack.address("bob")]
    assert bob.action is DeliveryAction.DELIVERED
    assert bob.status is not None and bob.status.startswith("2.")
    assert report.standard and report.original_message_id == message_id

    report, nobody = by_recipient[unknown]
    assert nobody.action is DeliveryAction.FAILED and nobody.permanent
    assert nobody.status == "5.1.1"
    assert report.standard and report.original_message_id == message_id
    assert report.reporting_mta == f"mx.{mail_stack.domain}"
    for report in reports:
        assert report.envelope_id == envelope_id
    # ORCPT went out with each RCPT: the reports name the addresses as given.
    assert bob.original_recipient == mail_stack.address("bob")
    assert nobody.original_recipient == unknown
