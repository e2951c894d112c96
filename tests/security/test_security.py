"""Security tests, on loopback servers that record what reached them.

* Injection: every field that ends up in a header line or a protocol command is tried
  with control characters; each vector must be refused before a byte is sent, and the
  server proves it (no connection, or no command carrying the payload).
* TLS: verification on by default, STARTTLS/STLS that cannot be stripped, bad
  certificates that fail with a clear reason, and the caller's own context honoured.
* Secrets: passwords and AUTH payloads never show in reprs, errors, results, logs,
  stdout/stderr or the redacted protocol trace.
* Resources: oversized POP3 replies are cut off, and hostile MIME structures parse
  within bounds.

The vector tables here are the ones listed in docs/reliability.md.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import logging
import re
import ssl
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from email import policy
from email.parser import BytesParser
from pathlib import Path
from typing import Any, cast

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from fake_sleep import Sleeps
from leaks import (
    assert_no_secret,
    b64,
    exception_texts,
    library_log_text,
    secret_forms,
    xoauth2_response,
)

from src.handlers._auth.credentials import Credentials
from src.handlers._mime.parser import ParseLimits, parse_message
from src.handlers._net import tls
from src.handlers._net import trace as wire_log
from src.handlers._net.config import Endpoint, Timeouts
from src.handlers._net.masking import MASK, mask_secrets
from src.handlers._net.trace import Redactor
from src.handlers._smtp.connection import SMTPConnection
from src.handlers._smtp.settings import SessionSettings
from src.handlers.errors import (
    MailAuthenticationError,
    MailHandlerError,
    MailValidationError,
    POP3MessageTooLargeError,
    POP3ProtocolError,
    POP3SecurityError,
)
from src.handlers.pop3 import POP3ConnectionPool, POP3ProtocolHandler
from src.handlers.smtp import (
    SMTPConnectionPool,
    SMTPDeliveryStatus,
    SMTPEncryption,
    SMTPProtocolHandler,
)
from src.testing.pop3_server import POP3TestServer
from src.testing.scripted_server import Conversation, ScriptedServer
from src.testing.smtp_scripts import SMTPDialogue, send_reply
from src.testing.smtp_server import SMTPTestServer, TLSMode
from src.testing.tls import LOOPBACK_NAMES, TestCertificates

USER = "alice"
PASSWORD = "Pa55-w0rd-Sekr1t"
WRONG = "Wr0ng-Guess-9876"
SENDER = "alice@example.com"
BASE_SEND: dict[str, Any] = {
    "to_addresses": ["bob@example.org"],
    "subject": "Hello",
    "text_body": "Hi Bob",
}
EVIL = "evil@attacker.example"
PARSER = BytesParser(policy=policy.default)


def received_lines(server: ScriptedServer) -> list[bytes]:
    return [line for conv in server.conversations for line in conv.received]


def commands_seen(server: ScriptedServer, index: int | None = None) -> list[str]:
    """Verbs of the lines a scripted server received (on one connection, or all)."""
    conversations = server.conversations if index is None else [server.conversations[index]]
    lines = [line for conv in conversations for line in conv.received]
    return [line.split(b" ", 1)[0].strip().upper().decode("latin-1") for line in lines]


def smtp_commands(server: ScriptedServer) -> list[bytes]:
    """Command lines a scripted SMTP server received, message bodies left out."""
    commands: list[bytes] = []
    for conv in server.conversations:
        in_body = False
        for line in conv.received:
            if in_body:
                in_body = line != b".\r\n"
                continue
            commands.append(line)
            in_body = line.strip().upper() == b"DATA"
    return commands


def pop3_verbs(server: POP3TestServer, start: int = 0) -> list[str]:
    return [line.split(" ", 1)[0].upper() for line in server.commands[start:]]


@pytest.fixture
def smtp_handlers() -> Iterator[list[SMTPProtocolHandler]]:
    handlers: list[SMTPProtocolHandler] = []
    yield handlers
    for handler in handlers:
        handler.close()


@pytest.fixture
def make_smtp(
    smtp_handlers: list[SMTPProtocolHandler], sleeps: Sleeps, client_ssl_context: ssl.SSLContext
) -> Callable[..., SMTPProtocolHandler]:
    """An SMTP handler with a private pool, a fake sleep and the test CA trusted."""

    def make(host: str, port: int, **options: Any) -> SMTPProtocolHandler:
        options.setdefault("encryption", "none")
        options.setdefault("allow_cleartext", True)
        options.setdefault("from_address", SENDER)
        options.setdefault("ssl_context", client_ssl_context)
        options.setdefault("sleep", sleeps)
        options.setdefault("timeout", 5.0)
        options.setdefault("pool", SMTPConnectionPool(max_connections=2))
        handler = SMTPProtocolHandler(host, port, **options)
        smtp_handlers.append(handler)
        return handler

    return make


@pytest.fixture
def smtp_wire() -> Iterator[ScriptedServer]:
    """An accepting SMTP server that keeps every byte it receives."""
    with ScriptedServer(SMTPDialogue()) as server:
        yield server
    assert server.errors == []


POP3_MESSAGES = [
    b"From: a@example.com\r\nSubject: one\r\n\r\nfirst\r\n",
    b"From: b@example.com\r\nSubject: two\r\n\r\nsecond\r\n",
]


@pytest.fixture
def pop3_server() -> Iterator[POP3TestServer]:
    with POP3TestServer(users={USER: PASSWORD}) as server:
        for raw in POP3_MESSAGES:
            server.add_message(raw, user=USER)
        yield server
    assert server.errors == []


def make_pop3(server: POP3TestServer | ScriptedServer, **options: Any) -> POP3ProtocolHandler:
    host, port = (server.host, server.port)
    options.setdefault("sleep", Sleeps())
    return POP3ProtocolHandler(
        host,
        port,
        options.pop("username", USER),
        options.pop("password", PASSWORD),
        options.pop("encryption", "none"),
        5,
        **options,
    )


# =====================================================================================
# Injection: refused before anything is sent
# =====================================================================================

# (id, field named in the error, send_message overrides)
SEND_VECTORS: list[tuple[str, str, dict[str, Any]]] = [
    ("subject-crlf-bcc", "subject", {"subject": f"Hi\r\nBcc: {EVIL}"}),
    ("subject-lf", "subject", {"subject": f"Hi\nBcc: {EVIL}"}),
    ("subject-cr", "subject", {"subject": f"Hi\rBcc: {EVIL}"}),
    ("subject-nul", "subject", {"subject": "Hi\x00there"}),
    ("subject-vt", "subject", {"subject": "Hi\x0bthere"}),
    ("subject-esc", "subject", {"subject": "Hi\x1b[31mthere"}),
    ("subject-del", "subject", {"subject": "Hi\x7fthere"}),
    ("subject-lone-surrogate", "subject", {"subject": "Hi\ud800there"}),
    ("to-crlf-rcpt", "to_addresses", {"to_addresses": [f"bob@example.org\r\nRCPT TO:<{EVIL}>"]}),
    ("to-lf", "to_addresses", {"to_addresses": [f"bob@example.org\nRCPT TO:<{EVIL}>"]}),
    ("to-nul", "to_addresses", {"to_addresses": ["bob@example.org\x00evil"]}),
    ("to-tab", "to_addresses", {"to_addresses": ["bob\t@example.org"]}),
    ("to-single-string-crlf", "to_addresses", {"to_addresses": f"bob@example.org\r\nBcc: {EVIL}"}),
    ("to-name-crlf", "to_addresses", {"to_addresses": [f'"Bob\r\nBcc: {EVIL}" <bob@example.org>']}),
    ("to-name-nul", "to_addresses", {"to_addresses": ['"Bob\x00" <bob@example.org>']}),
    ("to-domain-crlf", "to_addresses", {"to_addresses": ["bob@exam\r\nple.org"]}),
    ("to-local-nel", "to_addresses", {"to_addresses": ["bob\x85evil@example.org"]}),
    ("to-local-line-separator", "to_addresses", {"to_addresses": ["bob\u2028evil@example.org"]}),
    ("to-local-c1-csi", "to_addresses", {"to_addresses": ["bob\x9bevil@example.org"]}),
    ("to-local-lone-surrogate", "to_addresses", {"to_addresses": ["bob\udcff@example.org"]}),
    ("cc-crlf", "cc_addresses", {"cc_addresses": [f"carol@example.org\r\nRCPT TO:<{EVIL}>"]}),
    ("bcc-crlf", "bcc_addresses", {"bcc_addresses": [f"dave@example.org\r\nRCPT TO:<{EVIL}>"]}),
    ("bcc-nul", "bcc_addresses", {"bcc_addresses": ["dave@example.org\x00"]}),
    ("from-crlf-rcpt", "from_address", {"from_address": f"{SENDER}>\r\nRCPT TO:<{EVIL}"}),
    ("from-name-lf", "from_address", {"from_address": f'"Alice\nBcc: {EVIL}" <{SENDER}>'}),
    ("reply-to-crlf", "reply_to", {"reply_to": f"help@example.com\r\nBcc: {EVIL}"}),
    ("reply-to-name-cr", "reply_to", {"reply_to": f'"Help\rBcc: {EVIL}" <help@example.com>'}),
    ("header-name-crlf", "custom header name", {"custom_headers": {f"X-A\r\nBcc: {EVIL}": "1"}}),
    ("header-name-colon", "custom header name", {"custom_headers": {f"Bcc: {EVIL}\r\nX-A": "1"}}),
    ("header-name-space", "custom header name", {"custom_headers": {"X Injected": "1"}}),
    ("header-name-empty", "custom header name", {"custom_headers": {"": "1"}}),
    ("header-name-non-ascii", "custom header name", {"custom_headers": {"X-Grüße": "1"}}),
    ("header-name-reserved-bcc", "custom header", {"custom_headers": {"Bcc": EVIL}}),
    ("header-value-crlf", "custom_headers", {"custom_headers": {"X-A": f"1\r\nBcc: {EVIL}"}}),
    ("header-value-lf-fold", "custom_headers", {"custom_headers": {"X-A": f"1\n Bcc: {EVIL}"}}),
    ("header-value-cr", "custom_headers", {"custom_headers": {"X-A": f"1\rBcc: {EVIL}"}}),
    ("header-value-nul", "custom_headers", {"custom_headers": {"X-A": "1\x00"}}),
    ("header-value-lone-surrogate", "custom_headers", {"custom_headers": {"X-A": "1\udfff"}}),
    (
        "message-id-crlf",
        "custom_headers",
        {"custom_headers": {"Message-ID": f"<a@b>\r\nBcc: {EVIL}"}},
    ),
    (
        "filename-crlf",
        "filename",
        {"attachments": [{"filename": "a.txt\r\nContent-Type: text/html", "content": b"x"}]},
    ),
    (
        "filename-quote-crlf",
        "filename",
        {"attachments": [{"filename": 'a.txt"\r\nX-Evil: "1', "content": b"x"}]},
    ),
    ("filename-nul", "filename", {"attachments": [{"filename": "a\x00.exe", "content": b"x"}]}),
    (
        "filename-lone-surrogate",
        "filename",
        {"attachments": [{"filename": "a\udcff.txt", "content": b"x"}]},
    ),
    (
        "content-type-crlf",
        "contentType",
        {
            "attachments": [
                {"filename": "a.txt", "content": b"x", "contentType": "text/plain\r\nBcc: x@y.z"}
            ]
        },
    ),
    (
        "content-type-parameter",
        "contentType",
        {
            "attachments": [
                {"filename": "a.txt", "content": b"x", "contentType": "text/plain; name=evil.exe"}
            ]
        },
    ),
    (
        "content-type-alias-lf",
        "contentType",
        {
            "attachments": [
                {"filename": "a.txt", "content": b"x", "content_type": "text/plain\nX: y"}
            ]
        },
    ),
    (
        "content-id-crlf",
        "contentId",
        {"attachments": [{"filename": "a.png", "content": b"x", "contentId": "img\r\nBcc: x@y.z"}]},
    ),
    (
        "content-id-angle-break",
        "contentId",
        {"attachments": [{"filename": "a.png", "content": b"x", "contentId": "img> X-Evil: <1"}]},
    ),
]

# (id, SMTPProtocolHandler keyword overrides)
SMTP_SETTING_VECTORS: list[tuple[str, dict[str, Any]]] = [
    ("smtp-hostname-crlf", {"hostname": "127.0.0.1\r\nRSET"}),
    ("smtp-hostname-nul", {"hostname": "127.0.0.1\x00"}),
    ("smtp-username-crlf", {"username": "alice\r\nRSET"}),
    ("smtp-username-nul", {"username": "alice\x00"}),
    ("smtp-password-crlf", {"password": f"{PASSWORD}\r\nRSET"}),
    ("smtp-password-nul", {"password": f"{PASSWORD}\x00"}),
    ("smtp-password-lone-surrogate", {"password": f"{PASSWORD}\udcff"}),
    ("smtp-local-hostname-crlf", {"local_hostname": "client.example\r\nRSET"}),
    ("smtp-local-hostname-nul", {"local_hostname": "client.example\x00"}),
    ("smtp-local-hostname-non-ascii", {"local_hostname": "clïent.example"}),
    ("smtp-from-address-crlf", {"from_address": f"{SENDER}\r\nRCPT TO:<{EVIL}>"}),
]

# (id, POP3ProtocolHandler overrides); every payload carries a DELE command.
POP3_SETTING_VECTORS: list[tuple[str, dict[str, Any]]] = [
    ("pop3-hostname-crlf", {"hostname": "127.0.0.1\r\nDELE 1"}),
    ("pop3-username-crlf", {"username": f"{USER}\r\nDELE 1"}),
    ("pop3-username-lf", {"username": f"{USER}\nDELE 1"}),
    ("pop3-username-nul", {"username": f"{USER}\x00DELE 1"}),
    ("pop3-username-lone-surrogate", {"username": f"{USER}\ud800"}),
    ("pop3-password-crlf", {"password": f"{PASSWORD}\r\nDELE 1"}),
    ("pop3-password-cr", {"password": f"{PASSWORD}\rDELE 1"}),
    ("pop3-password-nul", {"password": f"{PASSWORD}\x00DELE 1"}),
    ("pop3-pool-password-crlf", {"pool": True, "password": f"{PASSWORD}\r\nDELE 1"}),
]


def _authenticate_as(username: str | None = None, password: str | None = None) -> Any:
    def call(handler: POP3ProtocolHandler) -> Any:
        with handler:  # a session is open, so a connection exists
            return handler.authenticate(username, password)

    return call


# (id, the call); each payload tries to smuggle a DELE command.
POP3_CALL_VECTORS: list[tuple[str, Callable[[POP3ProtocolHandler], Any]]] = [
    ("pop3-authenticate-username-crlf", _authenticate_as(username=f"{USER}\r\nDELE 1")),
    ("pop3-authenticate-password-crlf", _authenticate_as(password=f"{PASSWORD}\r\nDELE 1")),
    ("pop3-authenticate-password-nul", _authenticate_as(password=f"{PASSWORD}\x00")),
    ("pop3-fetch-message-id-crlf", lambda h: h.fetch_message("1\r\nDELE 1")),  # type: ignore[arg-type]
    ("pop3-delete-message-id-crlf", lambda h: h.delete_message("2\r\nDELE 1")),  # type: ignore[arg-type]
    ("pop3-message-size-id-crlf", lambda h: h.get_message_size("1\r\nDELE 1")),  # type: ignore[arg-type]
    ("pop3-fetch-messages-id-crlf", lambda h: h.fetch_messages(["1\r\nDELE 1"])),  # type: ignore[list-item]
    ("pop3-delete-messages-id-crlf", lambda h: h.delete_messages([1, "2\r\nDELE 1"])),  # type: ignore[list-item]
    ("pop3-list-headers-id-crlf", lambda h: h.list_headers(["1\r\nDELE 1"])),  # type: ignore[list-item]
]

INJECTION_VECTOR_COUNT = (
    len(SEND_VECTORS)
    + len(SMTP_SETTING_VECTORS)
    + len(POP3_SETTING_VECTORS)
    + len(POP3_CALL_VECTORS)
)


def test_the_injection_table_is_large_and_has_unique_ids() -> None:
    ids = (
        [v[0] for v in SEND_VECTORS]
        + [v[0] for v in SMTP_SETTING_VECTORS]
        + [v[0] for v in POP3_SETTING_VECTORS]
        + [v[0] for v in POP3_CALL_VECTORS]
    )
    assert len(ids) == len(set(ids)) == INJECTION_VECTOR_COUNT
    assert INJECTION_VECTOR_COUNT >= 40


def test_control_a_valid_send_does_reach_the_server(
    smtp_wire: ScriptedServer, make_smtp: Callable[..., SMTPProtocolHandler]
) -> None:
    """The harness can see a send: without this, 'nothing arrived' would prove nothing."""
    result = make_smtp(*smtp_wire.address).send_message(**BASE_SEND)
    assert result.status is SMTPDeliveryStatus.SUCCESS, result.smtp_error
    assert smtp_wire.connections == 1
    assert "MAIL" in commands_seen(smtp_wire)


@pytest.mark.parametrize(
    ("field", "overrides"), [pytest.param(f, o, id=i) for i, f, o in SEND_VECTORS]
)
def test_send_vector_is_refused_before_connecting(
    smtp_wire: ScriptedServer,
    make_smtp: Callable[..., SMTPProtocolHandler],
    field: str,
    overrides: dict[str, Any],
) -> None:
    handler = make_smtp(*smtp_wire.address)
    result = handler.send_message(**{**BASE_SEND, **overrides})
    assert result.status is SMTPDeliveryStatus.INVALID
    assert field in (result.smtp_error or "")
    assert not result.is_retryable
    assert smtp_wire.connections == 0


@pytest.mark.parametrize("overrides", [pytest.param(o, id=i) for i, o in SMTP_SETTING_VECTORS])
def test_smtp_setting_vector_is_refused_at_construction(
    smtp_wire: ScriptedServer,
    make_smtp: Callable[..., SMTPProtocolHandler],
    overrides: dict[str, Any],
) -> None:
    options = {
        "hostname": smtp_wire.host,
        "port": smtp_wire.port,
        "username": USER,
        "password": PASSWORD,
        **overrides,
    }
    with pytest.raises(ValueError) as caught:
        make_smtp(options.pop("hostname"), options.pop("port"), **options)
    assert PASSWORD not in str(caught.value)
    assert smtp_wire.connections == 0


def test_control_a_valid_pop3_login_does_reach_the_server(pop3_server: POP3TestServer) -> None:
    assert make_pop3(pop3_server).list_messages() == ([1, 2], sum(map(len, POP3_MESSAGES)))
    assert {"AUTH", "LIST"} <= set(pop3_verbs(pop3_server))


@pytest.mark.parametrize("overrides", [pytest.param(o, id=i) for i, o in POP3_SETTING_VECTORS])
def test_pop3_setting_vector_is_refused_at_construction(
    pop3_server: POP3TestServer, overrides: dict[str, Any]
) -> None:
    options = dict(overrides)
    with pytest.raises(MailValidationError) as caught:
        if options.pop("pool", False):
            POP3ConnectionPool(
                pop3_server.host, pop3_server.port, USER, options["password"], encryption="none"
            )
        else:
            hostname = options.pop("hostname", pop3_server.host)
            POP3ProtocolHandler(
                hostname,
                pop3_server.port,
                options.pop("username", USER),
                options.pop("password", PASSWORD),
                "none",
                5,
            )
    assert "DELE" not in str(caught.value) and PASSWORD not in str(caught.value)
    assert pop3_server.sessions_started == 0


@pytest.mark.parametrize("call", [pytest.param(c, id=i) for i, c in POP3_CALL_VECTORS])
def test_pop3_call_vector_never_reaches_the_server(
    pop3_server: POP3TestServer, call: Callable[[POP3ProtocolHandler], Any]
) -> None:
    with pytest.raises(MailValidationError):
        call(make_pop3(pop3_server))
    assert not any("DELE" in line for line in pop3_server.commands)
    assert not any(verb in ("RETR", "TOP") for verb in pop3_verbs(pop3_server))
    assert pop3_server.wait_idle()
    assert len(pop3_server.messages(USER)) == len(POP3_MESSAGES)


# ----------------------------------------------------------- travels encoded, never raw

# Characters some software treats as line breaks are harmless once inside an encoded
# word or an RFC 2231 parameter; these fields accept them and must never send them raw.
LINE_BREAKING_UNICODE = "\x85\u2028\u2029\x9b"
ENCODED_VECTORS: list[tuple[str, dict[str, Any], Callable[[Any], str]]] = [
    (
        "subject-unicode-separators",
        {"subject": f"a{LINE_BREAKING_UNICODE}b"},
        lambda m: str(m["Subject"]),
    ),
    (
        "display-name-line-separator",
        {"to_addresses": ['"Bob\u2028Evil" <bob@example.org>']},
        lambda m: m["To"].addresses[0].display_name,
    ),
    (
        "header-value-paragraph-separator",
        {"custom_headers": {"X-Note": "a\u2029b\x85c"}},
        lambda m: str(m["X-Note"]),
    ),
    (
        "filename-next-line",
        {"attachments": [{"filename": "a\x85b.txt", "content": b"x"}]},
        lambda m: next(m.iter_attachments()).get_filename(),
    ),
]
ENCODED_EXPECTED = {
    "subject-unicode-separators": f"a{LINE_BREAKING_UNICODE}b",
    "display-name-line-separator": "Bob\u2028Evil",
    "header-value-paragraph-separator": "a\u2029b\x85c",
    "filename-next-line": "a\x85b.txt",
}


def normalise(text: str) -> str:
    """Text modulo line endings, which the builder turns into CRLF."""
    return text.replace("\r\n", "\n").replace("\r", "\n").rstrip("\n")


def sent_block(server: ScriptedServer) -> bytes:
    """The one message the server read, as sent: dot-stuffed, without the final dot."""
    [conv] = server.conversations
    [block] = conv.blocks
    assert block.endswith(b"\r\n.\r\n")
    return block[: -len(b".\r\n")]


def sent_message(server: ScriptedServer) -> bytes:
    """The one message the server read, unstuffed."""
    return sent_block(server).replace(b"\r\n..", b"\r\n.")


def assert_clean_wire(data: bytes) -> None:
    """No bare CR or LF, no raw Unicode line breaks, no NUL: nothing a reader splits on."""
    assert re.search(rb"\r(?!\n)|(?<!\r)\n", data) is None
    for char in LINE_BREAKING_UNICODE + "\x00":
        assert char.encode("utf-8") not in data


@pytest.mark.parametrize(
    ("vector_id", "overrides", "read_back"),
    [pytest.param(i, o, r, id=i) for i, o, r in ENCODED_VECTORS],
)
def test_line_breaking_unicode_travels_encoded(
    smtp_wire: ScriptedServer,
    make_smtp: Callable[..., SMTPProtocolHandler],
    vector_id: str,
    overrides: dict[str, Any],
    read_back: Callable[[Any], str],
) -> None:
    result = make_smtp(*smtp_wire.address).send_message(**{**BASE_SEND, **overrides})
    assert result.status is SMTPDeliveryStatus.SUCCESS, result.smtp_error
    data = sent_message(smtp_wire)
    assert_clean_wire(data)
    assert read_back(PARSER.parsebytes(data)) == ENCODED_EXPECTED[vector_id]


# A body must never end the DATA phase early, whatever line endings it carries
# (SMTP smuggling): the builder normalises to CRLF and the dot is stuffed.
SMUGGLING_BODIES = [
    pytest.param(f"a\r\n.\r\nMAIL FROM:<{EVIL}>\r\nRCPT TO:<{EVIL}>\r\n", id="crlf-dot-crlf"),
    pytest.param(f"a\n.\nMAIL FROM:<{EVIL}>\n", id="lf-dot-lf"),
    pytest.param(f"a\n.\r\nMAIL FROM:<{EVIL}>\r\n", id="lf-dot-crlf"),
    pytest.param(f"a\r.\rMAIL FROM:<{EVIL}>\r", id="cr-dot-cr"),
    pytest.param(f"a\r\n.\nMAIL FROM:<{EVIL}>", id="crlf-dot-lf"),
    pytest.param(f".\r\nMAIL FROM:<{EVIL}>", id="leading-dot"),
]


@pytest.mark.parametrize("body", SMUGGLING_BODIES)
def test_body_cannot_end_the_data_phase_early(
    smtp_wire: ScriptedServer, make_smtp: Callable[..., SMTPProtocolHandler], body: str
) -> None:
    result = make_smtp(*smtp_wire.address).send_message(
        **{**BASE_SEND, "text_body": body, "html_body": f"<pre>{body}</pre>"}
    )
    assert result.status is SMTPDeliveryStatus.SUCCESS, result.smtp_error
    commands = smtp_commands(smtp_wire)
    assert [c for c in commands if c.upper().startswith((b"MAIL", b"RCPT"))] == [
        b"MAIL FROM:<alice@example.com>\r\n",
        b"RCPT TO:<bob@example.org>\r\n",
    ]
    assert b"\r\n.\r\n" not in sent_block(smtp_wire)
    data = sent_message(smtp_wire)
    assert_clean_wire(data)
    plain = PARSER.parsebytes(data).get_body(("plain",))
    assert plain is not None
    assert normalise(plain.get_content()) == normalise(body)


def test_quoted_local_part_with_angle_bracket_stays_one_address() -> None:
    """A quoted local part may hold '>' and spaces; it must reach the server as one
    address, not as an address followed by ESMTP parameters."""
    address = '"bob> NOTIFY=NEVER ORCPT=rfc822;x"@example.org'
    with SMTPTestServer() as server:
        handler = SMTPProtocolHandler(
            server.host,
            server.port,
            encryption="none",
            from_address=SENDER,
            pool=SMTPConnectionPool(),
        )
        try:
            result = handler.send_message(**{**BASE_SEND, "to_addresses": [address]})
        finally:
            handler.close()
        assert result.status is SMTPDeliveryStatus.SUCCESS, result.smtp_error
        [message] = server.wait_for_messages(1)
    assert message.rcpt_tos == [address]
    assert message.rcpt_options == []


# =====================================================================================
# TLS
# =====================================================================================


def _self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for the loopback names that is its own issuer."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.now(UTC)
    names: list[x509.GeneralName] = [x509.DNSName("localhost")]
    names += [x509.IPAddress(ipaddress.ip_address(a)) for a in ("127.0.0.1", "::1")]
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "self-signed.pem", directory / "self-signed-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def _server_context(leaf: Any) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    leaf.configure_cert(context)
    return context


@pytest.fixture(scope="module")
def self_signed_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return _self_signed(tmp_path_factory.mktemp("self-signed"))


@pytest.fixture(scope="module")
def bad_certificates(
    certs: TestCertificates, self_signed_files: tuple[Path, Path]
) -> dict[str, ssl.SSLContext]:
    """Server contexts presenting certificates a verifying client must refuse."""
    now = datetime.now(UTC)
    self_signed = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    self_signed.load_cert_chain(*map(str, self_signed_files))
    return {
        "expired": _server_context(
            certs.ca.issue_cert(
                *LOOPBACK_NAMES,
                not_before=now - timedelta(days=60),
                not_after=now - timedelta(days=1),
            )
        ),
        "not-yet-valid": _server_context(
            certs.ca.issue_cert(
                *LOOPBACK_NAMES,
                not_before=now + timedelta(days=1),
                not_after=now + timedelta(days=60),
            )
        ),
        "wrong-host": _server_context(certs.ca.issue_cert("mail.other.example")),
        "untrusted-ca": _server_context(trustme.CA().issue_cert(*LOOPBACK_NAMES)),
        "self-signed": self_signed,
        # A good certificate, but the client uses the library's default context,
        # which does not trust the private test CA: verification is on by default.
        "default-context": certs.server_context(),
    }


CERTIFICATE_REASONS = {
    "expired": "certificate has expired",
    "not-yet-valid": "certificate is not yet valid",
    "wrong-host": "mismatch",
    "untrusted-ca": "unable to get local issuer certificate",
    "self-signed": "self[- ]signed certificate",
    "default-context": "unable to get local issuer certificate",
}
CERTIFICATE_CASES = [
    pytest.param(kind, mode, id=f"{kind}-{mode}")
    for kind in CERTIFICATE_REASONS
    for mode in ("smtp-ssl", "smtp-starttls", "pop3-ssl", "pop3-stls")
]


def _client_context(kind: str, trusted: ssl.SSLContext) -> ssl.SSLContext | None:
    return None if kind == "default-context" else trusted


@pytest.mark.parametrize(("kind", "mode"), CERTIFICATE_CASES)
def test_bad_certificate_fails_clearly_before_credentials(
    bad_certificates: dict[str, ssl.SSLContext],
    client_ssl_context: ssl.SSLContext,
    make_smtp: Callable[..., SMTPProtocolHandler],
    sleeps: Sleeps,
    kind: str,
    mode: str,
) -> None:
    server_context = bad_certificates[kind]
    client_context = _client_context(kind, client_ssl_context)
    reason = re.compile(CERTIFICATE_REASONS[kind])
    if mode.startswith("smtp"):
        tls_mode, encryption = ("implicit", "ssl") if mode == "smtp-ssl" else ("starttls", "tls")
        with SMTPTestServer(
            tls=cast(TLSMode, tls_mode),
            ssl_context=server_context,
            users={USER: PASSWORD},
            auth_require_tls=False,
        ) as server:
            handler = make_smtp(
                server.host,
                server.port,
                encryption=encryption,
                username=USER,
                password=PASSWORD,
                ssl_context=client_context,
            )
            result = handler.send_message(**BASE_SEND)
        assert result.status is SMTPDeliveryStatus.FAILED
        assert not result.is_retryable and sleeps == []
        assert "certificate" in (result.smtp_error or "")
        assert reason.search(result.smtp_error or ""), result.smtp_error
        assert server.auth_attempts == [] and server.messages == []
    else:
        tls_mode, encryption = ("implicit", "ssl") if mode == "pop3-ssl" else ("starttls", "tls")
        with POP3TestServer(
            tls=cast(TLSMode, tls_mode),
            ssl_context=server_context,
            users={USER: PASSWORD},
        ) as pop3_server:
            pop3_handler = make_pop3(
                pop3_server, encryption=encryption, ssl_context=client_context, sleep=sleeps
            )
            with pytest.raises(POP3SecurityError) as caught:
                pop3_handler.list_messages()
            verbs = pop3_verbs(pop3_server)
        assert sleeps == []
        assert "certificate" in str(caught.value)
        assert reason.search(str(caught.value)), str(caught.value)
        assert "USER" not in verbs and "PASS" not in verbs


def test_default_context_verifies_certificates_and_host_names() -> None:
    context = tls.default_context()
    assert context is tls.default_context()
    assert context.verify_mode is ssl.CERT_REQUIRED
    assert context.check_hostname is True
    assert context.minimum_version >= ssl.TLSVersion.TLSv1_2
    assert tls.resolve_context(None) is context


@pytest.mark.parametrize("protocol", ["smtp", "pop3"])
def test_callers_own_context_can_pin_a_self_signed_certificate(
    self_signed_files: tuple[Path, Path],
    bad_certificates: dict[str, ssl.SSLContext],
    make_smtp: Callable[..., SMTPProtocolHandler],
    protocol: str,
) -> None:
    """The certificate refused above is accepted when the caller's context trusts it."""
    pinned = ssl.create_default_context(cafile=str(self_signed_files[0]))
    server_context = bad_certificates["self-signed"]
    if protocol == "smtp":
        with SMTPTestServer(tls="implicit", ssl_context=server_context) as server:
            handler = make_smtp(server.host, server.port, encryption="ssl", ssl_context=pinned)
            result = handler.send_message(**BASE_SEND)
            assert result.status is SMTPDeliveryStatus.SUCCESS, result.smtp_error
            assert server.wait_for_messages(1)[0].secure
    else:
        with POP3TestServer(
            tls="implicit", ssl_context=server_context, users={USER: PASSWORD}
        ) as server:
            server.add_message(POP3_MESSAGES[0], user=USER)
            pop3_handler = make_pop3(server, encryption="ssl", ssl_context=pinned)
            assert pop3_handler.list_messages()[0] == [1]


