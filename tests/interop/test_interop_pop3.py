"""Our POP3 handler against a real Dovecot 2.3 (mail delivered by a real Postfix 3.7).

Logins in every encryption mode and what crosses the wire; CAPA; UIDL format and
stability; TOP; deletion committed by QUIT, undone by RSET and dropped with the
connection (checked in the Maildir on disk); concurrent sessions, both as Dovecot
allows them by default and with ``pop3_lock_session``; dot-stuffing, long lines and
pipelined RETR; a 10 MB message end to end.

Messages reach the mailboxes through Postfix when the test is about mail sent with
our SMTP handler, and straight into the Maildir (:meth:`MailStack.deposit`) when the
exact bytes matter or when Postfix would refuse them (carol's "full" mailbox).
"""

from __future__ import annotations

import base64
import logging
import os
import re
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from src.handlers.errors import (
    POP3AuthenticationError,
    POP3ConnectionError,
    POP3MailboxBusyError,
    POP3MessageTooLargeError,
    POP3SecurityError,
)
from src.handlers.pop3 import POP3ConnectionPool
from src.handlers.retry import RetryPolicy, is_retryable
from src.handlers.smtp import SMTPDeliveryStatus

from .mailstack import MailStack
from .support import (
    TIMEOUT,
    WireTap,
    delivered,
    pop3_handler,
    pop3_port,
    secret_forms,
    smtp_handler,
    token,
    wait_for_log,
)

MODES = ("tls", "ssl", "none")
# Dovecot 2.3's CAPA, before login; STLS only while the connection is not TLS.
DOVECOT_CAPABILITIES = {
    "CAPA",
    "TOP",
    "UIDL",
    "RESP-CODES",
    "PIPELINING",
    "AUTH-RESP-CODE",
    "USER",
    "SASL PLAIN LOGIN",
}


def _raw(subject: str, body: bytes = b"hello\n") -> bytes:
    """A small message as a Maildir file holds it (LF line ends)."""
    return (
        f"From: sender@example.test\nTo: alice@example.test\nSubject: {subject}\n"
        f"Message-ID: <{subject}@example.test>\n\n"
    ).encode() + body


@pytest.fixture
def alice(mail_stack: MailStack) -> Iterator[list[str]]:
    """Three messages deposited in alice's otherwise empty Maildir; their subjects."""
    mail_stack.clear_mailbox("alice")
    subjects = [f"m{n}-{token()}" for n in range(1, 4)]
    for subject in subjects:
        mail_stack.deposit("alice", _raw(subject))
    yield subjects
    mail_stack.clear_mailbox("alice")


def _on_disk(stack: MailStack, user: str) -> list[str]:
    """The subjects of the messages now in the Maildir of ``user``, oldest first."""
    subjects = []
    for path in stack.messages(user):
        match = re.search(rb"^Subject: (.*)$", path.read_bytes(), re.MULTILINE)
        assert match is not None
        subjects.append(match.group(1).decode())
    return subjects


# ---------------------------------------------------------------- logins and CAPA


@pytest.mark.parametrize("mode", MODES)
def test_capabilities(mail_stack: MailStack, mode: str) -> None:
    """CAPA is asked before login (after STLS in 'tls' mode)."""
    mark = mail_stack.log_mark()
    capabilities = pop3_handler(mail_stack, mode).get_capabilities()
    expected = DOVECOT_CAPABILITIES | ({"STLS"} if mode == "none" else set())
    assert set(capabilities) == expected
    assert len(capabilities) == len(expected)
    wait_for_log(mail_stack, mark, r"pop3-login: .*no auth attempts")


