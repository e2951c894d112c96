"""The Celery app the tests' real worker processes run (``celery -A services.celery_app``).

Everything comes from the environment the test gives the worker, never a secret:

``MH_BROKER`` / ``MH_BACKEND``
    Redis URLs of the broker and the result backend.
``MH_PG_DSN``
    The PostgreSQL the accounts, the stored messages and the UIDs live in.
``MH_KEYS``
    Comma-separated credential keys, newest first (the passwords in the ``accounts``
    table are encrypted with them).
``MH_VISIBILITY``, ``MH_LEASE_TTL``, ``MH_ATTEMPTS``
    The broker's visibility timeout, the sync lease's ttl, and where send attempts
    are recorded (``redis`` or ``postgres``).

The worker settings are the ones docs/many-workers.md recommends: late acks, tasks of
a lost worker rejected back to the queue, prefetch of one, JSON only.
"""

from __future__ import annotations

import os
from typing import Any

import celery

from src.integrations.celery_tasks import (
    POP3Account,
    SMTPAccount,
    configure,
    configure_sync,
)
from src.integrations.credentials import CredentialCipher

BROKER = os.environ.get("MH_BROKER", "redis://127.0.0.1:6379/0")
BACKEND = os.environ.get("MH_BACKEND", "redis://127.0.0.1:6379/1")
DSN = os.environ.get("MH_PG_DSN", "")
VISIBILITY = float(os.environ.get("MH_VISIBILITY", "60"))
LEASE_TTL = float(os.environ.get("MH_LEASE_TTL", "30"))

SCHEMA = """
CREATE TABLE IF NOT EXISTS accounts (
    id TEXT PRIMARY KEY, hostname TEXT NOT NULL, port INTEGER NOT NULL,
    username TEXT NOT NULL, password_encrypted TEXT NOT NULL, encryption TEXT NOT NULL,
    delete_after BOOLEAN NOT NULL DEFAULT TRUE, from_address TEXT);
CREATE TABLE IF NOT EXISTS stored_messages (
    seq BIGSERIAL PRIMARY KEY, account_id TEXT NOT NULL, uid TEXT NOT NULL,
    subject TEXT NOT NULL, how TEXT NOT NULL);
"""

app = celery.Celery("mailhandlers-workers", broker=BROKER, backend=BACKEND)
app.conf.update(
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    # A dead worker's unacknowledged tasks come back once the visibility timeout has
    # passed, at the next sweep: every 2 s here (kombu's default sweeps about every 100 s).
    broker_transport_options={
        "visibility_timeout": VISIBILITY,
        "unacked_restore_interval": 2,
        "unacked_restore_throttle": 1,
    },
    result_backend_transport_options={"visibility_timeout": VISIBILITY},
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
    worker_send_task_events=False,
    task_send_sent_event=False,
    result_expires=3600,
    # Retries come back quickly in the tests (the defaults wait 1, 5 and 30 s).
    task_annotations={
        "mailhandlers.send_email_for_account": {"retry_delays": (0.2, 0.5), "max_retries": 6},
        "mailhandlers.send_email_async": {"retry_delays": (0.2, 0.5), "max_retries": 6},
    },
)
app.conf.imports = ("src.integrations.celery_tasks",)

_ciphers: list[CredentialCipher] = []


def _cipher() -> CredentialCipher:
    if not _ciphers:
        keys = [key for key in os.environ.get("MH_KEYS", "").split(",") if key]
        _ciphers.append(CredentialCipher(keys))
    return _ciphers[0]


def _connect() -> Any:
    import psycopg

    return psycopg.connect(DSN)


_lookup: Any = None


def _row(account_id: Any) -> tuple[Any, ...]:
    global _lookup
    if _lookup is None or _lookup[0] != os.getpid():
        _lookup = (os.getpid(), _connect())
        _lookup[1].autocommit = True
    row = (
        _lookup[1]
        .execute(
            "SELECT hostname, port, username, password_encrypted, encryption, delete_after,"
            " from_address FROM accounts WHERE id = %s",
            (str(account_id),),
        )
        .fetchone()
    )
    if row is None:
        raise LookupError(f"no account {account_id!r}")
    return tuple(row)


def pop3_account(account_id: Any) -> POP3Account:
    """The POP3 account, its password decrypted here, in the worker."""
    hostname, port, username, sealed, encryption, delete_after, _ = _row(account_id)
    password = _cipher().decrypt(sealed, account=account_id)
    return POP3Account(hostname, port, username, password, encryption, delete_after)


def smtp_account(account_id: Any) -> SMTPAccount:
    """The SMTP account, its password decrypted here, in the worker."""
    hostname, port, username, sealed, encryption, _, from_address = _row(account_id)
    password = _cipher().decrypt(sealed, account=account_id)
    return SMTPAccount(hostname, port, username, password, encryption, from_address)


def save_message(account_id: Any, message: dict[str, Any], cursor: Any) -> None:
    """The application's save: one row, in the transaction that records the UID."""
    cursor.execute(
        "INSERT INTO stored_messages (account_id, uid, subject, how) VALUES (%s, %s, %s, 'ours')",
        (str(account_id), message["uid"], message["subject"]),
    )


def _attempt_store() -> Any:
    from src.integrations.idempotency import DBAttemptStore, RedisAttemptStore

    if os.environ.get("MH_ATTEMPTS") == "postgres":
        return DBAttemptStore(_connect)
    import redis

    return RedisAttemptStore(redis.Redis.from_url(BROKER.rsplit("/", 1)[0] + "/2"))


def _handler_options() -> dict[str, Any]:
    options: dict[str, Any] = {"timeout": 20}
    ca_file = os.environ.get("MH_CA_FILE")
    if ca_file:
        import ssl

        options["ssl_context"] = ssl.create_default_context(cafile=ca_file)
    return options


if DSN:
    configure_sync(
        account_provider=pop3_account,
        connect=_connect,
        save_message=save_message,
        handler_options=_handler_options(),
        batch_size=int(os.environ.get("MH_BATCH", "50")),
        lease_ttl=LEASE_TTL,
        retry_countdown=1.0,
        # save_message reads no rowcount, so its INSERTs may be sent ahead.
        pipelined=True,
    )
    configure(
        credentials_provider=smtp_account,
        handler_options={"timeout": 10},
        attempt_store=_attempt_store(),
    )


@app.task(name="tests.spec_sync_pop3_account", acks_late=True, reject_on_worker_lost=True)  # type: ignore[untyped-decorator]
def spec_sync_pop3_account(account_id: Any) -> dict[str, Any]:
    """The spec's example task as written: fetch each message, save it, delete it.

    One connection per task, one commit per saved message, nothing remembered: the
    baseline the benchmark and the chaos test compare against.
    """
    from src.handlers.pop3 import POP3ProtocolHandler

    account = pop3_account(account_id)
    with (
        POP3ProtocolHandler(
            account.hostname,
            account.port,
            account.username,
            account.password,
            account.encryption,
            **_handler_options(),
        ) as handler,
        _connect() as connection,
    ):
        connection.autocommit = True
        handler.authenticate()
        message_ids, _total_size = handler.list_messages()
        for msg_id in message_ids:
            message = handler.fetch_message(msg_id)
            if message:
                connection.execute(
                    "INSERT INTO stored_messages (account_id, uid, subject, how)"
                    " VALUES (%s, %s, %s, 'spec')",
                    (str(account_id), str(msg_id), message["subject"]),
                )
                handler.delete_message(msg_id)
    return {"synced": len(message_ids)}