# ----------------------------------------------------------- STARTTLS / STLS stripping

UPGRADE_VERBS = ("AUTH", "MAIL", "RCPT", "DATA")


def _fake_starttls(conv: Conversation) -> None:
    """Offers STARTTLS and says 220 to it, but follows with plain text, not TLS.

    The plain line arrives with the 220 (RFC 3207's response-injection case): it
    must be dropped, not read later as if it had come through TLS.
    """
    send_reply(conv, 220, "localhost ESMTP")
    conv.recv_line()
    send_reply(conv, 250, "localhost\nSTARTTLS\nAUTH PLAIN LOGIN")
    conv.recv_line()
    conv.send(b"220 2.0.0 Ready to start TLS\r\n250 injected in plain text\r\n")


STRIPPED_STARTTLS: list[tuple[str, Any]] = [
    ("not-offered", SMTPDialogue(auth_mechanisms=("PLAIN",))),
    ("refused-454", "454"),
    ("refused-502", "502"),
    ("refused-421", "421"),
    ("answered-but-no-tls", _fake_starttls),
]


@pytest.mark.parametrize(
    ("variant", "script"), [pytest.param(v, s, id=v) for v, s in STRIPPED_STARTTLS]
)
def test_smtp_starttls_stripping_never_sends_auth_or_mail_in_clear(
    certs: TestCertificates,
    make_smtp: Callable[..., SMTPProtocolHandler],
    variant: str,
    script: Any,
) -> None:
    if isinstance(script, str):
        replies = {
            "454": "4.7.0 TLS not available",
            "502": "5.5.1 Not implemented",
            "421": "4.3.2 Shutting down",
        }
        script = SMTPDialogue(
            tls_context=certs.server_context(),
            auth_mechanisms=("PLAIN",),
            replies={"STARTTLS": (int(script), replies[script])},
        )
    with ScriptedServer(script) as server:
        handler = make_smtp(*server.address, encryption="tls", username=USER, password=PASSWORD)
        result = handler.send_message(**BASE_SEND)
        server.join()
    assert result.status is SMTPDeliveryStatus.FAILED and not result.is_retryable
    assert re.search("STARTTLS|TLS", result.smtp_error or ""), result.smtp_error
    for conv in server.conversations:
        assert not conv.tls
    assert not set(commands_seen(server)) & set(UPGRADE_VERBS)
    assert PASSWORD.encode() not in b"".join(received_lines(server))


