"""UIDL sync (``handler.sync``) against a real Dovecot, with mail sent through Postfix.

Each test owns bob's mailbox (emptied first) and a :class:`FileUIDStore` in its
own temporary directory. Messages are sent with our SMTP handler and carry a
counter in the subject, so "exactly once, in order" can be read off the list of
subjects the callback saw.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from src.handlers._sync.uid_store import FileUIDStore
from src.handlers.errors import POP3ConnectionError
from src.handlers.pop3 import POP3ProtocolHandler

from .mailstack import MailStack
from .support import WireTap, delivered, pop3_handler, pop3_port, smtp_handler, token

Callback = Callable[[dict[str, Any]], object]


class _Crash(BaseException):
    """A process dying in the callback (KeyboardInterrupt, SystemExit, a kill)."""


@pytest.fixture
def bob(mail_stack: MailStack) -> Iterator[MailStack]:
    mail_stack.clear_mailbox("bob")
    yield mail_stack
    mail_stack.clear_mailbox("bob")


def _send(stack: MailStack, first: int, count: int, marker: str) -> list[str]:
    """Send messages ``first .. first+count-1`` to bob; wait until all are delivered."""
    subjects = [f"{marker} #{n:02d}" for n in range(first, first + count)]
    with smtp_handler(stack, "ssl", "alice") as sender:
        for subject in subjects:
            result = sender.send_message([stack.address("bob")], subject, text_body=subject)
            assert result.success, result.to_dict()
    delivered(stack, "bob", marker, count=first + count - 1)
    return subjects


def _recorder(
    seen: list[str], *, fail_on: str | None = None, crash_on: str | None = None
) -> Callback:
    """A callback that records subjects. It raises ValueError on ``fail_on`` (every
    time) and :class:`_Crash` on ``crash_on`` (the first time)."""
    crashed: list[str] = []

    def callback(message: dict[str, Any]) -> None:
        subject = message["subject"]
        assert message["uid"]
        if subject == fail_on:
            raise ValueError(f"refusing {subject}")
        if subject == crash_on and not crashed:
            crashed.append(subject)
            raise _Crash
        seen.append(subject)

    return callback


def _subjects_on_disk(stack: MailStack) -> list[str]:
    found = []
    for path in stack.messages("bob"):
        for line in path.read_bytes().splitlines():
            if line.startswith(b"Subject: "):
                found.append(line[len(b"Subject: ") :].decode())
    return sorted(found)


def _handler(stack: MailStack, mode: str = "ssl", **options: Any) -> POP3ProtocolHandler:
    return pop3_handler(stack, mode, "bob", **options)


def test_new_mail_between_syncs_is_fetched_exactly_once(bob: MailStack, tmp_path: Path) -> None:
    stack = bob
    marker = token()
    store_path = tmp_path / "bob.uids"
    seen: list[str] = []
    first = _send(stack, 1, 3, marker)

    one = _handler(stack).sync(FileUIDStore(store_path), _recorder(seen))
    assert (one.fetched, one.skipped, one.failed) == (3, 0, 0)

    second = _send(stack, 4, 2, marker)
    two = _handler(stack, "tls").sync(FileUIDStore(store_path), _recorder(seen))
    assert (two.fetched, two.skipped, two.failed) == (2, 3, 0)

    three = _handler(stack, "none").sync(FileUIDStore(store_path), _recorder(seen))
    assert (three.fetched, three.skipped) == (0, 5)

    assert seen == first + second
    assert _subjects_on_disk(stack) == first + second  # nothing deleted without asking
    reopened = FileUIDStore(store_path)
    uids = _handler(stack).list_uids().values()
    assert len(reopened) == 5 and all(uid in reopened for uid in uids)


def test_a_refused_message_is_retried_next_run_and_others_go_on(
    bob: MailStack, tmp_path: Path
) -> None:
    stack = bob
    marker = token()
    subjects = _send(stack, 1, 4, marker)
    store = FileUIDStore(tmp_path / "bob.uids")
    seen: list[str] = []

    first = _handler(stack).sync(store, _recorder(seen, fail_on=subjects[1]), delete_after=True)
    assert (first.fetched, first.failed, first.deleted) == (3, 1, 3)
    # Only what the callback accepted was deleted.
    assert _subjects_on_disk(stack) == [subjects[1]]

    second = _handler(stack).sync(
        FileUIDStore(tmp_path / "bob.uids"), _recorder(seen), delete_after=True
    )
    assert (second.fetched, second.failed, second.deleted) == (1, 0, 1)
    assert sorted(seen) == subjects and len(seen) == 4
    assert _subjects_on_disk(stack) == []


@pytest.mark.parametrize("delete_after", [False, True])
def test_a_run_killed_in_the_callback_resumes_without_duplicates_or_gaps(
    bob: MailStack, tmp_path: Path, delete_after: bool
) -> None:
    """The process dies while handling message k (no QUIT is ever sent)."""
    stack = bob
    marker = token()
    subjects = _send(stack, 1, 5, marker)
    store_path = tmp_path / "bob.uids"
    seen: list[str] = []
    k = 3

    with pytest.raises(_Crash):
        _handler(stack).sync(
            FileUIDStore(store_path),
            _recorder(seen, crash_on=subjects[k - 1]),
            delete_after=delete_after,
        )
    assert seen == subjects[: k - 1]
    assert len(FileUIDStore(store_path)) == k - 1  # durably recorded before the crash
    # The session ended without QUIT: Dovecot deleted nothing.
    assert _subjects_on_disk(stack) == subjects

    resumed = _handler(stack).sync(
        FileUIDStore(store_path), _recorder(seen), delete_after=delete_after
    )
    assert (resumed.fetched, resumed.skipped, resumed.failed) == (5 - (k - 1), k - 1, 0)
    assert seen == subjects  # each once, in order
    assert _subjects_on_disk(stack) == ([] if delete_after else subjects)


def test_a_connection_lost_mid_sync_resumes_without_duplicates_or_gaps(
    bob: MailStack, tmp_path: Path
) -> None:
    """The link drops while message k is being handled. The five small messages came
    in one pipelined batch, so all are handed over and recorded; the deletions marked
    after them die with the session, and the next run hands nothing over again."""
    stack = bob
    marker = token()
    subjects = _send(stack, 1, 5, marker)
    store_path = tmp_path / "bob.uids"
    seen: list[str] = []
    k = 4

    with WireTap(stack.host, pop3_port(stack, "ssl")) as tap:

        def record_then_cut(message: dict[str, Any]) -> None:
            seen.append(message["subject"])
            if message["subject"] == subjects[k - 1]:
                tap.cut()

        with pytest.raises(POP3ConnectionError):
            _handler(stack, port=tap.port).sync(
                FileUIDStore(store_path), record_then_cut, delete_after=True
            )
    assert seen == subjects
    assert len(FileUIDStore(store_path)) == 5
    assert _subjects_on_disk(stack) == subjects  # no QUIT, so nothing was deleted

    resumed = _handler(stack).sync(FileUIDStore(store_path), _recorder(seen), delete_after=True)
    assert (resumed.fetched, resumed.skipped, resumed.deleted) == (0, 5, 5)
    assert seen == subjects
    assert _subjects_on_disk(stack) == []


def test_sync_inside_an_open_session_commits_at_its_quit(bob: MailStack, tmp_path: Path) -> None:
    stack = bob
    marker = token()
    subjects = _send(stack, 1, 2, marker)
    store = FileUIDStore(tmp_path / "bob.uids")
    seen: list[str] = []
    handler = _handler(stack, "tls")
    with handler:
        result = handler.sync(store, _recorder(seen), delete_after=True)
        assert result.deleted == 2 and handler.pending_deletions == 2
        assert _subjects_on_disk(stack) == subjects  # not before QUIT
    assert _subjects_on_disk(stack) == []
    assert seen == subjects
