"""Incremental POP3 sync: hand each message not seen before to the caller, once.

:func:`sync_mailbox` lists the mailbox's unique IDs (``UIDL``), skips the ones in a
:class:`~src.handlers._sync.uid_store.UIDStore`, and for every other message, oldest first:

1. downloads and parses it (through the mailbox's ``fetch_each``: size-bounded
   batches, each pipelined where the server offers PIPELINING);
2. calls ``handler_fn(message)``, the message dict carrying its unique ID under
   ``"uid"``;
3. only if that returned, records the ID in the store (durably);
4. only then, with ``delete_after=True``, marks the message for deletion: once the
   run's new messages have all been through steps 1 to 3, every one recorded is
   marked, together.

So a run interrupted at any point never loses a message and never hands one over
twice, except in one window: if the process dies after ``handler_fn`` returned but
before the store write finished, that message is handed over again next run.
Make ``handler_fn`` idempotent if that matters (the ``uid`` is a natural key).

Deletions are committed by the session's ``QUIT``. If it never comes, the messages
stay on the server, are recognised as seen next run, and (with ``delete_after``) are
marked again then, all together (pipelined where the server offers ``PIPELINING``).

All of this rests on each message having an ID of its own. A message whose ID breaks
RFC 1939 (not 1 to 70 characters from ``!`` to ``~``) or is shared with another
message cannot be told apart from others across runs, so it is *unsafe*: never handed
over, never recorded, never deleted. It stays on the server, is logged at WARNING and
counted in :attr:`SyncResult.unsafe`, with its message number in
:attr:`SyncResult.unsafe_numbers` for a caller who wants to fetch it by hand.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Container, Iterator
from contextlib import AbstractContextManager, suppress
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

from .._net.logs import get_logger
from ..errors import MailHandlerError, POP3MessageTooLargeError
from .uid_store import UIDStore, are_valid_uids, is_valid_uid

log = get_logger("sync")


class UniqueIDs(Protocol):
    """A mailbox's unique-ID listing: ``(number, uid)`` pairs in ascending order of
    number, ``uid`` None where the server sent an invalid one; iterable more than once."""

    def __iter__(self) -> Iterator[tuple[int, str | None]]: ...

    def __len__(self) -> int: ...


class SyncMailbox(Protocol):
    """What a sync needs of a mailbox; :class:`POP3ProtocolHandler` is one."""

    def session(self) -> AbstractContextManager[Any]: ...

    def uid_listing(self) -> UniqueIDs: ...

    def fetch_message(self, message_id: int) -> dict[str, Any] | None: ...

    def delete_message(self, message_id: int) -> bool: ...


#: Receives one parsed message dict (with ``"uid"`` added); raising marks it failed.
MessageCallback = Callable[[dict[str, Any]], object]
#: A mailbox's ``fetch_each(numbers, handle)``: parsed messages handed to ``handle`` in
#: order, downloaded in bounded batches; returns the numbers not handed over.
FetchEach = Callable[[list[int], Callable[[dict[str, Any]], object]], list[int]]


@dataclass(frozen=True)
class SyncResult:
    """What one sync run did."""

    fetched: int = 0
    """Messages downloaded and handled successfully."""
    skipped: int = 0
    """Messages whose unique ID was already in the store."""
    deleted: int = 0
    """Messages marked for deletion (handled now or in an earlier run)."""
    failed: int = 0
    """Messages not handled: refused, too large, or ``handler_fn`` raised."""
    failed_uids: tuple[str, ...] = ()
    """Unique IDs of the failed messages; they are tried again next run."""
    unsafe: int = 0
    """Messages left alone because their unique ID is invalid or shared with another
    message: not handed over, not recorded, not deleted."""
    unsafe_numbers: tuple[int, ...] = ()
    """Message numbers (valid in this run's session only) of the unsafe messages."""


@dataclass
class _Tally:
    fetched: int = 0
    skipped: int = 0
    deleted: int = 0
    failed_uids: list[str] = field(default_factory=list)
    unsafe_numbers: list[int] = field(default_factory=list)

    def result(self) -> SyncResult:
        failed = tuple(self.failed_uids)
        unsafe = tuple(self.unsafe_numbers)
        return SyncResult(
            self.fetched, self.skipped, self.deleted, len(failed), failed, len(unsafe), unsafe
        )

    def fail(self, uid: str) -> None:
        self.failed_uids.append(uid)


def split_listing(listing: UniqueIDs) -> tuple[list[tuple[int, str]], list[int]]:
    """The ``(number, uid)`` pairs a sync may act on, and the numbers it must leave alone.

    A message whose unique ID is not valid RFC 1939 or is shared with another message
    cannot be recognised next run, so every sync leaves it alone (never handed over,
    recorded or deleted), with a WARNING naming the message numbers.
    """
    pairs = list(listing)
    if _all_valid_and_distinct([uid for _, uid in pairs]):
        return cast(list[tuple[int, str]], pairs), []
    owners = Counter([uid for _, uid in pairs if uid is not None and is_valid_uid(uid)])
    safe: list[tuple[int, str]] = []
    unsafe: list[int] = []
    for number, uid in pairs:
        if uid is None or owners.get(uid, 0) != 1:
            unsafe.append(number)
        else:
            safe.append((number, uid))
    if unsafe:
        log.warning(
            "POP3 sync: messages %s left alone: their unique IDs are invalid or shared, "
            "so they cannot be recognised next run",
            unsafe,
        )
    return safe, unsafe


def _all_valid_and_distinct(uids: list[str | None]) -> bool:
    """Whether every ID is valid and none repeats: the usual case, checked in bulk so
    that a mailbox of many thousand messages does not pay for one ID at a time."""
    return len(set(uids)) == len(uids) and are_valid_uids(uids)


def sync_mailbox(
    handler: SyncMailbox,
    store: UIDStore,
    handler_fn: MessageCallback,
    *,
    delete_after: bool = False,
    prune: bool = True,
) -> SyncResult:
    """Hand every message whose unique ID is not in ``store`` to ``handler_fn``.

    Uses the handler's open session, or a session of its own that ends with ``QUIT``
    (committing deletions) when the run is over. With ``prune``, IDs of messages no
    longer on the server are dropped from the store at the end, so it does not grow
    forever. Raises :class:`~src.handlers.errors.POP3UnsupportedError` if the server
    has no ``UIDL``; connection failures propagate, with everything handled so far
    already recorded.
    """
    tally = _Tally()
    with handler.session():
        safe, tally.unsafe_numbers = split_listing(handler.uid_listing())
        uids = [uid for _, uid in safe]
        recorded = _recorded(store, uids)
        handled_before, todo = split_recorded(safe, recorded)
        tally.skipped = len(handled_before)
        if delete_after:
            tally.deleted += mark_for_deletion(handler, handled_before)
        done: list[int] = []
        tally.deleted += hand_over_then_mark(
            handler,
            lambda: _hand_over(fetch_each_of(handler), store, handler_fn, todo, tally, done),
            done,
            delete_after,
        )
        if prune:
            store.retain(uids)
    result = tally.result()
    log.debug("POP3 sync finished: %s", result)
    return result


def split_recorded(
    safe: list[tuple[int, str]], recorded: Container[str]
) -> tuple[list[int], list[tuple[int, str]]]:
    """The numbers of messages handled in an earlier run, and the ``(number, uid)``
    pairs still to hand over, both in listing order."""
    handled_before: list[int] = []
    todo: list[tuple[int, str]] = []
    for number, uid in safe:
        if uid in recorded:
            handled_before.append(number)
        else:
            todo.append((number, uid))
    return handled_before, todo


def mark_for_deletion(handler: SyncMailbox, numbers: list[int]) -> int:
    """Mark ``numbers`` (all handed over and recorded) for deletion; return how many
    the server took. Pipelined (``delete_messages``) where the mailbox offers it."""
    delete_many = getattr(handler, "delete_messages", None)
    if delete_many is not None and len(numbers) > 1:
        deleted, _failed = delete_many(numbers)
        return int(deleted)
    return sum(1 for number in numbers if handler.delete_message(number))


def hand_over_then_mark(
    handler: SyncMailbox, hand_over: Callable[[], object], done: list[int], delete_after: bool
) -> int:
    """Run ``hand_over``, which adds to ``done`` the numbers of the messages it got
    recorded; then, with ``delete_after``, mark those for deletion together and return
    how many the server took.

    If ``hand_over`` raises, what it recorded before is still marked (unless the
    session is gone, which leaves it to the next run), then the error propagates.
    """
    try:
        hand_over()
    except Exception:
        if delete_after and done:
            with suppress(MailHandlerError):
                mark_for_deletion(handler, done)
        raise
    return mark_for_deletion(handler, done) if delete_after and done else 0


def _recorded(store: UIDStore, uids: list[str]) -> Container[str]:
    """The recorded ones of ``uids``, asked in one step where the store can."""
    among: Callable[[list[str]], set[str]] | None = getattr(store, "recorded_among", None)
    return store if among is None else among(uids)


def fetch_each_of(handler: SyncMailbox) -> FetchEach:
    """The mailbox's ``fetch_each`` (:class:`POP3ProtocolHandler` has one), or, for a
    mailbox that offers only :class:`SyncMailbox`, the same built on ``fetch_message``:
    one message at a time, each handed over as soon as it has arrived."""
    own: FetchEach | None = getattr(handler, "fetch_each", None)
    if own is not None:
        return own

    def one_by_one(numbers: list[int], handle: Callable[[dict[str, Any]], object]) -> list[int]:
        missed = []
        for number in numbers:
            try:
                message = handler.fetch_message(number)
            except POP3MessageTooLargeError as error:
                log.warning("POP3 sync: message %d not handled: %s", number, error)
                message = None
            if message is None:
                missed.append(number)
            else:
                message.setdefault("popId", number)
                handle(message)
        return missed

    return one_by_one


def log_handler_failure(uid: str, error: Exception) -> None:
    """The WARNING for a message the application's function refused (it is tried
    again next run)."""
    log.warning(
        "POP3 sync: handler failed for message %s: %s: %s", uid, type(error).__name__, error
    )


def _hand_over(
    fetch_each: FetchEach,
    store: UIDStore,
    handler_fn: MessageCallback,
    todo: list[tuple[int, str]],
    tally: _Tally,
    recorded: list[int],
) -> None:
    """Steps 1 to 3 for every message of ``todo`` through ``fetch_each``, adding to
    ``recorded`` the numbers of those now recorded (handed over, or found recorded
    meanwhile)."""
    uid_of = dict(todo)

    def take(message: dict[str, Any]) -> None:
        number = message["popId"]
        uid = uid_of[number]
        if uid not in store:
            message["uid"] = uid
            try:
                handler_fn(message)
            except Exception as error:
                log_handler_failure(uid, error)
                return
            store.add(uid)
            tally.fetched += 1
        else:
            tally.skipped += 1
        recorded.append(number)

    fetch_each([number for number, _ in todo], take)
    settled = set(recorded)
    for number, uid in todo:
        if number not in settled:
            tally.fail(uid)