def test_smtp_server_that_stops_offering_starttls_on_reconnect(
    certs: TestCertificates, make_smtp: Callable[..., SMTPProtocolHandler], sleeps: Sleeps
) -> None:
    """The first connection is encrypted and asks for a retry; the second offers no
    STARTTLS. The retry must fail rather than log in or send in clear."""
    first = SMTPDialogue(
        tls_context=certs.server_context(),
        auth_mechanisms=("PLAIN",),
        replies={"MAIL": (421, "4.3.2 Try again later")},
    )
    second = SMTPDialogue(auth_mechanisms=("PLAIN",))
    with ScriptedServer([first, second]) as server:
        handler = make_smtp(*server.address, encryption="tls", username=USER, password=PASSWORD)
        result = handler.send_message(**BASE_SEND)
        server.join()
    assert result.status is SMTPDeliveryStatus.FAILED
    assert "STARTTLS" in (result.smtp_error or "") and not result.is_retryable
    assert len(sleeps) == 1 and server.connections == 2
    assert server.conversations[0].tls
    assert "AUTH" in commands_seen(server, 0)
    assert not set(commands_seen(server, 1)) & set(UPGRADE_VERBS)


def _fake_stls(conv: Conversation) -> None:
    """Offers STLS, says +OK to it, then keeps talking in plain text."""
    conv.send("+OK POP3 ready")
    for _ in range(5):
        line = conv.recv_line()
        if line is None:
            return
        verb = line.strip().upper()
        if verb == b"CAPA":
            conv.send(b"+OK\r\nUSER\r\nSTLS\r\n.\r\n")
        elif verb == b"STLS":
            conv.send(b"+OK begin TLS negotiation\r\n+OK injected in plain text\r\n")
            return
        else:
            conv.send("-ERR unexpected")


