"""The Celery tasks on real prefork workers, a Redis broker and backend, PostgreSQL, Dovecot.

Two worker processes (concurrency 4) run ``sync_pop3_account`` and the send tasks
with the recommended settings (late acks, reject on worker lost, prefetch 1). The
accounts' passwords are stored encrypted; afterwards every Redis key and value is
searched for them.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from typing import Any

import pytest
from interop.mailstack import MailStack
from services.deployment import Deployment, private_mail_stack

from src.integrations.celery_tasks import ACCOUNT_SEND_TASK, SYNC_TASK, task_message_id
from src.testing.smtp_server import SMTPTestServer
from src.testing.tls import TestCertificates

pytest_plugins = ["services.fixtures"]
pytestmark = pytest.mark.slow

ACCOUNTS = 6
PER_ACCOUNT = 15
WAIT = 90.0


def mail(subject: str) -> bytes:
    return (
        f"From: sender@example.test\r\nTo: someone@example.test\r\nSubject: {subject}\r\n"
        f"Message-ID: <{secrets.token_hex(8)}@example.test>\r\n\r\nbody of {subject}\r\n"
    ).encode()


@pytest.fixture(scope="module")
def stack(certs: TestCertificates) -> Iterator[MailStack]:
    users = {f"user{i}": secrets.token_urlsafe(12) for i in range(ACCOUNTS)}
    with private_mail_stack(certs, users) as running:
        yield running


@pytest.fixture(scope="module")
def deployment(stack: MailStack, postgres_server: Any, redis_server: Any) -> Iterator[Deployment]:
    deployed = Deployment(postgres_server, redis_server, ca_file=stack.ca_file)
    try:
        deployed.start_workers(2, 4)
        yield deployed
    finally:
        deployed.stop()


def wait_all(results: list[Any], timeout: float = WAIT) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    out = []
    for result in results:
        out.append(result.get(timeout=max(0.1, deadline - time.monotonic()), interval=0.05))
    return out


def test_sync_tasks_on_two_prefork_workers_store_every_message_once(
    stack: MailStack, deployment: Deployment
) -> None:
    expected = set()
    for index, (user, password) in enumerate(sorted(stack.users.items())):
        account = f"acct{index}"
        deployment.add_account(
            account,
            hostname=stack.host,
            port=stack.pop3s_port,
            username=user,
            password=password,
            encryption="ssl",
        )
        for n in range(PER_ACCOUNT):
            stack.deposit(user, mail(f"{account}-{n}"))
            expected.add((account, f"{account}-{n}"))
    # Every account queued three times at once: the copies find the lease taken, or
    # find nothing left to do.
    results = [
        deployment.send_task(SYNC_TASK, f"acct{i}") for _ in range(3) for i in range(ACCOUNTS)
    ]
    outcomes = wait_all(results)
    assert {o["status"] for o in outcomes} <= {"ok", "busy"}, outcomes
    # A copy that found the lease taken skipped; one more round finishes any account
    # whose only running copy was refused the lease at the start of another.
    wait_all([deployment.send_task(SYNC_TASK, f"acct{i}") for i in range(ACCOUNTS)])
    stored = deployment.stored()
    assert set(stored) == expected, deployment.logs()
    assert max(stored.values()) == 1  # exactly once
    assert all(not stack.messages(user) for user in stack.users)  # deleted after storing
    dump = deployment.redis_dump()
    for password in stack.users.values():
        assert password.encode() not in dump


def test_send_tasks_keep_one_message_id_and_no_secret_reaches_redis(
    deployment: Deployment,
) -> None:
    password = secrets.token_urlsafe(16)
    received: list[str] = []
    with SMTPTestServer(
        users={"app": password},
        auth_require_tls=False,
        auth_required=True,
        on_message=lambda message: received.append(message["Message-ID"] or ""),
    ) as server:
        deployment.add_account(
            "smtp1",
            hostname=server.host,
            port=server.port,
            username="app",
            password=password,
            encryption="none",
            from_address="app@example.test",
        )
        server.faults.mail_replies[1] = (421, "4.3.2 try again")  # the first attempt fails
        results = [
            deployment.send_task(ACCOUNT_SEND_TASK, "smtp1", ["ada@example.test"], f"s{i}", "b")
            for i in range(20)
        ]
        outcomes = wait_all(results)
    assert all(o["status"] == "success" for o in outcomes), outcomes
    assert sorted(received) == sorted(o["message_id"] for o in outcomes)
    assert len(set(received)) == 20
    retried = [o for o in outcomes if o["retry_count"]]
    assert len(retried) == 1
    for result, outcome in zip(results, outcomes, strict=True):
        assert outcome["message_id"] == task_message_id(result.id, "app@example.test", "-")
    dump = deployment.redis_dump()
    assert password.encode() not in dump
    assert b"mailhandlers:send:" in dump  # the attempts were recorded there
