"""Process and port plumbing for the private mail servers in :mod:`.mailstack`.

Everything here works on process ids that the stack itself started, never on names:
a server is stopped by signalling the pid of its master daemon, and stragglers are
found through the process group that master leads. Probes only ever connect to
loopback addresses.

Process state is read from ``/proc``, so this module (like the servers it drives) is
meant for Linux.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

__all__ = [
    "Probe",
    "Server",
    "free_ports",
    "group_members",
    "parent_of",
    "pid_alive",
    "probe_greeting",
    "terminate",
    "wait_sessions_ended",
]

_POLL = 0.05
_PROC = Path("/proc")


@dataclass
class Server:
    """One server process tree that we started.

    ``process`` is our direct child. ``pid`` is the master daemon that receives the
    stop signal (the child itself for Dovecot; a grandchild for ``postfix start-fg``,
    which keeps the shell script in front of the master). ``pgid`` is the process
    group whose members are swept after the master has gone.
    """

    name: str
    process: subprocess.Popen[bytes]
    output: IO[bytes]
    pid: int
    pgid: int
    detached: bool = False  # the master left our process tree (``postfix start``)

    def master_alive(self) -> bool:
        """Whether ``pid`` still is our master, not a finished one whose id was reused."""
        if self.pid == self.process.pid:
            return self.process.poll() is None
        if self.detached:
            return pid_alive(self.pid)
        return pid_alive(self.pid) and parent_of(self.pid) == self.process.pid

    def __repr__(self) -> str:
        return f"<Server {self.name} pid={self.pid} pgid={self.pgid}>"


@dataclass(frozen=True)
class Probe:
    """A listener to wait for: connect, optionally wrap in TLS, expect a greeting."""

    name: str
    host: str
    port: int
    greeting: bytes
    tls: ssl.SSLContext | None = None


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """Return ``count`` distinct ports that were free on ``host`` a moment ago.

    The sockets are held open together so the kernel hands out distinct ports, then
    closed; a server may still lose the race for one, which the caller handles by
    trying again with new ports.
    """
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.bind((host, 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _read_line(sock: socket.socket | ssl.SSLSocket, limit: int = 1024) -> bytes:
    data = b""
    while not data.endswith(b"\n") and len(data) < limit:
        chunk = sock.recv(limit - len(data))
        if not chunk:
            break
        data += chunk
    return data


def probe_greeting(probe: Probe, timeout: float = 2.0) -> bytes | None:
    """Connect once; return the greeting line, or ``None`` if nothing listens yet.

    The probe says QUIT after the greeting so the servers log a clean session. A
    certificate that does not verify is not a "not ready yet": it raises.
    """
    try:
        with socket.create_connection((probe.host, probe.port), timeout=timeout) as raw:
            if probe.tls is None:
                line = _read_line(raw)
                with contextlib.suppress(OSError):
                    raw.sendall(b"QUIT\r\n")
                    _read_line(raw)
                return line
            with probe.tls.wrap_socket(raw, server_hostname=probe.host) as tls:
                line = _read_line(tls)
                with contextlib.suppress(OSError):
                    tls.sendall(b"QUIT\r\n")
                    _read_line(tls)
                return line
    except ssl.SSLCertVerificationError:
        raise
    except (OSError, ssl.SSLError):
        return None


def _stat(pid: int) -> tuple[str, int, int] | None:
    """State letter, parent pid and process group of ``pid``, or ``None`` if gone."""
    try:
        text = (_PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[1].split()
    return fields[0], int(fields[1]), int(fields[2])


def parent_of(pid: int) -> int | None:
    """The parent pid of a live process, or ``None``."""
    stat = _stat(pid)
    return None if stat is None else stat[1]


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie counts as gone)."""
    stat = _stat(pid)
    return stat is not None and stat[0] not in ("Z", "X")


def group_members(pgid: int) -> list[int]:
    """Live processes whose process group is ``pgid``."""
    members = []
    for entry in _PROC.iterdir():
        if not entry.name.isdigit():
            continue
        stat = _stat(int(entry.name))
        if stat is not None and stat[2] == pgid and stat[0] not in ("Z", "X"):
            members.append(int(entry.name))
    return members


def _signal_pid(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)