@pytest.mark.parametrize("variant", ["not-offered", "refused", "no-capa", "answered-but-no-tls"])
def test_pop3_stls_stripping_never_sends_credentials(
    server_ssl_context: ssl.SSLContext, client_ssl_context: ssl.SSLContext, variant: str
) -> None:
    if variant == "answered-but-no-tls":
        with ScriptedServer(_fake_stls) as scripted:
            handler = make_pop3(scripted, encryption="tls", ssl_context=client_ssl_context)
            with pytest.raises(POP3SecurityError):
                handler.list_messages()
            scripted.join()
        verbs = commands_seen(scripted)
        assert "STLS" in verbs and "USER" not in verbs and "PASS" not in verbs
        return
    with POP3TestServer(
        tls="starttls", ssl_context=server_ssl_context, users={USER: PASSWORD}
    ) as server:
        server.faults.advertise_stls = variant != "not-offered"
        server.faults.stls_error = variant == "refused"
        if variant == "no-capa":
            server.faults.error_replies["CAPA"] = "-ERR unknown command"
        handler = make_pop3(server, encryption="tls", ssl_context=client_ssl_context)
        with pytest.raises(POP3SecurityError, match="STLS"):
            handler.list_messages()
        verbs = pop3_verbs(server)
    assert "USER" not in verbs and "PASS" not in verbs


