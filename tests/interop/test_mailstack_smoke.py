"""Smoke tests of the private Postfix + Dovecot stack, using only smtplib and poplib.

They pin down the server behaviour the library's interoperability tests rely on:
TLS that verifies against the test CA, SASL through Dovecot, delivery into the
Maildirs, and the reply codes for the usual refusals.
"""

from __future__ import annotations

import contextlib
import poplib
import shutil
import smtplib
import socket
import ssl
import tempfile
import uuid
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path

import pytest

from src.testing.tls import TestCertificates

from .mailstack import MailStack
from .processes import group_members, pid_alive

TIMEOUT = 10.0


def _message(stack: MailStack, sender: str, to: list[str], body: str = "hello") -> EmailMessage:
    """A small message whose Subject carries a token unique to this call."""
    message = EmailMessage()
    message["From"] = stack.address(sender)
    message["To"] = ", ".join(to)
    message["Subject"] = f"smoke {uuid.uuid4().hex}"
    message.set_content(body)
    return message


def _delivered_containing(stack: MailStack, user: str, token: str) -> list[Path]:
    """Wait until a message with ``token`` is in the Maildir of ``user``."""
    count = len(stack.messages(user))
    while True:
        found = stack.wait_for_delivery(user, count, timeout=TIMEOUT)
        matching = [path for path in found if token.encode() in path.read_bytes()]
        if matching:
            return matching
        count = len(found) + 1


@contextlib.contextmanager
def _pop3(client: poplib.POP3) -> Iterator[poplib.POP3]:
    """Close a poplib client whatever happens (QUIT when the session still works)."""
    try:
        yield client
    finally:
        try:
            client.quit()
        except (poplib.error_proto, OSError):
            client.close()


def _submission(stack: MailStack, *, login_as: str | None = None) -> smtplib.SMTP:
    """An SMTP session on the submission port, after STARTTLS (and AUTH if asked)."""
    smtp = smtplib.SMTP(stack.host, stack.smtp_submission_port, timeout=TIMEOUT)
    try:
        smtp.starttls(context=stack.client_ssl_context())
        if login_as is not None:
            smtp.login(login_as, stack.users[login_as])
    except BaseException:
        smtp.close()
        raise
    return smtp


def _find_by_subject(pop: poplib.POP3, subject: str) -> int:
    """The number of the message whose headers carry ``subject`` (via TOP n 0)."""
    _, listing, _ = pop.list()
    for entry in listing:
        number = int(entry.split()[0])
        _, lines, _ = pop.top(number, 0)
        if any(subject.encode() in line for line in lines):
            return number
    raise AssertionError(f"no message with subject {subject!r} in the mailbox")


def test_submission_starttls_auth_delivers_and_pop3s_retrieves(mail_stack: MailStack) -> None:
    message = _message(mail_stack, "bob", [mail_stack.address("alice")], body="over the wire")
    with _submission(mail_stack, login_as="bob") as smtp:
        refused = smtp.send_message(message)
    assert refused == {}

    [path] = _delivered_containing(mail_stack, "alice", message["Subject"])
    assert path.parent.name in ("new", "cur")
    assert path.stat().st_uid == mail_stack.mail_uid

    context = mail_stack.client_ssl_context()
    client = poplib.POP3_SSL(
        mail_stack.host, mail_stack.pop3s_port, context=context, timeout=TIMEOUT
    )
    with _pop3(client) as pop:
        pop.user("alice")
        pop.pass_(mail_stack.users["alice"])
        number = _find_by_subject(pop, message["Subject"])
        _, lines, _ = pop.retr(number)
    text = b"\n".join(lines)
    assert b"over the wire" in text
    assert b"Delivered-To: alice@example.test" in text


def test_pop3_stls_upgrades_then_logs_in(mail_stack: MailStack) -> None:
    client = poplib.POP3(mail_stack.host, mail_stack.pop3_port, timeout=TIMEOUT)
    with _pop3(client) as pop:
        assert pop.getwelcome().startswith(b"+OK")
        assert "STLS" in pop.capa()
        pop.stls(mail_stack.client_ssl_context())
        assert isinstance(pop.sock, ssl.SSLSocket)
        assert pop.sock.version() in ("TLSv1.2", "TLSv1.3")
        pop.user("bob")
        pop.pass_(mail_stack.users["bob"])
        count, size = pop.stat()
        assert count >= 0 and size >= 0


