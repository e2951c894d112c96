"""Our POP3 handler and UIDL sync against GNU Mailutils' pop3d 3.15 (mbox storage).

What differs from Dovecot: users of a virtual domain log in with their full address;
the greeting carries an APOP timestamp (we still log in with USER/PASS); UIDs look like
``<md5>.<uidvalidity>.<n>``; the server writes ``X-UIDL``, ``X-UID``, ``Status`` and
``X-Expire-Timestamp`` headers into the messages it has served, so a message's bytes
and size change after its first retrieval (its UID does not); it lists ``EXPIRE30``
among its capabilities. Deletion, RSET and dropped sessions are checked in the mbox
file on disk.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from src.handlers.errors import POP3AuthenticationError, POP3ConnectionError
from src.handlers.pop3 import FileUIDStore, MemoryUIDStore, POP3ProtocolHandler
from src.handlers.retry import is_retryable

from .extra_servers import MailutilsPOP3
from .support import TIMEOUT, WireTap, token

MODES = ("tls", "ssl", "none")
CAPABILITIES = {"TOP", "UIDL", "RESP-CODES", "PIPELINING", "AUTH-RESP-CODE", "EXPIRE30", "USER"}
# <md5 of the message, hex>.<UIDVALIDITY>.<UID>
UID = re.compile(r"([0-9a-f]{32})\.(\d+)\.(\d+)")


def _port(server: MailutilsPOP3, mode: str) -> int:
    return server.ports["pop3s"] if mode == "ssl" else server.ports["pop3"]


def _handler(
    server: MailutilsPOP3,
    mode: str = "ssl",
    user: str = "alice",
    *,
    port: int | None = None,
    password: str | None = None,
    **options: Any,
) -> POP3ProtocolHandler:
    options.setdefault("sleep", lambda seconds: None)
    return POP3ProtocolHandler(
        server.host,
        port if port is not None else _port(server, mode),
        server.address(user),
        password if password is not None else server.users[user],
        mode,
        TIMEOUT,
        ssl_context=server.client_ssl_context(),
        **options,
    )


def _raw(subject: str, body: bytes = b"hello\n") -> bytes:
    return (
        f"From: sender@example.test\nTo: alice@example.test\nSubject: {subject}\n"
        f"Message-ID: <{subject}@example.test>\n\n"
    ).encode() + body


def _on_disk(server: MailutilsPOP3, user: str = "alice", *, settled: bool = True) -> list[str]:
    """Subjects of the messages in the mbox of ``user``, in order: once every session
    has ended, or with ``settled=False`` as they are now (while a session is open)."""
    mbox = server.mbox_bytes(user, settled=settled)
    return [match.decode() for match in re.findall(rb"^Subject: (.*)$", mbox, re.M)]


@pytest.fixture
def alice(mailutils_pop3d: MailutilsPOP3) -> Iterator[list[str]]:
    """Three messages in alice's otherwise empty mbox; their subjects."""
    mailutils_pop3d.clear_mailbox("alice")
    subjects = [f"m{n}-{token()}" for n in range(1, 4)]
    for subject in subjects:
        mailutils_pop3d.deposit("alice", _raw(subject))
    yield subjects
    mailutils_pop3d.clear_mailbox("alice")


# ---------------------------------------------------------------- logins and CAPA


