"""Our SMTP handler against OpenSMTPD 6.8 and Exim 4.96, read back through Dovecot.

Both MTAs deliver into the mail stack's Maildirs (see :mod:`.extra_servers`), so what
they accepted is checked on disk and fetched with our POP3 handler from the stack's
Dovecot. Covered per server: a rich message (non-ASCII headers, attachments) in each
encryption mode the server can do, AUTH where the server offers it, refusals and the
statuses they become, pooled sessions, and each server's per-connection message limit.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from src.handlers.smtp import SMTPDeliveryStatus, SMTPProtocolHandler

from .extra_servers import Exim, OpenSMTPD
from .mailstack import MailStack
from .support import delivered, pop3_handler, smtp_handler, token
from .test_interop_smtp import _rich_message

_MTA = OpenSMTPD | Exim


def _handler(
    mta: _MTA, listener: str, mode: str, user: str | None, **options: Any
) -> SMTPProtocolHandler:
    return smtp_handler(mta.stack, mode, user, port=mta.port(listener), **options)


@pytest.fixture(params=["opensmtpd", "exim"])
def mta(request: pytest.FixtureRequest) -> _MTA:
    server = request.getfixturevalue(request.param)
    assert isinstance(server, OpenSMTPD | Exim)
    return server


def _fetch_back(stack: MailStack, user: str, marker: str) -> dict[str, object]:
    """The one message with ``marker`` in the Maildir of ``user``, fetched by POP3."""
    delivered(stack, user, marker)
    with pop3_handler(
        stack, "ssl", user, include_raw=True, include_attachment_content=True
    ) as reader:
        found = [m for m in reader.fetch_messages() if marker in m["subject"]]
    assert len(found) == 1
    return found[0]


def _round_trip(mta: _MTA, listener: str, mode: str, user: str | None) -> None:
    stack = mta.stack
    stack.clear_mailbox("alice")
    stack.clear_mailbox("bob")
    marker = token()
    arguments = _rich_message(marker, stack)
    pdf = arguments.pop("_pdf")
    with _handler(mta, listener, mode, user) as sender:
        result = sender.send_message(**arguments)
    assert result.status is SMTPDeliveryStatus.SUCCESS, result.to_dict()
    assert result.recipient_failures == {}
    fetched = _fetch_back(stack, "alice", marker)
    assert fetched["messageIdHeader"] == result.message_id
    assert fetched["subject"] == arguments["subject"]
    assert fetched["to"] == [stack.address("alice")]
    assert str(fetched["textBody"]).replace("\r\n", "\n") == arguments["text_body"]
    assert fetched["htmlBody"] == arguments["html_body"]
    contents = {a["filename"]: a for a in fetched["attachments"]}  # type: ignore[attr-defined]
    assert contents["Überweisung März 2024.pdf"]["content"] == pdf
    for attachment in arguments["attachments"][1:]:
        assert contents[attachment["filename"]]["content"] == attachment["content"]
    raw = bytes(fetched["raw"])  # type: ignore[call-overload]
    assert b"\nbcc:" not in raw.lower()
    assert fetched["bcc"] == [] and stack.address("bob") not in fetched["cc"]  # type: ignore[operator]
    # The Bcc recipient got the same message.
    assert _fetch_back(stack, "bob", marker)["messageIdHeader"] == result.message_id
    stack.clear_mailbox("alice")
    stack.clear_mailbox("bob")


# ---------------------------------------------------------------- both servers


def test_round_trip_in_plain_mode_to_the_mx_listener(mta: _MTA) -> None:
    """'none' without login, as to a domain's MX: the STARTTLS on offer is not used."""
    _round_trip(mta, "plain", "none", None)


def test_unknown_local_recipient_is_rejected(mta: _MTA) -> None:
    nobody = mta.address("nobody")
    with _handler(mta, "plain", "none", None) as sender:
        result = sender.send_message([nobody], "to nobody", text_body="x")
    assert result.status is SMTPDeliveryStatus.REJECTED, result.to_dict()
    assert not result.is_retryable and result.retry_count == 0
    assert list(result.recipient_failures) == [nobody]
    expected = (524, "5.2.4") if isinstance(mta, OpenSMTPD) else (550, None)
    assert (result.smtp_code, result.enhanced_status_code) == expected