def test_pop3_server_that_stops_offering_stls_later(
    server_ssl_context: ssl.SSLContext, client_ssl_context: ssl.SSLContext
) -> None:
    with POP3TestServer(
        tls="starttls", ssl_context=server_ssl_context, users={USER: PASSWORD}
    ) as server:
        server.add_message(POP3_MESSAGES[0], user=USER)
        handler = make_pop3(server, encryption="tls", ssl_context=client_ssl_context)
        assert handler.list_messages()[0] == [1]
        assert server.wait_idle()
        start = len(server.commands)
        server.faults.advertise_stls = False
        with pytest.raises(POP3SecurityError, match="STLS"):
            handler.list_messages()
        verbs = pop3_verbs(server, start)
    assert verbs and "USER" not in verbs and "PASS" not in verbs


# =====================================================================================
# Secrets
# =====================================================================================


def _smtp_login_script(mechanism: str, server_context: ssl.SSLContext, echo: str) -> Any:
    """A server offering only ``mechanism`` that refuses the login, echoing ``echo``."""
    return SMTPDialogue(
        tls_context=server_context,
        auth_mechanisms=(mechanism,),
        replies={"AUTH": (535, f"5.7.8 Rejected: {echo}")},
    )


def test_smtp_secrets_never_leave_the_library(
    certs: TestCertificates,
    client_ssl_context: ssl.SSLContext,
    make_smtp: Callable[..., SMTPProtocolHandler],
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.DEBUG)
    texts: list[str] = []
    results = []
    with SMTPTestServer(
        tls="starttls", ssl_context=certs.server_context(), users={USER: PASSWORD}
    ) as server:
        good = make_smtp(
            server.host, server.port, encryption="tls", username=USER, password=PASSWORD, trace=True
        )
        bad = make_smtp(
            server.host, server.port, encryption="tls", username=USER, password=WRONG, trace=True
        )
        results += [good.send_message(**BASE_SEND), bad.send_message(**BASE_SEND)]
        assert not bad.connect()
        texts += [
            repr(good),
            str(good),
            repr(good.pool),
            str(good.pool.get_stats()),
            str(bad.last_error),
        ]
    assert [r.status for r in results] == [SMTPDeliveryStatus.SUCCESS, SMTPDeliveryStatus.FAILED]
    # Servers that echo the payload or the password in their refusal, LOGIN and PLAIN.
    echoes = {
        "LOGIN": f"{b64(WRONG)} / {WRONG}",
        "PLAIN": f"{b64(chr(0) + USER + chr(0) + WRONG)} ({WRONG})",
    }
    for mechanism, echo in echoes.items():
        with ScriptedServer(_smtp_login_script(mechanism, certs.server_context(), echo)) as srv:
            handler = make_smtp(
                *srv.address, encryption="tls", username=USER, password=WRONG, trace=True
            )
            results.append(handler.send_message(**BASE_SEND))
            with pytest.raises(MailAuthenticationError) as caught:
                SMTPConnection.open(
                    SessionSettings(
                        Endpoint(srv.host, srv.port, SMTPEncryption.STARTTLS),
                        Credentials.of(USER, WRONG),
                        Timeouts(5),
                        client_ssl_context,
                    )
                )
            texts += [*exception_texts(caught.value), str(handler.last_error)]
        assert results[-1].status is SMTPDeliveryStatus.FAILED
        assert MASK in (results[-1].smtp_error or "")
    texts += [json.dumps([r.to_dict() for r in results]), repr(results)]
    log_text = library_log_text(caplog)
    printed = capsys.readouterr()
    assert printed.out == "" and printed.err == ""  # no smtplib debug output
    assert_no_secret([*texts, log_text], secret_forms(USER, PASSWORD, WRONG))
    # The trace ran, with the AUTH lines masked: PLAIN, and both LOGIN answers.
    assert "SMTP 127.0.0.1" in log_text and f"AUTH PLAIN {MASK}" in log_text
    assert "<< 235 " in log_text and "<< 535 5.7.8 Rejected: ***" in log_text
    assert "AUTH LOGIN" in log_text and f">> {MASK}" in log_text
    assert "[" in log_text and "bytes of message data]" in log_text