def test_pop3_capabilities(mail_stack: MailStack) -> None:
    context = mail_stack.client_ssl_context()
    client = poplib.POP3_SSL(
        mail_stack.host, mail_stack.pop3s_port, context=context, timeout=TIMEOUT
    )
    with _pop3(client) as pop:
        capabilities = pop.capa()
    for name in ("UIDL", "TOP", "PIPELINING", "USER", "RESP-CODES"):
        assert name in capabilities
    assert "PLAIN" in capabilities["SASL"]


def test_smtps_implicit_tls_delivers(mail_stack: MailStack) -> None:
    message = _message(mail_stack, "alice", [mail_stack.address("bob")])
    context = mail_stack.client_ssl_context()
    with smtplib.SMTP_SSL(
        mail_stack.host, mail_stack.smtps_port, context=context, timeout=TIMEOUT
    ) as smtp:
        assert isinstance(smtp.sock, ssl.SSLSocket)
        smtp.login("alice@example.test", mail_stack.users["alice"])  # full address works too
        assert smtp.send_message(message) == {}
    _delivered_containing(mail_stack, "bob", message["Subject"])


def test_submission_refuses_mail_and_auth_before_starttls(mail_stack: MailStack) -> None:
    with smtplib.SMTP(mail_stack.host, mail_stack.smtp_submission_port, timeout=TIMEOUT) as smtp:
        smtp.ehlo()
        assert smtp.has_extn("starttls")
        assert not smtp.has_extn("auth")
        code, text = smtp.mail(mail_stack.address("alice"))
    assert code == 530
    assert b"5.7.0" in text


def test_unknown_recipient_gets_550(mail_stack: MailStack) -> None:
    with _submission(mail_stack, login_as="alice") as smtp:
        smtp.mail(mail_stack.address("alice"))
        code, text = smtp.rcpt(mail_stack.address("nobody"))
    assert code == 550
    assert b"5.1.1" in text


def test_wrong_password_gets_535(mail_stack: MailStack) -> None:
    with (
        _submission(mail_stack) as smtp,
        pytest.raises(smtplib.SMTPAuthenticationError) as caught,
    ):
        smtp.login("alice", "not-the-password")
    assert caught.value.smtp_code == 535
    assert b"5.7.8" in caught.value.smtp_error


def test_pop3_wrong_password_is_refused(mail_stack: MailStack) -> None:
    context = mail_stack.client_ssl_context()
    client = poplib.POP3_SSL(
        mail_stack.host, mail_stack.pop3s_port, context=context, timeout=TIMEOUT
    )
    with _pop3(client) as pop:
        pop.user("alice")
        with pytest.raises(poplib.error_proto, match=r"-ERR \[AUTH\]"):
            pop.pass_("not-the-password")


def test_unauthenticated_relay_is_refused(mail_stack: MailStack) -> None:
    with _submission(mail_stack) as smtp:
        smtp.mail("someone@elsewhere.test")
        code, text = smtp.rcpt("someone-else@elsewhere.test")
    assert code == 554
    assert b"5.7.1" in text


def test_authenticated_mail_to_another_domain_never_leaves(mail_stack: MailStack) -> None:
    with _submission(mail_stack, login_as="alice") as smtp:
        smtp.mail(mail_stack.address("alice"))
        code, text = smtp.rcpt("friend@elsewhere.test")
    assert code == 550
    assert b"never sends mail off the machine" in text


def test_recipient_over_size_limit_gets_552_and_others_still_receive(
    mail_stack: MailStack,
) -> None:
    to = [mail_stack.address("carol"), mail_stack.address("alice")]
    message = _message(mail_stack, "bob", to)
    with _submission(mail_stack, login_as="bob") as smtp:
        refused = smtp.send_message(message)
    code, text = refused[mail_stack.address("carol")]
    assert code == 552
    assert b"5.2.2" in text
    assert mail_stack.address("alice") not in refused
    _delivered_containing(mail_stack, "alice", message["Subject"])