@pytest.mark.parametrize("mode", MODES)
def test_password_on_the_wire(
    mail_stack: MailStack, mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Only 'none' sends the password readable, and it says so in a WARNING."""
    caplog.set_level(logging.DEBUG)
    password = mail_stack.users["alice"]
    with WireTap(mail_stack.host, pop3_port(mail_stack, mode)) as tap:
        handler = pop3_handler(mail_stack, mode, port=tap.port)
        assert handler.test_connection()
    wire = bytes(tap.sent)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    if mode == "none":
        # Dovecot offers PLAIN, which the client prefers to USER/PASS: as readable.
        plain = base64.b64encode(f"\0alice\0{password}".encode())
        assert b"AUTH PLAIN " + plain + b"\r\n" in wire
        assert len(warnings) == 1 and "without encryption" in warnings[0].getMessage()
    else:
        for form in secret_forms("alice", password):
            assert form not in wire
        assert b"USER" not in wire and warnings == []
    assert password not in caplog.text


@pytest.mark.parametrize("mode", ["none", "tls"])
def test_dovecot_refuses_plaintext_login_from_another_address(
    mail_stack: MailStack, mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    """From 127.0.0.2, as from any real client, Dovecot wants TLS before USER.

    'none' is refused at USER, so the password is never sent (and no warning claims
    it was); 'tls' upgrades with STLS and logs in.
    """
    caplog.set_level(logging.DEBUG)
    stack = mail_stack
    password = stack.users["alice"]
    with WireTap(stack.host, stack.pop3_port, source="127.0.0.2") as tap:
        handler = pop3_handler(stack, mode, port=tap.port)
        if mode == "none":
            with pytest.raises(POP3AuthenticationError) as refused:
                handler.get_mailbox_stat()
            assert "Plaintext authentication disallowed" in str(refused.value)
            assert refused.value.enhanced_code == "AUTH"
            assert not is_retryable(refused.value)
        else:
            assert handler.get_mailbox_stat()[0] >= 0
    wire = bytes(tap.sent)
    assert b"PASS" not in wire
    for form in secret_forms("alice", password):
        assert form not in wire
    assert "without encryption" not in caplog.text
    assert (b"USER alice" in wire) == (mode == "none")


def test_login_with_the_full_address(mail_stack: MailStack) -> None:
    full = pop3_handler(mail_stack, "ssl", "alice", login_as=mail_stack.address("alice"))
    assert full.get_mailbox_stat() == pop3_handler(mail_stack, "ssl", "alice").get_mailbox_stat()


@pytest.mark.parametrize("mode", ["ssl", "tls"])
def test_wrong_password(mail_stack: MailStack, mode: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = "not-" + mail_stack.users["alice"]
    sleeps: list[float] = []
    mark = mail_stack.log_mark()
    handler = pop3_handler(mail_stack, mode, password=wrong, sleep=sleeps.append)
    with pytest.raises(POP3AuthenticationError) as refused:
        handler.authenticate()
    assert refused.value.enhanced_code == "AUTH"
    assert not is_retryable(refused.value) and sleeps == []
    assert not handler.test_connection()
    for shown in (str(refused.value), repr(handler), caplog.text):
        assert wrong not in shown
    # Dovecot logs each session when it ends: two sessions, one PASS each.
    ended = wait_for_log(
        mail_stack, mark, r"pop3-login: .*Disconnected\b.*\(auth failed, (\d+) attempts", 2
    )
    assert [match.group(1) for match in ended] == ["1", "1"]


def test_implicit_tls_on_the_stls_port_fails_at_once(mail_stack: MailStack) -> None:
    handler = pop3_handler(mail_stack, "ssl", port=mail_stack.pop3_port)
    with pytest.raises(POP3SecurityError) as failed:
        handler.get_mailbox_stat()
    assert "plain text" in str(failed.value) and "encryption='tls'" in str(failed.value)
    assert not is_retryable(failed.value)


@pytest.mark.parametrize("mode", ["tls", "none"])
def test_plain_start_on_the_pop3s_port_fails_at_once(mail_stack: MailStack, mode: str) -> None:
    waits: list[float] = []
    handler = pop3_handler(
        mail_stack, mode, port=mail_stack.pop3s_port, timeout=1, sleep=waits.append
    )
    with pytest.raises(POP3SecurityError) as silent:
        handler.get_mailbox_stat()
    assert "encryption='ssl'" in str(silent.value)
    assert isinstance(silent.value, POP3ConnectionError)
    assert not is_retryable(silent.value) and waits == []


# ---------------------------------------------------------------- UIDL and TOP


def test_uidl_format_and_stability(mail_stack: MailStack, alice: list[str]) -> None:
    stack = mail_stack
    handler = pop3_handler(stack, "ssl")
    first = handler.list_uids()
    assert sorted(first) == [1, 2, 3]
    # Dovecot's default pop3_uidl_format %08Xu%08Xv: IMAP UID, then UIDVALIDITY.
    assert all(re.fullmatch(r"[0-9a-fA-F]{16}", uid) for uid in first.values())
    assert len({uid[8:] for uid in first.values()}) == 1  # one UIDVALIDITY
    uids_by_number = [int(first[n][:8], 16) for n in (1, 2, 3)]
    assert uids_by_number == sorted(uids_by_number) and len(set(uids_by_number)) == 3
    assert pop3_handler(stack, "tls").list_uids() == first  # another session, same IDs

    with handler:
        assert handler.delete_message(1)
    after = handler.list_uids()
    assert after == {1: first[2], 2: first[3]}  # numbers shift, IDs stay

    stack.deposit("alice", _raw(f"m4-{token()}"))
    newest = handler.list_uids()
    assert newest[3] not in first.values()  # a new ID, never the deleted one again
    assert [newest[1], newest[2]] == [first[2], first[3]]


def test_top_gives_headers_without_bodies(mail_stack: MailStack, alice: list[str]) -> None:
    handler = pop3_handler(mail_stack, "ssl")
    with handler:
        numbers, _ = handler.list_messages()
        sizes = {n: handler.get_message_size(n) for n in numbers}
        summaries = handler.list_headers()
    assert [s["subject"] for s in summaries] == alice
    assert [s["messageIdHeader"] for s in summaries] == [f"<{s}@example.test>" for s in alice]
    assert all(s["textBody"] == "" and s["htmlBody"] == "" for s in summaries)
    assert {s["messageId"]: s["size"] for s in summaries} == sizes
    assert [s["subject"] for s in handler.list_headers([2])] == [alice[1]]


# ---------------------------------------------------------------- deletion


def test_deletion_is_committed_by_quit(mail_stack: MailStack, alice: list[str]) -> None:
    handler = pop3_handler(mail_stack, "tls")
    with handler:
        assert handler.delete_message(2)
        assert handler.pending_deletions == 1
        assert _on_disk(mail_stack, "alice") == alice  # marked only
    assert _on_disk(mail_stack, "alice") == [alice[0], alice[2]]


def test_reset_undoes_deletion(mail_stack: MailStack, alice: list[str]) -> None:
    handler = pop3_handler(mail_stack, "ssl")
    with handler:
        assert handler.delete_messages([1, 3]) == (2, 0)
        assert handler.reset()
        assert handler.pending_deletions == 0
        assert handler.list_messages()[0] == [1, 2, 3]
    assert _on_disk(mail_stack, "alice") == alice


def test_abort_commits_nothing(mail_stack: MailStack, alice: list[str]) -> None:
    handler = pop3_handler(mail_stack, "ssl")
    handler.connect()
    assert handler.delete_messages([1, 2, 3]) == (3, 0)
    handler.abort()
    assert handler.state == "disconnected"
    assert _on_disk(mail_stack, "alice") == alice


class _Interrupted(BaseException):
    """Stands for KeyboardInterrupt or SystemExit, which pytest treats specially."""


def test_interrupted_with_block_commits_nothing(mail_stack: MailStack, alice: list[str]) -> None:
    handler = pop3_handler(mail_stack, "tls")
    with pytest.raises(_Interrupted), handler:
        handler.delete_message(1)
        raise _Interrupted
    assert _on_disk(mail_stack, "alice") == alice


@pytest.mark.parametrize("mode", ["ssl", "none"])
def test_dropped_connection_commits_nothing(
    mail_stack: MailStack, alice: list[str], mode: str
) -> None:
    """The link dies after DELE and before QUIT: Dovecot keeps every message."""
    mark = mail_stack.log_mark()
    with WireTap(mail_stack.host, pop3_port(mail_stack, mode)) as tap:
        handler = pop3_handler(mail_stack, mode, port=tap.port)
        handler.connect()
        assert handler.delete_messages([1, 2]) == (2, 0)
        [login] = wait_for_log(mail_stack, mark, r"Login: user=<alice>, .*session=<([^>]+)>")
        tap.cut()
        with pytest.raises(POP3ConnectionError):
            handler.list_messages()
        assert handler.state == "broken"
        assert not handler.disconnect()  # nothing to QUIT: reported, not hidden
    session = re.escape(login.group(1))
    [ended] = wait_for_log(
        mail_stack,
        mark,
        rf"pop3\(alice\)<\d+><{session}>: Info: Disconnected: (.*?) top=.* del=(\d+)/",
    )
    assert not ended.group(1).startswith("Logged out")
    assert ended.group(2) == "0"
    assert _on_disk(mail_stack, "alice") == alice


# ---------------------------------------------------------------- concurrent sessions


def test_concurrent_sessions_are_allowed_by_default(
    mail_stack: MailStack, alice: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    """Dovecot lets two sessions share a mailbox. Each keeps the view it logged in
    with; a message the other session expunged is refused, and skipped by us."""
    first = pop3_handler(mail_stack, "ssl")
    second = pop3_handler(mail_stack, "tls")
    with first, second:
        assert first.list_uids() == second.list_uids()
        assert first.delete_message(1)
        assert first.disconnect()
        assert _on_disk(mail_stack, "alice") == alice[1:]
        with caplog.at_level(logging.WARNING, logger="src.handlers.pop3"):
            assert second.fetch_message(1) is None
        assert "expunged" in caplog.text
        assert second.fetch_message(2)["subject"] == alice[1]  # type: ignore[index]
        assert [m["subject"] for m in second.fetch_messages()] == alice[1:]
    assert _on_disk(mail_stack, "alice") == alice[1:]


def test_pool_opens_concurrent_sessions_for_one_mailbox(
    mail_stack: MailStack, alice: list[str]
) -> None:
    pool = POP3ConnectionPool(
        mail_stack.host,
        mail_stack.pop3s_port,
        "alice",
        mail_stack.users["alice"],
        pool_size=2,
        encryption="ssl",
        timeout=TIMEOUT,
        ssl_context=mail_stack.client_ssl_context(),
    )
    try:
        one, two = pool.acquire(), pool.acquire()
        assert one is not None and two is not None
        assert one.list_uids() == two.list_uids()
        one.delete_message(1)
        pool.release(one)  # RSET: the deletion is undone
        pool.release(two)
    finally:
        pool.close_all()
    assert _on_disk(mail_stack, "alice") == alice


@pytest.fixture
def carol(mail_stack: MailStack) -> Iterator[list[str]]:
    """Two messages in carol's Maildir (Postfix refuses her mail; her POP3 sessions lock)."""
    assert "carol" in mail_stack.locked_sessions
    mail_stack.clear_mailbox("carol")
    subjects = [f"c{n}-{token()}" for n in (1, 2)]
    for subject in subjects:
        mail_stack.deposit("carol", _raw(subject))
    yield subjects
    mail_stack.clear_mailbox("carol")


def _in_thread(function: Any) -> tuple[threading.Thread, dict[str, Any]]:
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = function()
        except Exception as error:
            outcome["error"] = error

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


def test_locked_mailbox_makes_a_second_login_wait(mail_stack: MailStack, carol: list[str]) -> None:
    """With pop3_lock_session Dovecot holds the second login until the first session
    ends; our handler just sees a slow reply, and then the committed state."""
    stack = mail_stack
    first = pop3_handler(stack, "ssl", "carol")
    second = pop3_handler(stack, "ssl", "carol", retry=RetryPolicy.never())
    first.connect()
    assert first.delete_message(1)
    mark = stack.log_mark()
    thread, outcome = _in_thread(second.get_mailbox_stat)
    # Dovecot logs the login before its pop3 process waits for the session lock.
    wait_for_log(stack, mark, r"pop3-login: Info: Login: user=<carol>")
    assert first.disconnect()
    thread.join(timeout=3 * TIMEOUT)
    assert not thread.is_alive()
    assert "error" not in outcome, outcome
    assert outcome["value"][0] == 1  # it saw the mailbox after the first one's QUIT
    assert _on_disk(stack, "carol") == carol[1:]


@pytest.mark.slow
def test_locked_mailbox_refuses_with_in_use_after_ten_seconds(
    mail_stack: MailStack, carol: list[str]
) -> None:
    """Dovecot waits 10 s (fixed) for the lock, then answers -ERR [IN-USE]."""
    stack = mail_stack
    holder = pop3_handler(stack, "ssl", "carol")
    # A timeout longer than Dovecot's lock wait, or the wait would end as a timeout.
    waiting = pop3_handler(stack, "ssl", "carol", timeout=30, retry=RetryPolicy.never())
    with holder.session(), pytest.raises(POP3MailboxBusyError) as busy:
        waiting.get_mailbox_stat()
    assert busy.value.enhanced_code == "IN-USE"
    assert is_retryable(busy.value)
    assert _on_disk(stack, "carol") == carol


# ---------------------------------------------------------------- message bytes


def test_dot_stuffing_long_lines_and_odd_bytes_arrive_exactly(mail_stack: MailStack) -> None:
    stack = mail_stack
    stack.clear_mailbox("alice")
    body = (
        b".\n..\n...three\n.leading\n \n"  # dots at line starts, a lone dot
        + b"x" * 5000
        + b"\n"  # far past poplib's 2048-byte line limit
        + bytes(range(1, 10))
        + b"\x0b\x0c"
        + bytes(range(14, 32))
        + b"\n"  # control bytes
        + "ünïcödé 8-bit\n".encode()
        + b"no newline at the end"
    )
    path = stack.deposit("alice", _raw(f"odd-{token()}", body))
    expected = path.read_bytes().replace(b"\n", b"\r\n") + b"\r\n"
    for mode in MODES:
        handler = pop3_handler(stack, mode, include_raw=True)
        [raw] = handler.fetch_raw_messages().values()
        assert raw == expected, mode
        assert handler.fetch_message(1)["raw"] == expected  # type: ignore[index]
    stack.clear_mailbox("alice")


def test_pipelined_retrieval_of_many_messages(mail_stack: MailStack) -> None:
    stack = mail_stack
    stack.clear_mailbox("alice")
    subjects = [f"p{n:03d}-{token()}" for n in range(150)]  # more than one window
    for subject in subjects:
        stack.deposit("alice", _raw(subject, f"body of {subject}\n".encode() * 20))
    handler = pop3_handler(stack, "ssl")
    with handler:
        messages = handler.fetch_messages()
        raws = handler.fetch_raw_messages([150, 1, 75])
    assert [m["subject"] for m in messages] == subjects
    assert all(m["textBody"].startswith(f"body of {m['subject']}") for m in messages)
    assert sorted(raws) == [1, 75, 150]
    assert subjects[74].encode() in raws[75]
    stack.clear_mailbox("alice")


def test_ten_megabyte_message_end_to_end(mail_stack: MailStack) -> None:
    """About 10 MB on the wire (a 7.3 MB attachment, base64): under Postfix's
    message_size_limit of 10 MiB (the stack's default) and our 50 MiB max_message_size.

    A 10 MB *attachment* would be 13.7 MB encoded: Postfix advertises SIZE, so the
    handler refuses that one before sending it.
    """
    stack = mail_stack
    stack.clear_mailbox("alice")
    marker = token()
    data = os.urandom(7_300_000)
    sender = smtp_handler(stack, "ssl", "bob", timeout=60)
    with sender:
        result = sender.send_message(
            [stack.address("alice")],
            marker,
            text_body=marker,
            attachments=[{"filename": "big.bin", "content": data}],
        )
        too_big = sender.send_message(
            [stack.address("alice")],
            "too big",
            text_body="x",
            attachments=[{"filename": "huge.bin", "content": bytes(10_000_000)}],
        )
    assert result.status is SMTPDeliveryStatus.SUCCESS, result.to_dict()
    assert too_big.status is SMTPDeliveryStatus.FAILED
    assert f"at most {stack.message_size_limit}" in (too_big.smtp_error or "")
    delivered(stack, "alice", marker)

    limited = pop3_handler(stack, "ssl", max_message_size=5_000_000)
    with pytest.raises(POP3MessageTooLargeError) as refused:
        limited.fetch_message(1)
    assert refused.value.size is not None and refused.value.size > 5_000_000

    handler = pop3_handler(
        stack, "ssl", include_raw=True, include_attachment_content=True, timeout=60
    )
    [message] = handler.fetch_messages()
    assert message["messageIdHeader"] == result.message_id
    [attachment] = message["attachments"]
    assert attachment["filename"] == "big.bin" and attachment["content"] == data
    assert message["size"] == len(message["raw"])
    assert 9_900_000 < message["size"] < stack.message_size_limit  # CRLF line ends
    stack.clear_mailbox("alice")
