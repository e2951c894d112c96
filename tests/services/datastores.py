"""Private PostgreSQL and Redis servers on loopback ports, started and stopped by PID.

Both come from the distribution's packages (``sudo bash .ci/install-data-servers.sh``)
and run from a temporary directory: PostgreSQL is initialised there by ``initdb`` as
the unprivileged ``postgres`` user (``initdb`` refuses root) and listens on
127.0.0.1 and a Unix socket in that directory only; Redis gets its settings on the
command line (``--bind 127.0.0.1``, a chosen port, no persistence). Each is stopped by
signalling the PID we started, never by name.
"""

from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from interop.processes import Server, free_ports, terminate

INSTALL_HINT = "install them with: sudo bash .ci/install-data-servers.sh"
HOST = "127.0.0.1"


class ServiceError(RuntimeError):
    """A private server did not start."""


def postgres_bindir() -> Path | None:
    """Where ``initdb``, ``postgres`` and ``pg_ctl`` are, or ``None``."""
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(str(Path(on_path).resolve().parent))
    for directory in candidates:
        if all(os.access(Path(directory) / name, os.X_OK) for name in ("initdb", "postgres")):
            return Path(directory)
    return None


def availability() -> tuple[bool, str]:
    """Whether both servers and their Python clients are here, and if not, why."""
    missing = []
    if shutil.which("redis-server") is None:
        missing.append("redis-server")
    if postgres_bindir() is None:
        missing.append("postgresql (initdb, postgres)")
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            missing.append("the postgres system user")
    if missing:
        return False, f"missing {', '.join(missing)}: {INSTALL_HINT}"
    for module in ("psycopg", "redis"):
        try:
            __import__(module)
        except ImportError:
            return False, f"the Python package {module!r} is missing: pip install -e '.[test]'"
    return True, ""


