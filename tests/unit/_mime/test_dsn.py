"""Delivery status notifications: RFC 3464 reports and the text bounces servers write.

The text samples below are shaped like what Postfix, Exim, qmail, Exchange and Gmail
send (addresses and hosts made up); the corpus test reads the real reports shipped in
the shared mail corpus, when it is there.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from ci import unavailable
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from paths import CORPUS

from src.handlers._mime.dsn import (
    MAX_RECIPIENTS,
    DeliveryAction,
    DeliveryReport,
    parse_delivery_report,
)

FUZZ = settings(
    max_examples=int(os.environ.get("MAILHANDLERS_FUZZ_EXAMPLES", "200")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def _crlf(text: str) -> bytes:
    return text.replace("\n", "\r\n").encode()


RFC3464 = _crlf("""\
From: MAILER-DAEMON@mx.example.test (Mail Delivery System)
To: alice@example.test
Subject: Undelivered Mail Returned to Sender
Message-ID: <report.1@mx.example.test>
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="B"

--B
Content-Type: text/plain

I'm sorry to have to inform you that your message could not be delivered.

--B
Content-Type: message/delivery-status

Reporting-MTA: dns; mx.example.test
Original-Envelope-Id: env-42
Arrival-Date: Fri, 4 Dec 2026 10:00:00 +0000

Original-Recipient: rfc822;nobody@example.test
Final-Recipient: rfc822; nobody@example.test
Action: failed
Status: 5.1.1
Remote-MTA: dns; mx2.example.test
Diagnostic-Code: smtp; 550 5.1.1 <nobody@example.test>: Recipient address
    rejected: User unknown

Final-Recipient: rfc822; bob@example.test
Action: delivered
Status: 2.0.0

Final-Recipient: rfc822; slow@example.net
Action: delayed
Status: 4.4.1

--B
Content-Type: text/rfc822-headers

From: alice@example.test
To: nobody@example.test, bob@example.test
Message-ID: <original.7@example.test>
Subject: hello

--B--
""")


def test_rfc3464_report_per_recipient() -> None:
    report = parse_delivery_report(RFC3464)
    assert report is not None and report.standard
    assert report.original_message_id == "<original.7@example.test>"
    assert report.envelope_id == "env-42"
    assert report.reporting_mta == "mx.example.test"
    assert report.message_id == "<report.1@mx.example.test>"
    failed, delivered, delayed = report.recipients
    assert failed.recipient == "nobody@example.test"
    assert failed.original_recipient == "nobody@example.test"
    assert failed.action is DeliveryAction.FAILED and failed.permanent
    assert failed.status == "5.1.1" and failed.smtp_code == 550
    assert failed.remote_mta == "mx2.example.test"
    assert failed.diagnostic is not None and "User unknown" in failed.diagnostic
    assert "\n" not in failed.diagnostic
    assert delivered.action is DeliveryAction.DELIVERED and delivered.status == "2.0.0"
    assert delayed.action is DeliveryAction.DELAYED and not delayed.permanent
    assert report.failed == (failed,)
    assert report.delivered == (delivered,)
    assert report.delayed == (delayed,)


def test_returned_full_message_gives_the_message_id() -> None:
    raw = RFC3464.replace(b"text/rfc822-headers", b"message/rfc822")
    report = parse_delivery_report(raw)
    assert report is not None and report.original_message_id == "<original.7@example.test>"


def test_report_without_returned_headers_links_through_in_reply_to() -> None:
    head, _, _ = RFC3464.partition(b"--B\r\nContent-Type: text/rfc822-headers")
    raw = head.replace(b"Subject:", b"In-Reply-To: <sent.1@example.test>\r\nSubject:") + b"--B--"
    report = parse_delivery_report(raw)
    assert report is not None and report.original_message_id == "<sent.1@example.test>"


def test_report_without_blank_lines_between_recipients() -> None:
    raw = RFC3464.replace(b"2.0.0\r\n\r\nFinal", b"2.0.0\r\nFinal").replace(
        b"rejected: User unknown\r\n\r\n", b"rejected: User unknown\r\n"
    )
    report = parse_delivery_report(raw)
    assert report is not None
    assert [r.recipient for r in report.recipients] == [
        "nobody@example.test",
        "bob@example.test",
        "slow@example.net",
    ]


POSTFIX_TEXT = _crlf("""\
From: MAILER-DAEMON@mx.example.test (Mail Delivery System)
Subject: Undelivered Mail Returned to Sender
To: alice@example.test
Content-Type: text/plain; charset=us-ascii

