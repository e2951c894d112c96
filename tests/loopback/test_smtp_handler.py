"""SMTPProtocolHandler against real servers on loopback.

An in-process aiosmtpd server (plain, STARTTLS, implicit TLS, AUTH) checks what a
correct server receives; a scripted server imitates servers that misbehave.
"""

from __future__ import annotations

import base64
import json
import logging
import ssl
import threading
from collections.abc import Callable, Iterator
from email.utils import parsedate_to_datetime
from typing import Any

import pytest
from fake_sleep import Sleeps
from pytest_mock import MockerFixture

from src.handlers._net.trace import WireTracer
from src.handlers._smtp.client import SMTPClient
from src.handlers.smtp import (
    SMTPConnectionPool,
    SMTPDeliveryStatus,
    SMTPEncryption,
    SMTPProtocolHandler,
    shared_pool,
)
from src.testing.scripted_server import ScriptedServer
from src.testing.smtp_scripts import (
    SMTPDialogue,
    drop_after_final_dot,
    drop_mid_data,
    greet_then_silent,
    no_greeting,
    smtp_accept_all,
    smtp_refuse_connection,
)
from src.testing.smtp_server import SMTPTestServer
from src.testing.tls import TestCertificates

PASSWORD = "c0rrect-h0rse-battery"
USERS = {"alice": PASSWORD}
SENDER = "alice@example.com"

StartServer = Callable[..., SMTPTestServer]
MakeHandler = Callable[..., SMTPProtocolHandler]


@pytest.fixture
def start_server(certs: TestCertificates) -> Iterator[Callable[..., SMTPTestServer]]:
    servers: list[SMTPTestServer] = []

    def start(tls: str = "none", **options: Any) -> SMTPTestServer:
        if tls != "none":
            options.setdefault("ssl_context", certs.server_context())
        server = SMTPTestServer(tls=tls, **options)  # type: ignore[arg-type]
        server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def make_handler(
    client_ssl_context: Any, sleeps: Sleeps
) -> Iterator[Callable[..., SMTPProtocolHandler]]:
    handlers: list[SMTPProtocolHandler] = []

    def make(host: str, port: int, **options: Any) -> SMTPProtocolHandler:
        options.setdefault("encryption", "none")
        options.setdefault("allow_cleartext", True)
        options.setdefault("from_address", SENDER)
        options.setdefault("ssl_context", client_ssl_context)
        options.setdefault("sleep", sleeps)
        options.setdefault("timeout", 5.0)
        options.setdefault("pool", SMTPConnectionPool(max_connections=10))
        handler = SMTPProtocolHandler(host, port, **options)
        handlers.append(handler)
        return handler

    yield make
    for handler in handlers:
        handler.close()


def send_simple(handler: SMTPProtocolHandler, **overrides: Any) -> Any:
    arguments: dict[str, Any] = {
        "to_addresses": ["bob@example.org"],
        "subject": "Hello",
        "text_body": "Hi Bob",
    }
    arguments.update(overrides)
    return handler.send_message(**arguments)


# ---------------------------------------------------------------------- encryption modes


@pytest.mark.parametrize(
    ("tls", "encryption"),
    [("none", "none"), ("starttls", "tls"), ("implicit", "ssl")],
)
def test_send_and_authenticate_in_every_mode(
    start_server: StartServer, make_handler: MakeHandler, tls: str, encryption: str
) -> None:
    server = start_server(tls, users=USERS, auth_require_tls=tls != "none")
    handler = make_handler(
        server.host, server.port, username="alice", password=PASSWORD, encryption=encryption
    )
    result = send_simple(handler)
    assert result.status is SMTPDeliveryStatus.SUCCESS, result.smtp_error
    [received] = server.wait_for_messages(1)
    assert received.username == "alice"
    assert received.secure is (tls != "none")
    assert received.mail_from == SENDER
    assert received.rcpt_tos == ["bob@example.org"]
    assert received["Subject"] == "Hello"
    assert received.message.get_content().strip() == "Hi Bob"


def test_encryption_accepts_the_enum(start_server: StartServer, make_handler: MakeHandler) -> None:
    server = start_server("implicit")
    handler = make_handler(server.host, server.port, encryption=SMTPEncryption.IMPLICIT_SSL)
    assert send_simple(handler).status is SMTPDeliveryStatus.SUCCESS


def test_starttls_required_but_not_offered_sends_nothing_in_clear(
    start_server: StartServer, make_handler: MakeHandler
) -> None:
    server = start_server("none", users=USERS, auth_require_tls=False)
    handler = make_handler(
        server.host, server.port, username="alice", password=PASSWORD, encryption="tls"
    )
    result = send_simple(handler)
    assert result.status is SMTPDeliveryStatus.FAILED
    assert "STARTTLS" in (result.smtp_error or "")
    assert not result.is_retryable
    assert server.auth_attempts == []
    assert server.messages == []