def test_pop3_secrets_never_leave_the_library(
    server_ssl_context: ssl.SSLContext,
    client_ssl_context: ssl.SSLContext,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.DEBUG)
    texts: list[str] = []
    with POP3TestServer(
        tls="starttls", ssl_context=server_ssl_context, users={USER: PASSWORD}
    ) as server:
        server.add_message(POP3_MESSAGES[0], user=USER)
        good = make_pop3(server, encryption="tls", ssl_context=client_ssl_context, trace=True)
        with good:
            assert len(good.fetch_messages()) == 1
            texts.append(repr(good))
        pool = POP3ConnectionPool(
            server.host,
            server.port,
            USER,
            PASSWORD,
            2,
            encryption="tls",
            ssl_context=client_ssl_context,
            trace=True,
        )
        with pool:
            handler = pool.acquire()
            assert handler is not None
            texts += [repr(pool), repr(handler)]
            pool.release(handler)
        server.faults.error_replies["PASS"] = f"-ERR [AUTH] bad password {WRONG}"
        bad = make_pop3(
            server,
            encryption="tls",
            ssl_context=client_ssl_context,
            password=WRONG,
            trace=True,
            auth_mechanism="USER",
        )
        with pytest.raises(MailHandlerError) as caught:
            bad.authenticate()
        texts += [*exception_texts(caught.value), repr(bad)]
    log_text = library_log_text(caplog)
    printed = capsys.readouterr()
    assert printed.out == "" and printed.err == ""  # no poplib debug output
    assert_no_secret([*texts, log_text], secret_forms(USER, PASSWORD, WRONG))
    assert f"PASS {MASK}" in log_text and f"USER {USER}" in log_text
    assert "bad password ***" in log_text


OAUTH_USER = "alice@example.com"
TOKEN = "ya29.Secret-Access-Token_0123456789"
WRONG_TOKEN = "ya29.Expired-Access-Token_9876543210"


@pytest.mark.parametrize("one_step", [True, False], ids=["one-step", "two-step"])
@pytest.mark.parametrize("protocol", ["smtp", "pop3"])
def test_oauth2_tokens_never_leave_the_library_or_the_trace(
    certs: TestCertificates,
    client_ssl_context: ssl.SSLContext,
    make_smtp: Callable[..., SMTPProtocolHandler],
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
    protocol: str,
    one_step: bool,
) -> None:
    caplog.set_level(logging.DEBUG)
    texts: list[str] = []
    tokens = {OAUTH_USER: TOKEN}
    if protocol == "smtp":
        with SMTPTestServer(
            tls="starttls", ssl_context=certs.server_context(), oauth2_tokens=tokens
        ) as server:
            for token in (TOKEN, WRONG_TOKEN):
                handler = make_smtp(
                    server.host,
                    server.port,
                    encryption="tls",
                    username=OAUTH_USER,
                    oauth2_token=token,
                    trace=True,
                    oauth2_initial_response=one_step,
                )
                result = handler.send_message(**BASE_SEND)
                texts += [json.dumps(result.to_dict()), repr(handler), str(handler.last_error)]
            assert len(server.messages) == 1
    else:
        with POP3TestServer(
            tls="starttls", ssl_context=certs.server_context(), oauth2_tokens=tokens
        ) as server:
            server.add_message(POP3_MESSAGES[0], user=OAUTH_USER)
            for token in (TOKEN, WRONG_TOKEN):
                pop3_handler = POP3ProtocolHandler(
                    server.host,
                    server.port,
                    OAUTH_USER,
                    encryption="tls",
                    timeout=5,
                    ssl_context=client_ssl_context,
                    oauth2_token=token,
                    trace=True,
                    oauth2_initial_response=one_step,
                    sleep=Sleeps(),
                )
                try:
                    texts.append(str(pop3_handler.list_messages()))
                except MailHandlerError as error:
                    texts += exception_texts(error)
                texts.append(repr(pop3_handler))
    log_text = library_log_text(caplog)
    printed = capsys.readouterr()
    assert printed.out == "" and printed.err == ""
    forbidden = [
        TOKEN,
        WRONG_TOKEN,
        xoauth2_response(OAUTH_USER, TOKEN),
        xoauth2_response(OAUTH_USER, WRONG_TOKEN),
    ]
    assert_no_secret([*texts, log_text], forbidden)
    assert "AUTH XOAUTH2" in log_text and MASK in log_text


def test_library_never_turns_on_protocol_debug_printing(
    certs: TestCertificates,
    make_smtp: Callable[..., SMTPProtocolHandler],
    pop3_server: POP3TestServer,
) -> None:
    with SMTPTestServer(tls="starttls", ssl_context=certs.server_context()) as server:
        pool = SMTPConnectionPool()
        handler = make_smtp(server.host, server.port, encryption="tls", pool=pool, trace=True)
        assert handler.connect()
        connection = pool.get_connection(
            server.host, server.port, encryption="tls", ssl_context=handler.ssl_context
        )
        assert connection.client.debuglevel == 0
        pool.release_connection(server.host, server.port, connection)
    pop3 = make_pop3(pop3_server, trace=True)
    with pop3:
        assert pop3._session.live().client._debugging == 0  # poplib's own switch for printing