def test_unknown_recipient_beside_a_good_one_is_listed(mta: _MTA) -> None:
    stack = mta.stack
    marker = token()
    nobody = mta.address("nobody")
    with _handler(mta, "plain", "none", None) as sender:
        result = sender.send_message([nobody, stack.address("alice")], marker, text_body=marker)
    assert result.status is SMTPDeliveryStatus.SUCCESS, result.to_dict()
    assert list(result.recipient_failures) == [nobody]
    delivered(stack, "alice", marker)


def test_mx_refuses_to_relay(mta: _MTA) -> None:
    with _handler(mta, "plain", "none", None, from_address="x@elsewhere.test") as sender:
        result = sender.send_message(["friend@elsewhere.test"], "relay me", text_body="x")
    assert result.status is SMTPDeliveryStatus.REJECTED, result.to_dict()
    assert result.smtp_code == 550 and not result.is_retryable
    text = "Invalid recipient" if isinstance(mta, OpenSMTPD) else "relay not permitted"
    assert text in (result.smtp_error or "")


def test_non_ascii_address_needs_smtputf8(mta: _MTA) -> None:
    """Exim offers SMTPUTF8 and delivers to jörg@ (an alias of alice); OpenSMTPD does
    not offer it, so the handler refuses before sending anything."""
    stack = mta.stack
    marker = token()
    recipient = f"jörg@{stack.domain}"
    with _handler(mta, "plain", "none", None) as sender:
        result = sender.send_message([recipient], f"Grüße {marker}", text_body=f"ü {marker}")
    if isinstance(mta, OpenSMTPD):
        assert result.status is SMTPDeliveryStatus.FAILED, result.to_dict()
        assert not result.is_retryable and result.smtp_code is None
        assert "SMTPUTF8" in (result.smtp_error or "")
        return
    assert result.status is SMTPDeliveryStatus.SUCCESS, result.to_dict()
    fetched = _fetch_back(stack, "alice", marker)
    assert fetched["to"] == [recipient]
    assert fetched["subject"] == f"Grüße {marker}"
    stack.clear_mailbox("alice")


def test_pool_reuses_one_session(mta: _MTA) -> None:
    stack = mta.stack
    marker = token()
    with _handler(mta, "plain", "none", None) as sender:
        results = [
            sender.send_message([stack.address("alice")], f"{marker} {n}", text_body=marker)
            for n in range(5)
        ]
        stats = sender.pool.get_stats()
    assert all(r.success for r in results), [r.to_dict() for r in results]
    assert stats["created"] == 1 and stats["reused"] == 4
    delivered(stack, "alice", marker, count=5)


def _send_many(mta: _MTA, listener: str, count: int) -> None:
    """``count`` messages, one after another, through ONE pooled handler: every one
    must end SUCCESS and arrive exactly once."""
    stack = mta.stack
    stack.clear_mailbox("bob")
    marker = token()
    sleeps: list[float] = []
    started = time.monotonic()
    with _handler(mta, listener, "none", None, sleeps=sleeps) as sender:
        results = [
            sender.send_message([stack.address("bob")], f"{marker} #{n:04d}", text_body=marker)
            for n in range(count)
        ]
    failed = {n: r.to_dict() for n, r in enumerate(results) if not r.success}
    assert failed == {}, f"{len(failed)} of {count} failed, first: {next(iter(failed.items()))}"
    found = delivered(stack, "bob", marker, count=count)
    subjects = sorted(
        line
        for path in found
        for line in path.read_bytes().splitlines()
        if line.startswith(b"Subject: ")
    )
    assert subjects == [f"Subject: {marker} #{n:04d}".encode() for n in range(count)]
    assert time.monotonic() - started < 120
    stack.clear_mailbox("bob")


# ---------------------------------------------------------------- OpenSMTPD


def test_opensmtpd_130_messages_through_one_handler(opensmtpd: OpenSMTPD) -> None:
    """OpenSMTPD takes 100 messages per session, then answers every MAIL FROM with
    ``452 4.5.3 Too many recipients: Too many messages sent``. That 4xx retires the
    connection and the message goes out at once on a fresh one (D12: the handler used to
    retry on the same connection, so message 101 and later ended TEMP_FAILED)."""
    _send_many(opensmtpd, "plain", 130)


