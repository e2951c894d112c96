"""Exactly-once sync: the application's save and the UID record commit together.

A :class:`TransactionalUIDStore` keeps the handled UIDs in the application's own
database and lets the sync run the application's save inside the same transaction.
For each new message, oldest first, :func:`sync_transactional`:

1. downloads and parses it (through the mailbox's ``fetch_each``: size-bounded
   batches, each pipelined where the server offers PIPELINING);
2. opens a transaction (:meth:`~TransactionalUIDStore.begin`) and calls
   ``handler_fn(message, cursor)`` with a cursor in that transaction;
3. records the UID in the same transaction (:meth:`~TransactionalUIDStore.record`);
4. commits (:meth:`~TransactionalUIDStore.commit`), which first checks the account's
   fencing token inside the transaction;
5. only then, with ``delete_after=True``, marks the committed messages for deletion:
   all together once the run's last commit is done, or once a commit failed (the
   ``DELE`` commands pipelined where the server offers PIPELINING).

The save and the record are one commit, so there is no window: a worker that dies at
any point either committed both (the message is skipped next time) or neither (it is
handed over again, to a transaction that never saw it). A run holds the account's
lease (:mod:`.lease`) throughout, so two workers never sync one account at once, and a
worker whose lease was taken over cannot commit.

:class:`DBUIDStore` implements the protocol on any DB-API connection (sqlite3, psycopg 3).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Iterator
from contextlib import AbstractContextManager, contextmanager, suppress
from typing import Any, Protocol, TypeVar, runtime_checkable

from .._net.logs import get_logger
from ..errors import ConfigurationError, LeaseLostError
from .dbapi import Transactions, dialect_of
from .lease import DEFAULT_LEASE_TTL, Lease, check_table_name
from .sync import (
    FetchEach,
    MessageCallback,
    SyncMailbox,
    SyncResult,
    fetch_each_of,
    hand_over_then_mark,
    log_handler_failure,
    mark_for_deletion,
    split_listing,
    split_recorded,
    sync_mailbox,
)
from .uid_store import UIDStore, check_uid

log = get_logger("sync")

_T = TypeVar("_T")

#: UIDs per INSERT or DELETE statement: three parameters each stays under SQLite's
#: oldest limit of 999 parameters per statement.
_ROWS_PER_STATEMENT = 300


def _slices(items: list[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


#: Receives one parsed message dict (``"uid"`` added) and a cursor in the open transaction.
TransactionalCallback = Callable[[dict[str, Any], Any], object]


@runtime_checkable
class TransactionalUIDStore(Protocol):
    """A store of handled UIDs whose record commits with the application's save."""

    def run(self) -> AbstractContextManager[Collection[str]]:
        """Hold the account for one sync run; yields the UIDs recorded so far.

        Raises :class:`~src.handlers.errors.AccountBusyError` if another worker
        holds the account.
        """
        ...

    def begin(self) -> Any:
        """Open a transaction; return the cursor the application saves through."""
        ...

    def record(self, uid: str) -> None:
        """Record ``uid`` as handled, in the open transaction."""
        ...

    def commit(self) -> None:
        """Check the fencing token and commit; raise ``LeaseLostError`` (rolled back) if lost."""
        ...

    def rollback(self) -> None:
        """Roll the open transaction back."""
        ...

    def retain(self, uids: Collection[str]) -> None:
        """Forget every recorded UID not in ``uids`` (messages gone from the server)."""
        ...