def test_default_context_rejects_an_untrusted_certificate(
    start_server: StartServer, make_handler: MakeHandler
) -> None:
    server = start_server("implicit")
    handler = make_handler(server.host, server.port, encryption="ssl", ssl_context=None)
    result = send_simple(handler)
    assert result.status is SMTPDeliveryStatus.FAILED
    assert "certificate" in (result.smtp_error or "")
    assert server.messages == []


def test_certificate_for_another_host_is_rejected(
    make_handler: MakeHandler, client_ssl_context: ssl.SSLContext
) -> None:
    certs = TestCertificates()
    wrong = certs.ca.issue_cert("mail.other.example")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    wrong.configure_cert(context)
    with SMTPTestServer(tls="implicit", ssl_context=context) as server:
        handler = make_handler(
            server.host, server.port, encryption="ssl", ssl_context=certs.client_context()
        )
        result = send_simple(handler)
    assert result.status is SMTPDeliveryStatus.FAILED
    assert "certificate" in (result.smtp_error or "")


def test_connect_authenticate_and_test_connection(
    start_server: StartServer, make_handler: MakeHandler
) -> None:
    server = start_server("starttls", users=USERS)
    handler = make_handler(
        server.host, server.port, username="alice", password=PASSWORD, encryption="tls"
    )
    assert handler.connect() is True
    assert handler.authenticate() is True
    assert handler.test_connection() is True
    assert handler.last_error is None
    assert server.sessions == 1  # the pooled connection served all three


def test_wrong_password_fails_without_retry(
    start_server: StartServer, make_handler: MakeHandler, sleeps: Sleeps
) -> None:
    server = start_server("starttls", users=USERS)
    handler = make_handler(
        server.host, server.port, username="alice", password="wrong", encryption="tls"
    )
    assert handler.authenticate() is False
    assert handler.last_error and "535" in handler.last_error
    result = send_simple(handler)
    assert result.status is SMTPDeliveryStatus.FAILED
    assert result.smtp_code == 535
    assert result.is_retryable is False
    assert sleeps == []
    assert server.messages == []


def test_connect_returns_false_when_nothing_listens(make_handler: MakeHandler) -> None:
    with ScriptedServer(smtp_accept_all) as server:
        host, port = server.address
    handler = make_handler(host, port, retry=None)
    assert handler.connect() is False
    assert handler.test_connection() is False
    assert handler.last_error


# ---------------------------------------------------------------------- message content


def test_text_and_html_make_multipart_alternative(
    start_server: StartServer, make_handler: MakeHandler
) -> None:
    server = start_server()
    handler = make_handler(server.host, server.port)
    result = send_simple(handler, text_body="plain words", html_body="<h1>rich words</h1>")
    assert result.success
    message = server.wait_for_messages(1)[0].message
    assert message.get_content_type() == "multipart/alternative"
    plain = message.get_body(("plain",))
    rich = message.get_body(("html",))
    assert plain is not None and rich is not None
    assert plain.get_content().strip() == "plain words"
    assert rich.get_content().strip() == "<h1>rich words</h1>"


def test_html_only(start_server: StartServer, make_handler: MakeHandler) -> None:
    server = start_server()
    handler = make_handler(server.host, server.port)
    assert send_simple(handler, text_body=None, html_body="<p>only html</p>").success
    message = server.wait_for_messages(1)[0].message
    assert message.get_content_type() == "text/html"


def test_attachments_arrive_byte_exact(
    start_server: StartServer, make_handler: MakeHandler
) -> None:
    server = start_server()
    handler = make_handler(server.host, server.port)
    payload = bytes(range(256)) * 100
    result = send_simple(
        handler,
        attachments=[
            {
                "filename": "data.bin",
                "contentType": "application/octet-stream",
                "data": base64.b64encode(payload).decode(),
            },
            {
                "filename": "Überweisung März.pdf",
                "contentType": "application/pdf",
                "data": base64.b64encode(b"%PDF-1.7").decode(),
            },
        ],
    )
    assert result.success
    message = server.wait_for_messages(1)[0].message
    assert message.get_content_type() == "multipart/mixed"
    attachments = list(message.iter_attachments())
    assert [a.get_filename() for a in attachments] == ["data.bin", "Überweisung März.pdf"]
    assert attachments[0].get_content() == payload
    assert attachments[1].get_content() == b"%PDF-1.7"


def test_bad_base64_attachment_is_invalid_and_nothing_is_sent(
    start_server: StartServer, make_handler: MakeHandler
) -> None:
    server = start_server()
    handler = make_handler(server.host, server.port)
    result = send_simple(handler, attachments=[{"filename": "x.txt", "data": "not base64!!"}])
    assert result.status is SMTPDeliveryStatus.INVALID
    assert "attachments[0]" in (result.smtp_error or "")
    assert server.sessions == 0


