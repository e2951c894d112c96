"""Tests for the SMTP test servers, driven with the standard library's smtplib."""

from __future__ import annotations

import gc
import poplib
import smtplib
import socket
import ssl
import time

import pytest

from src.testing.scripted_server import Conversation, ScriptedServer
from src.testing.smtp_scripts import (
    DROP,
    SILENT,
    SMTPDialogue,
    drop_after_final_dot,
    drop_mid_data,
    greet_then_silent,
    no_greeting,
    silent_after_final_dot,
    smtp_accept_all,
    smtp_refuse_connection,
    smtp_reply_then_accept,
)
from src.testing.smtp_server import ReceivedMessage, SMTPFaults, SMTPTestServer, TLSMode
from src.testing.tls import TestCertificates

BODY = b"From: a@example.org\r\nTo: b@example.org\r\nSubject: Hello\r\n\r\nHi there.\r\n"
SENDER = "a@example.org"
RECIPIENT = "b@example.org"
USERS = {"alice": "correct horse"}


def _connect(server: SMTPTestServer | ScriptedServer, timeout: float = 5.0) -> smtplib.SMTP:
    return smtplib.SMTP(server.host, server.port, timeout=timeout)


# -- SMTPTestServer: transport and TLS ---------------------------------------------


def test_plain_delivery_is_recorded_byte_for_byte() -> None:
    body = b"Subject: Dots\r\n\r\n.leading dot\r\n..two dots\r\ncaf\xc3\xa9\r\n"
    with SMTPTestServer() as server:
        with _connect(server) as client:
            refused = client.sendmail(SENDER, [RECIPIENT, "c@example.org"], body)
        [message] = server.wait_for_messages(1)
    assert refused == {}
    assert message.mail_from == SENDER
    assert message.rcpt_tos == [RECIPIENT, "c@example.org"]
    assert message.data == body  # dot-stuffing undone, 8-bit bytes untouched
    assert message["Subject"] == "Dots"
    assert message["X-Missing"] is None
    assert not message.secure
    assert message.username is None
    assert server.sessions == 1


def test_starttls_required_and_verified(
    server_ssl_context: ssl.SSLContext, client_ssl_context: ssl.SSLContext
) -> None:
    with (
        SMTPTestServer(
            tls="starttls", ssl_context=server_ssl_context, require_starttls=True
        ) as server,
        smtplib.SMTP("localhost", server.port, timeout=5) as client,
    ):
        client.ehlo()
        assert client.has_extn("starttls")
        assert client.mail(SENDER)[0] == 530
        client.starttls(context=client_ssl_context)
        client.ehlo()
        assert not client.has_extn("starttls")
        client.sendmail(SENDER, [RECIPIENT], BODY)
        [message] = server.wait_for_messages(1)
    assert message.secure


def test_implicit_tls_verified(
    server_ssl_context: ssl.SSLContext, client_ssl_context: ssl.SSLContext
) -> None:
    with SMTPTestServer(tls="implicit", ssl_context=server_ssl_context) as server:
        with smtplib.SMTP_SSL(
            "localhost", server.port, timeout=5, context=client_ssl_context
        ) as client:
            client.sendmail(SENDER, [RECIPIENT], BODY)
        [message] = server.wait_for_messages(1)
    assert message.secure


def test_untrusted_client_fails_handshake_and_server_keeps_serving(
    server_ssl_context: ssl.SSLContext, client_ssl_context: ssl.SSLContext
) -> None:
    stranger = TestCertificates().client_context()  # trusts a different CA
    with SMTPTestServer(tls="starttls", ssl_context=server_ssl_context) as server:
        with _connect(server) as client, pytest.raises(ssl.SSLCertVerificationError):
            client.starttls(context=stranger)
        with smtplib.SMTP("localhost", server.port, timeout=5) as client:
            client.starttls(context=client_ssl_context)
            client.sendmail(SENDER, [RECIPIENT], BODY)
        assert len(server.wait_for_messages(1)) == 1


