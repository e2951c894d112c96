"""The delivery options of SMTPProtocolHandler on loopback: pre-built messages,
DKIM signing, DSN, REQUIRETLS, 8BITMIME and CHUNKING (BDAT).

aiosmtpd checks what a correct server receives; the scripted dialogue offers the
extensions aiosmtpd lacks (DSN, CHUNKING, REQUIRETLS) and records every line.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Callable, Iterator
from email.message import EmailMessage
from typing import Any

import pytest
from fake_sleep import Sleeps

from src.handlers import ConfigurationError, DSNOptions
from src.handlers._mime import builder
from src.handlers._mime.builder import OutgoingMessage, PendingMessage
from src.handlers._smtp.client import SMTPClient
from src.handlers._smtp.options import xtext
from src.handlers.smtp import SMTPConnectionPool, SMTPDeliveryStatus, SMTPProtocolHandler
from src.testing.scripted_server import ScriptedServer
from src.testing.smtp_scripts import DROP, SILENT, SMTPDialogue
from src.testing.smtp_server import SMTPTestServer
from src.testing.tls import TestCertificates

SENDER = "alice@example.com"
RAW = (
    b"From: Alice <alice@example.com>\n"
    b"To: bob@example.org\n"
    b"Bcc: secret@example.net\n"
    b"Subject: pre-built\n"
    b"Message-ID: <raw-1@example.com>\n"
    b"\n"
    b"Hello\n"
)

MakeHandler = Callable[..., SMTPProtocolHandler]


@pytest.fixture
def server() -> Iterator[SMTPTestServer]:
    with SMTPTestServer() as running:
        yield running


@pytest.fixture
def make_handler(sleeps: Sleeps) -> Iterator[Callable[..., SMTPProtocolHandler]]:
    handlers: list[SMTPProtocolHandler] = []

    def make(host: str, port: int, **options: Any) -> SMTPProtocolHandler:
        options.setdefault("encryption", "none")
        options.setdefault("from_address", SENDER)
        options.setdefault("sleep", sleeps)
        options.setdefault("timeout", 5.0)
        options.setdefault("pool", SMTPConnectionPool(max_connections=4))
        handler = SMTPProtocolHandler(host, port, **options)
        handlers.append(handler)
        return handler

    yield make
    for handler in handlers:
        handler.close()


def scripted(*extensions: str, **options: Any) -> ScriptedServer:
    return ScriptedServer(SMTPDialogue(extensions=extensions, **options))


def commands(server: ScriptedServer, verb: str) -> list[str]:
    return [
        line.decode().rstrip("\r\n")
        for conversation in server.conversations
        for line in conversation.received
        if line.upper().startswith(verb.encode())
    ]


# ---------------------------------------------------------------------- pre-built messages


def test_send_raw_delivers_bytes_without_bcc_and_with_crlf(
    server: SMTPTestServer, make_handler: MakeHandler
) -> None:
    handler = make_handler(server.host, server.port)
    result = handler.send_raw(SENDER, ["bob@example.org", "secret@example.net"], RAW)
    assert result.status is SMTPDeliveryStatus.SUCCESS, result
    assert result.message_id == "<raw-1@example.com>"
    [received] = server.messages
    assert received.rcpt_tos == ["bob@example.org", "secret@example.net"]
    assert b"Bcc" not in received.data and b"secret" not in received.data
    assert b"\r\n" in received.data and b"\n" not in received.data.replace(b"\r\n", b"")
    assert received["Subject"] == "pre-built"


def test_send_raw_adds_a_message_id_when_there_is_none(
    server: SMTPTestServer, make_handler: MakeHandler
) -> None:
    handler = make_handler(server.host, server.port)
    raw = RAW.replace(b"Message-ID: <raw-1@example.com>\n", b"")
    result = handler.send_raw(None, "bob@example.org", raw)
    assert result.status is SMTPDeliveryStatus.SUCCESS
    assert result.message_id and result.message_id.endswith("@example.com>")
    assert server.messages[0]["Message-ID"] == result.message_id


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"To: bob@example.org\r\nSubject: x\r\n\r\nbody\r\n", "no From"),
        (b"From: a@example.com\r\nSubject: x\r\n\r\n" + b"y" * 999 + b"\r\n", "998"),
        (b"From: a@example.com\r\nSubject: x\rBcc: c@example.net\r\n\r\nb\r\n", "bare CR"),
        (b"From: a@example.com\r\nSubject: x\r\nRCPT TO:<x@y.z>\r\n\r\nb\r\n", "not a"),
        (b"From: a@example.com\r\nSubject: x\r\n\x00: y\r\n\r\nb\r\n", "NUL"),
        (b"\r\nbody only\r\n", "no From"),
    ],
)
def test_send_raw_refuses_bad_messages_before_connecting(
    make_handler: MakeHandler, raw: bytes, reason: str
) -> None:
    handler = make_handler("127.0.0.1", 9)  # nothing listens: nothing may be tried
    result = handler.send_raw(SENDER, ["bob@example.org"], raw)
    assert result.status is SMTPDeliveryStatus.INVALID
    assert reason in (result.smtp_error or "")


def test_send_raw_refuses_bad_envelope_addresses(make_handler: MakeHandler) -> None:
    handler = make_handler("127.0.0.1", 9)
    assert handler.send_raw(SENDER, [], RAW).status is SMTPDeliveryStatus.INVALID
    bad = handler.send_raw(SENDER, ["bob@example.org>\r\nDATA"], RAW)
    assert bad.status is SMTPDeliveryStatus.INVALID


def test_send_email_message_takes_the_envelope_from_the_headers(
    server: SMTPTestServer, make_handler: MakeHandler
) -> None:
    handler = make_handler(server.host, server.port, from_address=None)
    message = EmailMessage()
    message["From"] = "Zoë <zoe@example.com>"
    message["To"] = "bob@example.org, Carol <carol@example.org>"
    message["Bcc"] = "dave@example.net"
    message["Subject"] = "Grüße"
    message.set_content("Hallo, schöne Grüße\n" * 3)
    result = handler.send_email_message(message)
    assert result.status is SMTPDeliveryStatus.SUCCESS, result
    [received] = server.messages
    assert received.mail_from == "zoe@example.com"
    assert received.rcpt_tos == ["bob@example.org", "carol@example.org", "dave@example.net"]
    assert b"dave" not in received.data
    assert received["Subject"] == "Grüße"
    assert received.message.get_content().replace("\r\n", "\n") == "Hallo, schöne Grüße\n" * 3
    assert "Message-ID" not in message  # the caller's object is left alone
    assert received["Message-ID"] == result.message_id


def test_send_raw_retries_with_the_same_bytes(make_handler: MakeHandler, sleeps: Sleeps) -> None:
    dialogue = SMTPDialogue(end_of_data=[(451, "4.3.0 try again"), (250, "2.0.0 OK")])
    with ScriptedServer(dialogue) as server:
        handler = make_handler(server.host, server.port)
        result = handler.send_raw(SENDER, ["bob@example.org"], RAW)
    assert result.status is SMTPDeliveryStatus.SUCCESS and result.retry_count == 1
    first, second = server.conversations[0].blocks
    assert first == second and b"<raw-1@example.com>" in first
    assert len(sleeps) == 1


def test_send_raw_after_the_final_dot_without_reply_is_outcome_unknown(
    make_handler: MakeHandler,
) -> None:
    with scripted("8BITMIME", end_of_data=DROP) as server:
        handler = make_handler(server.host, server.port)
        result = handler.send_raw(SENDER, ["bob@example.org"], RAW)
    assert result.status is SMTPDeliveryStatus.FAILED
    assert result.outcome_unknown and not result.is_retryable
    assert len(server.conversations) == 1  # never resent


def test_eight_bit_body_needs_8bitmime(make_handler: MakeHandler) -> None:
    raw = RAW.replace(b"Hello", "Grüße".encode())
    with scripted("PIPELINING") as server:
        result = make_handler(server.host, server.port).send_raw(SENDER, ["b@example.org"], raw)
        assert result.status is SMTPDeliveryStatus.FAILED and "8BITMIME" in (
            result.smtp_error or ""
        )
        assert commands(server, "MAIL") == []
    with scripted("8BITMIME") as server:
        result = make_handler(server.host, server.port).send_raw(SENDER, ["b@example.org"], raw)
        assert result.status is SMTPDeliveryStatus.SUCCESS
        assert commands(server, "MAIL") == [f"MAIL FROM:<{SENDER}> BODY=8BITMIME"]


# ---------------------------------------------------------------------- DKIM


def test_dkim_signs_once_and_retries_reuse_the_signature(
    make_handler: MakeHandler, sleeps: Sleeps
) -> None:
    dkim = pytest.importorskip("dkim")
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    from src.handlers import DKIMSigner

    key = ed25519.Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    signer = DKIMSigner("example.com", "s1", pem, algorithm="ed25519-sha256")
    public = key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    import base64

    record = b"v=DKIM1; k=ed25519; p=" + base64.b64encode(public)
    dialogue = SMTPDialogue(end_of_data=[(451, "4.3.0 later"), (250, "2.0.0 OK")])
    with ScriptedServer(dialogue) as server:
        handler = make_handler(server.host, server.port, dkim=signer)
        result = handler.send_message(["bob@example.org"], "signed", "Signed body\n")
        raw_result = handler.send_raw(SENDER, ["bob@example.org"], RAW)
    assert result.status is SMTPDeliveryStatus.SUCCESS and result.retry_count == 1
    assert raw_result.status is SMTPDeliveryStatus.SUCCESS
    first, second, third = server.conversations[0].blocks
    assert first == second and first.startswith(b"DKIM-Signature:")
    # No Bcc header line (the signature's base64 may spell "Bcc" by chance).
    assert third.startswith(b"DKIM-Signature:") and b"\nBcc:" not in third
    for block in (first, third):
        message = block[: -len(b".\r\n")].replace(b"\r\n..", b"\r\n.")
        assert dkim.verify(message, dnsfunc=lambda name, timeout=5: record)


def test_dkim_option_must_be_a_signer() -> None:
    with pytest.raises(ConfigurationError):
        SMTPProtocolHandler("127.0.0.1", 25, encryption="none", dkim="example.com")  # type: ignore[arg-type]


# ---------------------------------------------------------------------- DSN


def test_dsn_parameters_on_mail_and_rcpt(make_handler: MakeHandler) -> None:
    options = DSNOptions(notify=("SUCCESS", "FAILURE"), ret="HDRS", envid="order 7+1=x")
    with scripted("PIPELINING", "DSN") as server:
        handler = make_handler(server.host, server.port)
        result = handler.send_message(
            ["bob@example.org", "carol@example.org"], "dsn", "x", dsn=options
        )
    assert result.status is SMTPDeliveryStatus.SUCCESS
    [mail] = commands(server, "MAIL")
    assert mail.endswith(" RET=HDRS ENVID=order+207+2B1+3Dx")
    assert commands(server, "RCPT") == [
        "RCPT TO:<bob@example.org> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;bob@example.org",
        "RCPT TO:<carol@example.org> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;carol@example.org",
    ]


def test_dsn_not_offered_is_left_out_with_a_warning(
    make_handler: MakeHandler, caplog: pytest.LogCaptureFixture
) -> None:
    with scripted("PIPELINING") as server:
        handler = make_handler(server.host, server.port)
        result = handler.send_message(["bob@example.org"], "dsn", "x", dsn=DSNOptions())
    assert result.status is SMTPDeliveryStatus.SUCCESS
    assert "NOTIFY" not in " ".join(commands(server, "RCPT"))
    assert any("does not offer DSN" in r.getMessage() for r in caplog.records)


def test_dsn_required_but_not_offered_sends_nothing(make_handler: MakeHandler) -> None:
    with scripted("PIPELINING") as server:
        handler = make_handler(server.host, server.port)
        result = handler.send_raw(SENDER, ["bob@example.org"], RAW, dsn=DSNOptions(required=True))
    assert result.status is SMTPDeliveryStatus.FAILED and not result.is_retryable
    assert "DSN" in (result.smtp_error or "")
    assert commands(server, "MAIL") == []


@pytest.mark.parametrize(
    "options",
    [
        {"notify": ()},
        {"notify": ("NEVER", "SUCCESS")},
        {"notify": ("SOMETIMES",)},
        {"ret": "BODY"},
        {"envid": "x" * 101},
        {"envid": "tab\there"},
        {"envid": "é"},
    ],
)
def test_bad_dsn_options_are_configuration_errors(options: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        DSNOptions(**options)


def test_xtext() -> None:
    assert xtext("a+b=c d\u00e9") == "a+2Bb+3Dc+20d+C3+A9"


# ---------------------------------------------------------------------- REQUIRETLS


def test_requiretls_needs_tls(make_handler: MakeHandler) -> None:
    with scripted("PIPELINING", "REQUIRETLS") as server:
        handler = make_handler(server.host, server.port)
        result = handler.send_message(["bob@example.org"], "x", "y", require_tls=True)
    assert result.status is SMTPDeliveryStatus.FAILED and not result.is_retryable
    assert "not encrypted" in (result.smtp_error or "")
    assert commands(server, "MAIL") == []


def test_requiretls_needs_the_extension_and_is_sent_when_offered(
    make_handler: MakeHandler, certs: TestCertificates, client_ssl_context: ssl.SSLContext
) -> None:
    for offered in ((), ("REQUIRETLS",)):
        dialogue = SMTPDialogue(
            extensions=("PIPELINING", *offered), tls_context=certs.server_context()
        )
        with ScriptedServer(dialogue) as server:
            handler = make_handler(
                server.host, server.port, encryption="tls", ssl_context=client_ssl_context
            )
            result = handler.send_message(["bob@example.org"], "x", "y", require_tls=True)
        if offered:
            assert result.status is SMTPDeliveryStatus.SUCCESS, result
            assert commands(server, "MAIL")[0].endswith(" REQUIRETLS")
        else:
            assert result.status is SMTPDeliveryStatus.FAILED
            assert "does not offer it" in (result.smtp_error or "")
            assert commands(server, "MAIL") == []


# ---------------------------------------------------------------------- CHUNKING


def test_bdat_pipelined_in_one_write(make_handler: MakeHandler) -> None:
    with scripted("PIPELINING", "CHUNKING", "8BITMIME", "DSN") as server:
        handler = make_handler(server.host, server.port)
        result = handler.send_raw(
            SENDER, ["bob@example.org"], RAW + b".leading dot\n", dsn=DSNOptions()
        )
    assert result.status is SMTPDeliveryStatus.SUCCESS, result
    conversation = server.conversations[0]
    [body] = conversation.blocks
    assert body.endswith(b"\r\n.leading dot\r\n")  # not dot-stuffed
    [bdat] = commands(server, "BDAT")
    assert bdat == f"BDAT {len(body)} LAST"
    assert commands(server, "DATA") == []


def test_bdat_without_pipelining(make_handler: MakeHandler) -> None:
    with scripted("CHUNKING") as server:
        result = make_handler(server.host, server.port).send_raw(SENDER, ["b@example.org"], RAW)
    assert result.status is SMTPDeliveryStatus.SUCCESS
    assert len(server.conversations[0].blocks) == 1


@pytest.mark.parametrize("pipelining", [True, False])
@pytest.mark.parametrize("lost", [DROP, SILENT])
def test_bdat_final_reply_lost_is_outcome_unknown(
    make_handler: MakeHandler, pipelining: bool, lost: Any
) -> None:
    extensions = ("CHUNKING", "PIPELINING") if pipelining else ("CHUNKING",)
    with scripted(*extensions, replies={"BDAT": lost}) as server:
        handler = make_handler(server.host, server.port, timeout=0.5, operation_timeout=1.0)
        result = handler.send_raw(SENDER, ["bob@example.org"], RAW)
    assert result.status is SMTPDeliveryStatus.FAILED, result
    assert result.outcome_unknown and not result.is_retryable
    assert len(server.conversations) == 1


def test_bdat_refused_recipients_are_reported(make_handler: MakeHandler) -> None:
    with scripted(
        "CHUNKING", "PIPELINING", rcpt_replies={"gone@example.org": (550, "5.1.1 unknown")}
    ) as server:
        handler = make_handler(server.host, server.port)
        partial = handler.send_raw(SENDER, ["bob@example.org", "gone@example.org"], RAW)
        refused = handler.send_raw(SENDER, ["gone@example.org"], RAW)
    assert partial.status is SMTPDeliveryStatus.SUCCESS
    assert partial.recipient_failures == {"gone@example.org": "550 5.1.1 unknown"}
    assert refused.status is SMTPDeliveryStatus.REJECTED
    assert commands(server, "RSET")  # the refused transaction was cleared


def test_bdat_transient_refusal_is_retried(make_handler: MakeHandler, sleeps: Sleeps) -> None:
    with scripted("CHUNKING", "PIPELINING", end_of_data=[(451, "4.3.0 later")]) as server:
        handler = make_handler(server.host, server.port)
        result = handler.send_raw(SENDER, ["bob@example.org"], RAW)
    assert result.status is SMTPDeliveryStatus.SUCCESS and result.retry_count == 1
    first, second = server.conversations[0].blocks
    assert first == second


# ---------------------------------------------------------- built during the envelope's trip


@pytest.mark.parametrize("size", [True, False])
def test_pipelined_send_builds_after_the_envelope_went_out(
    make_handler: MakeHandler, monkeypatch: pytest.MonkeyPatch, size: bool
) -> None:
    events: list[str] = []
    write_commands = SMTPClient.write_commands
    built = PendingMessage.built

    def spy_write(client: SMTPClient, lines: list[str], data: bytes = b"") -> None:
        events.append(lines[0].split(" ", 1)[0])
        write_commands(client, lines, data)

    def spy_built(pending: PendingMessage) -> OutgoingMessage:
        events.append("built")
        return built(pending)

    monkeypatch.setattr(SMTPClient, "write_commands", spy_write)
    monkeypatch.setattr(PendingMessage, "built", spy_built)
    extensions = ("PIPELINING", "8BITMIME", *(["SIZE 10240000"] if size else []))
    with scripted(*extensions) as server:
        result = make_handler(server.host, server.port).send_message(["bob@example.org"], "s", "hi")
    assert result.status is SMTPDeliveryStatus.SUCCESS, result
    assert events[:2] == ["MAIL", "built"]
    [body] = server.conversations[0].blocks
    assert result.message_id is not None and result.message_id.encode() in body
    [mail] = commands(server, "MAIL")
    if not size:
        assert mail == f"MAIL FROM:<{SENDER}>"
        return
    # SIZE carries the builder's estimate (RFC 1870 asks for one): close, from above.
    declared = int(mail.rsplit("SIZE=", 1)[1])
    assert len(body) - 5 <= declared <= 2 * len(body) + 2048


@pytest.mark.parametrize(
    "extensions",
    [
        ("8BITMIME", "SIZE 10240000"),  # no PIPELINING: every command waits anyway
        ("PIPELINING", "CHUNKING", "8BITMIME"),  # BDAT needs the exact size first
        ("PIPELINING", "8BITMIME", "SIZE 4000"),  # an estimate near the limit
    ],
)
def test_exact_size_where_the_envelope_depends_on_the_bytes(
    make_handler: MakeHandler, extensions: tuple[str, ...]
) -> None:
    with scripted(*extensions) as server:
        result = make_handler(server.host, server.port).send_message(
            ["bob@example.org"], "s", "x" * 1500 + "\n"
        )
    assert result.status is SMTPDeliveryStatus.SUCCESS, result
    [block] = server.conversations[0].blocks
    [mail] = commands(server, "MAIL")
    if "SIZE" in mail:
        size = len(block) - len(b".\r\n")  # the block ends with the final dot's line
        assert mail.endswith(f"SIZE={size}")


def test_a_build_failing_after_the_envelope_sends_nothing(
    make_handler: MakeHandler, monkeypatch: pytest.MonkeyPatch
) -> None:
    with scripted("PIPELINING", "8BITMIME") as server:

        def broken_build(pending: PendingMessage) -> OutgoingMessage:
            # Fail once the server has read the pipelined DATA: closing the connection
            # with its replies unread resets it, and a reset drops what the server had
            # not read yet, which would make what it saw depend on timing.
            deadline = time.monotonic() + 5
            while b"DATA\r\n" not in server.conversations[0].data:
                if time.monotonic() > deadline:
                    break
                time.sleep(0.002)
            raise RuntimeError("builder bug")

        handler = make_handler(server.host, server.port)
        monkeypatch.setattr(PendingMessage, "_build", broken_build)
        failed = handler.send_message(["bob@example.org"], "s", "hi")
        monkeypatch.undo()
        after = handler.send_message(["bob@example.org"], "s", "hi")
    assert failed.status is SMTPDeliveryStatus.FAILED and not failed.outcome_unknown
    assert after.status is SMTPDeliveryStatus.SUCCESS, after
    first, second = server.conversations
    # The first connection saw MAIL, RCPT and DATA, then was given up without the
    # final dot (the second send needed a new one).
    assert first.blocks == []
    assert b"DATA\r\n" in first.data and b"QUIT" not in first.data
    assert len(second.blocks) == 1


def test_bytes_that_need_more_than_the_envelope_announced_are_not_sent(
    make_handler: MakeHandler, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A plan that wrongly promised 7-bit bytes: the MAIL without BODY=8BITMIME went out.
    monkeypatch.setattr(builder, "_travels_8bit", lambda text: False)
    with scripted("PIPELINING", "8BITMIME") as server:
        handler = make_handler(server.host, server.port, eight_bit=True)
        result = handler.send_message(["bob@example.org"], "s", "Grüße")
    assert result.status is SMTPDeliveryStatus.FAILED and not result.outcome_unknown
    assert "differs from the envelope" in (result.smtp_error or "")
    assert server.conversations[0].blocks == []


def test_a_retry_sends_the_bytes_built_for_the_first_attempt(
    make_handler: MakeHandler,
) -> None:
    with scripted("PIPELINING", "8BITMIME", end_of_data=[(451, "4.3.0 later")]) as server:
        result = make_handler(server.host, server.port).send_message(["bob@example.org"], "s", "hi")
    assert result.status is SMTPDeliveryStatus.SUCCESS and result.retry_count == 1
    first, second = server.conversations[0].blocks
    assert first == second


# ---------------------------------------------------------------------- 8BITMIME


def test_eight_bit_option_sends_utf8_text_unencoded(
    server: SMTPTestServer, make_handler: MakeHandler
) -> None:
    handler = make_handler(server.host, server.port, eight_bit=True)
    text = "Schöne Grüße, ½ € ✓\n" * 4
    result = handler.send_message(["bob@example.org"], "8bit", text, html_body="<p>ü</p>")
    assert result.status is SMTPDeliveryStatus.SUCCESS, result
    [received] = server.messages
    assert "BODY=8BITMIME" in received.mail_options
    assert "Schöne Grüße".encode() in received.data
    assert received.data.count(b"Content-Transfer-Encoding: 8bit") == 2
    plain = received.message.get_body(("plain",))
    assert plain is not None and plain.get_content().replace("\r\n", "\n") == text


def test_eight_bit_option_keeps_ascii_7bit_and_long_lines_encoded(
    server: SMTPTestServer, make_handler: MakeHandler
) -> None:
    handler = make_handler(server.host, server.port, eight_bit=True)
    assert handler.send_message(["bob@example.org"], "a", "plain ascii").success
    assert handler.send_message(["bob@example.org"], "b", "ü" * 600).success
    ascii_message, long_message = server.messages
    assert "BODY=8BITMIME" not in ascii_message.mail_options
    assert b"Content-Transfer-Encoding: 7bit" in ascii_message.data
    assert b"Content-Transfer-Encoding: base64" in long_message.data


def test_eight_bit_body_on_a_server_without_8bitmime_sends_nothing(
    make_handler: MakeHandler,
) -> None:
    with scripted("PIPELINING") as server:
        handler = make_handler(server.host, server.port, eight_bit=True)
        result = handler.send_message(["bob@example.org"], "x", "Grüße")
    assert result.status is SMTPDeliveryStatus.FAILED and not result.is_retryable
    assert "8BITMIME" in (result.smtp_error or "")
    assert commands(server, "MAIL") == []


def test_send_raw_takes_display_name_forms_in_the_envelope(
    server: SMTPTestServer, make_handler: MakeHandler
) -> None:
    handler = make_handler(server.host, server.port, from_address="App <app@example.com>")
    result = handler.send_raw(None, ["Bob <bob@example.org>"], RAW)
    assert result.status is SMTPDeliveryStatus.SUCCESS, result
    assert server.messages[0].mail_from == "app@example.com"
    assert server.messages[0].rcpt_tos == ["bob@example.org"]
