"""Chaos: real workers SIGKILLed at random while they sync 100 mailboxes and send mail.

Two prefork Celery workers (concurrency 4) on a Redis broker, PostgreSQL for the
application's messages, Dovecot for the mailboxes. The test keeps queueing
``sync_pop3_account`` for every account (as a beat schedule would), drops new mail into
random mailboxes as it goes, and kills a whole worker (SIGKILL to its process group)
at random moments, starting it again at once. At the end every message ever put into
a mailbox is stored exactly once and none was deleted from the server unstored.

Then the send tasks: thousands of ``send_email_for_account`` tasks to a server that
answers 421 at random and drops connections after the body, workers killed as above.
No Message-ID may arrive twice (this test's policy is never to resend an outcome-unknown
message), and every task ends with a result. A Redis broker can lose a task whose
worker dies at the moment it takes the task off the queue; the test then publishes
the task again under the same id, as an application's reconciler would, which the
tasks' idempotency makes safe (the counts say how many).

Every loop is bounded in count and time. Run it with ``pytest -m chaos``; the default
run skips it. The counts and timings are printed at the end (``-s`` shows them).
"""

from __future__ import annotations

import random
import secrets
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from interop.mailstack import MailStack
from services.deployment import Deployment, private_mail_stack

from src.integrations.celery_tasks import ACCOUNT_SEND_TASK, SYNC_TASK
from src.testing.smtp_server import SMTPTestServer
from src.testing.tls import TestCertificates

pytest_plugins = ["services.fixtures"]
pytestmark = pytest.mark.chaos

ACCOUNTS = 100
MESSAGES_PER_ACCOUNT = (20, 50)
NEW_MAIL = 200  # messages arriving while the workers sync (and die)
SENDS = 2_000
WORKERS, CONCURRENCY = 2, 4
KILLS_PER_PHASE = 10
KILL_GAP = (1.5, 3.5)  # seconds between kills while syncing
SEND_KILL_GAP = (0.6, 1.5)  # and while sending (the sends finish sooner)
SYNC_TIME_LIMIT = 110.0
SEND_TIME_LIMIT = 100.0
ROUND_TIMEOUT = 6.0  # a sync round's results are awaited at most this long
STALLED = 20.0  # no send result for this long after the last kill: republish (see below)
SEED = 20261204


def _chaos_selected(config: pytest.Config) -> bool:
    expression = str(config.getoption("markexpr") or "")
    return "chaos" in expression and "not chaos" not in expression


@pytest.fixture(autouse=True)
def only_when_selected(request: pytest.FixtureRequest) -> None:
    if not _chaos_selected(request.config):
        pytest.skip("the chaos test runs on its own: pytest -m chaos")


def mail(subject: str) -> bytes:
    return (
        f"From: sender@example.test\r\nTo: someone@example.test\r\nSubject: {subject}\r\n"
        f"Message-ID: <{secrets.token_hex(8)}@example.test>\r\n\r\n"
        + "A line of body text for the chaos test.\r\n"
        * 20
    ).encode()


@pytest.fixture(scope="module")
def stack(certs: TestCertificates) -> Iterator[MailStack]:
    users = {f"c{i:03d}": secrets.token_urlsafe(12) for i in range(ACCOUNTS)}
    with private_mail_stack(certs, users) as running:
        yield running


@pytest.fixture(scope="module")
def deployment(stack: MailStack, postgres_server: Any, redis_server: Any) -> Iterator[Deployment]:
    deployed = Deployment(
        postgres_server,
        redis_server,
        ca_file=stack.ca_file,
        visibility=12.0,
        lease_ttl=4.0,
        batch=25,
    )
    try:
        yield deployed
    finally:
        deployed.stop()


class Killer:
    """Kills a random worker (SIGKILL to its group) at random moments, then restarts it."""

    def __init__(
        self,
        deployment: Deployment,
        rng: random.Random,
        budget: int,
        gap: tuple[float, float] = KILL_GAP,
    ) -> None:
        self.deployment = deployment
        self.rng = rng
        self.budget = budget
        self.gap = gap
        self.kills = 0
        self.next_at = time.monotonic() + rng.uniform(*gap)

    def tick(self) -> None:
        if self.kills >= self.budget or time.monotonic() < self.next_at:
            return
        worker = self.rng.choice(self.deployment.workers)
        worker.kill()
        worker.start()
        self.kills += 1
        self.next_at = time.monotonic() + self.rng.uniform(*self.gap)

    @property
    def done(self) -> bool:
        return self.kills >= self.budget