@pytest.mark.parametrize(("listener", "mode"), [("submission", "tls"), ("smtps", "ssl")])
def test_opensmtpd_tls_handshake_fails_on_the_server_side(
    opensmtpd: OpenSMTPD, listener: str, mode: str
) -> None:
    """OpenSMTPD 6.8 as built for Debian 12 cannot finish a TLS handshake (its key
    process cannot sign under OpenSSL 3; upstream issues #1171 and #1239): the server
    sends an internal_error alert. The handler fails without retrying on a TLS error,
    and the message says so; nothing is delivered."""
    stack = opensmtpd.stack
    mark = opensmtpd.log_mark()
    sleeps: list[float] = []
    with _handler(opensmtpd, listener, mode, "bob", sleeps=sleeps) as sender:
        result = sender.send_message([stack.address("alice")], "tls?", text_body="x")
    assert result.status is SMTPDeliveryStatus.FAILED, result.to_dict()
    assert not result.is_retryable and result.retry_count == 0 and sleeps == []
    assert (
        result.smtp_error == f"TLS handshake with {stack.host} failed: TLSV1_ALERT_INTERNAL_ERROR"
    )
    opensmtpd.wait_for_log(mark, r'smtp disconnected reason="io-error: .*SSL routines')


# ---------------------------------------------------------------- Exim


@pytest.mark.parametrize(("listener", "mode"), [("submission", "tls"), ("smtps", "ssl")])
def test_exim_round_trip_with_auth(exim: Exim, listener: str, mode: str) -> None:
    _round_trip(exim, listener, mode, "bob")


@pytest.mark.parametrize("mode", ["tls", "ssl"])
def test_exim_wrong_password_fails_once(exim: Exim, mode: str) -> None:
    sleeps: list[float] = []
    listener = "smtps" if mode == "ssl" else "submission"
    wrong = "not-" + exim.users["bob"]
    with _handler(exim, listener, mode, "bob", password=wrong, sleeps=sleeps) as sender:
        result = sender.send_message([exim.address("alice")], "x", text_body="y")
    assert result.status is SMTPDeliveryStatus.FAILED, result.to_dict()
    assert result.smtp_code == 535 and not result.is_retryable and sleeps == []
    assert "Incorrect authentication data" in (result.smtp_error or "")
    assert wrong not in repr(result.to_dict())


def test_exim_login_with_the_full_address(exim: Exim) -> None:
    marker = token()
    stack = exim.stack
    with _handler(
        exim, "smtps", "ssl", "bob", login_as=stack.address("bob"), password=exim.users["bob"]
    ) as sender:
        result = sender.send_message([stack.address("alice")], marker, text_body=marker)
    assert result.success, result.to_dict()
    delivered(stack, "alice", marker)


def test_exim_relay_denied_for_an_authenticated_sender(exim: Exim) -> None:
    with _handler(exim, "submission", "tls", "bob") as sender:
        result = sender.send_message(["friend@elsewhere.test"], "off site", text_body="x")
    assert result.status is SMTPDeliveryStatus.REJECTED, result.to_dict()
    assert result.smtp_code == 550


def test_exim_none_mode_with_password_fails_before_any_auth(exim: Exim) -> None:
    """Exim advertises AUTH only under TLS (like Postfix's submission service)."""
    with _handler(exim, "submission", "none", "bob") as sender:
        result = sender.send_message([exim.address("alice")], "x", text_body="y")
    assert result.status is SMTPDeliveryStatus.FAILED, result.to_dict()
    assert not result.is_retryable
    assert "STARTTLS" in (result.smtp_error or "")


def test_exim_per_connection_limit_is_handled(exim: Exim) -> None:
    """After ``smtp_accept_max_per_connection`` messages (1,000 by default, lowered on
    this listener) Exim answers the next MAIL FROM with ``421 too many messages in
    this connection`` and closes the session. The handler opens a new one and goes on.
    """
    mark = exim.log_mark()
    _send_many(exim, "limited", exim.limited_messages + 10)
    exim.wait_for_log(mark, r"rejected MAIL command .*: too many messages in one connection")


@pytest.mark.slow
def test_exim_default_limit_of_1000_messages_per_connection(exim: Exim) -> None:
    """The same with Exim's default limit: 1,010 messages through one handler (~12 s)."""
    mark = exim.log_mark()
    _send_many(exim, "plain", 1010)
    exim.wait_for_log(mark, r"rejected MAIL command .*: too many messages in one connection")