def test_bcc_only_in_envelope(start_server: StartServer, make_handler: MakeHandler) -> None:
    server = start_server()
    handler = make_handler(server.host, server.port)
    result = send_simple(
        handler, cc_addresses=["carol@example.org"], bcc_addresses=["secret@example.net"]
    )
    assert result.success
    received = server.wait_for_messages(1)[0]
    assert received.rcpt_tos == ["bob@example.org", "carol@example.org", "secret@example.net"]
    assert b"secret@example.net" not in received.data
    assert received["Bcc"] is None
    assert received["Cc"] == "carol@example.org"


def test_headers_reply_to_custom_date_and_message_id(
    start_server: StartServer, make_handler: MakeHandler
) -> None:
    server = start_server()
    handler = make_handler(server.host, server.port)
    result = send_simple(
        handler,
        reply_to="Help Desk <help@example.com>",
        custom_headers={"X-Campaign": "autumn", "X-Ticket": "12345"},
    )
    received = server.wait_for_messages(1)[0]
    assert received["Reply-To"] == "Help Desk <help@example.com>"
    assert received["X-Campaign"] == "autumn"
    assert received["X-Ticket"] == "12345"
    assert received["Message-ID"] == result.message_id
    date = received["Date"]
    assert date is not None
    assert parsedate_to_datetime(date).tzinfo is not None


def test_non_ascii_subject_and_names(start_server: StartServer, make_handler: MakeHandler) -> None:
    server = start_server()
    handler = make_handler(server.host, server.port, from_address='"Zoë Ørsted" <zoe@example.com>')
    result = send_simple(
        handler,
        to_addresses=['"Doe, Jöhn" <john@example.org>'],
        subject="Grüße aus Köln – 東京",
        text_body="Schöne Grüße",
    )
    assert result.success
    received = server.wait_for_messages(1)[0]
    assert received["Subject"] == "Grüße aus Köln – 東京"
    assert received["From"] == "Zoë Ørsted <zoe@example.com>"
    assert received.message["To"].addresses[0].display_name == "Doe, Jöhn"
    assert received.message.get_content().strip() == "Schöne Grüße"


def test_idn_domain_is_punycoded_in_envelope(
    start_server: StartServer, make_handler: MakeHandler
) -> None:
    server = start_server()
    handler = make_handler(server.host, server.port)
    assert send_simple(handler, to_addresses=["info@bücher.de"]).success
    assert server.wait_for_messages(1)[0].rcpt_tos == ["info@xn--bcher-kva.de"]


def test_utf8_local_part_uses_smtputf8(
    start_server: StartServer, make_handler: MakeHandler
) -> None:
    server = start_server(smtputf8=True)
    handler = make_handler(server.host, server.port)
    assert send_simple(handler, to_addresses=["用户@例子.广告"]).success
    received = server.wait_for_messages(1)[0]
    assert "SMTPUTF8" in received.mail_options
    assert received.rcpt_tos == ["用户@" + "例子.广告".encode("idna").decode()]


def test_utf8_local_part_without_server_support_fails_clearly(
    start_server: StartServer, make_handler: MakeHandler
) -> None:
    server = start_server(smtputf8=False)
    handler = make_handler(server.host, server.port)
    result = send_simple(handler, to_addresses=["josé@example.org"])
    assert result.status is SMTPDeliveryStatus.FAILED
    assert "SMTPUTF8" in (result.smtp_error or "")
    assert server.messages == []


def test_message_over_server_size_limit_is_not_sent(
    start_server: StartServer, make_handler: MakeHandler
) -> None:
    server = start_server(size_limit=2000)
    handler = make_handler(server.host, server.port)
    result = send_simple(handler, text_body="x" * 5000)
    assert result.status is SMTPDeliveryStatus.FAILED
    assert "at most 2000" in (result.smtp_error or "")
    assert server.messages == []


# ---------------------------------------------------------------------- statuses


def test_some_recipients_refused_is_success_with_failures(
    start_server: StartServer, make_handler: MakeHandler
) -> None:
    server = start_server()
    server.faults.reject_recipients["ghost@example.org"] = (550, "5.1.1 No such user")
    handler = make_handler(server.host, server.port)
    result = send_simple(handler, to_addresses=["bob@example.org", "ghost@example.org"])
    assert result.status is SMTPDeliveryStatus.SUCCESS
    assert result.recipient_failures == {"ghost@example.org": "550 5.1.1 No such user"}
    assert server.wait_for_messages(1)[0].rcpt_tos == ["bob@example.org"]


def test_all_recipients_refused_is_rejected(
    start_server: StartServer, make_handler: MakeHandler
) -> None:
    server = start_server()
    server.faults.reject_recipients["ghost@example.org"] = (550, "5.1.1 No such user")
    handler = make_handler(server.host, server.port)
    result = send_simple(handler, to_addresses=["ghost@example.org"])
    assert result.status is SMTPDeliveryStatus.REJECTED
    assert result.smtp_code == 550
    assert result.enhanced_status_code == "5.1.1"
    assert result.recipient_failures == {"ghost@example.org": "550 5.1.1 No such user"}
    assert server.messages == []


