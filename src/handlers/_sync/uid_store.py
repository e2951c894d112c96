"""Durable sets of POP3 unique IDs (UIDL values) already handled.

Incremental sync (:mod:`src.handlers._sync.sync`) records a message's unique ID here
only after the caller has handled the message, and :meth:`UIDStore.add` returns only
once the record is durable. Three stores share the :class:`UIDStore` protocol:

* :class:`MemoryUIDStore`: nothing survives the process; for tests and one-off runs.
* :class:`FileUIDStore`: one ID per line in a text file, rewritten atomically (temporary
  file, ``fsync``, ``os.replace``) on every change. Simple and inspectable; each write
  costs time proportional to the number of IDs, so it suits mailboxes of a few
  thousand messages.
* :class:`SQLiteUIDStore`: one row per ID, one transaction per change; for large
  mailboxes.

A store belongs to one mailbox: IDs are only unique within a maildrop.
"""

from __future__ import annotations

import os
import re
import sqlite3
import threading
from collections.abc import Collection, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol, runtime_checkable

from ..errors import MailValidationError
from .durable import write_durably
from .lease import DEFAULT_LEASE_TTL, Lease

_HEADER = "# mailhandlers POP3 unique-id store v1"


@runtime_checkable
class UIDStore(Protocol):
    """What incremental sync needs from a store of handled unique IDs.

    A store may also offer ``recorded_among(uids) -> set[str]``, the recorded ones of
    ``uids`` in one step; a sync then asks once per run instead of once per message
    (the stores here all do).
    """

    def __contains__(self, uid: object) -> bool:
        """Whether ``uid`` was recorded."""
        ...

    def add(self, uid: str) -> None:
        """Record ``uid``; the record must be durable when this returns."""
        ...

    def retain(self, uids: Collection[str]) -> None:
        """Forget every recorded ID that is not in ``uids``."""
        ...


_UID = re.compile("[\x21-\x7e]{1,70}")


def is_valid_uid(uid: object) -> bool:
    """Whether ``uid`` is a valid RFC 1939 unique ID: 1 to 70 characters from ``!`` to
    ``~``, so it never contains whitespace and fits on one line of a store file."""
    return isinstance(uid, str) and _UID.fullmatch(uid) is not None


_UID_LINES = re.compile(f"{_UID.pattern}(?:\n{_UID.pattern})*")


def are_valid_uids(uids: Sequence[object]) -> bool:
    """Whether every item of ``uids`` is a valid unique ID (see :func:`is_valid_uid`),
    checked in one pass: a mailbox's whole listing costs about what ten IDs did."""
    if not uids:
        return True
    try:
        joined = "\n".join(uids)  # type: ignore[arg-type]  # anything not a str fails
    except TypeError:
        return False
    # An ID holding the separator would pass as two: the count rules that out.
    return joined.count("\n") == len(uids) - 1 and _UID_LINES.fullmatch(joined) is not None


def check_uid(uid: str) -> str:
    """Return ``uid`` if it is a valid RFC 1939 unique ID, else raise
    :class:`~src.handlers.errors.MailValidationError` (a ``ValueError``)."""
    if not is_valid_uid(uid):
        raise MailValidationError(
            "a POP3 unique ID is 1 to 70 printable ASCII characters, no spaces", "uid"
        )
    return uid


class MemoryUIDStore:
    """A store kept in memory only (and the base of :class:`FileUIDStore`)."""

    def __init__(self, uids: Iterable[str] = ()) -> None:
        self._uids = {check_uid(uid) for uid in uids}
        self._lock = threading.Lock()

    def __contains__(self, uid: object) -> bool:
        with self._lock:
            return uid in self._uids

    def __len__(self) -> int:
        with self._lock:
            return len(self._uids)

    def recorded_among(self, uids: Collection[str]) -> set[str]:
        """Those of ``uids`` that were recorded."""
        with self._lock:
            return self._uids.intersection(uids)

    def __repr__(self) -> str:
        return f"<MemoryUIDStore [{len(self)} ids]>"

    def add(self, uid: str) -> None:
        """Record ``uid`` (durably, before returning, in a store that persists)."""
        check_uid(uid)
        with self._lock:
            if uid in self._uids:
                return
            self._persist(self._uids | {uid})
            self._uids.add(uid)

    def retain(self, uids: Collection[str]) -> None:
        """Forget every ID not in ``uids`` (persisting only if something changes)."""
        with self._lock:
            kept = self._uids & set(uids)
            if kept != self._uids:
                self._persist(kept)
                self._uids = kept

    def snapshot(self) -> frozenset[str]:
        """The recorded IDs."""
        with self._lock:
            return frozenset(self._uids)

    def _persist(self, uids: set[str]) -> None:
        """Make ``uids`` the stored set before it counts; nothing to do in memory."""