# --------------------------------------------------------------------- the redactor

# (id, protocol, dialogue as (side, line) pairs, secrets that must not be logged)
REDACTION_CASES: list[tuple[str, str, list[tuple[str, str]], list[str]]] = [
    (
        "smtp-plain-initial-response",
        "smtp",
        [
            ("C", f"AUTH PLAIN {b64(chr(0) + USER + chr(0) + PASSWORD)}"),
            ("S", f"535 5.7.8 bad {b64(chr(0) + USER + chr(0) + PASSWORD)} {PASSWORD}"),
        ],
        secret_forms(USER, PASSWORD),
    ),
    (
        "smtp-plain-after-challenge",
        "smtp",
        [
            ("C", "AUTH PLAIN"),
            ("S", "334 "),
            ("C", b64(f"\0{USER}\0{PASSWORD}")),
            ("S", "235 2.7.0 ok"),
        ],
        secret_forms(USER, PASSWORD),
    ),
    (
        "smtp-login",
        "smtp",
        [
            ("C", f"AUTH LOGIN {b64(USER)}"),
            ("S", "334 UGFzc3dvcmQ6"),
            ("C", b64(PASSWORD)),
            ("S", f"535 5.7.8 {PASSWORD} refused"),
        ],
        secret_forms(USER, PASSWORD),
    ),
    (
        "smtp-login-no-initial",
        "smtp",
        [
            ("C", "AUTH LOGIN"),
            ("S", "334 VXNlcm5hbWU6"),
            ("C", b64(USER)),
            ("S", "334 UGFzc3dvcmQ6"),
            ("C", b64(PASSWORD)),
            ("S", "235 ok"),
        ],
        secret_forms(USER, PASSWORD),
    ),
    (
        "smtp-cram-md5",
        "smtp",
        [
            ("C", "AUTH CRAM-MD5"),
            ("S", "334 PDEyMzQ1QGV4YW1wbGU+"),
            ("C", b64(f"{USER} 0123456789abcdef0123456789abcdef")),
            ("S", "235 ok"),
        ],
        [b64(f"{USER} 0123456789abcdef0123456789abcdef")],
    ),
    (
        "pop3-pass",
        "pop3",
        [
            ("C", f"USER {USER}"),
            ("S", "+OK"),
            ("C", f"PASS {PASSWORD}"),
            ("S", f"-ERR [AUTH] {PASSWORD} is wrong"),
        ],
        [PASSWORD],
    ),
    (
        "pop3-apop",
        "pop3",
        [
            ("C", f"APOP {USER} c4c9334bac560ecc979e58001b3e22fb"),
            ("S", "+OK"),
        ],
        ["c4c9334bac560ecc979e58001b3e22fb"],
    ),
    (
        "pop3-auth-plain-continuation",
        "pop3",
        [
            ("C", "AUTH PLAIN"),
            ("S", "+ "),
            ("C", b64(f"\0{USER}\0{PASSWORD}")),
            ("S", "+OK logged in"),
        ],
        secret_forms(USER, PASSWORD),
    ),
]


@pytest.mark.parametrize(
    ("protocol", "dialogue", "secrets"),
    [pytest.param(p, d, s, id=i) for i, p, d, s in REDACTION_CASES],
)
def test_redactor_masks_every_credential_line(
    protocol: Any, dialogue: list[tuple[str, str]], secrets: list[str]
) -> None:
    redactor = Redactor(protocol)
    shown = []
    for side, line in dialogue:
        if side == "C":
            shown.append(redactor.client_line(line))
        else:
            continuation = line.startswith("334") or line.startswith("+ ")
            shown.append(redactor.server_line(line, continuation=continuation))
    assert_no_secret(shown, [s for s in secrets if s != b64(USER) or "LOGIN" in dialogue[0][1]])
    assert MASK in "\n".join(shown)
    # After the exchange, ordinary lines pass untouched.
    assert redactor.client_line(f"MAIL FROM:<{SENDER}>") == f"MAIL FROM:<{SENDER}>"
    assert redactor.server_line("250 2.1.0 OK", continuation=False) == "250 2.1.0 OK"


def test_mask_secrets_hides_the_password_and_payloads_that_contain_it() -> None:
    text = f"535 {PASSWORD} {b64(chr(0) + USER + chr(0) + PASSWORD)} {b64(PASSWORD)} {USER}"
    masked = mask_secrets(text, [PASSWORD])
    assert_no_secret([masked], secret_forms(USER, PASSWORD)[:4])
    assert masked.endswith(USER) and mask_secrets(text, [None]) == text


@pytest.mark.parametrize("cut", [0, 1, 2, 3, 5])
def test_mask_secrets_hides_an_oauth2_response_echoed_whole_or_cut(cut: int) -> None:
    token = "ya29.a0AfH6SMB-secret-token-value_123"
    response = b64(f"user={USER}\x01auth=Bearer {token}\x01\x01")
    echoed = response[: len(response) - cut] if cut else response
    for text in (f"-ERR [AUTH] invalid credentials: {echoed}", f"535 5.7.8 {echoed} refused"):
        masked = mask_secrets(text, [token])
        assert token not in masked and echoed not in masked
        assert b64(token)[:-4] not in masked


