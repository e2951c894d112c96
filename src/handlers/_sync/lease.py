"""A per-account sync lease with a fencing token, kept in the database the UIDs are in.

One row per account: who holds the lease (``holder``), until when (``expires_at``, by
the database's clock) and a counter (``token``) that goes up every time the lease is
taken. A worker that dies simply stops renewing, so its lease runs out after ``ttl``
seconds and another worker may take it, bumping the token.

The token is the fence: every transaction that records a UID first runs
:meth:`Lease.check`, an ``UPDATE`` of the lease row that matches only while the row
still carries this worker's token (and pushes the expiry out). A worker whose lease was
taken over matches nothing, its transaction is rolled back, and
:class:`~src.handlers.errors.LeaseLostError` is raised: a worker that lost its lease
cannot commit. On PostgreSQL the ``UPDATE`` also holds the row lock until the commit,
so a worker taking over waits for the commit and then sees the renewed expiry; on
SQLite the database's write lock serialises the same way.
"""

from __future__ import annotations

import os
import re
import secrets
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Any

from .._net.logs import get_logger
from ..errors import AccountBusyError, ConfigurationError, LeaseLostError
from .dbapi import Transactions, dialect_of

log = get_logger("sync")

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")

#: Seconds a lease lasts without renewal; each recorded message renews it.
DEFAULT_LEASE_TTL = 120.0


def check_table_name(name: str) -> str:
    """Return ``name`` if it is a plain SQL identifier (it is put into SQL text)."""
    if not _IDENTIFIER.fullmatch(name):
        raise ConfigurationError(f"not a plain SQL table name: {name!r}", "table")
    return name


def default_holder() -> str:
    """A name for this worker that no other process, here or elsewhere, shares."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


class Lease:
    """The sync lease of one account in ``table``, taken through ``connection``.

    ``connection`` is a DB-API connection (sqlite3, psycopg ...). :meth:`acquire`
    and :meth:`release` run in transactions of their own, so call them while the
    connection has no transaction open; :meth:`check` runs inside the caller's.
    """

    def __init__(
        self,
        connection: Any,
        account: str,
        *,
        table: str = "mailhandlers_leases",
        ttl: float = DEFAULT_LEASE_TTL,
        holder: str | None = None,
        create_table: bool = True,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not ttl > 0:
            raise ConfigurationError("the lease ttl must be positive", "ttl")
        self.account = account
        self.table = check_table_name(table)
        self.ttl = float(ttl)
        self.holder = holder or default_holder()
        self.token: int | None = None
        self._tx = Transactions(connection, dialect_of(connection))
        self._sleep = sleep
        self._clock = clock
        if create_table:
            self.create_table()

    def __repr__(self) -> str:
        return f"<Lease {self.account!r} token={self.token}>"

    def create_table(self) -> None:
        """Create the lease table if it does not exist."""
        self._tx.create_table(
            f"CREATE TABLE IF NOT EXISTS {self.table} ("
            " account TEXT PRIMARY KEY, holder TEXT,"
            " token BIGINT NOT NULL DEFAULT 0,"
            " expires_at DOUBLE PRECISION NOT NULL DEFAULT 0)"
        )

    def acquire(
        self,
        wait: float = 0.0,
        poll: float = 0.2,
        *,
        then: Callable[[Any], object] | None = None,
    ) -> int:
        """Take the lease; return the new fencing token.

        ``then(cursor)``, if given, runs inside the transaction that takes the lease,
        before it commits: what it reads is read under the lease, and the run saves
        the round trips of a transaction of its own.

        Waits up to ``wait`` seconds for another worker's lease to end or expire,
        then raises :class:`~src.handlers.errors.AccountBusyError`.
        """
        deadline = self._clock() + max(0.0, wait)
        while True:
            won, token, left = self._try_acquire(then)
            if won:
                self.token = token
                log.debug("sync lease for %r taken, token %d", self.account, token)
                return token
            remaining = deadline - self._clock()
            if remaining <= 0:
                raise AccountBusyError(
                    f"account {self.account!r} is being synced by another worker",
                    self.account,
                    max(0.0, left),
                )
            self._sleep(min(poll, remaining))

    def _try_acquire(self, then: Callable[[Any], object] | None) -> tuple[bool, int, float]:
        now = self._tx.dialect.now
        cursor = self._tx.begin()
        try:
            # The row exists after an account's first run: one UPDATE takes a free or
            # expired lease; only a missing row needs the INSERT.
            self._tx.execute(
                cursor,
                f"UPDATE {self.table} SET holder = ?, token = token + 1,"
                f" expires_at = {now} + ?"
                f" WHERE account = ? AND (holder IS NULL OR holder = ? OR expires_at < {now})",
                (self.holder, self.ttl, self.account, self.holder),
            )
            won = cursor.rowcount == 1
            if not won:
                self._tx.execute(
                    cursor,
                    f"INSERT INTO {self.table} (account, holder, token, expires_at)"
                    f" VALUES (?, ?, 1, {now} + ?) ON CONFLICT (account) DO NOTHING",
                    (self.account, self.holder, self.ttl),
                )
                won = cursor.rowcount == 1
            self._tx.execute(
                cursor,
                f"SELECT token, expires_at - {now} FROM {self.table} WHERE account = ?",
                (self.account,),
            )
            token, left = cursor.fetchone()
            if won and then is not None:
                then(cursor)
            self._tx.commit(cursor)
        except BaseException:
            self._tx.rollback(cursor)
            raise
        finally:
            cursor.close()
        return won, int(token), float(left)

    def check(self, cursor: Any, settle: Callable[[], object] | None = None) -> None:
        """Inside the caller's open transaction: renew the lease if the token still holds.

        Raises :class:`~src.handlers.errors.LeaseLostError` if another worker took
        the lease (the caller must roll back). ``settle``, when statements are sent
        ahead (a pipeline), gets the answers in before the renewal's row count is read.
        """
        if self.token is None:
            raise LeaseLostError(f"no sync lease held for account {self.account!r}", self.account)
        self._tx.execute(
            cursor,
            f"UPDATE {self.table} SET expires_at = {self._tx.dialect.now} + ?"
            " WHERE account = ? AND holder = ? AND token = ?",
            (self.ttl, self.account, self.holder, self.token),
        )
        if settle is not None:
            settle()
        if cursor.rowcount != 1:
            self.token = None
            raise LeaseLostError(
                f"the sync lease for account {self.account!r} was taken by another worker",
                self.account,
            )

    def release(self) -> None:
        """Give the lease up (only if it is still ours); errors are logged, not raised."""
        token, self.token = self.token, None
        if token is None:
            return
        cursor = None
        try:
            cursor = self._tx.begin()
            self._tx.execute(
                cursor,
                f"UPDATE {self.table} SET holder = NULL, expires_at = 0"
                " WHERE account = ? AND holder = ? AND token = ?",
                (self.account, self.holder, token),
            )
            self._tx.commit(cursor)
        except Exception as error:
            # It expires by itself; a broken connection must not hide the run's result.
            log.warning("sync lease for %r not released: %s", self.account, error)
            if cursor is not None:
                with suppress(Exception):
                    self._tx.rollback(cursor)
        finally:
            if cursor is not None:
                with suppress(Exception):
                    cursor.close()

    @contextmanager
    def held(
        self, wait: float = 0.0, *, then: Callable[[Any], object] | None = None
    ) -> Iterator[int]:
        """Hold the lease for a block; yields the fencing token (``then`` as in
        :meth:`acquire`)."""
        token = self.acquire(wait, then=then)
        try:
            yield token
        finally:
            self.release()
