"""Real Celery worker processes (prefork pool) for the tests, started and stopped by PID.

Each worker is ``python -m celery -A services.celery_app worker --pool=prefork`` in a
session of its own, so the worker and its pool children form one process group whose
id is the PID we started: :meth:`CeleryWorker.kill` sends SIGKILL to that group (the
"worker died" of the chaos test), :meth:`CeleryWorker.stop` a warm shutdown.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

from interop.processes import group_members

ROOT = Path(__file__).resolve().parents[2]


class CeleryWorker:
    """One worker process with ``concurrency`` pool children."""

    def __init__(
        self, name: str, env: Mapping[str, str], log_dir: Path, concurrency: int = 4
    ) -> None:
        self.name = name
        self.env = dict(env)
        self.log_dir = log_dir
        self.concurrency = concurrency
        self.process: subprocess.Popen[bytes] | None = None
        self.generation = 0
        self.kills = 0

    @property
    def pid(self) -> int | None:
        """The worker's PID (its process group id) while it runs."""
        return None if self.process is None else self.process.pid

    def start(self) -> CeleryWorker:
        """Start the worker; returns at once (it consumes as soon as it is connected)."""
        self.generation += 1
        env = dict(os.environ)
        env.update(self.env)
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "tests")])
        log = (self.log_dir / f"{self.name}.log").open("ab")
        try:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "celery",
                    "-A",
                    "services.celery_app",
                    "worker",
                    "--pool=prefork",
                    f"--concurrency={self.concurrency}",
                    f"--hostname={self.name}-{self.generation}@localhost",
                    "--loglevel=WARNING",
                    "--without-gossip",
                    "--without-mingle",
                    "--without-heartbeat",
                    "--prefetch-multiplier=1",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
                env=env,
                start_new_session=True,
            )
        finally:
            log.close()
        return self

    def kill(self) -> None:
        """SIGKILL the worker and its pool children at once, as a crash would."""
        if self.process is None:
            return
        pgid = self.process.pid
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
        self.process.wait(timeout=10)
        self._sweep(pgid)
        self.process = None
        self.kills += 1

    def stop(self, grace: float = 20.0) -> None:
        """Warm shutdown (SIGTERM), then SIGKILL whatever is left after ``grace``."""
        if self.process is None:
            return
        pgid = self.process.pid
        with contextlib.suppress(ProcessLookupError):
            os.kill(pgid, signal.SIGTERM)
        try:
            self.process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
            self.process.wait(timeout=10)
        self._sweep(pgid)
        self.process = None

    @staticmethod
    def _sweep(pgid: int) -> None:
        deadline = time.monotonic() + 10
        while group_members(pgid) and time.monotonic() < deadline:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
            time.sleep(0.05)

    def log_tail(self, lines: int = 40) -> str:
        """The end of the worker's log, for failure messages."""
        path = self.log_dir / f"{self.name}.log"
        try:
            return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"