class DBUIDStore:
    """Handled UIDs of one account in the application's database, with the account's lease.

    ``connection`` is a DB-API connection the application owns (``sqlite3``,
    ``psycopg``; the paramstyle is read from the driver). Use it from one thread at a
    time and with no transaction open when a sync starts. The tables are created if
    missing: ``table`` holds ``(account, uid)`` pairs, ``lease_table`` one lease row
    per account. ``lease_ttl`` is how long the lease outlives a worker that stopped
    renewing it (each committed message renews it); ``lease_wait`` is how long
    :meth:`run` waits for another worker's lease before raising ``AccountBusyError``.
    ``batch_size`` messages share one transaction (and one pipelined download): fewer
    commits, the same exactly-once guarantee. ``pipelined=True`` (psycopg 3 only; no
    effect elsewhere) sends a batch's statements, the application's included, ahead
    and has them answered together at the commit (see :meth:`pipeline`).

    Example::

        store = DBUIDStore(connection, account="alice")
        handler.sync(store, lambda message, cursor: cursor.execute(
            "INSERT INTO mail (uid, subject) VALUES (?, ?)",
            (message["uid"], message["subject"])))
    """

    def __init__(
        self,
        connection: Any,
        *,
        account: str,
        table: str = "mailhandlers_pop3_uids",
        lease_table: str = "mailhandlers_leases",
        lease_ttl: float = DEFAULT_LEASE_TTL,
        lease_wait: float = 0.0,
        holder: str | None = None,
        create_tables: bool = True,
        batch_size: int = 1,
        pipelined: bool = False,
    ) -> None:
        if not isinstance(account, str) or not account:
            raise ConfigurationError("account must be a non-empty string", "account")
        self.account = account
        self.table = check_table_name(table)
        self.lease_wait = lease_wait
        if batch_size < 1:
            raise ConfigurationError("batch_size must be at least 1", "batch_size")
        self.batch_size = batch_size
        self.pipelined = pipelined
        self._tx = Transactions(connection, dialect_of(connection))
        self.lease = Lease(
            connection,
            account,
            table=lease_table,
            ttl=lease_ttl,
            holder=holder,
            create_table=create_tables,
        )
        self._cursor: Any = None
        self._pipeline: Any = None  # psycopg's Pipeline, while statements are sent ahead
        self._known: set[str] | None = None  # during a run: what is recorded
        self._pending: list[str] = []  # recorded in the open transaction
        if create_tables:
            self.create_table()

    def __repr__(self) -> str:
        return f"<DBUIDStore {self.account!r} table={self.table}>"

    def create_table(self) -> None:
        """Create the UID table if it does not exist."""
        self._tx.create_table(
            f"CREATE TABLE IF NOT EXISTS {self.table} ("
            " account TEXT NOT NULL, uid TEXT NOT NULL, recorded_at DOUBLE PRECISION,"
            " PRIMARY KEY (account, uid))"
        )

    def _in_transaction(self, read: Callable[[Any], _T]) -> _T:
        cursor = self._tx.begin()
        try:
            result = read(cursor)
            self._tx.commit(cursor)
            return result
        except BaseException:
            self._tx.rollback(cursor)
            raise
        finally:
            cursor.close()

    def recorded(self) -> frozenset[str]:
        """Every UID recorded for the account."""
        return self._in_transaction(self._read_recorded)

    def _read_recorded(self, cursor: Any) -> frozenset[str]:
        self._tx.execute(cursor, f"SELECT uid FROM {self.table} WHERE account = ?", (self.account,))
        return frozenset(str(row[0]) for row in cursor.fetchall())

    def __contains__(self, uid: object) -> bool:
        if not isinstance(uid, str):
            return False
        return self._in_transaction(
            lambda cursor: bool(
                self._tx.execute(
                    cursor,
                    f"SELECT 1 FROM {self.table} WHERE account = ? AND uid = ?",
                    (self.account, uid),
                ).fetchall()
            )
        )

    def __len__(self) -> int:
        return len(self.recorded())

    @contextmanager
    def run(self) -> Iterator[frozenset[str]]:
        """Hold the account's lease for one run; yields the UIDs recorded so far."""
        known: set[str] = set()
        # Read in the transaction that takes the lease: no transaction of its own.
        with self.lease.held(
            self.lease_wait, then=lambda cursor: known.update(self._read_recorded(cursor))
        ):
            self._known = known
            try:
                yield frozenset(self._known)
            finally:
                self._known = None

    def begin(self) -> Any:
        """Open the transaction the next message is saved and recorded in."""
        if self._cursor is not None:
            raise RuntimeError("a transaction is already open on this store")
        self._cursor = self._tx.begin()
        return self._cursor

    def pipeline(self) -> AbstractContextManager[None] | None:
        """With ``pipelined=True`` on psycopg 3, a context in which a transaction's
        statements, the application's included, are sent ahead and answered together
        when it commits (psycopg's pipeline mode): one exchange with the database per
        batch instead of one per statement. Otherwise None.

        Inside it a statement's error surfaces at the commit, not where it was made
        (:func:`sync_transactional` then saves the batch again, message by message),
        and a cursor's ``rowcount`` is -1 until then; ``fetchone()`` and the other
        fetch methods wait for their statement's result and work as usual.
        """
        if not self.pipelined:
            return None
        opened = self._tx.pipeline()
        return None if opened is None else self._sending_ahead(opened)

    @contextmanager
    def _sending_ahead(self, opened: AbstractContextManager[Any]) -> Iterator[None]:
        try:
            with opened as pipeline:
                self._pipeline = pipeline
                try:
                    yield
                finally:
                    self._pipeline = None
        finally:
            self.rollback()  # a transaction left open failed: see rollback()

    def record(self, uid: str) -> None:
        """Record ``uid`` in the open transaction; written by :meth:`commit`.

        A UID recorded twice for the account makes the commit fail (and roll back).
        """
        check_uid(uid)
        self._open()
        # Written at commit, with the batch's other UIDs in one statement.
        self._pending.append(uid)

    def commit(self) -> None:
        """Check the fencing token in the transaction, then commit it."""
        cursor = self._open()
        try:
            self._insert(cursor, self._pending, time.time())
            pipeline = self._pipeline
            self.lease.check(cursor, settle=None if pipeline is None else pipeline.sync)
            self._tx.commit(cursor, pipeline)
        except BaseException:
            self.rollback()
            raise
        if self._known is not None:
            self._known.update(self._pending)
        self._close()

    def rollback(self) -> None:
        """Roll the open transaction back (nothing happens if none is open)."""
        if self._cursor is None:
            return
        if self._pipeline is not None:
            # A failed pipeline refuses even the ROLLBACK until it is closed; the
            # transaction is rolled back when it is (see _sending_ahead).
            return
        try:
            self._tx.rollback(self._cursor)
        finally:
            self._close()

    def retain(self, uids: Collection[str]) -> None:
        """Forget the account's UIDs not in ``uids``, fenced like a record."""
        keep = set(uids)
        known = self._known if self._known is not None else self.recorded()
        gone = [uid for uid in known if uid not in keep]
        if not gone:
            return
        cursor = self.begin()
        try:
            self._delete(cursor, gone)
        except BaseException:
            self.rollback()
            raise
        self.commit()
        if self._known is not None:
            self._known.difference_update(gone)

    # Each batch of UIDs is one statement, not one per UID. With psycopg the UIDs go
    # as one array, so the statement's text is the same for every batch: psycopg
    # caches how it parsed a statement only for those of at most 50 parameters, and
    # parsing a fresh one of a few hundred cost more than the rest of the commit.

    def _insert(self, cursor: Any, uids: list[str], now: float) -> None:
        if self._tx.dialect.psycopg:
            self._tx.execute(
                cursor,
                f"INSERT INTO {self.table} (account, uid, recorded_at)"
                " SELECT ?, unnest(?::text[]), ?",
                (self.account, uids, now),
            )
            return
        for rows in _slices(uids, _ROWS_PER_STATEMENT):
            self._tx.execute(
                cursor,
                f"INSERT INTO {self.table} (account, uid, recorded_at) VALUES "
                + ", ".join(["(?, ?, ?)"] * len(rows)),
                [value for uid in rows for value in (self.account, uid, now)],
            )

    def _delete(self, cursor: Any, uids: list[str]) -> None:
        if self._tx.dialect.psycopg:
            self._tx.execute(
                cursor,
                f"DELETE FROM {self.table} WHERE account = ? AND uid = ANY(?::text[])",
                (self.account, uids),
            )
            return
        for rows in _slices(uids, _ROWS_PER_STATEMENT):
            self._tx.execute(
                cursor,
                f"DELETE FROM {self.table} WHERE account = ? AND uid IN ("
                + ", ".join(["?"] * len(rows))
                + ")",
                [self.account, *rows],
            )

    def _open(self) -> Any:
        if self._cursor is None:
            raise RuntimeError("no transaction is open: call begin() first")
        return self._cursor

    def _close(self) -> None:
        self._pending = []
        cursor, self._cursor = self._cursor, None
        with suppress(Exception):
            cursor.close()