def test_wire_log_is_silent_without_trace(
    pop3_server: POP3TestServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    with make_pop3(pop3_server) as handler:
        handler.list_messages()
    with SMTPTestServer() as server:
        handler_smtp = SMTPProtocolHandler(
            server.host,
            server.port,
            encryption="none",
            from_address=SENDER,
            pool=SMTPConnectionPool(),
        )
        assert handler_smtp.send_message(**BASE_SEND).success
        handler_smtp.close()
    assert not [r for r in caplog.records if r.name == wire_log.__name__]


# =====================================================================================
# Resource limits
# =====================================================================================

MIB = 1024 * 1024


def test_pop3_message_over_the_limit_is_refused_before_download(
    pop3_server: POP3TestServer,
) -> None:
    pop3_server.add_message(b"Subject: big\r\n\r\n" + b"x" * 5000 + b"\r\n", user=USER)
    handler = make_pop3(pop3_server, max_message_size=1000)
    with pytest.raises(POP3MessageTooLargeError) as caught:
        handler.fetch_message(3)
    assert (caught.value.size or 0) > caught.value.limit == 1000
    assert [m["subject"] for m in handler.fetch_messages()] == ["one", "two"]
    assert "RETR 3" not in pop3_server.commands


def _endless_retr(sent: list[int], chunk: bytes, chunks: int) -> Any:
    """A server that lists a small message and then streams an endless one."""

    def script(conv: Conversation) -> None:
        conv.send("+OK ready")
        for reply in ("-ERR", "+OK", "+OK logged in", "+OK 1 100"):  # CAPA, USER, PASS, LIST 1
            conv.recv_line()
            conv.send(reply)
        conv.recv_line()  # RETR 1
        conv.send("+OK")
        for _ in range(chunks):
            try:
                conv.send(chunk)
            except OSError:
                return
            sent[0] += len(chunk)

    return script


def test_pop3_message_larger_than_listed_is_cut_off_while_streaming() -> None:
    """The size check cannot rely on LIST: a lying server's reply is read only up to the
    limit, so a 256 MiB stream costs the client about 1 MiB."""
    sent = [0]
    chunk = (b"y" * 1023 + b"\n") * 64
    offered = 4096 * len(chunk)
    with ScriptedServer(_endless_retr(sent, chunk, 4096)) as server:
        handler = make_pop3(server, password="pw", max_message_size=MIB)
        with pytest.raises(POP3MessageTooLargeError):
            handler.fetch_message(1)
        server.join()
    assert offered == 256 * MIB
    assert sent[0] < 64 * MIB  # the client stopped reading; socket buffers hold the rest


def _endless_greeting(sent: list[int]) -> Any:
    def script(conv: Conversation) -> None:
        conv.send(b"+OK ")
        for _ in range(256):
            try:
                conv.send(b"a" * 65536)
            except OSError:
                return
            sent[0] += 65536

    return script


def test_pop3_endless_status_line_is_refused() -> None:
    sent = [0]
    with ScriptedServer(_endless_greeting(sent)) as server:
        handler = make_pop3(server, password="pw")
        with pytest.raises(POP3ProtocolError):
            handler.connect()
        server.join()
    assert sent[0] < 16 * MIB


def _parse(raw: bytes, **options: Any) -> tuple[dict[str, Any], list[logging.LogRecord]]:
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    logger = logging.getLogger("src.handlers.parser")
    keep, previous = Keep(logging.DEBUG), logger.level
    logger.addHandler(keep)
    logger.setLevel(logging.DEBUG)
    try:
        result = parse_message(raw, 1, **options)
    finally:
        logger.removeHandler(keep)
        logger.setLevel(previous)
    assert not [r for r in records if "parsing failed" in r.getMessage()]
    return result, records


def deep_multipart(depth: int) -> bytes:
    opening = "".join(
        f'Content-Type: multipart/mixed; boundary="b{level}"\r\n\r\n--b{level}\r\n'
        for level in range(depth)
    )
    closing = "".join(f"\r\n--b{level}--" for level in reversed(range(depth)))
    return (
        f"Subject: deep\r\nMIME-Version: 1.0\r\n{opening}"
        f"Content-Type: text/plain\r\n\r\nthe bottom{closing}\r\n"
    ).encode()


def many_parts(count: int) -> bytes:
    parts = "".join(
        f'--b\r\nContent-Type: application/octet-stream; name="p{i}.bin"\r\n\r\n{i}\r\n'
        for i in range(count)
    )
    return (
        f'Subject: wide\r\nContent-Type: multipart/mixed; boundary="b"\r\n\r\n{parts}--b--\r\n'
    ).encode()


def test_ten_thousand_levels_of_multipart_stop_at_the_depth_limit() -> None:
    result, records = _parse(deep_multipart(10_000))
    assert result["subject"] == "deep" and result["textBody"] == ""
    assert any("nested deeper than 100" in r.getMessage() for r in records)
    shallow, _ = _parse(deep_multipart(99))
    assert shallow["textBody"] == "the bottom"


def test_a_hundred_thousand_parts_stop_at_the_part_limit() -> None:
    raw = many_parts(100_000)
    result, records = _parse(raw)
    assert 0 < result["attachmentCount"] <= ParseLimits().max_parts
    assert any("more than 500 MIME parts" in r.getMessage() for r in records)
    narrow, _ = _parse(raw, limits=ParseLimits(max_parts=50))
    assert narrow["attachmentCount"] < 50


def test_multi_megabyte_header_blocks_are_read_only_up_to_the_limit() -> None:
    limit = ParseLimits().max_header_bytes
    filler = b"".join(b"X-Filler-%d: %s\r\n" % (i, b"v" * 60) for i in range(60_000))
    raw = b"Subject: first\r\n" + filler + b"Subject: late\r\n\r\nthe body\r\n"
    assert len(raw) > 4 * MIB
    result, records = _parse(raw)
    assert (result["subject"], result["textBody"]) == ("first", "the body")
    assert any("header section longer than" in r.getMessage() for r in records)
    one_line = b"Subject: " + b"=?utf-8?b?YQ==?= " * 300_000 + b"\r\n\r\nbody\r\n"
    result, _ = _parse(one_line)
    assert result["textBody"] == "body" and len(result["subject"]) <= limit


def test_part_header_blocks_and_nested_messages_are_bounded() -> None:
    part_headers = b"".join(b"X-Part-%d: v\r\n" % i for i in range(400_000))
    nested = b"Subject: inner\r\n\r\nx\r\n"
    for _ in range(10_000):
        nested = b"Content-Type: message/rfc822\r\n\r\n" + nested
    raw = (
        b'Subject: parts\r\nContent-Type: multipart/mixed; boundary="b"\r\n\r\n'
        b"--b\r\n" + part_headers + b"Content-Type: text/plain\r\n\r\nhello\r\n"
        b"--b\r\n" + nested + b"\r\n--b--\r\n"
    )
    result, _ = _parse(raw)
    assert result["subject"] == "parts"
    assert result["attachmentCount"] <= 2


def test_pop3_handler_applies_parse_limits_end_to_end(pop3_server: POP3TestServer) -> None:
    pop3_server.add_message(many_parts(100_000), user=USER)
    handler = make_pop3(pop3_server, parse_limits=ParseLimits(max_parts=100))
    message = handler.fetch_message(3)
    assert message is not None
    assert message["subject"] == "wide" and 0 < message["attachmentCount"] < 100


def echoing_pop3_server(one_step: bool) -> Callable[[Conversation], None]:
    """A server that refuses every login and echoes what the client sent, in base64."""

    def script(conv: Conversation) -> None:
        conv.send("+OK scripted POP3 ready")
        while True:
            line = conv.recv_line()
            if line is None:
                return
            verb, _, rest = line.strip().decode("ascii").partition(" ")
            if verb.upper() == "AUTH":
                payload = rest.partition(" ")[2]
                if not payload:
                    conv.send("+ ")
                    answer = conv.recv_line()
                    payload = answer.strip().decode("ascii") if answer else ""
                conv.send(f"-ERR [AUTH] invalid credentials: {payload}")
            elif verb.upper() == "CAPA":
                conv.send("-ERR no CAPA here")
            elif verb.upper() == "PASS":
                echoed = base64.b64encode(rest.encode()).decode()
                conv.send(f"-ERR [AUTH] invalid credentials: {echoed}")
            elif verb.upper() == "QUIT":
                conv.send("+OK bye")
                return
            else:
                conv.send("+OK")

    return script


@pytest.mark.parametrize("login", ["xoauth2-one-step", "xoauth2-two-step", "password"])
def test_pop3_error_never_shows_the_base64_echo_of_a_secret(
    login: str, caplog: pytest.LogCaptureFixture
) -> None:
    check_base64_echo_is_masked(login, caplog, include_trace=False)


def test_pop3_trace_never_shows_the_base64_echo_of_a_password(
    caplog: pytest.LogCaptureFixture,
) -> None:
    check_base64_echo_is_masked("password", caplog, include_trace=True)


def check_base64_echo_is_masked(
    login: str, caplog: pytest.LogCaptureFixture, *, include_trace: bool
) -> None:
    caplog.set_level(logging.DEBUG)
    token = "ya29.Echoed-Access-Token_0123456789"
    one_step = login == "xoauth2-one-step"
    with ScriptedServer(echoing_pop3_server(one_step)) as server:
        if login == "password":
            handler = POP3ProtocolHandler(*server.address, USER, PASSWORD, "none", 5, trace=True)
        else:
            handler = POP3ProtocolHandler(
                *server.address,
                USER,
                encryption="none",
                timeout=5,
                oauth2_token=token,
                oauth2_initial_response=one_step,
                trace=True,
            )
        with pytest.raises(MailHandlerError) as caught:
            handler.authenticate()
        assert handler.test_connection() is False
    if not include_trace:
        caplog.records[:] = [r for r in caplog.records if r.name != "src.handlers.trace"]
    texts = [*exception_texts(caught.value), library_log_text(caplog)]
    forms = [
        token,
        PASSWORD,
        xoauth2_response(USER, token),
        b64(PASSWORD),
        b64(f"auth=Bearer {token}"),
    ]
    assert_no_secret(texts, forms)
    assert "invalid credentials" in str(caught.value)
