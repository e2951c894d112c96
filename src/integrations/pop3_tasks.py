"""The spec's ``sync_pop3_account`` Celery task, exactly once on many workers.

Needs the ``celery`` extra (and ``postgres`` for PostgreSQL). Importing
:mod:`src.integrations.celery_tasks` registers it as ``mailhandlers.sync_pop3_account``.

The task takes only an account id. The worker asks the functions given to
:func:`configure_sync` for the rest: ``account_provider(account_id)`` returns a
:class:`POP3Account` (decrypt stored passwords there, see
:mod:`src.integrations.credentials`), ``connect()`` returns a DB-API connection to
the application's database, and ``save_message(account_id, message, cursor)`` saves one
parsed message through ``cursor``. Each run:

1. takes the account's lease in that database (another worker syncing the account
   means this task returns ``{"status": "busy"}`` at once: the other run is doing the
   work);
2. downloads new messages in pipelined batches and, per batch, saves them and
   records their UIDs in one transaction whose commit checks the lease's fencing
   token (:class:`~src.handlers.DBUIDStore`);
3. marks them deleted only after that commit, when the account says ``delete_after``.

So a worker killed at any moment, a redelivered task or two tasks for one account never
store a message twice or delete one that was not stored. A transient POP3 failure
(connection, timeout, mailbox in use) is retried by Celery with a countdown.

Every result is a JSON-ready dict with ``status`` (``ok``, ``busy``, ``lease_lost``,
``failed``) and, for ``ok``, the :class:`~src.handlers.SyncResult` counts plus the
spec's ``synced``. Passwords never enter a task's arguments, its result or a log.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from celery import shared_task  # type: ignore[import-untyped,unused-ignore]

from ..handlers import (
    AccountBusyError,
    DBUIDStore,
    LeaseLostError,
    MailAuthenticationError,
    MailConnectionError,
    POP3MailboxBusyError,
    POP3ProtocolHandler,
)

__all__ = [
    "SYNC_TASK",
    "POP3Account",
    "configure_sync",
    "sync_pop3_account",
]

log = logging.getLogger(__name__)

SYNC_TASK = "mailhandlers.sync_pop3_account"


@dataclass(frozen=True)
class POP3Account:
    """Where and as whom to fetch. The password never shows in ``repr``."""

    hostname: str
    port: int
    username: str
    password: str | None = field(default=None, repr=False)
    encryption: str = "ssl"
    delete_after: bool = False


#: ``account_provider(account_id)``: the account's settings, looked up in the worker.
AccountProvider = Callable[[Any], POP3Account]
#: ``save_message(account_id, message, cursor)``: save one message through ``cursor``.
SaveMessage = Callable[[Any, dict[str, Any], Any], object]


@dataclass
class _SyncConfiguration:
    account_provider: AccountProvider
    connect: Callable[[], Any]
    save_message: SaveMessage
    handler_options: Mapping[str, Any]
    store_options: Mapping[str, Any]
    retry_countdown: float


_configuration: _SyncConfiguration | None = None


class _Connection:
    """This process's database connection, made on first use, again after a fork or error."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._connection: Any = None
        self._pid = 0

    def get(self, connect: Callable[[], Any], store_options: Mapping[str, Any]) -> Any:
        with self._lock:
            if self._connection is None or self._pid != os.getpid():
                connection = connect()
                _create_tables(connection, store_options)
                self._connection = connection
                self._pid = os.getpid()
            return self._connection

    def discard(self) -> None:
        with self._lock:
            connection, self._connection = self._connection, None
            if connection is not None and self._pid == os.getpid():
                try:
                    connection.close()
                except Exception:  # already broken; nothing more to do
                    log.debug("closing a broken database connection failed", exc_info=True)


_connection = _Connection()


def _create_tables(connection: Any, store_options: Mapping[str, Any]) -> None:
    # The store retries a creation that raced another worker's.
    DBUIDStore(connection, account="-", **store_options)