This is the mail system at host mx.example.test.

I'm sorry to have to inform you that your message could not
be delivered to one or more recipients. It's attached below.

                   The mail system

<nobody@example.net>: host mx.example.net[192.0.2.1] said: 550 5.1.1
    <nobody@example.net>: Recipient address rejected: User unknown (in reply
    to RCPT TO command)

<full@example.net>: host mx.example.net[192.0.2.1] said: 552 5.2.2 Mailbox
    full (in reply to RCPT TO command)

------ This is a copy of the message, including all the headers. ------

Message-ID: <postfix.copy@example.test>
From: alice@example.test
Subject: hi
""")

EXIM_TEXT = _crlf("""\
From: Mail Delivery System <Mailer-Daemon@exim.example.org>
To: alice@example.test
Subject: Mail delivery failed: returning message to sender
X-Failed-Recipients: gone@example.org
Auto-Submitted: auto-replied

This message was created automatically by mail delivery software.

A message that you sent could not be delivered to one or more of its
recipients. This is a permanent error. The following address(es) failed:

  gone@example.org
    host mx.example.org [192.0.2.7]
    SMTP error from remote mail server after RCPT TO:<gone@example.org>:
    550 5.1.1 <gone@example.org>: User unknown

------ This is a copy of the message, including all the headers. ------

Return-path: <alice@example.test>
Message-Id: <exim.copy@example.test>
Subject: hello
""")

EXIM_DELAY = _crlf("""\
From: Mail Delivery System <Mailer-Daemon@exim.example.org>
To: alice@example.test
Subject: Warning: message 1abc-000 delayed 24 hours

This message was created automatically by mail delivery software.
A message that you sent has not yet been delivered to one or more of its
recipients after more than 24 hours on the queue on exim.example.org.

The message identifier is:     1abc-000
The subject of the message is: hello

The address to which the message has not yet been delivered is:

  later@example.org
    host mx.example.org [192.0.2.7]: Connection timed out

No action is required on your part. Delivery attempts will continue for
some time, and this warning may be repeated at intervals if the message
remains undelivered.
""")

QMAIL_TEXT = _crlf("""\
From: MAILER-DAEMON@qmail.example.com
To: alice@example.test
Subject: failure notice

Hi. This is the qmail-send program at qmail.example.com.
I'm afraid I wasn't able to deliver your message to the following addresses.
This is a permanent error; I've given up. Sorry it didn't work out.