def sync_leased(
    handler: SyncMailbox,
    store: UIDStore,
    handler_fn: MessageCallback,
    *,
    delete_after: bool = False,
    prune: bool = True,
    lease_wait: float = 0.0,
) -> SyncResult:
    """:func:`~.sync.sync_mailbox` under the store's run lease, if the store has one.

    A store with an ``exclusive(wait)`` context manager (:class:`SQLiteUIDStore`) is
    held for the whole run, so processes sharing it never sync at once: the second
    waits up to ``lease_wait`` seconds, then gets ``AccountBusyError``.
    """
    exclusive = getattr(store, "exclusive", None)
    if exclusive is None:
        return sync_mailbox(handler, store, handler_fn, delete_after=delete_after, prune=prune)
    with exclusive(wait=lease_wait):
        return sync_mailbox(handler, store, handler_fn, delete_after=delete_after, prune=prune)


def sync_transactional(
    handler: SyncMailbox,
    store: TransactionalUIDStore,
    handler_fn: TransactionalCallback,
    *,
    delete_after: bool = False,
    prune: bool = True,
) -> SyncResult:
    """Hand each new message to ``handler_fn(message, cursor)`` and record it in one commit.

    See the module docstring for the order of steps. A store with a ``batch_size``
    attribute above 1 (:class:`DBUIDStore`) gets that many messages per transaction.
    Messages are downloaded through the mailbox's ``fetch_each`` (size-bounded batches,
    pipelined where the server allows) whatever the batch size (:func:`fetch_each_of`).
    ``handler_fn`` must write only through the cursor: when it raises for one message
    of a batch, the batch's transaction is rolled back and run again without that
    message (so it may be called again for the others, in a new transaction).

    Messages with invalid (not RFC 1939) or shared UIDs are never handed over, recorded
    or deleted (:func:`split_listing`, as in every sync); they are counted in
    ``unsafe``. A failed message is tried again next run. Raises
    :class:`~src.handlers.errors.AccountBusyError` when another worker holds the
    account and :class:`~src.handlers.errors.LeaseLostError` when the lease was taken
    over mid-run (what was committed before stays; nothing after is).
    """
    batch_size = max(1, int(getattr(store, "batch_size", 1)))
    fetched = skipped = deleted = 0
    failed: list[str] = []
    with store.run() as recorded, handler.session():
        safe, unsafe = split_listing(handler.uid_listing())
        handled_before, todo = split_recorded(safe, recorded)
        skipped = len(handled_before)
        if delete_after:
            deleted += mark_for_deletion(handler, handled_before)

        done: list[int] = []  # committed, not marked for deletion yet

        def save(messages: list[_Fetched]) -> None:
            nonlocal fetched
            committed = _save_batch(store, handler_fn, messages, failed)
            fetched += len(committed)
            done.extend(committed)

        deleted += hand_over_then_mark(
            handler,
            lambda: _in_batches(fetch_each_of(handler), todo, batch_size, save, failed),
            done,
            delete_after,
        )
        if len(failed) > 1:
            order = {uid: index for index, (_, uid) in enumerate(todo)}
            failed.sort(key=order.__getitem__)
        if prune:
            store.retain({uid for _, uid in safe})
    result = SyncResult(
        fetched=fetched,
        skipped=skipped,
        deleted=deleted,
        failed=len(failed),
        failed_uids=tuple(failed),
        unsafe=len(unsafe),
        unsafe_numbers=tuple(unsafe),
    )
    log.debug("POP3 transactional sync finished: %s", result)
    return result