def _wait_port(server: Server, port: int, timeout: float, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not server.master_alive():
            raise ServiceError(f"{server.name} exited during start-up:\n{_tail(log)}")
        try:
            with socket.create_connection((HOST, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise ServiceError(f"{server.name} did not listen on {port} in {timeout:g}s:\n{_tail(log)}")


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _spawn(
    name: str, command: list[str], log: Path, user: str | None = None, cwd: Path | None = None
) -> Server:
    output = log.open("ab")
    try:
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            start_new_session=True,
            user=user,
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C"},
        )
    except BaseException:
        output.close()
        raise
    return Server(name, process, output, pid=process.pid, pgid=process.pid)


class PostgresServer:
    """A throwaway PostgreSQL cluster on a loopback port (trust auth, loopback only).

    ``dsn`` is a libpq connection string for the superuser ``mailhandlers`` and the
    database ``mailhandlers``. Durability settings are relaxed (``fsync=off``): the
    tests kill workers, never the database. ``durable=True`` keeps PostgreSQL's
    defaults (every commit flushed), as the benchmark wants.
    """

    def __init__(self, max_connections: int = 100, *, durable: bool = False) -> None:
        self.durable = durable
        self.directory = Path(tempfile.mkdtemp(prefix="pg-"))
        self.port = 0
        self.max_connections = max_connections
        self._server: Server | None = None
        self._user = "postgres" if os.geteuid() == 0 else None

    @property
    def dsn(self) -> str:
        """Connection string for the test database."""
        return f"host={HOST} port={self.port} user=mailhandlers dbname=mailhandlers"

    @property
    def pid(self) -> int | None:
        """The postmaster's PID while running."""
        return None if self._server is None else self._server.pid

    def start(self) -> PostgresServer:
        """Initialise the cluster, start it and create the database."""
        bindir = postgres_bindir()
        if bindir is None:
            raise ServiceError(f"PostgreSQL is not installed: {INSTALL_HINT}")
        data = self.directory / "data"
        sockets = self.directory / "sockets"
        sockets.mkdir()
        if self._user is not None:
            account = pwd.getpwnam(self._user)
            self.directory.chmod(0o755)
            for path in (self.directory, sockets):
                os.chown(path, account.pw_uid, account.pw_gid)
        log = self.directory / "postgres.log"
        subprocess.run(
            [
                str(bindir / "initdb"),
                "-D",
                str(data),
                "-U",
                "mailhandlers",
                "--auth=trust",
                "--no-sync",
                "-E",
                "UTF8",
                "--locale=C",
            ],
            check=True,
            capture_output=True,
            user=self._user,
            cwd=self.directory,
            timeout=120,
        )
        relaxed = (
            []
            if self.durable
            else ["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"]
        )
        for _attempt in range(3):
            (self.port,) = free_ports(1)
            self._server = _spawn(
                "postgres",
                [
                    str(bindir / "postgres"),
                    "-D",
                    str(data),
                    "-k",
                    str(sockets),
                    "-p",
                    str(self.port),
                    "-h",
                    HOST,
                    "-c",
                    f"max_connections={self.max_connections}",
                    *relaxed,
                ],
                self.directory / "postgres-console.log",
                user=self._user,
                cwd=self.directory,
            )
            try:
                _wait_port(self._server, self.port, 60, self.directory / "postgres-console.log")
                break
            except ServiceError:
                terminate(self._server)
                self._server = None
        if self._server is None:
            raise ServiceError("PostgreSQL did not start:\n" + _tail(log))
        self._create_database()
        return self

    def _create_database(self) -> None:
        import psycopg

        deadline = time.monotonic() + 30
        while True:
            try:
                with psycopg.connect(
                    f"host={HOST} port={self.port} user=mailhandlers dbname=postgres",
                    autocommit=True,
                ) as conn:
                    conn.execute("CREATE DATABASE mailhandlers")
                return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def connect(self, **options: Any) -> Any:
        """A new psycopg connection to the test database."""
        import psycopg

        return psycopg.connect(self.dsn, **options)

    def stop(self) -> None:
        """Stop the postmaster by its PID (SIGTERM: smart shutdown) and remove the files."""
        if self._server is not None:
            terminate(self._server, grace=10)
            self._server = None
        shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


class RedisServer:
    """A throwaway Redis on a loopback port, with nothing written to disk."""

    def __init__(self) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="redis-"))
        self.port = 0
        self._server: Server | None = None

    @property
    def url(self) -> str:
        """``redis://`` URL of database 0."""
        return f"redis://{HOST}:{self.port}/0"

    @property
    def pid(self) -> int | None:
        """The server's PID while running."""
        return None if self._server is None else self._server.pid

    def start(self) -> RedisServer:
        """Start the server and wait until it accepts connections."""
        binary = shutil.which("redis-server")
        if binary is None:
            raise ServiceError(f"redis-server is not installed: {INSTALL_HINT}")
        log = self.directory / "redis.log"
        for _attempt in range(3):
            (self.port,) = free_ports(1)
            self._server = _spawn(
                "redis",
                [
                    binary,
                    "--port",
                    str(self.port),
                    "--bind",
                    HOST,
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--dir",
                    str(self.directory),
                    "--protected-mode",
                    "yes",
                    "--databases",
                    "4",
                    "--daemonize",
                    "no",
                    "--logfile",
                    "",
                ],
                log,
                cwd=self.directory,
            )
            try:
                _wait_port(self._server, self.port, 20, log)
                return self
            except ServiceError:
                terminate(self._server)
                self._server = None
        raise ServiceError("Redis did not start:\n" + _tail(log))

    def client(self) -> Any:
        """A redis-py client for database 0."""
        import redis

        return redis.Redis.from_url(self.url)

    def stop(self) -> None:
        """Stop the server by its PID and remove its directory."""
        if self._server is not None:
            terminate(self._server)
            self._server = None
        shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def random_name(prefix: str) -> str:
    """A fresh identifier for a table or key space."""
    return f"{prefix}_{secrets.token_hex(4)}"
