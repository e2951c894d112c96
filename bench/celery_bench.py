"""The ``celery`` group: ``sync_pop3_account`` on real prefork workers, and the spec's task.

Private Dovecot (the benchmark stack), PostgreSQL and Redis on loopback; Celery workers
as separate processes (``celery worker --pool=prefork -c 1``), as in the tests
(tests/services). Each case fills every mailbox afresh, queues one task per account
and times until every result is in; the figure is messages stored per second.

* C1: our task with two worker processes against one (the scaling on two cores).
* C2: our task against the spec's example task as it is written (fetch each message,
  save it with its own commit, delete it; one connection per task), both on two
  worker processes.
* C3: duplicates stored when the same SIGKILL schedule hits each of them (info).

PostgreSQL runs with its default durability (each commit flushed to disk), as a
production database would; the tests relax it, the benchmark must not.
"""

from __future__ import annotations

import contextlib
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SPEC_TASK = "tests.spec_sync_pop3_account"


def _wait_ready(deployment: Any, names: list[str], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    waiting = set(names)
    while waiting and time.monotonic() < deadline:
        replies = deployment.app.control.ping(timeout=0.5) or []
        for reply in replies:
            for name in reply:
                waiting.discard(name.split("@")[0].rsplit("-", 1)[0])
    if waiting:
        raise RuntimeError(f"workers {sorted(waiting)} did not answer a ping")


def group_celery(plan: Any, report: Any) -> None:
    """C1-C3, see the module docstring."""
    sys.path.insert(0, str(ROOT / "tests"))
    from services.datastores import (
        PostgresServer,
        RedisServer,
        availability,
    )
    from services.deployment import Deployment
    from services.workers import CeleryWorker

    from bench import peers
    from bench.measure import Row, median
    from bench.servers import BenchStack
    from src.integrations.celery_tasks import SYNC_TASK

    available, reason = availability()
    if not available:
        if os.environ.get("CI", "").strip().lower() == "true":
            raise SystemExit(f"the celery group cannot run: {reason}")
        report.note(f"C: the celery group was skipped: {reason}")
        return
    smoke = report.smoke
    accounts = 4 if smoke else 40
    per_account = 10 if smoke else 50
    repetitions = 1 if smoke else plan.repetitions
    users = tuple(f"q{i:03d}" for i in range(accounts))
    with (
        BenchStack(users) as bench,
        PostgresServer(durable=True) as postgres,
        RedisServer() as redis,
    ):
        deployment = Deployment(postgres, redis, visibility=10.0, lease_ttl=10.0, batch=50)
        workers: list[CeleryWorker] = []
        try:
            for index, user in enumerate(users):
                deployment.add_account(
                    f"b{index:03d}",
                    hostname=bench.host,
                    port=bench.stack.pop3_port,
                    username=user,
                    password=bench.password(user),
                    encryption="none",
                )
            ids = [f"b{index:03d}" for index in range(accounts)]

            def fill(count: int, mailboxes: int = accounts) -> int:
                for user in users[:mailboxes]:
                    for number in range(count):
                        bench.stack.deposit(user, peers.small_message(number))
                with deployment.connect() as connection:
                    connection.execute("TRUNCATE stored_messages")
                return count * len(users[:mailboxes])

            def use_workers(count: int) -> None:
                while len(workers) > count:
                    workers.pop().stop()
                while len(workers) < count:
                    name = f"bench{len(workers)}"
                    worker = CeleryWorker(name, deployment.env, deployment.log_dir, concurrency=1)
                    workers.append(worker.start())
                _wait_ready(deployment, [w.name for w in workers])

            def stored_per_second(
                task: str, worker_count: int, count: int = per_account, mailboxes: int = accounts
            ) -> float:
                use_workers(worker_count)
                # Warm up: every worker process connects to the database and imports what
                # the task needs on its first task, which a long-running worker has done.
                for result in [deployment.send_task(task, account) for account in ids]:
                    result.get(timeout=120, interval=0.02)
                total = fill(count, mailboxes)
                started = time.perf_counter()
                results = [deployment.send_task(task, account) for account in ids[:mailboxes]]
                for result in results:
                    result.get(timeout=300, interval=0.02)
                elapsed = time.perf_counter() - started
                stored = sum(deployment.stored("spec" if task == SPEC_TASK else "ours").values())
                assert stored == total, (task, stored, total)
                return total / elapsed

            samples: dict[str, list[float]] = {"ours-1": [], "ours-2": [], "spec-2": []}
            big: dict[str, list[float]] = {"ours": [], "spec": []}
            big_count, big_boxes = (20, 2) if smoke else (400, 4)
            for _ in range(repetitions):
                samples["ours-1"].append(stored_per_second(SYNC_TASK, 1))
                samples["ours-2"].append(stored_per_second(SYNC_TASK, 2))
                samples["spec-2"].append(stored_per_second(SPEC_TASK, 2))
                big["ours"].append(stored_per_second(SYNC_TASK, 2, big_count, big_boxes))
                big["spec"].append(stored_per_second(SPEC_TASK, 2, big_count, big_boxes))
            report.add(
                Row(
                    "C1",
                    f"sync_pop3_account, {accounts} mailboxes x {per_account} messages: "
                    "2 worker processes vs 1",
                    median(samples["ours-2"]),
                    median(samples["ours-1"]),
                    "messages stored/s",
                    required=1.5,
                    samples=samples,
                )
            )
            report.add(
                Row(
                    "C2",
                    "sync_pop3_account vs the spec's example task (fetch, save, delete "
                    "one by one), 2 worker processes",
                    median(samples["ours-2"]),
                    median(samples["spec-2"]),
                    "messages stored/s",
                    required=3.0,
                    samples=samples,
                )
            )
            report.add(
                Row(
                    "C2b",
                    f"the same with {big_boxes} mailboxes x {big_count} messages (the POP3 "
                    "login and the task's fixed costs spread over more messages)",
                    median(big["ours"]),
                    median(big["spec"]),
                    "messages stored/s",
                    samples=big,
                )
            )
            duplicates = {
                task: _duplicates_under_kills(
                    deployment,
                    workers,
                    fill,
                    lambda index, number: bench.stack.deposit(
                        users[index], peers.small_message(number)
                    ),
                    ids,
                    task,
                    smoke,
                    lambda: sum(len(bench.stack.messages(user)) for user in users),
                )
                for task in (SYNC_TASK, SPEC_TASK)
            }
            kills = duplicates[SYNC_TASK][1]
            report.add(
                Row(
                    "C3",
                    f"duplicates stored under {kills} SIGKILLs (same schedule)",
                    duplicates[SYNC_TASK][0],
                    duplicates[SPEC_TASK][0],
                    "duplicate rows",
                    higher_is_better=False,
                )
            )
            report.note(
                f"C3: the spec's task stored {duplicates[SPEC_TASK][0]} duplicate rows of "
                f"{duplicates[SPEC_TASK][2]} messages under {duplicates[SPEC_TASK][1]} SIGKILLs; "
                f"sync_pop3_account {duplicates[SYNC_TASK][0]} of {duplicates[SYNC_TASK][2]}"
            )
        finally:
            for worker in workers:
                worker.stop()
            deployment.stop()


def _duplicates_under_kills(
    deployment: Any,
    workers: list[Any],
    fill: Any,
    deposit: Any,
    ids: list[str],
    task: str,
    smoke: bool,
    left: Any,
) -> tuple[int, int, int]:
    """Run ``task`` in rounds while mail arrives and workers are killed on a fixed schedule.

    The schedule (when, and which worker) comes from a fixed seed and the clock, so
    both tasks are hit the same way whatever their speed. Returns (duplicate rows,
    kills, messages).
    """
    rng = random.Random(1234)
    total = fill(10 if smoke else 30)
    window = 3.0 if smoke else 10.0
    kill_times = sorted(rng.uniform(0.3, window) for _ in range(2 if smoke else 6))
    victims = [rng.randrange(len(workers)) for _ in kill_times]
    kills = 0
    started = time.monotonic()
    pending: list[Any] = []
    arrived = 0
    while time.monotonic() - started < window:
        if all(result.ready() for result in pending):
            pending = [deployment.send_task(task, account) for account in ids]
        if kills < len(kill_times) and time.monotonic() - started >= kill_times[kills]:
            worker = workers[victims[kills]]
            worker.kill()
            worker.start()
            kills += 1
        deposit(rng.randrange(len(ids)), 1000 + arrived)
        arrived += 1
        time.sleep(0.05)
    # What a killed run left on the server is picked up by later runs, as a schedule would.
    # A task Redis lost with its killed worker never reports; the next rounds cover
    # its mailbox, so it is waited for a bounded time only.
    deadline = time.monotonic() + 120
    for result in [*pending]:
        _wait(result, min(30.0, deadline - time.monotonic()))
    for _ in range(10):
        if not left() or time.monotonic() > deadline:
            break
        again = [deployment.send_task(task, account) for account in ids]
        for result in again:
            _wait(result, min(30.0, deadline - time.monotonic()))
    stored = deployment.stored("spec" if task.startswith("tests.") else "ours")
    return sum(stored.values()) - len(stored), kills, total + arrived


def _wait(result: Any, seconds: float) -> None:
    from celery.exceptions import TimeoutError as ResultTimeout

    with contextlib.suppress(ResultTimeout):
        result.get(timeout=max(1.0, seconds), interval=0.05, propagate=False)