def test_sync_under_sigkill_stores_every_message_exactly_once(
    stack: MailStack, deployment: Deployment
) -> None:
    rng = random.Random(SEED)
    started = time.monotonic()
    deposited: set[tuple[str, str]] = set()
    accounts = {}
    for index, (user, password) in enumerate(sorted(stack.users.items())):
        account = f"a{index:03d}"
        accounts[account] = user
        deployment.add_account(
            account,
            hostname=stack.host,
            port=stack.pop3s_port,
            username=user,
            password=password,
            encryption="ssl",
        )
        for n in range(rng.randint(*MESSAGES_PER_ACCOUNT)):
            stack.deposit(user, mail(f"{account}-{n}"))
            deposited.add((account, f"{account}-{n}"))
    initial = len(deposited)
    deployment.start_workers(WORKERS, CONCURRENCY)
    killer = Killer(deployment, rng, KILLS_PER_PHASE)
    new_mail = 0
    rounds = 0
    outcomes: Counter[str] = Counter()
    deadline = started + SYNC_TIME_LIMIT
    while time.monotonic() < deadline and rounds < 200:  # bounded in time and count
        rounds += 1
        pending = [deployment.send_task(SYNC_TASK, account) for account in accounts]
        round_end = time.monotonic() + ROUND_TIMEOUT
        while time.monotonic() < round_end and not all(r.ready() for r in pending):
            killer.tick()
            if new_mail < NEW_MAIL and rng.random() < 0.5:
                account = rng.choice(sorted(accounts))
                subject = f"{account}-new{new_mail}"
                stack.deposit(accounts[account], mail(subject))
                deposited.add((account, subject))
                new_mail += 1
            time.sleep(0.1)
        for result in pending:
            if result.ready():
                outcomes[result.get(propagate=False).get("status", "?")] += 1
            result.forget()
        if killer.done and new_mail >= NEW_MAIL:
            stored = deployment.stored()
            if set(stored) >= deposited and not any(stack.messages(u) for u in accounts.values()):
                break
    elapsed = time.monotonic() - started
    stored = deployment.stored()
    duplicates = sum(count - 1 for count in stored.values() if count > 1)
    remaining = {
        (account, _subject_of(path))
        for account, user in accounts.items()
        for path in stack.messages(user)
    }
    lost = deposited - set(stored) - remaining
    print(
        f"\nchaos sync: {len(deposited)} messages ({initial} at start, {new_mail} arriving), "
        f"{ACCOUNTS} accounts, {killer.kills} SIGKILLs, {rounds} rounds, "
        f"stored {sum(stored.values())}, duplicates {duplicates}, lost {len(lost)}, "
        f"left on server {len(remaining)}, task outcomes {dict(outcomes)}, {elapsed:.1f} s"
    )
    assert killer.kills >= KILLS_PER_PHASE
    assert duplicates == 0
    assert not lost, sorted(lost)[:10]
    assert set(stored) == deposited, deployment.logs()
    assert not remaining


def _subject_of(path: Path) -> str:
    for line in path.read_bytes().split(b"\r\n"):
        if line.startswith(b"Subject: "):
            return line[len(b"Subject: ") :].decode()
    return ""


def test_sends_under_sigkill_never_deliver_a_message_id_twice(
    deployment: Deployment,
) -> None:
    rng = random.Random(SEED + 1)
    password = secrets.token_urlsafe(16)
    arrived: Counter[str] = Counter()
    if not deployment.workers:
        deployment.start_workers(WORKERS, CONCURRENCY)
    with SMTPTestServer(
        users={"app": password},
        auth_require_tls=False,
        auth_required=True,
        on_message=lambda message: arrived.update([message["Message-ID"] or "?"]),
    ) as server:
        for number in range(1, SENDS * 2):
            if rng.random() < 0.05:
                server.faults.mail_replies[number] = (421, "4.3.2 closing, try later")
        deployment.add_account(
            "sender",
            hostname=server.host,
            port=server.port,
            username="app",
            password=password,
            encryption="none",
            from_address="app@example.test",
        )
        started = time.monotonic()
        results = [
            deployment.send_task(ACCOUNT_SEND_TASK, "sender", ["ada@example.test"], f"n{i}", "b")
            for i in range(SENDS)
        ]
        killer = Killer(deployment, rng, KILLS_PER_PHASE, SEND_KILL_GAP)
        deadline = started + SEND_TIME_LIMIT
        drops = republished = 0
        done, progress_at = 0, time.monotonic()
        while time.monotonic() < deadline and done < len(results):
            killer.tick()
            if rng.random() < 0.2 and server.faults.drop_after_data == 0:
                server.faults.drop_after_data = 1
                drops += 1
            now_done = sum(1 for r in results if r.ready())
            if now_done != done:
                done, progress_at = now_done, time.monotonic()
            elif killer.done and time.monotonic() - progress_at > STALLED:
                # Redis can lose a task when its worker dies between taking it off the
                # queue and recording it as unacknowledged. The tasks are idempotent, so
                # the application may publish a task again under its own id.
                for index, result in enumerate(results):
                    if not result.ready():
                        args = ("sender", ["ada@example.test"], f"n{index}", "b")
                        deployment.app.send_task(ACCOUNT_SEND_TASK, args=args, task_id=result.id)
                        republished += 1
                progress_at = time.monotonic()
            time.sleep(0.1)
        outcomes = [r.get(propagate=False) if r.ready() else None for r in results]
        elapsed = time.monotonic() - started
        dump = deployment.redis_dump()
    statuses = Counter(
        "no result" if o is None else ("unknown" if o.get("outcome_unknown") else o["status"])
        for o in outcomes
    )
    twice = {mid: n for mid, n in arrived.items() if n > 1}
    print(
        f"\nchaos send: {SENDS} tasks, {killer.kills} SIGKILLs, {drops} dropped connections, "
        f"{republished} republished, "
        f"results {dict(statuses)}, arrived {sum(arrived.values())} "
        f"({len(arrived)} distinct), delivered twice {len(twice)}, {elapsed:.1f} s"
    )
    assert not twice, twice
    assert killer.kills >= KILLS_PER_PHASE
    assert statuses["no result"] == 0, deployment.logs()
    delivered = {o["message_id"] for o in outcomes if o and o["status"] == "success"}
    assert delivered <= set(arrived)
    assert password.encode() not in dump
