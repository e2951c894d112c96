"""What the stores need to know about a DB-API connection: paramstyle, clock, transactions.

The stores write their SQL with ``?`` placeholders and this module rewrites it for the
driver's ``paramstyle`` (sqlite3 uses ``qmark``, psycopg ``pyformat``). Transactions
are opened the way each driver needs: SQLite with ``BEGIN IMMEDIATE``, so the write
lock is taken up front and two processes never deadlock upgrading a read lock; a
connection in autocommit mode with an explicit ``BEGIN``; any other connection
implicitly, as DB-API prescribes.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigurationError

_PLACEHOLDER = re.compile(r"\?")
_PARAMSTYLES = ("qmark", "format", "pyformat", "numeric", "named")


@dataclass(frozen=True)
class Dialect:
    """How to talk to one kind of database through DB-API."""

    paramstyle: str
    sqlite: bool
    psycopg: bool = False
    """psycopg 3, whose pipeline mode sends statements ahead."""

    @property
    def now(self) -> str:
        """SQL for the database's clock, in seconds since the epoch."""
        if self.sqlite:
            return "((julianday('now') - 2440587.5) * 86400.0)"
        return "extract(epoch from clock_timestamp())"

    def sql(self, text: str) -> str:
        """``text`` with each ``?`` rewritten for the driver's paramstyle."""
        if self.paramstyle == "qmark":
            return text
        if self.paramstyle in ("format", "pyformat"):
            return _PLACEHOLDER.sub("%s", text.replace("%", "%%"))
        counter = iter(range(1, text.count("?") + 1))
        prefix = ":" if self.paramstyle == "numeric" else ":p"
        return _PLACEHOLDER.sub(lambda _: f"{prefix}{next(counter)}", text)

    def params(self, values: Sequence[Any]) -> Any:
        """``values`` in the shape the driver's paramstyle wants."""
        if self.paramstyle == "named":
            return {f"p{index}": value for index, value in enumerate(values, 1)}
        return tuple(values)


def dialect_of(connection: Any) -> Dialect:
    """The :class:`Dialect` of a DB-API connection, from its driver module's ``paramstyle``."""
    root = type(connection).__module__.split(".")[0]
    module = sys.modules.get(root)
    paramstyle = getattr(module, "paramstyle", "qmark")
    if paramstyle not in _PARAMSTYLES:
        raise ConfigurationError(f"unknown DB-API paramstyle {paramstyle!r}", "connection")
    return Dialect(paramstyle, sqlite=root in ("sqlite3", "_sqlite3"), psycopg=root == "psycopg")


class Transactions:
    """Begin, commit and roll back on one connection, the way its driver needs."""

    def __init__(self, connection: Any, dialect: Dialect) -> None:
        self.connection = connection
        self.dialect = dialect

    def _explicit(self) -> bool:
        return bool(getattr(self.connection, "autocommit", False)) and not self.dialect.sqlite

    def begin(self) -> Any:
        """Open a transaction; return a cursor in it."""
        cursor = self.connection.cursor()
        if self.dialect.sqlite:
            cursor.execute("BEGIN IMMEDIATE")
        elif self._explicit():
            cursor.execute("BEGIN")
        return cursor

    def commit(self, cursor: Any, pipeline: Any = None) -> None:
        """Commit the transaction ``cursor`` belongs to (sent through ``pipeline``,
        if one is open, and answered before this returns)."""
        if self._explicit():
            cursor.execute("COMMIT")
            if pipeline is not None:
                pipeline.sync()
        else:
            self.connection.commit()  # psycopg syncs an open pipeline itself

    def pipeline(self) -> AbstractContextManager[Any] | None:
        """A context in which statements are sent ahead and answered together at the
        next sync (psycopg 3's pipeline mode, yielding its ``Pipeline``); None where
        the driver has no such mode."""
        if not self.dialect.psycopg:
            return None
        from psycopg import Pipeline  # the connection is psycopg's: it is installed

        if not Pipeline.is_supported():  # a libpq older than 14
            return None
        opened: AbstractContextManager[Any] = self.connection.pipeline()
        return opened

    def rollback(self, cursor: Any) -> None:
        """Roll the transaction back."""
        if self._explicit():
            cursor.execute("ROLLBACK")
        else:
            self.connection.rollback()

    def execute(self, cursor: Any, text: str, values: Sequence[Any] = ()) -> Any:
        """Run ``text`` (``?`` placeholders) with ``values`` on ``cursor``."""
        cursor.execute(self.dialect.sql(text), self.dialect.params(values))
        return cursor

    def create_table(self, statement: str, attempts: int = 5) -> None:
        """Run a ``CREATE TABLE IF NOT EXISTS`` in a transaction of its own.

        Two connections creating the same table at once make PostgreSQL refuse one of
        them (a unique violation in its catalog) even with ``IF NOT EXISTS``; once the
        other has committed, the statement finds the table, so it is tried again.
        """
        for attempt in range(attempts):
            cursor = self.begin()
            try:
                self.execute(cursor, statement)
                self.commit(cursor)
                return
            except Exception:
                self.rollback(cursor)
                if attempt == attempts - 1:
                    raise
            finally:
                cursor.close()
