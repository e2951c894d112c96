"""The private loopback servers the benchmarks talk to.

* :class:`SmtpSink`: Postfix's ``smtp-sink``, a C SMTP server that accepts and discards
  mail (with or without PIPELINING).
* :class:`BenchStack`: the interop suite's :class:`tests.interop.mailstack.MailStack`
  (private Postfix submission with STARTTLS and AUTH, private Dovecot POP3), with
  benchmark mailboxes written straight into its Maildirs.
* :class:`DelayProxy`: :mod:`bench.proxy` in a child process.

Every process is started here and stopped by its own pid; nothing listens beyond
127.0.0.1.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

from src.testing.tls import TestCertificates
from tests.interop.mailstack import MailStack, servers_available
from tests.interop.processes import free_ports

SMTP_SINK = "/usr/sbin/smtp-sink"
HOST = "127.0.0.1"
SYSTEM_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")


def _wait_for_greeting(
    port: int, prefix: bytes, process: subprocess.Popen[bytes], timeout: float = 10.0
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args!r} exited with {process.returncode}")
        with contextlib.suppress(OSError), socket.create_connection((HOST, port), 1) as sock:
            if sock.recv(64).startswith(prefix):
                sock.sendall(b"QUIT\r\n")
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing greeted on {HOST}:{port} within {timeout}s")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


class SmtpSink:
    """``smtp-sink`` on a free loopback port; ``pipelining=False`` hides PIPELINING."""

    def __init__(self, *, pipelining: bool = True) -> None:
        self.pipelining = pipelining
        self.port = 0
        self._process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> SmtpSink:
        if not os.access(SMTP_SINK, os.X_OK):
            raise RuntimeError(f"{SMTP_SINK} is missing: bash .ci/install-mail-servers.sh")
        self.port = free_ports(1, HOST)[0]
        # -u: the user to run as when started by root; -4: IPv4 only; 256: listen backlog.
        command = [SMTP_SINK, "-4"]
        if os.geteuid() == 0:
            command += ["-u", "nobody"]
        if not self.pipelining:
            command.append("-p")
        command += [f"{HOST}:{self.port}", "256"]
        self._process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _wait_for_greeting(self.port, b"220", self._process)
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._process is not None:
            _stop(self._process)
            self._process = None

    @property
    def pid(self) -> int:
        if self._process is None:
            raise RuntimeError("smtp-sink is not running")
        return self._process.pid


class DelayProxy:
    """:mod:`bench.proxy` forwarding to ``HOST:target_port`` with ``delay`` s each way."""

    def __init__(self, target_port: int, delay: float) -> None:
        self.target_port = target_port
        self.delay = delay
        self.port = 0
        self._process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> DelayProxy:
        self._process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bench.proxy",
                "--target",
                f"{HOST}:{self.target_port}",
                "--delay",
                str(self.delay),
                "--lifetime",
                "1800",
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=Path(__file__).parent.parent,
        )
        assert self._process.stdout is not None
        line = self._process.stdout.readline().decode().split()
        if len(line) != 2 or line[0] != "LISTEN":
            _stop(self._process)
            raise RuntimeError(f"delay proxy did not start: {line!r}")
        self.port = int(line[1])
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._process is not None:
            with contextlib.suppress(OSError):
                assert self._process.stdin is not None
                self._process.stdin.close()
            _stop(self._process)
            if self._process.stdout is not None:
                self._process.stdout.close()
            self._process = None


# --------------------------------------------------------------------- Postfix + Dovecot


def _base_directory() -> Path:
    """A tmpfs when there is one, so the Postfix queue's fsync does not time the disk."""
    shm = Path("/dev/shm")
    parent = str(shm) if shm.is_dir() and os.access(shm, os.W_OK) else None
    directory = Path(tempfile.mkdtemp(prefix="mh-bench-", dir=parent))
    directory.chmod(0o755)  # the servers' unprivileged users must reach the stack inside
    return directory


class BenchStack:
    """A :class:`MailStack` whose users are the benchmark mailboxes."""

    def __init__(self, users: Iterable[str]) -> None:
        available, reason = servers_available()
        if not available:
            raise RuntimeError(reason)
        self.directory = _base_directory()
        self.certificates = TestCertificates()
        names = ["sender", *users]
        self.stack = MailStack(
            self.directory / "stack",
            self.certificates,
            users={name: f"pw-{name}-bench" for name in names},
            full_mailboxes=(),
            message_size_limit=64 * 1024 * 1024,
            # As a server that many sync workers log into runs (docs/performance.md).
            reuse_processes=True,
        )

    def __enter__(self) -> BenchStack:
        try:
            self.stack.start()
        except BaseException:
            shutil.rmtree(self.directory, ignore_errors=True)
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        try:
            self.stack.stop()
        finally:
            shutil.rmtree(self.directory, ignore_errors=True)

    @property
    def host(self) -> str:
        return self.stack.host

    def password(self, user: str) -> str:
        return self.stack.users[user]

    def ca_bundle(self) -> Path:
        """The system CA bundle plus the stack's CA, for ``SSL_CERT_FILE``.

        ``ssl.create_default_context()`` then trusts the stack while still loading the
        full system bundle, so building a context costs what it costs in production.
        """
        bundle = self.directory / "ca-bundle.pem"
        system = SYSTEM_CA_BUNDLE.read_bytes() if SYSTEM_CA_BUNDLE.exists() else b""
        bundle.write_bytes(system + b"\n" + self.certificates.ca.cert_pem.bytes())
        return bundle

    def fill_mailbox(self, user: str, messages: Iterable[bytes]) -> int:
        """Write ``messages`` (LF line endings) into the user's Maildir; return the count.

        File names carry the sizes (``S=``, ``W=``) so Dovecot need not read every file
        to list the mailbox.
        """
        maildir = self.stack.maildir(user) / "cur"
        uid, gid = self.stack.mail_uid, self.stack.mail_gid
        stamp = int(time.time())
        count = 0
        for index, data in enumerate(messages):
            size, virtual = len(data), len(data) + data.count(b"\n")
            path = maildir / f"{stamp}.M{index}P{os.getpid()}.bench,S={size},W={virtual}:2,S"
            with open(path, "wb") as handle:
                handle.write(data)
            os.chown(path, uid, gid)
            count += 1
        return count