# -- SMTPTestServer: AUTH ----------------------------------------------------------


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_auth_success_over_starttls(
    mechanism: str, server_ssl_context: ssl.SSLContext, client_ssl_context: ssl.SSLContext
) -> None:
    with SMTPTestServer(
        tls="starttls", ssl_context=server_ssl_context, users=USERS, auth_required=True
    ) as server:
        with smtplib.SMTP("localhost", server.port, timeout=5) as client:
            client.ehlo()
            assert not client.has_extn("auth")  # not before TLS
            client.starttls(context=client_ssl_context)
            client.ehlo()
            assert client.mail(SENDER)[0] == 530  # auth_required
            client.user, client.password = "alice", USERS["alice"]
            authobject = client.auth_plain if mechanism == "PLAIN" else client.auth_login
            code, _ = client.auth(mechanism, authobject)
            assert code == 235
            client.sendmail(SENDER, [RECIPIENT], BODY)
        [message] = server.wait_for_messages(1)
    assert server.auth_attempts == [(mechanism, "alice")]
    assert message.username == "alice"
    assert message.secure


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_auth_failure_records_attempt_without_password(mechanism: str) -> None:
    with SMTPTestServer(users=USERS, auth_require_tls=False) as server, _connect(server) as client:
        client.ehlo()
        assert client.has_extn("auth")
        client.user, client.password = "alice", "wrong password"
        authobject = client.auth_plain if mechanism == "PLAIN" else client.auth_login
        with pytest.raises(smtplib.SMTPAuthenticationError) as caught:
            client.auth(mechanism, authobject)
        assert caught.value.smtp_code == 535
        assert server.auth_attempts == [(mechanism, "alice")]
        assert "wrong password" not in repr(server.auth_attempts)


def test_auth_not_offered_without_users() -> None:
    with SMTPTestServer(auth_require_tls=False) as server, _connect(server) as client:
        client.ehlo()
        assert not client.has_extn("auth")
        assert client.docmd("AUTH", "PLAIN AGFsaWNlAHg=")[0] >= 500


def test_implicit_tls_offers_auth(
    server_ssl_context: ssl.SSLContext, client_ssl_context: ssl.SSLContext
) -> None:
    with (
        SMTPTestServer(tls="implicit", ssl_context=server_ssl_context, users=USERS) as server,
        smtplib.SMTP_SSL("localhost", server.port, timeout=5, context=client_ssl_context) as client,
    ):
        client.login("alice", USERS["alice"])
    assert [user for _, user in server.auth_attempts] == ["alice"]


# -- SMTPTestServer: faults --------------------------------------------------------


def test_rejected_recipient_is_reported_and_others_delivered() -> None:
    with SMTPTestServer() as server:
        server.faults.reject_recipients["Bad@Example.org"] = (550, "5.1.1 No such user")
        with _connect(server) as client:
            refused = client.sendmail(SENDER, [RECIPIENT, "bad@example.org"], BODY)
        [message] = server.wait_for_messages(1)
    assert refused == {"bad@example.org": (550, b"5.1.1 No such user")}
    assert message.rcpt_tos == [RECIPIENT]


def test_mail_reply_fault_hits_only_the_nth_mail_command() -> None:
    with SMTPTestServer(faults=SMTPFaults(mail_replies={1: (451, "4.3.0 Try later")})) as server:
        with _connect(server) as client:
            with pytest.raises(smtplib.SMTPSenderRefused) as caught:
                client.sendmail(SENDER, [RECIPIENT], BODY)
            assert caught.value.smtp_code == 451
            client.sendmail(SENDER, [RECIPIENT], BODY)  # second MAIL: accepted
        assert len(server.wait_for_messages(1)) == 1


def test_data_reply_fault_refuses_and_does_not_store() -> None:
    with SMTPTestServer() as server:
        server.faults.data_reply = (552, "5.3.4 Message too big for policy")
        with _connect(server) as client:
            with pytest.raises(smtplib.SMTPDataError) as caught:
                client.sendmail(SENDER, [RECIPIENT], BODY)
            assert caught.value.smtp_code == 552
            server.faults.data_reply = (250, "2.0.0 Custom OK")
            client.sendmail(SENDER, [RECIPIENT], BODY)
        assert len(server.wait_for_messages(1)) == 1