def configure_sync(
    *,
    account_provider: AccountProvider,
    connect: Callable[[], Any],
    save_message: SaveMessage,
    handler_options: Mapping[str, Any] | None = None,
    batch_size: int = 50,
    lease_ttl: float = 120.0,
    uid_table: str = "mailhandlers_pop3_uids",
    lease_table: str = "mailhandlers_leases",
    retry_countdown: float = 10.0,
    pipelined: bool = False,
) -> None:
    """Set how :func:`sync_pop3_account` finds accounts and where it stores messages.

    ``connect()`` returns a new DB-API connection (sqlite3, psycopg) with no
    transaction open; each worker process makes one and keeps it. ``save_message``
    must write only through the cursor it is given (it may run again for a message
    whose batch was rolled back). ``handler_options`` are keyword options for every
    :class:`~src.handlers.POP3ProtocolHandler` (``timeout``, ``ssl_context`` ...).
    ``batch_size`` messages share one transaction; ``lease_ttl`` is how long a dead
    worker's lease blocks its account. ``pipelined=True`` (psycopg 3) sends each
    batch's statements, ``save_message``'s included, to PostgreSQL ahead and has them
    answered together at the commit: much less work per message, but inside
    ``save_message`` a cursor's ``rowcount`` is -1 and an error surfaces at the commit
    (see :meth:`~src.handlers.DBUIDStore.pipeline`). Call it where the worker imports
    its Celery app.
    """
    global _configuration
    _configuration = _SyncConfiguration(
        account_provider,
        connect,
        save_message,
        dict(handler_options or {}),
        {
            "batch_size": batch_size,
            "lease_ttl": lease_ttl,
            "table": uid_table,
            "lease_table": lease_table,
            "pipelined": pipelined,
        },
        retry_countdown,
    )
    _connection.discard()


_sync_task: Callable[[Callable[..., dict[str, Any]]], Any] = shared_task(
    bind=True,
    name=SYNC_TASK,
    max_retries=3,
    acks_late=True,
    reject_on_worker_lost=True,
)


@_sync_task
def sync_pop3_account(self: Any, account_id: Any) -> dict[str, Any]:
    """Store every new message of account ``account_id`` exactly once; see the module doc."""
    config = _configuration
    if config is None:
        raise RuntimeError("sync_pop3_account is not configured: call configure_sync(...)")
    account = config.account_provider(account_id)
    try:
        connection = _connection.get(config.connect, config.store_options)
        store = DBUIDStore(
            connection, account=str(account_id), create_tables=False, **config.store_options
        )
        handler = POP3ProtocolHandler(
            account.hostname,
            account.port,
            account.username,
            account.password,
            account.encryption,
            **config.handler_options,
        )
        result = handler.sync(
            store,
            lambda message, cursor: config.save_message(account_id, message, cursor),
            delete_after=account.delete_after,
        )
    except AccountBusyError as error:
        return {"status": "busy", "account_id": account_id, "retry_after": error.retry_after}
    except LeaseLostError:
        return {"status": "lease_lost", "account_id": account_id}
    except MailAuthenticationError as error:
        return {"status": "failed", "account_id": account_id, "error": str(error)}
    except (MailConnectionError, POP3MailboxBusyError) as error:
        if self.request.retries < self.max_retries:
            raise self.retry(countdown=config.retry_countdown) from None
        return {"status": "failed", "account_id": account_id, "error": str(error)}
    except Exception as error:
        # A database error leaves the connection in an unknown state: start afresh.
        _connection.discard()
        log.warning("sync of account %r failed: %s", account_id, type(error).__name__)
        return {"status": "failed", "account_id": account_id, "error": type(error).__name__}
    return {
        "status": "ok",
        "account_id": account_id,
        "synced": result.fetched,
        "fetched": result.fetched,
        "skipped": result.skipped,
        "deleted": result.deleted,
        "failed": result.failed,
        "failed_uids": list(result.failed_uids),
    }