def test_sender_refused_is_rejected(start_server: StartServer, make_handler: MakeHandler) -> None:
    server = start_server()
    server.faults.mail_replies[1] = (553, "5.7.1 Sender not allowed")
    handler = make_handler(server.host, server.port)
    result = send_simple(handler)
    assert result.status is SMTPDeliveryStatus.REJECTED
    assert result.smtp_code == 553
    assert server.messages == []


def test_transient_mail_reply_is_retried_with_the_same_message_id(
    start_server: StartServer, make_handler: MakeHandler, sleeps: Sleeps
) -> None:
    server = start_server()
    server.faults.mail_replies[1] = (451, "4.3.0 Try again")
    handler = make_handler(server.host, server.port)
    result = send_simple(handler)
    assert result.status is SMTPDeliveryStatus.SUCCESS
    assert result.retry_count == 1
    assert sleeps == [1]
    [received] = server.wait_for_messages(1)
    assert received["Message-ID"] == result.message_id


def test_patching_time_sleep_skips_the_back_off(
    start_server: StartServer, mocker: MockerFixture
) -> None:
    # What a user's own test does, without the handler's sleep= option.
    waits = mocker.patch("time.sleep")
    server = start_server()
    server.faults.mail_replies[1] = (451, "4.3.0 Try again")
    handler = SMTPProtocolHandler(
        server.host, server.port, encryption="none", from_address="app@example.com"
    )
    try:
        result = send_simple(handler)
    finally:
        handler.close()
    assert result.status is SMTPDeliveryStatus.SUCCESS and result.retry_count == 1
    waits.assert_called_once_with(1)


def test_retries_exhausted_is_temp_failed(
    start_server: StartServer, make_handler: MakeHandler, sleeps: Sleeps
) -> None:
    server = start_server()
    for attempt in range(1, 5):
        server.faults.mail_replies[attempt] = (421, "4.7.0 Busy")
    handler = make_handler(server.host, server.port)
    result = send_simple(handler)
    assert result.status is SMTPDeliveryStatus.TEMP_FAILED
    assert result.is_retryable is True
    assert result.retry_count == 3
    assert result.smtp_code == 421
    assert sleeps == [1, 5, 30]
    assert json.loads(json.dumps(result.to_dict()))["status"] == "temp_failed"


def test_retry_false_reports_retry(
    start_server: StartServer, make_handler: MakeHandler, sleeps: Sleeps
) -> None:
    server = start_server()
    server.faults.mail_replies[1] = (450, "4.2.0 Mailbox busy")
    handler = make_handler(server.host, server.port)
    result = send_simple(handler, retry=False)
    assert result.status is SMTPDeliveryStatus.RETRY
    assert result.is_retryable is True
    assert result.retry_count == 0
    assert sleeps == []
    assert server.messages == []


@pytest.mark.parametrize(
    ("fault", "code"),
    [("mail", 454), ("rcpt", 455), ("data", 471)],
)
def test_a_temporary_reply_outside_the_retried_codes_is_retry_not_permanent(
    start_server: StartServer, make_handler: MakeHandler, sleeps: Sleeps, fault: str, code: int
) -> None:
    server = start_server()
    reply = (code, "4.7.0 Try again later")
    if fault == "mail":
        server.faults.mail_replies[1] = reply
    elif fault == "rcpt":
        server.faults.reject_recipients["bob@example.org"] = reply
    else:
        server.faults.data_reply = reply
    handler = make_handler(server.host, server.port)
    result = send_simple(handler, to_addresses=["bob@example.org"])
    # Not one of the spec's retried codes, so sent once; but not a permanent refusal.
    assert result.status is SMTPDeliveryStatus.RETRY
    assert result.is_retryable is True
    assert result.retry_count == 0 and sleeps == []
    assert result.smtp_code == code and result.enhanced_status_code == "4.7.0"
    assert server.messages == []


def test_permanent_data_refusal_is_failed(
    start_server: StartServer, make_handler: MakeHandler, sleeps: Sleeps
) -> None:
    server = start_server()
    server.faults.data_reply = (552, "5.3.4 Message too big for system")
    handler = make_handler(server.host, server.port)
    result = send_simple(handler)
    assert result.status is SMTPDeliveryStatus.FAILED
    assert result.smtp_code == 552
    assert result.enhanced_status_code == "5.3.4"
    assert sleeps == []


def test_drop_after_data_is_outcome_unknown_and_not_resent(
    start_server: StartServer, make_handler: MakeHandler, sleeps: Sleeps
) -> None:
    server = start_server()
    server.faults.drop_after_data = 1
    handler = make_handler(server.host, server.port)
    result = send_simple(handler)
    assert result.status is SMTPDeliveryStatus.FAILED
    assert result.outcome_unknown is True
    assert result.is_retryable is False
    assert sleeps == []
    assert server.sessions == 1


