"""Records of send-task attempts, so a redelivered task never sends blind.

Celery may run one send task more than once: a retry, or a redelivery after the worker
died (``acks_late`` with ``reject_on_worker_lost``). Every attempt of one task uses
the same Message-ID, derived from the task id, so the copies can be recognised; an
attempt store goes further and keeps the second copy from being sent at all when the
first attempt may already have delivered it.

Each task id moves through three states:

* ``sending``: an attempt began. It is written before the connection opens, so a
  worker that dies at any later point leaves it behind.
* ``retry``: the attempt ended with a transient failure and a Celery retry was
  scheduled; nothing was delivered, so the next attempt may send.
* ``done``: the final result, kept as the task returned it.

:meth:`AttemptStore.begin` moves a task to ``sending`` and says what it found: nothing
or ``retry`` (send now), ``done`` (return the stored result again, send nothing), or
``sending`` (a previous attempt was cut off, perhaps after the body went out: the task
reports an unknown outcome instead of sending). That last case is conservative: an
attempt killed before it connected is reported as unknown too.

Two stores: :class:`DBAttemptStore` on a DB-API connection (sqlite3, psycopg) and
:class:`RedisAttemptStore` (the ``redis`` package, as the ``celery[redis]`` extra
installs it).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from ._dbapi import execute, in_transaction, table_name

__all__ = [
    "AttemptStore",
    "DBAttemptStore",
    "RedisAttemptStore",
]

T = TypeVar("T")

SENDING = "sending"
RETRY = "retry"
DONE = "done"


class AttemptStore(Protocol):
    """Where send-task attempts are recorded, by task id."""

    def begin(self, key: str) -> tuple[str | None, dict[str, Any] | None]:
        """Mark ``key`` as ``sending``; return the state found before and a stored result."""
        ...

    def finish(self, key: str, state: str, result: dict[str, Any] | None = None) -> None:
        """Record how the attempt ended: ``retry``, or ``done`` with the task's result."""
        ...


class DBAttemptStore:
    """Attempts in a table of the application's database.

    ``connect`` returns a new DB-API connection; each worker process makes its own on
    first use (and again after a fork or an error).
    """

    def __init__(
        self, connect: Callable[[], Any], *, table: str = "mailhandlers_send_attempts"
    ) -> None:
        self._connect = connect
        self.table = table_name(table)
        self._connection: Any = None
        self._pid = 0

    def _run(self, work: Callable[[Any, Any], T]) -> T:
        if self._connection is None or self._pid != os.getpid():
            connection = self._connect()
            in_transaction(
                connection,
                lambda cursor: execute(
                    cursor,
                    connection,
                    f"CREATE TABLE IF NOT EXISTS {self.table} (task_id TEXT PRIMARY KEY,"
                    " state TEXT NOT NULL, result TEXT, updated_at DOUBLE PRECISION)",
                ),
            )
            self._connection, self._pid = connection, os.getpid()
        connection = self._connection
        try:
            return in_transaction(connection, lambda cursor: work(connection, cursor))
        except Exception:
            self._connection = None  # perhaps broken: the next call connects afresh
            raise

    def begin(self, key: str) -> tuple[str | None, dict[str, Any] | None]:
        """Mark ``key`` as ``sending`` in one transaction; return what was there."""

        def work(conn: Any, cursor: Any) -> tuple[str | None, dict[str, Any] | None]:
            execute(
                cursor,
                conn,
                f"INSERT INTO {self.table} (task_id, state, updated_at) VALUES (?, ?, ?)"
                " ON CONFLICT (task_id) DO NOTHING",
                (key, SENDING, time.time()),
            )
            if cursor.rowcount == 1:
                return None, None
            execute(
                cursor,
                conn,
                f"UPDATE {self.table} SET state = ?, updated_at = ?"
                " WHERE task_id = ? AND state = ?",
                (SENDING, time.time(), key, RETRY),
            )
            if cursor.rowcount == 1:
                return RETRY, None
            execute(
                cursor, conn, f"SELECT state, result FROM {self.table} WHERE task_id = ?", (key,)
            )
            state, result = cursor.fetchone()
            return str(state), (json.loads(result) if result else None)

        return self._run(work)

    def finish(self, key: str, state: str, result: dict[str, Any] | None = None) -> None:
        """Record the end of the attempt."""
        text = None if result is None else json.dumps(result)

        def work(conn: Any, cursor: Any) -> None:
            execute(
                cursor,
                conn,
                f"UPDATE {self.table} SET state = ?, result = ?, updated_at = ? WHERE task_id = ?",
                (state, text, time.time(), key),
            )

        self._run(work)

    def close(self) -> None:
        """Close this process's connection (a later call opens a new one)."""
        connection, self._connection = self._connection, None
        if connection is not None and self._pid == os.getpid():
            connection.close()

    def states(self) -> dict[str, str]:
        """Every task id with its state (for tests and inspection)."""

        def work(conn: Any, cursor: Any) -> dict[str, str]:
            execute(cursor, conn, f"SELECT task_id, state FROM {self.table}")
            return {str(key): str(state) for key, state in cursor.fetchall()}

        return self._run(work)


_BEGIN = """
local found = redis.call('GET', KEYS[1])
if (not found) then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
  return false
end
if cjson.decode(found)['state'] == 'retry' then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
end
return found
"""


class RedisAttemptStore:
    """Attempts as Redis keys ``{prefix}{task id}`` that expire after ``ttl`` seconds.

    ``client`` is a ``redis.Redis``; the check and the update of :meth:`begin` run as
    one Lua script, so two deliveries of a task never both see an empty record.
    """

    def __init__(
        self, client: Any, *, prefix: str = "mailhandlers:send:", ttl: int = 7 * 24 * 3600
    ) -> None:
        self._client = client
        self.prefix = prefix
        self.ttl = int(ttl)
        self._begin = client.register_script(_BEGIN)

    def begin(self, key: str) -> tuple[str | None, dict[str, Any] | None]:
        """Mark ``key`` as ``sending`` atomically; return what was there."""
        record = json.dumps({"state": SENDING, "result": None})
        found = self._begin(keys=[self.prefix + key], args=[record, self.ttl])
        if not found:
            return None, None
        data = json.loads(found)
        return str(data["state"]), data.get("result")

    def finish(self, key: str, state: str, result: dict[str, Any] | None = None) -> None:
        """Record the end of the attempt."""
        record = json.dumps({"state": state, "result": result})
        self._client.set(self.prefix + key, record, ex=self.ttl)