@pytest.mark.parametrize("mode", MODES)
def test_login_and_capabilities(
    mailutils_pop3d: MailutilsPOP3, alice: list[str], mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    server = mailutils_pop3d
    with WireTap(server.host, _port(server, mode)) as tap:
        handler = _handler(server, mode, port=tap.port)
        capabilities = handler.get_capabilities()
        assert handler.get_mailbox_stat()[0] == 3
    assert set(capabilities) == CAPABILITIES | ({"STLS"} if mode == "none" else set())
    wire = bytes(tap.sent)
    # The greeting offers APOP (a timestamp); we log in with USER/PASS all the same.
    assert b"APOP" not in wire
    password = server.users["alice"]
    assert (f"PASS {password}\r\n".encode() in wire) == (mode == "none")
    assert (b"USER alice@example.test\r\n" in wire) == (mode == "none")
    warnings = [r for r in caplog.records if "without encryption" in r.getMessage()]
    assert len(warnings) == (1 if mode == "none" else 0)
    assert password not in caplog.text


def test_greeting_carries_an_apop_timestamp(mailutils_pop3d: MailutilsPOP3) -> None:
    import socket

    with socket.create_connection((mailutils_pop3d.host, mailutils_pop3d.ports["pop3"])) as raw:
        greeting = raw.recv(512)
        raw.sendall(b"QUIT\r\n")
    assert re.fullmatch(rb"\+OK POP3 Ready <\d+\.\d+@[^>]+>\r\n", greeting)


@pytest.mark.parametrize("mode", ["ssl", "tls"])
def test_wrong_password(mailutils_pop3d: MailutilsPOP3, mode: str) -> None:
    wrong = "not-" + mailutils_pop3d.users["alice"]
    sleeps: list[float] = []
    handler = _handler(mailutils_pop3d, mode, password=wrong, sleep=sleeps.append)
    with pytest.raises(POP3AuthenticationError) as refused:
        handler.authenticate()
    assert refused.value.enhanced_code == "AUTH"
    assert "Bad login" in str(refused.value)
    assert not is_retryable(refused.value) and sleeps == []
    assert wrong not in str(refused.value)


def test_the_bare_user_name_is_unknown(mailutils_pop3d: MailutilsPOP3) -> None:
    """Virtual-domain users exist only with their domain: 'alice' alone is refused."""
    handler = POP3ProtocolHandler(
        mailutils_pop3d.host,
        mailutils_pop3d.ports["pop3s"],
        "alice",
        mailutils_pop3d.users["alice"],
        "ssl",
        TIMEOUT,
        ssl_context=mailutils_pop3d.client_ssl_context(),
        sleep=lambda seconds: None,
    )
    with pytest.raises(POP3AuthenticationError):
        handler.authenticate()


# ---------------------------------------------------------------- UIDL, LIST, TOP, RETR


def test_uidl_format_and_stability(mailutils_pop3d: MailutilsPOP3, alice: list[str]) -> None:
    server = mailutils_pop3d
    first = _handler(server, "ssl").list_uids()
    assert sorted(first) == [1, 2, 3]
    parts = [UID.fullmatch(uid) for uid in first.values()]
    assert all(parts)
    assert len({m.group(2) for m in parts if m}) == 1  # one UIDVALIDITY
    assert [int(m.group(3)) for m in parts if m] == [1, 2, 3]
    # The mbox is rewritten with X-UIDL headers at QUIT; the IDs stay.
    assert _handler(server, "tls").list_uids() == first
    assert b"X-UIDL: " + first[1].encode() in server.mbox_bytes("alice")

    handler = _handler(server, "ssl")
    with handler:
        assert handler.delete_message(1)
    after = handler.list_uids()
    assert after == {1: first[2], 2: first[3]}
    server.deposit("alice", _raw(f"m4-{token()}"))
    newest = handler.list_uids()
    assert [newest[1], newest[2]] == [first[2], first[3]]
    assert newest[3] not in first.values()


def test_list_top_and_retr_give_exact_bytes(mailutils_pop3d: MailutilsPOP3) -> None:
    """RETR returns the message as stored, with CRLF line ends and the quoting of the
    mbox undone, plus the headers pop3d adds: ``X-UIDL`` at once, and after the first
    session ``X-Expire-Timestamp``, ``X-UID`` and ``Status`` too. LIST counts them."""
    server = mailutils_pop3d
    server.clear_mailbox("alice")
    subject = f"bytes-{token()}"
    body = (
        b"From the first line of the body\n"
        b">From a quoted line\n"
        b".\n..two dots\n" + "ünïcödé 8-bit\n".encode() + b"x" * 3000 + b"\n" + b"last line\n"
    )
    server.deposit("alice", _raw(subject, body))
    head, rest = _raw(subject, body).split(b"\n\n", 1)
    handler = _handler(server, "ssl", include_raw=True)
    with handler:
        uid = handler.list_uids()[1]
        size = handler.get_message_size(1)
        [raw] = handler.fetch_raw_messages().values()
        [summary] = handler.list_headers()
    first = (head + b"\nX-UIDL: " + uid.encode() + b"\n\n" + rest).replace(b"\n", b"\r\n")
    assert raw == first and size == len(first)
    assert summary["subject"] == subject and summary["textBody"] == ""

    # A second session serves the same message with pop3d's bookkeeping headers.
    with _handler(server, "tls", include_raw=True) as again:
        [message] = again.fetch_messages()
        second = message["raw"]
        assert message["size"] == len(second) == again.get_message_size(1)
    assert second != first
    added = second.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[len(head.split(b"\n")) + 1 :]
    assert [line.split(b":", 1)[0] for line in added] == [
        b"X-Expire-Timestamp",
        b"X-IMAPbase",
        b"X-UID",
        b"Status",
    ]
    assert second.endswith(rest.replace(b"\n", b"\r\n"))  # the body is untouched
    assert message["subject"] == subject
    server.clear_mailbox("alice")


def test_list_after_retr_overcounts_quoted_from_lines(mailutils_pop3d: MailutilsPOP3) -> None:
    """A pop3d quirk: once a message whose body has lines starting with ``From `` has
    been retrieved, later LIST replies in that session (``LIST n`` or the multi-line
    LIST, depending on the order of commands) report it larger than the bytes RETR
    sends. The handler takes sizes from LIST, so ``size`` can be too big for a message
    fetched twice in one session, or by ``get_message_size`` after a fetch; the bytes
    are right, and a new session reports the right size again."""
    server = mailutils_pop3d
    server.clear_mailbox("alice")
    server.deposit("alice", _raw(f"from-{token()}", b"From a\nFrom b\nend\n"))
    with _handler(server, "ssl", include_raw=True) as handler:
        [first] = handler.fetch_messages()
        [again] = handler.fetch_messages()
        single = handler.get_message_size(1)
    assert first["size"] == len(first["raw"])  # before any RETR, LIST is right
    assert again["raw"] == first["raw"]
    assert max(again["size"], single) > len(first["raw"])
    server.clear_mailbox("alice")


def test_pipelined_retrieval_of_many_messages(mailutils_pop3d: MailutilsPOP3) -> None:
    server = mailutils_pop3d
    server.clear_mailbox("alice")
    subjects = [f"p{n:03d}-{token()}" for n in range(150)]
    for subject in subjects:
        server.deposit("alice", _raw(subject, f"body of {subject}\n".encode() * 20))
    with _handler(server, "ssl") as handler:
        messages = handler.fetch_messages()
    assert [m["subject"] for m in messages] == subjects
    server.clear_mailbox("alice")


# ---------------------------------------------------------------- deletion


def test_deletion_is_committed_by_quit(mailutils_pop3d: MailutilsPOP3, alice: list[str]) -> None:
    handler = _handler(mailutils_pop3d, "tls")
    with handler:
        assert handler.delete_message(2)
        assert _on_disk(mailutils_pop3d, settled=False) == alice  # marked only
    assert _on_disk(mailutils_pop3d) == [alice[0], alice[2]]


def test_reset_undoes_deletion(mailutils_pop3d: MailutilsPOP3, alice: list[str]) -> None:
    handler = _handler(mailutils_pop3d, "ssl")
    with handler:
        assert handler.delete_messages([1, 3]) == (2, 0)
        assert handler.reset()
        assert handler.list_messages()[0] == [1, 2, 3]
    assert _on_disk(mailutils_pop3d) == alice


def test_abort_commits_nothing(mailutils_pop3d: MailutilsPOP3, alice: list[str]) -> None:
    handler = _handler(mailutils_pop3d, "ssl")
    handler.connect()
    assert handler.delete_messages([1, 2, 3]) == (3, 0)
    handler.abort()
    assert _on_disk(mailutils_pop3d) == alice


def test_dropped_connection_commits_nothing(
    mailutils_pop3d: MailutilsPOP3, alice: list[str]
) -> None:
    with WireTap(mailutils_pop3d.host, mailutils_pop3d.ports["pop3s"]) as tap:
        handler = _handler(mailutils_pop3d, "ssl", port=tap.port)
        handler.connect()
        assert handler.delete_messages([1, 2]) == (2, 0)
        tap.cut()
        with pytest.raises(POP3ConnectionError):
            handler.list_messages()
        assert not handler.disconnect()
    assert _on_disk(mailutils_pop3d) == alice


# ---------------------------------------------------------------- sync


def _recorder(seen: list[str]) -> Callable[[dict[str, Any]], None]:
    def callback(message: dict[str, Any]) -> None:
        assert message["uid"]
        seen.append(message["subject"])

    return callback


def test_incremental_sync_without_duplicates(
    mailutils_pop3d: MailutilsPOP3, tmp_path: Path
) -> None:
    """New mail between runs is handed over once, in order, although pop3d rewrites
    every message it has served (its bytes and size change; its UID does not)."""
    server = mailutils_pop3d
    server.clear_mailbox("bob")
    marker = token()
    store_path = tmp_path / "bob.uids"
    seen: list[str] = []
    first = [f"{marker} #{n}" for n in range(1, 4)]
    for subject in first:
        server.deposit("bob", _raw(subject))

    one = _handler(server, "ssl", "bob").sync(FileUIDStore(store_path), _recorder(seen))
    assert (one.fetched, one.skipped, one.failed) == (3, 0, 0)

    second = [f"{marker} #{n}" for n in range(4, 6)]
    for subject in second:
        server.deposit("bob", _raw(subject))
    two = _handler(server, "tls", "bob").sync(FileUIDStore(store_path), _recorder(seen))
    assert (two.fetched, two.skipped, two.failed) == (2, 3, 0)

    three = _handler(server, "none", "bob").sync(FileUIDStore(store_path), _recorder(seen))
    assert (three.fetched, three.skipped) == (0, 5)
    assert seen == first + second
    assert _on_disk(server, "bob") == first + second

    # delete_after: everything recorded is deleted at QUIT; a new message comes once.
    server.deposit("bob", _raw(f"{marker} #6"))
    four = _handler(server, "ssl", "bob").sync(
        FileUIDStore(store_path), _recorder(seen), delete_after=True
    )
    assert (four.fetched, four.skipped, four.deleted) == (1, 5, 6)
    assert seen == [*first, *second, f"{marker} #6"]
    assert _on_disk(server, "bob") == []


def test_sync_inside_an_open_session_commits_at_its_quit(
    mailutils_pop3d: MailutilsPOP3,
) -> None:
    server = mailutils_pop3d
    server.clear_mailbox("bob")
    subjects = [f"s{n}-{token()}" for n in (1, 2)]
    for subject in subjects:
        server.deposit("bob", _raw(subject))
    seen: list[str] = []
    handler = _handler(server, "tls", "bob")
    with handler:
        result = handler.sync(MemoryUIDStore(), _recorder(seen), delete_after=True)
        assert result.deleted == 2
        assert _on_disk(server, "bob", settled=False) == subjects
    assert _on_disk(server, "bob") == []
    assert seen == subjects