def test_invalid_input_never_touches_the_network(
    start_server: StartServer, make_handler: MakeHandler
) -> None:
    server = start_server()
    handler = make_handler(server.host, server.port)
    result = send_simple(handler, to_addresses=["not-an-address"])
    assert result.status is SMTPDeliveryStatus.INVALID
    assert "to_addresses[0]" in (result.smtp_error or "")
    result = send_simple(handler, subject="line\r\nBcc: victim@example.org")
    assert result.status is SMTPDeliveryStatus.INVALID
    assert server.sessions == 0


# ---------------------------------------------------------------------- pooling and threads


def test_connection_is_reused_between_sends(
    start_server: StartServer, make_handler: MakeHandler
) -> None:
    server = start_server()
    handler = make_handler(server.host, server.port)
    for _ in range(5):
        assert send_simple(handler).success
    assert server.sessions == 1
    stats = handler.pool.get_stats()
    assert stats["created"] == 1 and stats["reused"] == 4


def test_connection_closed_by_server_while_idle_is_replaced(
    start_server: StartServer, make_handler: MakeHandler
) -> None:
    server = start_server(idle_timeout=0.2)
    handler = make_handler(server.host, server.port)
    assert send_simple(handler).success
    deadline = threading.Event()
    deadline.wait(0.6)  # let the server's idle timeout close the pooled connection
    assert send_simple(handler).success
    assert handler.pool.get_stats()["dropped"] == 1
    assert len(server.wait_for_messages(2)) == 2


def test_threads_share_a_handler_and_respect_pool_size(
    start_server: StartServer, make_handler: MakeHandler
) -> None:
    server = start_server()
    handler = make_handler(server.host, server.port, pool_size=3)
    results: list[Any] = []
    lock = threading.Lock()

    def worker(index: int) -> None:
        for n in range(10):
            result = send_simple(handler, subject=f"msg {index}-{n}")
            with lock:
                results.append(result)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert all(r.success for r in results) and len(results) == 80
    received = server.wait_for_messages(80)
    subjects = sorted(str(m["Subject"]) for m in received)
    assert subjects == sorted(f"msg {i}-{n}" for i in range(8) for n in range(10))
    assert len({r.message_id for r in results}) == 80
    assert server.sessions <= 3
    assert handler.pool.get_stats()["created"] <= 3


def test_new_handler_per_request_reuses_the_shared_pool(
    start_server: StartServer, client_ssl_context: ssl.SSLContext
) -> None:
    server = start_server()
    shared_pool().close_all()
    try:
        for _ in range(3):
            handler = SMTPProtocolHandler(
                server.host, server.port, encryption="none", from_address=SENDER
            )
            assert send_simple(handler).success
            handler.close()
        assert server.sessions == 1
    finally:
        shared_pool().close_all()


def test_context_manager_closes_a_private_pool(
    start_server: StartServer, make_handler: MakeHandler
) -> None:
    server = start_server()
    with make_handler(server.host, server.port) as handler:
        assert send_simple(handler).success
        assert handler.pool.get_stats()["idle"] == 1
    assert handler.pool.get_stats()["idle"] == 0
    handler.close()  # idempotent


# ---------------------------------------------------------------------- secrets