def test_message_over_size_limit_gets_552(mail_stack: MailStack) -> None:
    big = "x" * 76 + "\n"
    body = big * (mail_stack.limited_message_size // len(big) + 10)
    message = _message(mail_stack, "bob", [mail_stack.address("alice")], body=body)
    with smtplib.SMTP(mail_stack.host, mail_stack.limited_submission_port, timeout=TIMEOUT) as smtp:
        smtp.starttls(context=mail_stack.client_ssl_context())
        smtp.login("bob", mail_stack.users["bob"])
        assert int(smtp.esmtp_features["size"]) == mail_stack.limited_message_size
        with pytest.raises(smtplib.SMTPSenderRefused) as caught:
            smtp.send_message(message)
    assert caught.value.smtp_code == 552
    assert b"5.3.4" in caught.value.smtp_error


def test_plaintext_login_needs_tls_when_client_address_differs(mail_stack: MailStack) -> None:
    """Dovecot counts a connection as secure when client and server address are equal.

    From another loopback address the ``disable_plaintext_auth`` rule shows: no USER
    before STLS. (From 127.0.0.1 to 127.0.0.1 Dovecot 2.3 allows USER/PASS in clear.)
    """
    try:
        raw = socket.create_connection(
            (mail_stack.host, mail_stack.pop3_port),
            timeout=TIMEOUT,
            source_address=("127.0.0.2", 0),
        )
    except OSError as exc:
        pytest.skip(f"cannot use 127.0.0.2 as a source address here: {exc}")
    with raw, raw.makefile("rwb") as stream:
        assert stream.readline().startswith(b"+OK")
        stream.write(b"USER alice\r\n")
        stream.flush()
        reply = stream.readline()
        stream.write(b"QUIT\r\n")
        stream.flush()
        stream.readline()
    assert reply.startswith(b"-ERR")
    assert b"Plaintext authentication disallowed" in reply


def test_second_stack_on_another_loopback_address_stops_completely(
    certs: TestCertificates,
) -> None:
    directory = Path(tempfile.mkdtemp(prefix="mailstack-"))
    try:
        with MailStack(directory, certs, host="127.0.0.2", users={"dave": "pw-dave"}) as stack:
            pids = stack.pids
            ports = [stack.smtp_submission_port, stack.smtps_port, stack.pop3s_port]
            assert {"postfix", "dovecot"} <= pids.keys()
            assert all(group_members(pid) for pid in pids.values())
            # The certificate names 127.0.0.2, and the client context still verifies it.
            client = poplib.POP3(stack.host, stack.pop3_port, timeout=TIMEOUT)
            with _pop3(client) as pop:
                with pytest.raises(poplib.error_proto, match="Plaintext"):
                    pop.user("dave")
                pop.stls(stack.client_ssl_context())
                pop.user("dave")
                pop.pass_("pw-dave")
        assert not stack.running
        for pid in pids.values():
            assert not pid_alive(pid)
            assert group_members(pid) == []
        for port in ports:
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection((stack.host, port), timeout=TIMEOUT).close()
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _pop3_processes(stack: MailStack) -> set[int]:
    """Dovecot's post-login ``pop3`` processes of this stack."""
    members = group_members(stack.pids["dovecot"])
    return {pid for pid in members if Path(f"/proc/{pid}/comm").read_text().strip() == "pop3"}


def test_dovecot_reusing_processes_serves_sessions_from_one_pop3_process(
    certs: TestCertificates,
) -> None:
    directory = Path(tempfile.mkdtemp(prefix="mailstack-"))
    try:
        with MailStack(directory, certs, users={"dave": "pw-dave"}, reuse_processes=True) as stack:
            seen: set[int] = set()
            for _ in range(3):
                client = poplib.POP3(stack.host, stack.pop3_port, timeout=TIMEOUT)
                with _pop3(client) as pop:
                    pop.stls(stack.client_ssl_context())
                    pop.user("dave")
                    pop.pass_("pw-dave")
                    assert pop.stat() == (0, 0)
                seen |= _pop3_processes(stack)
            # Each session ended, and the one pop3 process that served them waits on.
            assert len(seen) == 1 and _pop3_processes(stack) == seen
    finally:
        shutil.rmtree(directory, ignore_errors=True)
