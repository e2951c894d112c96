"""DB-API plumbing for the integrations: placeholders per paramstyle, one transaction at a time.

The integrations write SQL with ``?`` placeholders. (The handlers package has its own
copy of this for the UID stores; it keeps its internals to itself.)
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

T = TypeVar("T")

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")


def table_name(name: str) -> str:
    """Return ``name`` if it is a plain SQL identifier (it is put into SQL text)."""
    if not _IDENTIFIER.fullmatch(name):
        raise ValueError(f"not a plain SQL table name: {name!r}")
    return name


def _paramstyle(connection: Any) -> str:
    root = type(connection).__module__.split(".")[0]
    return str(getattr(sys.modules.get(root), "paramstyle", "qmark"))


def _is_sqlite(connection: Any) -> bool:
    return type(connection).__module__.split(".")[0] in ("sqlite3", "_sqlite3")


def execute(cursor: Any, connection: Any, text: str, values: Sequence[Any] = ()) -> Any:
    """Run ``text`` (``?`` placeholders) with ``values`` in the driver's paramstyle."""
    style = _paramstyle(connection)
    if style in ("format", "pyformat"):
        text = text.replace("%", "%%").replace("?", "%s")
        cursor.execute(text, tuple(values))
    elif style in ("numeric", "named"):
        count = iter(range(1, len(values) + 1))
        prefix = ":" if style == "numeric" else ":p"
        text = re.sub(r"\?", lambda _: f"{prefix}{next(count)}", text)
        params: Any = (
            {f"p{i}": v for i, v in enumerate(values, 1)} if style == "named" else tuple(values)
        )
        cursor.execute(text, params)
    else:
        cursor.execute(text, tuple(values))
    return cursor


def in_transaction(connection: Any, work: Callable[[Any], T]) -> T:
    """Run ``work(cursor)`` in one transaction on ``connection`` and commit it."""
    cursor = connection.cursor()
    autocommit = bool(getattr(connection, "autocommit", False)) and not _is_sqlite(connection)
    try:
        if _is_sqlite(connection):
            cursor.execute("BEGIN IMMEDIATE")
        elif autocommit:
            cursor.execute("BEGIN")
        value = work(cursor)
        if autocommit:
            cursor.execute("COMMIT")
        else:
            connection.commit()
        return value
    except BaseException:
        if autocommit:
            cursor.execute("ROLLBACK")
        else:
            connection.rollback()
        raise
    finally:
        cursor.close()