def test_password_never_leaks(
    start_server: StartServer, make_handler: MakeHandler, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    server = start_server("starttls", users=USERS)
    good = make_handler(
        server.host, server.port, username="alice", password=PASSWORD, encryption="tls"
    )
    bad = make_handler(
        server.host, server.port, username="alice", password=PASSWORD + "x", encryption="tls"
    )
    results = [send_simple(good), send_simple(bad)]
    bad.connect()
    texts = [
        repr(good),
        str(good),
        repr(good.pool),
        str(good.pool.get_stats()),
        json.dumps([r.to_dict() for r in results]),
        str(bad.last_error),
        caplog.text,
    ]
    encoded = base64.b64encode(f"\0alice\0{PASSWORD}".encode()).decode()
    for text in texts:
        assert PASSWORD not in text
        assert encoded not in text


# ---------------------------------------------------------------------- misbehaving servers


def test_421_greeting_then_accept(make_handler: MakeHandler, sleeps: Sleeps) -> None:
    with ScriptedServer([smtp_refuse_connection(421), smtp_accept_all]) as server:
        handler = make_handler(*server.address)
        result = send_simple(handler)
    assert result.status is SMTPDeliveryStatus.SUCCESS
    assert result.retry_count == 1
    assert sleeps == [1]
    assert len(server.conversations[1].blocks) == 1
    assert server.errors == []


def test_no_greeting_times_out(make_handler: MakeHandler) -> None:
    with ScriptedServer(no_greeting) as server:
        handler = make_handler(*server.address, timeout=0.3)
        result = send_simple(handler, retry=False)
    assert result.status is SMTPDeliveryStatus.RETRY
    assert "time" in (result.smtp_error or "")


def test_greeting_then_silence_times_out(make_handler: MakeHandler, sleeps: Sleeps) -> None:
    with ScriptedServer(greet_then_silent) as server:
        handler = make_handler(*server.address, timeout=0.3)
        result = send_simple(handler)
    assert result.status is SMTPDeliveryStatus.TEMP_FAILED
    assert sleeps == [1, 5, 30]
    assert server.connections == 4


def test_drop_mid_data_is_retried_on_a_fresh_connection(
    make_handler: MakeHandler, sleeps: Sleeps
) -> None:
    # The body must be larger than what the server could have read before hanging
    # up; a smaller one is indistinguishable on the wire from "dropped after the dot".
    body = "line of text\n" * 400_000
    with ScriptedServer([drop_mid_data, smtp_accept_all]) as server:
        handler = make_handler(*server.address)
        result = send_simple(handler, text_body=body)
    assert result.status is SMTPDeliveryStatus.SUCCESS
    assert result.retry_count == 1
    first, second = server.conversations
    assert first.blocks == []
    assert len(second.blocks) == 1


def test_drop_after_final_dot_is_not_resent(make_handler: MakeHandler, sleeps: Sleeps) -> None:
    with ScriptedServer([drop_after_final_dot, smtp_accept_all]) as server:
        handler = make_handler(*server.address)
        result = send_simple(handler)
    assert result.outcome_unknown is True
    assert result.status is SMTPDeliveryStatus.FAILED
    assert "may or may not" in (result.smtp_error or "")
    assert server.connections == 1
    assert sleeps == []


def test_rcpt_refusal_from_scripted_server(make_handler: MakeHandler) -> None:
    dialogue = SMTPDialogue(rcpt_replies={"bad@example.org": (550, "5.1.1 Unknown user")})
    with ScriptedServer(dialogue) as server:
        handler = make_handler(*server.address)
        result = send_simple(handler, to_addresses=["good@example.org", "bad@example.org"])
    assert result.status is SMTPDeliveryStatus.SUCCESS
    assert result.recipient_failures == {"bad@example.org": "550 5.1.1 Unknown user"}


def test_552_on_data_from_scripted_server(make_handler: MakeHandler) -> None:
    with ScriptedServer(SMTPDialogue(end_of_data=(552, "5.3.4 Too big"))) as server:
        handler = make_handler(*server.address)
        result = send_simple(handler)
    assert result.status is SMTPDeliveryStatus.FAILED
    assert result.smtp_code == 552


def test_starttls_refused_by_server_never_authenticates(
    make_handler: MakeHandler, certs: TestCertificates
) -> None:
    dialogue = SMTPDialogue(
        tls_context=certs.server_context(),
        auth_mechanisms=("PLAIN",),
        replies={"STARTTLS": (454, "4.7.0 TLS not available")},
    )
    with ScriptedServer(dialogue) as server:
        handler = make_handler(
            *server.address, encryption="tls", username="alice", password=PASSWORD
        )
        result = send_simple(handler)
    assert result.status is SMTPDeliveryStatus.FAILED
    assert "STARTTLS" in (result.smtp_error or "")
    received = b"".join(server.conversations[0].received).upper()
    assert b"AUTH" not in received and b"MAIL" not in received


def test_pipelining_sends_the_envelope_in_one_batch(
    make_handler: MakeHandler, mocker: MockerFixture
) -> None:
    dialogue = SMTPDialogue(
        extensions=("PIPELINING", "8BITMIME"),
        rcpt_replies={"bad@example.org": (550, "5.1.1 Unknown user")},
    )
    writes = mocker.spy(SMTPClient, "write_commands")
    with ScriptedServer(dialogue) as server:
        handler = make_handler(*server.address)
        result = send_simple(handler, to_addresses=["a@example.org", "bad@example.org"])
    assert result.status is SMTPDeliveryStatus.SUCCESS
    assert result.recipient_failures == {"bad@example.org": "550 5.1.1 Unknown user"}
    envelope = writes.call_args_list[0].args[1]
    assert envelope == [
        "MAIL FROM:<alice@example.com>",
        "RCPT TO:<a@example.org>",
        "RCPT TO:<bad@example.org>",
        "DATA",
    ]
    verbs = [line.split(b" ")[0].strip().upper() for line in server.conversations[0].received[:5]]
    assert verbs == [b"EHLO", b"MAIL", b"RCPT", b"RCPT", b"DATA"]


def test_pipelined_all_recipients_refused_sends_no_body(make_handler: MakeHandler) -> None:
    dialogue = SMTPDialogue(
        extensions=("PIPELINING",),
        rcpt_replies={"bad@example.org": (550, "5.1.1 Unknown user")},
        replies={"DATA": [(554, "5.5.1 No valid recipients")]},
    )
    with ScriptedServer(dialogue) as server:
        handler = make_handler(*server.address)
        result = send_simple(handler, to_addresses=["bad@example.org"])
        assert send_simple(handler, to_addresses=["good@example.org"]).success
    assert result.status is SMTPDeliveryStatus.REJECTED
    assert len(server.conversations[0].blocks) == 1  # only the second message  # type: ignore[attr-defined]


def test_garbage_reply_is_a_failure_not_a_crash(make_handler: MakeHandler) -> None:
    def garbage(conv: Any) -> None:
        conv.send("220 hello")
        conv.recv_line()
        conv.send("this is not smtp at all")
        conv.wait_closed(2)

    with ScriptedServer(garbage) as server:
        handler = make_handler(*server.address)
        result = send_simple(handler, retry=False)
    assert result.status in (SMTPDeliveryStatus.FAILED, SMTPDeliveryStatus.RETRY)
    assert result.smtp_error


# ---------------------------------------------------------------------- fork safety


# Python 3.12+ warns about fork() with threads running (the test servers' threads);
# the child here only uses its own fresh socket, which is the point of the test.
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_child_after_fork_never_uses_the_parents_connection(
    start_server: StartServer, make_handler: MakeHandler
) -> None:
    import os

    server = start_server()
    handler = make_handler(server.host, server.port)
    assert send_simple(handler, subject="from parent").success
    assert handler.pool.get_stats()["idle"] == 1
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: report its own send and exit without running pytest's teardown
        code = 1
        try:
            os.close(read_end)
            result = send_simple(handler, subject="from child")
            stats = handler.pool.get_stats()
            ok = result.success and stats["created"] == 1 and stats["reused"] == 0
            os.write(write_end, b"ok" if ok else repr((result, stats)).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        report = pipe.read()
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 0
    assert report == b"ok"
    # The parent's pooled connection survived the child and is still usable.
    assert send_simple(handler, subject="parent again").success
    assert handler.pool.get_stats()["reused"] >= 1
    subjects = sorted(str(m["Subject"]) for m in server.wait_for_messages(3))
    assert subjects == ["from child", "from parent", "parent again"]
    assert server.sessions == 2


# ---------------------------------------------------------------------- deadlines


def test_dripping_server_is_bounded_by_the_operation_deadline(make_handler: MakeHandler) -> None:
    # One byte every 0.05 s never trips the 1 s socket timeout; the deadline stops it.
    dialogue = SMTPDialogue(drip_interval=0.05)
    with ScriptedServer(dialogue) as server:
        handler = make_handler(*server.address, timeout=1.0, operation_timeout=0.5)
        result = send_simple(handler, retry=False)
    assert result.status is SMTPDeliveryStatus.RETRY
    assert "operation_timeout" in (result.smtp_error or "")
    assert server.conversations[0].blocks == []


def test_deadline_after_the_body_is_outcome_unknown(make_handler: MakeHandler) -> None:
    from src.testing.smtp_scripts import silent_after_final_dot

    with ScriptedServer(silent_after_final_dot) as server:
        handler = make_handler(*server.address, timeout=5.0, operation_timeout=0.5)
        result = send_simple(handler)
    assert result.outcome_unknown is True
    assert server.connections == 1


# ---------------------------------------------------------------------- DNS deliverability


def test_deliverability_check_refuses_a_null_mx_domain(
    start_server: StartServer, make_handler: MakeHandler
) -> None:
    import dns.resolver

    from src.handlers._dns.deliverability import DeliverabilityChecker
    from src.testing.dns_server import LoopbackDNSServer

    zone = {
        ("example.org.", "MX"): ["10 mx.example.org."],
        ("mx.example.org.", "A"): ["127.0.0.1"],
        ("nomail.example.", "MX"): ["0 ."],
    }
    server = start_server()
    with LoopbackDNSServer(zone) as dns_server:
        resolver = dns.resolver.Resolver(configure=False)
        resolver.nameservers = ["127.0.0.1"]
        resolver.port = dns_server.port
        checker = DeliverabilityChecker(resolver, timeout=2.0)
        handler = make_handler(server.host, server.port, check_deliverability=checker)
        refused = send_simple(handler, to_addresses=["bob@example.org", "x@nomail.example"])
        accepted = send_simple(handler, to_addresses=["bob@example.org", "carol@example.org"])
        queries = dns_server.query_count
    assert refused.status is SMTPDeliveryStatus.INVALID
    assert "to_addresses[1]" in (refused.smtp_error or "")
    assert "does not accept mail" in (refused.smtp_error or "")
    assert "null MX" in (refused.smtp_error or "")
    assert accepted.success
    assert queries == 2  # one per domain: example.org cached across both sends
    assert [m.rcpt_tos for m in server.messages] == [["bob@example.org", "carol@example.org"]]


def test_temporary_authentication_failure_is_retried(
    make_handler: MakeHandler, sleeps: Sleeps
) -> None:
    busy = SMTPDialogue(
        auth_mechanisms=("PLAIN",),
        replies={"AUTH": (454, "4.7.0 Temporary authentication failure")},
    )
    with ScriptedServer([busy, SMTPDialogue(auth_mechanisms=("PLAIN",))]) as server:
        handler = make_handler(*server.address, username="alice", password=PASSWORD)
        result = send_simple(handler)
    assert result.status is SMTPDeliveryStatus.SUCCESS
    assert result.retry_count == 1 and sleeps == [1]


def test_releasing_a_connection_twice_keeps_one_idle_entry(
    start_server: StartServer, make_handler: MakeHandler
) -> None:
    server = start_server()
    handler = make_handler(server.host, server.port)
    pool = handler.pool
    connection = pool.get_connection(server.host, server.port, encryption="none")
    pool.release_connection(server.host, server.port, connection)
    pool.release_connection(server.host, server.port, connection)
    stats = pool.get_stats()
    assert (stats["idle"], stats["open"], stats["in_use"]) == (1, 1, 0)
    first = pool.get_connection(server.host, server.port, encryption="none")
    second = pool.get_connection(server.host, server.port, encryption="none")
    assert first is not second
    pool.release_connection(server.host, server.port, first)
    pool.release_connection(server.host, server.port, second)


# ---------------------------------------------------------------------- late fixes


def test_attached_message_travels_as_message_rfc822_not_base64(
    start_server: StartServer, make_handler: MakeHandler
) -> None:
    server = start_server()
    handler = make_handler(server.host, server.port)
    inner = b"From: a@example.org\r\nSubject: Forwarded\r\n\r\nOriginal text\r\n"
    result = send_simple(
        handler,
        attachments=[
            {"filename": "fwd.eml", "contentType": "message/rfc822", "content": inner},
            {"filename": "raw.eml", "contentType": "message/rfc822", "content": b"S\xffj\r\n"},
        ],
    )
    assert result.success
    message = server.wait_for_messages(1)[0].message
    forwarded, opaque = message.iter_attachments()
    assert forwarded.get_content_type() == "message/rfc822"
    assert forwarded["Content-Transfer-Encoding"] == "7bit"
    assert forwarded.get_content()["Subject"] == "Forwarded"
    assert opaque.get_content_type() == "application/octet-stream"
    assert opaque.get_content() == b"S\xffj\r\n"


def test_non_ascii_password_logs_in_with_utf8_plain(
    start_server: StartServer, make_handler: MakeHandler
) -> None:
    password = "pässwörd-ünïcode"
    server = start_server("starttls", users={"jörg": password})
    handler = make_handler(
        server.host, server.port, username="jörg", password=password, encryption="tls"
    )
    result = send_simple(handler)
    assert result.status is SMTPDeliveryStatus.SUCCESS, result.smtp_error
    assert server.wait_for_messages(1)[0].username == "jörg"
    assert password not in repr(vars(handler))


@pytest.mark.parametrize("trace", [False, True], ids=["tracing off", "tracing on"])
def test_the_trace_is_called_only_when_tracing_is_on(
    make_handler: MakeHandler, mocker: MockerFixture, trace: bool
) -> None:
    sent = mocker.spy(WireTracer, "sent")
    received = mocker.spy(WireTracer, "received")
    dialogue = SMTPDialogue(extensions=("PIPELINING",), auth_mechanisms=("PLAIN",))
    with ScriptedServer(dialogue) as server:
        handler = make_handler(*server.address, username="u", password="pw", trace=trace)
        assert send_simple(handler).status is SMTPDeliveryStatus.SUCCESS
    assert (sent.call_count > 0) is trace
    assert (received.call_count > 0) is trace


def test_capabilities_are_read_after_starttls_and_before_any_login(
    make_handler: MakeHandler, server_ssl_context: ssl.SSLContext
) -> None:
    dialogue = SMTPDialogue(
        extensions=("SIZE 1000000", "PIPELINING"),
        tls_context=server_ssl_context,
        auth_mechanisms=("PLAIN", "LOGIN"),
    )
    with ScriptedServer(dialogue) as server:
        handler = make_handler(*server.address, username="u", password="pw", encryption="tls")
        capabilities = handler.capabilities()
        server.join()
    assert capabilities.tls is True
    assert capabilities.server == "localhost"
    assert capabilities.extensions["SIZE"] == "1000000"
    assert capabilities.offers("pipelining") and capabilities.extensions["AUTH"] == "PLAIN LOGIN"
    assert not capabilities.offers("STARTTLS")  # not offered again once TLS is on
    verbs = [line.split(b" ")[0].strip().upper() for line in server.conversations[0].received]
    assert b"AUTH" not in verbs and b"MAIL" not in verbs