def _signal_group(pgid: int, signum: int) -> None:
    # Only while the group still has members: an empty group's id is not ours anymore.
    if group_members(pgid):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signum)


def _poll_until(done: Callable[[], bool], timeout: float, interval: float = _POLL) -> bool:
    """Poll ``done()`` until it is true; False if ``timeout`` seconds pass first."""
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)
    return True


def _wait_gone(pids: list[int], pgid: int | None, timeout: float) -> bool:
    """Wait until ``pids`` and the members of ``pgid`` have gone; False on timeout."""
    return _poll_until(
        lambda: (
            not any(pid_alive(pid) for pid in pids) and (pgid is None or not group_members(pgid))
        ),
        timeout,
    )


def wait_sessions_ended(master: int, timeout: float) -> bool:
    """Wait until the process group that ``master`` leads holds no process but
    ``master`` (its per-connection children have exited); False on timeout."""
    return _poll_until(
        lambda: all(pid == master for pid in group_members(master)), timeout, _POLL / 5
    )


def terminate(server: Server, grace: float = 5.0) -> None:
    """Stop one server tree: SIGTERM to its master, SIGKILL to what outlives ``grace``.

    The master passes SIGTERM on to its children. Anything still in the master's
    process group afterwards is killed by group id, which is the master's own pid.
    Finally our direct child is reaped so no zombie or ResourceWarning remains.
    """
    try:
        if server.master_alive():
            _signal_pid(server.pid, signal.SIGTERM)
            if not _wait_gone([server.pid], None, grace):
                _signal_group(server.pgid, signal.SIGKILL)
                _wait_gone([server.pid], None, grace)
        try:
            server.process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait(timeout=grace)
        # Children notice their master's death by themselves; give them a moment.
        if not _wait_gone([], server.pgid, grace):
            _signal_group(server.pgid, signal.SIGKILL)
            _wait_gone([], server.pgid, grace)
    finally:
        server.output.close()


#: PATH for the servers: the system's, plus the sbin directories their binaries live in.
SBIN_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/local/sbin", "/usr/sbin", "/sbin"])


def spawn(name: str, command: list[str], *, cwd: Path, log: Path) -> Server:
    """Start ``command`` in a session of its own, its output appended to ``log``."""
    output = log.open("ab")
    env = dict(os.environ, PATH=SBIN_PATH, LC_ALL="C")
    env.pop("MAIL_CONFIG", None)
    try:
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=cwd,
            start_new_session=True,
        )
    except BaseException:
        output.close()
        raise
    return Server(name, process, output, pid=process.pid, pgid=process.pid)


def wait_for_greetings(
    server: Server,
    probes: list[Probe],
    *,
    timeout: float,
    instance: str | None,
    log_tail: Callable[[], str],
    failed: Callable[[str], Exception],
    taken: Callable[[str], Exception],
) -> None:
    """Poll until every probe gets its greeting, naming ``instance`` when given.

    Raises ``failed(...)`` when the server dies or stays silent past ``timeout``, and
    ``taken(...)`` when a port answers with someone else's server (another greeting, or
    a certificate our CA did not sign).
    """
    waiting = list(probes)
    deadline = time.monotonic() + timeout
    while waiting:
        if not server.master_alive():
            raise failed(f"{server.name} exited during start-up\n" + log_tail())
        for probe in list(waiting):
            try:
                greeting = probe_greeting(probe)
            except ssl.SSLCertVerificationError as exc:
                raise taken(
                    f"{probe.name}: port {probe.port} presents a certificate our CA did not "
                    f"sign (address in use by someone else's server, or a broken setup): {exc}"
                ) from exc
            if greeting is None or not greeting.startswith(probe.greeting):
                continue  # nothing there yet, or a transient refusal
            if instance is not None and instance.encode() not in greeting:
                raise taken(
                    f"{probe.name}: port {probe.port} answers {greeting[:80]!r}, which is not "
                    f"our {server.name}: someone else listens there (address in use)"
                )
            waiting.remove(probe)
        if not waiting:
            return
        if time.monotonic() >= deadline:
            names = ", ".join(f"{probe.name}:{probe.port}" for probe in waiting)
            raise failed(
                f"{server.name} did not greet on {names} within {timeout:g}s\n" + log_tail()
            )
        time.sleep(_POLL)
