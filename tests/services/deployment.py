"""A small deployment for the many-worker tests: PostgreSQL, Redis, Dovecot, real workers.

The application's side is what ``services.celery_app`` expects: an ``accounts`` table
with encrypted passwords and a ``stored_messages`` table that the sync task writes in
the same transaction as the UIDs. The test process queues tasks through its own Celery
app object (the same configuration, no worker).
"""

from __future__ import annotations

import secrets
import shutil
import tempfile
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ci import in_ci

from .datastores import PostgresServer, RedisServer
from .workers import CeleryWorker


class Deployment:
    """Accounts, tasks and checks on one PostgreSQL database and one Redis."""

    def __init__(
        self,
        postgres: PostgresServer,
        redis: RedisServer,
        *,
        ca_file: Path | None = None,
        visibility: float = 30.0,
        lease_ttl: float = 10.0,
        attempts: str = "redis",
        batch: int = 50,
    ) -> None:
        from src.integrations.credentials import CredentialCipher, generate_key

        self.postgres = postgres
        self.redis = redis
        self.database = f"d_{secrets.token_hex(4)}"
        with postgres.connect(autocommit=True) as admin:
            admin.execute(f"CREATE DATABASE {self.database}")
        self.dsn = postgres.dsn.replace("dbname=mailhandlers", f"dbname={self.database}")
        self.keys = [generate_key(), generate_key()]
        self.cipher = CredentialCipher(self.keys)
        self.log_dir = Path(tempfile.mkdtemp(prefix="workers-"))
        redis.client().flushall()
        self.env = {
            "MH_BROKER": redis.url,
            "MH_BACKEND": redis.url.rsplit("/", 1)[0] + "/1",
            "MH_PG_DSN": self.dsn,
            "MH_KEYS": ",".join(self.keys),
            "MH_VISIBILITY": str(visibility),
            "MH_LEASE_TTL": str(lease_ttl),
            "MH_ATTEMPTS": attempts,
            "MH_BATCH": str(batch),
        }
        if ca_file is not None:
            self.env["MH_CA_FILE"] = str(ca_file)
        self.workers: list[CeleryWorker] = []
        with self.connect() as connection:
            from .celery_app import SCHEMA

            connection.execute(SCHEMA)
            connection.commit()
        self.app = self._client_app()

    def _client_app(self) -> Any:
        import celery

        app = celery.Celery(
            f"client-{self.database}",
            broker=self.env["MH_BROKER"],
            backend=self.env["MH_BACKEND"],
            set_as_current=False,
        )
        app.conf.update(
            task_serializer="json",
            result_serializer="json",
            accept_content=["json"],
            broker_transport_options={"visibility_timeout": float(self.env["MH_VISIBILITY"])},
            result_backend_transport_options={
                "visibility_timeout": float(self.env["MH_VISIBILITY"])
            },
        )
        return app

    def connect(self) -> Any:
        """A psycopg connection to this deployment's database."""
        import psycopg

        return psycopg.connect(self.dsn)

    def add_account(
        self,
        account_id: str,
        *,
        hostname: str,
        port: int,
        username: str,
        password: str,
        encryption: str,
        delete_after: bool = True,
        from_address: str | None = None,
    ) -> None:
        """Store an account with its password encrypted."""
        sealed = self.cipher.encrypt(password, account=account_id)
        with self.connect() as connection:
            connection.execute(
                "INSERT INTO accounts VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
                (
                    account_id,
                    hostname,
                    port,
                    username,
                    sealed,
                    encryption,
                    delete_after,
                    from_address,
                ),
            )

    def start_workers(self, count: int, concurrency: int) -> list[CeleryWorker]:
        """Start ``count`` prefork workers."""
        for index in range(count):
            worker = CeleryWorker(f"w{index}", self.env, self.log_dir, concurrency)
            self.workers.append(worker.start())
        return self.workers

    def stop(self) -> None:
        """Stop every worker and drop the database."""
        for worker in self.workers:
            worker.stop()
        self.app.close()
        with self.postgres.connect(autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {self.database} WITH (FORCE)")
        shutil.rmtree(self.log_dir, ignore_errors=True)

    def send_task(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """Queue a task by name; returns its AsyncResult."""
        return self.app.send_task(name, args=args, kwargs=kwargs)

    def stored(self, how: str = "ours") -> Counter[tuple[str, str]]:
        """(account, subject) of every stored message, counted."""
        with self.connect() as connection:
            rows = connection.execute(
                "SELECT account_id, subject FROM stored_messages WHERE how = %s", (how,)
            ).fetchall()
        return Counter((str(a), str(s)) for a, s in rows)

    def redis_dump(self) -> bytes:
        """Every key and value in every Redis database, as one byte string."""
        import redis as redis_module

        parts: list[bytes] = []

        def add(*items: object) -> None:
            parts.extend(i if isinstance(i, bytes) else str(i).encode() for i in items)

        for db in range(4):
            client = redis_module.Redis(host="127.0.0.1", port=self.redis.port, db=db)
            for key in client.scan_iter(count=1000):
                add(key)
                kind = client.type(key)
                if kind == b"string":
                    add(client.get(key) or b"")
                elif kind == b"list":
                    add(*client.lrange(key, 0, -1))
                elif kind == b"hash":
                    for field, value in client.hgetall(key).items():
                        add(field, value)
                elif kind == b"set":
                    add(*client.smembers(key))
                elif kind == b"zset":
                    add(*(entry[0] for entry in client.zrange(key, 0, -1, withscores=True)))
            client.close()
        return b"\n".join(parts)

    def logs(self) -> str:
        """The workers' log tails."""
        return "\n".join(f"--- {w.name} ---\n{w.log_tail()}" for w in self.workers)


def subjects(tokens: Iterable[str]) -> set[str]:
    """The set of ``tokens``, for readable assertions."""
    return set(tokens)


@contextmanager
def private_mail_stack(certs: Any, users: dict[str, str]) -> Iterator[Any]:
    """A private Postfix + Dovecot stack with these mailboxes (Dovecot allowing
    concurrent sessions, as many workers need), removed afterwards. Skips when the
    servers are not installed, and fails instead under CI=true."""
    import pytest
    from interop.mailstack import MailStack, servers_available

    available, reason = servers_available()
    if not available:
        if in_ci():
            pytest.fail(f"must run in CI, but: {reason}", pytrace=False)
        pytest.skip(reason)
    directory = Path(tempfile.mkdtemp(prefix="mailstack-"))
    try:
        with MailStack(directory, certs, users=users, locked_sessions=()) as running:
            yield running
    finally:
        shutil.rmtree(directory, ignore_errors=True)
