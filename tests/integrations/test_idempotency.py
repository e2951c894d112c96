"""Send-task attempts: one Message-ID per task id, and no blind resend after a cut-off.

The attempt stores run on SQLite, PostgreSQL and Redis; the task runs eagerly
(``apply`` with a fixed task id, as a redelivery would carry).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from src.integrations.celery_tasks import (
    SMTPAccount,
    configure,
    send_email_async,
    send_email_for_account,
    task_message_id,
)
from src.integrations.idempotency import DBAttemptStore, RedisAttemptStore
from src.testing.smtp_server import SMTPTestServer

pytest_plugins = ["services.fixtures"]


@pytest.fixture(params=["sqlite", "postgres", "redis"])
def attempts(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[Any]:
    if request.param == "redis":
        server = request.getfixturevalue("redis_server")
        client = server.client()
        client.flushdb()
        yield RedisAttemptStore(client)
        client.close()
        return
    if request.param == "sqlite":
        import sqlite3

        store = DBAttemptStore(lambda: sqlite3.connect(tmp_path / "attempts.db"))
        yield store
        store.close()
        return
    server = request.getfixturevalue("postgres_server")
    table = f"attempts_{tmp_path.name[-8:].replace('-', '_')}".lower()
    store = DBAttemptStore(server.connect, table=f"a{abs(hash(table)) % 10**8}")
    yield store
    store.close()


def test_the_state_machine(attempts: Any) -> None:
    assert attempts.begin("t") == (None, None)
    attempts.finish("t", "retry")
    assert attempts.begin("t") == ("retry", None)  # a retry may send
    assert attempts.begin("t") == ("sending", None)  # cut off: unknown
    attempts.finish("t", "done", {"status": "success"})
    assert attempts.begin("t") == ("done", {"status": "success"})


@pytest.fixture
def server() -> Iterator[SMTPTestServer]:
    with SMTPTestServer() as srv:
        yield srv


def spec_args(server: SMTPTestServer) -> list[Any]:
    return [server.host, server.port, None, None, "none", ["ada@example.test"], "Hi", "Body"]


def test_a_redelivered_task_never_sends_twice(attempts: Any, server: SMTPTestServer) -> None:
    configure(attempt_store=attempts)
    try:
        args = spec_args(server)
        first = send_email_async.apply(args, {"from_address": "app@example.test"}, task_id="t1")
        assert first.result["status"] == "success"
        assert first.result["message_id"] == task_message_id("t1", "app@example.test", "-")
        again = send_email_async.apply(args, {"from_address": "app@example.test"}, task_id="t1")
        assert again.result == first.result  # the stored result; nothing sent
        # An attempt that began and never finished (the worker was killed mid-send):
        attempts.begin("t2")
        cut = send_email_async.apply(args, {"from_address": "app@example.test"}, task_id="t2")
        assert cut.result["status"] == "failed" and cut.result["outcome_unknown"] is True
        assert [m["Message-ID"] for m in server.messages] == [first.result["message_id"]]
    finally:
        configure()


def test_every_attempt_of_one_task_uses_the_same_message_id(server: SMTPTestServer) -> None:
    accounts = {"a": SMTPAccount(server.host, server.port, encryption="none")}
    configure(credentials_provider=accounts.__getitem__)
    try:
        ids = {
            send_email_for_account.apply(
                ["a", "ada@example.test", "x", "y"],
                {"from_address": "me@sender.test"},
                task_id="same",
            ).result["message_id"]
            for _ in range(3)
        }
        other = send_email_for_account.apply(
            ["a", "ada@example.test", "x", "y"],
            {"from_address": "me@sender.test"},
            task_id="other",
        ).result["message_id"]
    finally:
        configure()
    [message_id] = ids
    assert message_id.endswith("@sender.test>") and other != message_id
    assert "same" not in message_id  # a digest, not the task id itself