def test_drop_after_data_loses_the_reply_and_the_message() -> None:
    with SMTPTestServer(faults=SMTPFaults(drop_after_data=1)) as server:
        with _connect(server) as client, pytest.raises(smtplib.SMTPServerDisconnected):
            client.sendmail(SENDER, [RECIPIENT], BODY)
        assert server.messages == []
        assert server.faults.drop_after_data == 0
        with _connect(server) as client:
            client.sendmail(SENDER, [RECIPIENT], BODY)
        assert len(server.wait_for_messages(1)) == 1
        assert server.sessions == 2


def test_reply_delay_fault() -> None:
    with SMTPTestServer(faults=SMTPFaults(reply_delay=0.3)) as server:
        started = time.monotonic()
        with pytest.raises((smtplib.SMTPServerDisconnected, TimeoutError)):
            _connect(server, timeout=0.1)
        assert time.monotonic() - started < 0.25
        server.faults.reply_delay = 0.01
        with _connect(server) as client:
            assert client.noop()[0] == 250
        stopping = time.monotonic()
    assert time.monotonic() - stopping < 0.5


# -- SMTPTestServer: extensions ----------------------------------------------------


def test_smtputf8_addresses_accepted_and_flagged() -> None:
    sender, recipient = "jöran@exämple.org", "用户@例子.广告"
    body = "Subject: grüße\r\n\r\nhallo\r\n".encode()
    with SMTPTestServer() as server:
        with _connect(server) as client:
            client.ehlo()
            assert client.has_extn("smtputf8")
            client.sendmail(sender, [recipient], body, mail_options=["SMTPUTF8"])
        [message] = server.wait_for_messages(1)
    assert (message.mail_from, message.rcpt_tos) == (sender, [recipient])
    assert "SMTPUTF8" in message.mail_options
    assert message["Subject"] == "grüße"


def test_smtputf8_can_be_disabled() -> None:
    with SMTPTestServer(smtputf8=False) as server, _connect(server) as client:
        client.ehlo()
        assert not client.has_extn("smtputf8")
        assert client.docmd("MAIL", f"FROM:<{SENDER}> SMTPUTF8")[0] == 501


def test_size_limit_advertised_and_enforced() -> None:
    with SMTPTestServer(size_limit=1000) as server, _connect(server) as client:
        client.ehlo()
        assert client.has_extn("size")
        assert client.esmtp_features["size"] == "1000"
        with pytest.raises(smtplib.SMTPSenderRefused) as caught:
            client.sendmail(SENDER, [RECIPIENT], BODY + b"x" * 2000)  # SIZE= is declared
        assert caught.value.smtp_code == 552
        # Without a SIZE parameter the limit bites at the end of DATA.
        assert client.mail(SENDER)[0] == 250
        assert client.rcpt(RECIPIENT)[0] == 250
        assert client.data(BODY + b"filler line\r\n" * 200)[0] == 552
        assert server.messages == []


# -- SMTPTestServer: lifecycle -----------------------------------------------------


def test_stop_closes_open_connections_and_is_idempotent() -> None:
    server = SMTPTestServer()
    server.start()
    client = _connect(server)
    try:
        client.ehlo()
        started = time.monotonic()
        server.stop()
        assert time.monotonic() - started < 1.0
        server.stop()
        with pytest.raises(smtplib.SMTPServerDisconnected):
            client.noop()
    finally:
        client.close()
    assert not server.running
    with pytest.raises(OSError):
        socket.create_connection(server.address, timeout=1).close()


@pytest.mark.parametrize("tls", ["none", "implicit"])
def test_stop_right_after_connects_leaks_nothing(
    tls: TLSMode, server_ssl_context: ssl.SSLContext
) -> None:
    # Connections still being accepted when stop() runs must be closed, not leaked
    # (a leak shows up as a ResourceWarning, an error under this suite's settings).
    context = server_ssl_context if tls == "implicit" else None
    for _ in range(10):
        with SMTPTestServer(tls=tls, ssl_context=context) as server:
            clients = [socket.create_connection(server.address) for _ in range(3)]
        for client in clients:
            client.close()
    gc.collect()