_Fetched = tuple[int, str, dict[str, Any]]


def _in_batches(
    fetch_each: FetchEach,
    todo: list[tuple[int, str]],
    batch_size: int,
    save: Callable[[list[_Fetched]], None],
    failed: list[str],
) -> None:
    """Download ``todo`` through ``fetch_each`` (bounded, pipelined batches) and pass
    every ``batch_size`` messages to ``save``; the UIDs of messages that could not be
    downloaded go to ``failed``."""
    uid_of = dict(todo)
    pending: list[_Fetched] = []

    def take(message: dict[str, Any]) -> None:
        number = message["popId"]
        pending.append((number, uid_of[number], message))
        if len(pending) >= batch_size:
            batch = pending[:]
            pending.clear()
            save(batch)

    missed = fetch_each([number for number, _ in todo], take)
    if pending:
        save(pending[:])
    failed.extend(uid_of[number] for number in missed)


def _save_batch(
    store: TransactionalUIDStore,
    handler_fn: TransactionalCallback,
    messages: list[_Fetched],
    failed: list[str],
) -> list[int]:
    """Save and record ``messages`` in one transaction; return the numbers committed.

    Where the store can send statements ahead (:meth:`DBUIDStore.pipeline`), the batch
    is first saved that way; if anything in it fails, the transaction is rolled back
    and the batch saved again here, message by message, to find the one that failed.
    """
    open_pipeline = getattr(store, "pipeline", None)
    pipeline = open_pipeline() if open_pipeline is not None and len(messages) > 1 else None
    if pipeline is not None:
        try:
            with pipeline:
                _save_all(store, handler_fn, messages)
            return [number for number, _, _ in messages]
        except LeaseLostError:
            raise
        except Exception as error:
            log.debug(
                "POP3 sync: a pipelined batch failed (%s); saving it message by message",
                type(error).__name__,
            )
    pending = list(messages)
    while pending:
        cursor = store.begin()
        bad: int | None = None
        try:
            for index, (_number, uid, message) in enumerate(pending):
                message["uid"] = uid
                try:
                    handler_fn(message, cursor)
                    store.record(uid)
                except Exception as error:
                    log_handler_failure(uid, error)
                    bad = index
                    break
        except BaseException:
            store.rollback()
            raise
        if bad is None:
            store.commit()
            return [number for number, _, _ in pending]
        store.rollback()
        failed.append(pending[bad][1])
        del pending[bad]
    return []


def _save_all(
    store: TransactionalUIDStore, handler_fn: TransactionalCallback, messages: list[_Fetched]
) -> None:
    """Save and record every message in one transaction, or roll it all back and raise."""
    cursor = store.begin()
    try:
        for _number, uid, message in messages:
            message["uid"] = uid
            handler_fn(message, cursor)
            store.record(uid)
        store.commit()
    except BaseException:
        store.rollback()
        raise