class FileUIDStore(MemoryUIDStore):
    """A store in a text file, replaced atomically on every change.

    The file is created (mode 0600) on the first change; a missing file reads as an
    empty store. An interrupted write leaves the previous version in place.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._path = Path(path)
        super().__init__()
        self._uids = self._load()

    @property
    def path(self) -> Path:
        """Where the IDs are kept."""
        return self._path

    def __repr__(self) -> str:
        return f"<FileUIDStore {self._path.name} [{len(self)} ids]>"

    def _load(self) -> set[str]:
        try:
            text = self._path.read_text(encoding="ascii")
        except FileNotFoundError:
            return set()
        lines = text.splitlines()
        if not lines or lines[0] != _HEADER:
            raise ValueError(f"{self._path.name} is not a unique-id store file")
        return {check_uid(line) for line in lines[1:] if line}

    def _persist(self, uids: set[str]) -> None:
        content = "\n".join([_HEADER, *sorted(uids), ""]).encode("ascii")
        write_durably(self._path, content, temp_prefix=f".{self._path.name}.")


class SQLiteUIDStore:
    """A store in an SQLite database; each change is its own committed transaction.

    Safe to share between threads of one process. Call :meth:`close` (or use it as a
    context manager) when done. Several processes may share the file: a sync through
    :meth:`POP3ProtocolHandler.sync` holds the store's run lease (:meth:`exclusive`),
    so only one of them syncs at a time, and while it is held each :meth:`add`
    checks the lease's fencing token in its own transaction.
    """

    def __init__(
        self, path: str | os.PathLike[str], *, lease_ttl: float = DEFAULT_LEASE_TTL
    ) -> None:
        self._lease_ttl = lease_ttl
        self._lease: Lease | None = None
        self._lock = threading.Lock()
        self._db = sqlite3.connect(os.fspath(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("CREATE TABLE IF NOT EXISTS pop3_uids (uid TEXT PRIMARY KEY)")

    def __contains__(self, uid: object) -> bool:
        if not isinstance(uid, str):
            return False
        with self._lock:
            row = self._db.execute("SELECT 1 FROM pop3_uids WHERE uid = ?", (uid,)).fetchone()
        return row is not None

    def __len__(self) -> int:
        with self._lock:
            (count,) = self._db.execute("SELECT COUNT(*) FROM pop3_uids").fetchone()
        return int(count)

    def recorded_among(self, uids: Collection[str]) -> set[str]:
        """Those of ``uids`` that were recorded (one query; the store holds about
        what the mailbox does, since each run prunes it)."""
        with self._lock:
            rows = self._db.execute("SELECT uid FROM pop3_uids").fetchall()
        return {uid for (uid,) in rows}.intersection(uids)

    def __repr__(self) -> str:
        return "<SQLiteUIDStore>"

    def add(self, uid: str) -> None:
        """Record ``uid`` in a committed transaction."""
        check_uid(uid)
        with self._lock:
            if self._lease is None:
                self._db.execute("INSERT OR IGNORE INTO pop3_uids (uid) VALUES (?)", (uid,))
                return
            cursor = self._db.execute("BEGIN IMMEDIATE")
            try:
                self._lease.check(cursor)
                cursor.execute("INSERT OR IGNORE INTO pop3_uids (uid) VALUES (?)", (uid,))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    @contextmanager
    def exclusive(self, wait: float = 0.0) -> Iterator[int]:
        """Hold the store's run lease (a row in the database file); yields its token.

        Waits up to ``wait`` seconds for another process's run, then raises
        :class:`~src.handlers.errors.AccountBusyError`. A holder that dies loses the
        lease after ``lease_ttl`` seconds; each :meth:`add` renews it.
        """
        with self._lock:
            lease = Lease(self._db, "store", table="pop3_lease", ttl=self._lease_ttl)
            token = lease.acquire(wait)
            self._lease = lease
        try:
            yield token
        finally:
            with self._lock:
                self._lease = None
                lease.release()

    def retain(self, uids: Collection[str]) -> None:
        """Forget every ID not in ``uids``, in one transaction."""
        with self._lock:
            self._db.execute("BEGIN")
            try:
                self._db.execute("CREATE TEMP TABLE IF NOT EXISTS keep (uid TEXT PRIMARY KEY)")
                self._db.execute("DELETE FROM keep")
                self._db.executemany(
                    "INSERT OR IGNORE INTO keep (uid) VALUES (?)", ((uid,) for uid in uids)
                )
                self._db.execute("DELETE FROM pop3_uids WHERE uid NOT IN (SELECT uid FROM keep)")
                self._db.execute("DELETE FROM keep")
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()

    def __enter__(self) -> SQLiteUIDStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