def test_busy_port_fails_fast_and_restart_reuses_the_port() -> None:
    with SMTPTestServer() as first:
        started = time.monotonic()
        with pytest.raises(OSError):
            SMTPTestServer(port=first.port).start()
        assert time.monotonic() - started < 1.0
        port = first.port
    first.start()
    try:
        assert first.port == port
        with _connect(first) as client:
            assert client.noop()[0] == 250
    finally:
        first.stop()


def test_clear_and_wait_for_messages_timeout() -> None:
    with SMTPTestServer() as server:
        with _connect(server) as client:
            client.sendmail(SENDER, [RECIPIENT], BODY)
        assert isinstance(server.wait_for_messages(1)[0], ReceivedMessage)
        server.clear()
        assert (server.messages, server.auth_attempts, server.sessions) == ([], [], 0)
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            server.wait_for_messages(1, timeout=0.05)
        assert time.monotonic() - started < 1.0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"tls": "starttls"},
        {"tls": "implicit"},
        {"host": "0.0.0.0"},
        {"host": "example.com"},
        {"host": "localhost"},
        {"require_starttls": True},
        {"auth_required": True},
        {"size_limit": 0},
        {"server_name": "bad\r\nname"},
    ],
)
def test_invalid_configuration_is_refused(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        SMTPTestServer(**kwargs)  # type: ignore[arg-type]


# -- ScriptedServer ----------------------------------------------------------------


def test_scripted_accept_all_records_the_body() -> None:
    with ScriptedServer(smtp_accept_all) as server:
        with _connect(server) as client:
            client.sendmail(SENDER, [RECIPIENT], b"Subject: x\r\n\r\n.dot\r\n")
        assert server.join()
    [conv] = server.conversations
    assert conv.blocks == [b"Subject: x\r\n\r\n..dot\r\n.\r\n"]  # still dot-stuffed
    assert conv.received[-1] == b"QUIT\r\n"
    assert server.errors == []


def test_scripted_421_on_first_connection_then_accept() -> None:
    with ScriptedServer([smtp_refuse_connection(421), smtp_accept_all]) as server:
        with pytest.raises(smtplib.SMTPConnectError) as caught:
            _connect(server)
        assert caught.value.smtp_code == 421
        with _connect(server) as client:
            client.sendmail(SENDER, [RECIPIENT], BODY)
        assert server.join()
    assert server.connections == 2
    assert [len(c.blocks) for c in server.conversations] == [0, 1]
    assert server.errors == []


def test_scripted_recipient_and_data_refusals() -> None:
    dialogue = SMTPDialogue(
        rcpt_replies={"bad@example.org": (550, "5.1.1 Unknown user")},
        end_of_data=[(552, "5.3.4 Too big"), (250, "2.0.0 OK")],
    )
    with ScriptedServer(dialogue) as server, _connect(server) as client:
        with pytest.raises(smtplib.SMTPDataError) as caught:
            client.sendmail(SENDER, [RECIPIENT, "bad@example.org"], BODY)
        assert caught.value.smtp_code == 552
        client.rset()
        refused = client.sendmail(SENDER, [RECIPIENT, "bad@example.org"], BODY)
        assert refused == {"bad@example.org": (550, b"5.1.1 Unknown user")}
    assert len(server.conversations[0].blocks) == 2


def test_scripted_reply_then_accept_on_the_same_connection() -> None:
    with ScriptedServer(smtp_reply_then_accept("MAIL", 451, "4.7.1 Greylisted")) as server:
        with _connect(server) as client:
            with pytest.raises(smtplib.SMTPSenderRefused):
                client.sendmail(SENDER, [RECIPIENT], BODY)
            client.sendmail(SENDER, [RECIPIENT], BODY)
        assert server.join()
    assert len(server.conversations[0].blocks) == 1


def test_scripted_drop_mid_data_never_completes_a_body() -> None:
    with ScriptedServer(drop_mid_data) as server:
        with _connect(server) as client, pytest.raises(smtplib.SMTPServerDisconnected):
            client.sendmail(SENDER, [RECIPIENT], BODY + b"more\r\n" * 20000)
        assert server.join()
    assert server.conversations[0].blocks == []
    assert server.errors == []


@pytest.mark.parametrize("script", [drop_after_final_dot, silent_after_final_dot])
def test_scripted_body_complete_but_no_final_reply(script: object) -> None:
    with ScriptedServer(script) as server:  # type: ignore[arg-type]
        with (
            _connect(server, timeout=0.3) as client,
            pytest.raises((smtplib.SMTPServerDisconnected, TimeoutError)),
        ):
            client.sendmail(SENDER, [RECIPIENT], BODY)
        client.close()
        assert server.join()
    assert len(server.conversations[0].blocks) == 1


def test_scripted_silence_before_and_after_greeting() -> None:
    with ScriptedServer([no_greeting, greet_then_silent]) as server:
        with pytest.raises((smtplib.SMTPServerDisconnected, TimeoutError)):
            _connect(server, timeout=0.2)
        with (
            _connect(server, timeout=0.2) as client,
            pytest.raises((smtplib.SMTPServerDisconnected, TimeoutError)),
        ):
            client.ehlo("client.example")
        client.close()
        assert server.join()
    assert server.conversations[1].received == [b"ehlo client.example\r\n"]
    assert server.errors == []


def test_scripted_starttls_auth_and_dripped_replies(
    server_ssl_context: ssl.SSLContext, client_ssl_context: ssl.SSLContext
) -> None:
    dialogue = SMTPDialogue(
        tls_context=server_ssl_context,
        auth_mechanisms=("PLAIN", "LOGIN"),
        replies={"AUTH": [(535, "5.7.8 Bad credentials")]},
        drip_interval=0.0001,
    )
    with ScriptedServer(dialogue) as server:
        with smtplib.SMTP("localhost", server.port, timeout=5) as client:
            client.starttls(context=client_ssl_context)
            client.ehlo()
            client.user, client.password = "alice", "pw"
            with pytest.raises(smtplib.SMTPAuthenticationError):
                client.auth("PLAIN", client.auth_plain)
            assert client.auth("LOGIN", client.auth_login)[0] == 235
            client.sendmail(SENDER, [RECIPIENT], BODY)
        assert server.join()
    conv = server.conversations[0]
    assert conv.tls
    assert len(conv.blocks) == 1
    assert server.errors == []


def test_scripted_empty_body_and_drop_action() -> None:
    with ScriptedServer(SMTPDialogue(replies={"NOOP": DROP, "VRFY": SILENT})) as server:
        with _connect(server) as client:
            client.ehlo()
            client.mail(SENDER)
            client.rcpt(RECIPIENT)
            assert client.docmd("DATA")[0] == 354
            client.send(b".\r\n")
            assert client.getreply()[0] == 250
            with pytest.raises(smtplib.SMTPServerDisconnected):
                client.noop()
        assert server.join()
    assert server.conversations[0].blocks == [b".\r\n"]


def test_script_errors_are_collected() -> None:
    def broken(conv: Conversation) -> None:
        conv.send("220 hello")
        raise ValueError("script bug")

    with ScriptedServer(broken) as server:
        with _connect(server) as client:
            client.close()
        assert server.join()
    assert [type(error) for error in server.errors] == [ValueError]


def test_scripted_stop_unblocks_waiting_scripts_quickly() -> None:
    server = ScriptedServer(no_greeting)
    server.start()
    sock = socket.create_connection(server.address, timeout=5)
    try:
        server.wait_for_connections(1)
        started = time.monotonic()
        server.stop()
        assert time.monotonic() - started < 1.0
        assert sock.recv(1) == b""  # the server closed our connection
    finally:
        sock.close()
    assert server.join(0.1)
    assert server.errors == []


def test_scripted_server_speaks_pop3_too() -> None:
    def pop3(conv: Conversation) -> None:
        conv.send("+OK POP3 ready")
        while (line := conv.recv_line()) is not None:
            verb = line.split()[0].upper()
            if verb == b"STAT":
                conv.send("+OK 0 0")
            elif verb == b"QUIT":
                conv.send("+OK bye")
                return
            else:
                conv.send("+OK")

    with ScriptedServer(pop3) as server:
        client = poplib.POP3(server.host, server.port, timeout=5)
        try:
            client.user("alice")
            client.pass_("secret")
            assert client.stat() == (0, 0)
        finally:
            client.quit()
        assert server.join()
    assert server.conversations[0].received[:2] == [b"USER alice\r\n", b"PASS secret\r\n"]