<nosuch@qmail.example.com>:
Sorry, no mailbox here by that name. (#5.1.1)

--- Below this line is a copy of the message.

Message-ID: <qmail.copy@example.test>
""")

EXCHANGE_TEXT = _crlf("""\
From: Microsoft Outlook <postmaster@exchange.example.com>
To: alice@example.test
Subject: Undeliverable: hello
In-Reply-To: <exchange.orig@example.test>
Content-Type: text/plain; charset="us-ascii"

Delivery has failed to these recipients or groups:

missing@exchange.example.com
The email address you entered couldn't be found.

Diagnostic information for administrators:

Generating server: exchange.example.com

missing@exchange.example.com
Remote Server returned '550 5.1.10 RESOLVER.ADR.RecipientNotFound; not found'
""")

GMAIL_TEXT = _crlf("""\
From: Mail Delivery Subsystem <mailer-daemon@googlemail.com>
To: alice@example.test
Subject: Delivery Status Notification (Failure)

Delivery to the following recipient failed permanently:

     who@example.org

Technical details of permanent failure:
Google tried to deliver your message, but it was rejected by the server.

The error that the other server returned was:
550 5.1.1 Recipient rejected: <who@example.org>

----- Original message -----

Message-ID: <gmail.copy@mail.example.test>
""")


@pytest.mark.parametrize(
    ("raw", "expected", "message_id"),
    [
        (
            POSTFIX_TEXT,
            [("nobody@example.net", "failed", "5.1.1"), ("full@example.net", "failed", "5.2.2")],
            "<postfix.copy@example.test>",
        ),
        (EXIM_TEXT, [("gone@example.org", "failed", "5.1.1")], "<exim.copy@example.test>"),
        (EXIM_DELAY, [("later@example.org", "delayed", None)], None),
        (
            QMAIL_TEXT,
            [("nosuch@qmail.example.com", "failed", "5.1.1")],
            "<qmail.copy@example.test>",
        ),
        (
            EXCHANGE_TEXT,
            [("missing@exchange.example.com", "failed", "5.1.10")],
            "<exchange.orig@example.test>",
        ),
        (GMAIL_TEXT, [("who@example.org", "failed", "5.1.1")], "<gmail.copy@mail.example.test>"),
    ],
    ids=["postfix", "exim", "exim-delay", "qmail", "exchange", "gmail"],
)
def test_text_bounces(
    raw: bytes, expected: list[tuple[str, str, str | None]], message_id: str | None
) -> None:
    report = parse_delivery_report(raw)
    assert report is not None and not report.standard
    got = [(r.recipient, r.action.value, r.status) for r in report.recipients]
    assert got == expected
    assert report.original_message_id == message_id


def test_postfix_text_keeps_the_diagnostic_of_each_recipient() -> None:
    report = parse_delivery_report(POSTFIX_TEXT)
    assert report is not None
    first, second = report.recipients
    assert first.smtp_code == 550 and first.diagnostic and "User unknown" in first.diagnostic
    assert second.smtp_code == 552 and second.diagnostic and "Mailbox full" in second.diagnostic


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"From: alice@example.test\r\nSubject: lunch?\r\n\r\nMail me at bob@example.test: 550 ok",
        b"From: bob@example.test\r\nSubject: hi\r\nContent-Type: multipart/mixed; boundary=x\r\n"
        b"\r\n--x\r\nContent-Type: text/plain\r\n\r\nhello\r\n--x--\r\n",
        # A bounce-like subject alone is not enough: no recipient with a reason.
        b"From: carol@example.test\r\nSubject: Undeliverable mail\r\n\r\nno addresses here\r\n",
    ],
    ids=["empty", "ordinary", "multipart", "no-recipient"],
)
def test_ordinary_mail_is_not_a_report(raw: bytes) -> None:
    assert parse_delivery_report(raw) is None


def test_many_recipients_are_capped() -> None:
    blocks = "".join(
        f"\r\nFinal-Recipient: rfc822; u{n}@example.test\r\nAction: failed\r\nStatus: 5.1.1\r\n"
        for n in range(MAX_RECIPIENTS + 50)
    )
    raw = (
        "Content-Type: multipart/report; report-type=delivery-status; boundary=B\r\n\r\n"
        "--B\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; x\r\n"
        f"{blocks}\r\n--B--\r\n"
    ).encode()
    started = time.perf_counter()
    report = parse_delivery_report(raw)
    assert report is not None and len(report.recipients) == MAX_RECIPIENTS
    assert time.perf_counter() - started < 10


def test_hostile_nesting_is_bounded() -> None:
    raw = b"".join(
        b"Content-Type: multipart/mixed; boundary=b%d\r\n\r\n--b%d\r\n" % (n, n)
        for n in range(3000)
    )
    assert parse_delivery_report(raw) is None


_BOUNCE_HEAD = b"From: MAILER-DAEMON@x.example\r\nSubject: Undeliverable\r\n\r\n"


@pytest.mark.parametrize(
    "body",
    [
        b"-" * 60_000,
        b"--\r\n" * 20_000,
        b"a" * 60_000 + b"@b",
        b"".join(b"<u%d@b.example>: 550 5.1.1 gone\r\n" % n for n in range(3000)),
        b"".join(b"  u%d@b.example\r\n" % n for n in range(3000)) + b"permanent error",
        b"5.5.5." * 10_000,
        b" " * 60_000 + b"x",
        b"----- Original message -----\r\nMessage-ID: " + b"<" * 60_000,
    ],
    ids=[
        "dashes",
        "dash-lines",
        "long-local-part",
        "codes",
        "bare-addresses",
        "digits",
        "spaces",
        "brackets",
    ],
)
def test_hostile_text_bounces_take_linear_time(body: bytes) -> None:
    started = time.perf_counter()
    report = parse_delivery_report(_BOUNCE_HEAD + body)
    assert time.perf_counter() - started < 5
    assert report is None or len(report.recipients) <= MAX_RECIPIENTS


@FUZZ
@given(st.binary(max_size=4000))
def test_never_raises_on_bytes(raw: bytes) -> None:
    result = parse_delivery_report(raw)
    assert result is None or isinstance(result, DeliveryReport)


_LINES = st.sampled_from(
    [
        "Final-Recipient: rfc822; a@b.example",
        "Original-Recipient: rfc822;",
        "Action: failed",
        "Action: bogus",
        "Status: 5.1.1",
        "Status: 9.9.9",
        "Diagnostic-Code: smtp; 550",
        "Remote-MTA: dns;",
        "Content-Transfer-Encoding: base64",
        "--B",
        "--B--",
        "Content-Type: text/rfc822-headers",
        "Content-Type: message/rfc822",
        "Content-Type: message/delivery-status",
        "Message-ID: <x@y>",
        "<a@b.example>: 550 5.1.1 no",
        "",
        " folded",
        "=?utf-8?b?////?=",
    ]
)


@FUZZ
@given(st.lists(_LINES, max_size=60))
def test_never_raises_on_report_shaped_input(lines: list[str]) -> None:
    head = "From: MAILER-DAEMON@x\r\nContent-Type: multipart/report; boundary=B\r\n\r\n--B\r\n"
    result = parse_delivery_report((head + "\r\n".join(lines)).encode())
    assert result is None or isinstance(result, DeliveryReport)


# --------------------------------------------------------------------------- the corpus

# What each corpus report must give: (recipient, action, status) of its first recipient.
CORPUS_REPORTS = {
    "flanker/bounce/zed.eml": ("failed", "5.1.1"),
    "flanker/bounce/mailbox-full.eml": ("failed", "5.2.2"),
    "flanker/bounce/office365.eml": ("failed", "5.1.10"),
    "flanker/bounce/no-mx.eml": ("delayed", "4.4.4"),
    "flanker/bounce/gmail-invalid-address.eml": ("failed", "5.1.0"),
    "mikel-mail/multipart_report_emails/report_422.eml": ("delayed", "4.2.2"),
    "mikel-mail/multipart_report_emails/report_530.eml": ("failed", "5.3.0"),
    "mikel-mail/multipart_report_emails/multi_address_bounce1.eml": ("failed", "5.1.1"),
    "mimekit/messages/bounce.txt": ("failed", "5.1.1"),
    "mimekit/messages/delivery-status.txt": ("failed", None),
    "mimekit/messages/delivery-status-no-blank-line.txt": ("failed", None),
    "mimekit/messages/delivery-status-multiple-blank-lines.txt": ("failed", "5.5.0"),
}


def _corpus() -> Path:
    if not CORPUS.is_dir():
        unavailable(
            "the shared mail corpus is not next to the project",
            in_ci_reason=f"the mail corpus is missing at {CORPUS.name}",
        )
    return CORPUS


@pytest.mark.parametrize("name", sorted(CORPUS_REPORTS))
def test_corpus_reports(name: str) -> None:
    report = parse_delivery_report((_corpus() / name).read_bytes())
    assert report is not None, name
    first = report.recipients[0]
    assert (first.action.value, first.status) == CORPUS_REPORTS[name]
    assert "@" in first.recipient


def test_corpus_multi_address_report_lists_each_recipient_once() -> None:
    raw = (_corpus() / "mikel-mail/multipart_report_emails/multi_address_bounce1.eml").read_bytes()
    report = parse_delivery_report(raw)
    assert report is not None
    addresses = [r.recipient for r in report.recipients]
    assert len(addresses) == len(set(addresses)) == 5
    assert report.original_message_id is not None


_NOT_MAIL = ("LICENSE", "NOTICE")


def test_corpus_never_raises_and_ordinary_mail_is_no_report() -> None:
    """Every corpus message parses without raising; only bounce-like ones give reports."""
    found = 0
    for path in sorted(_corpus().rglob("*")):
        if (
            not path.is_file()
            or path.suffix in (".json", ".md")
            or path.stem in ("LICENSE", "NOTICE")
        ):
            continue
        report = parse_delivery_report(path.read_bytes())
        if report is not None:
            found += 1
            assert report.recipients
    assert len(CORPUS_REPORTS) <= found < 40
