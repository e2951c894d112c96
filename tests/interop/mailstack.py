"""Private, loopback-only Postfix and Dovecot instances for interoperability tests.

:class:`MailStack` writes a complete configuration into a directory it is given and
starts its own Postfix and Dovecot, whose processes it owns and stops by pid. Of the
system-wide installation only the binaries are used: no ``/etc/postfix`` or
``/etc/dovecot`` configuration, no system queue, no system service.

How the pieces fit::

    client --submission (STARTTLS) / SMTPS--> Postfix smtpd --SASL socket--> Dovecot auth
                                                   |
                                             virtual(8) delivery, as user "mail"
                                                   v
                                     <dir>/mail/<user>/{new,cur,tmp}   (Maildir)
                                                   ^
    client --POP3 (STLS) / POP3S------------> Dovecot pop3, as user "mail"

Every listener binds the stack's loopback ``host``; Postfix relays nothing and makes
no DNS lookups. TLS uses :class:`src.testing.tls.TestCertificates`, so clients
verify the servers with :meth:`MailStack.client_ssl_context`. The files themselves
are rendered by :mod:`.mailconfig`, whose docstring lists the settings that matter.

The servers start as root (their masters switch users), and the directory must be
reachable by the unprivileged ``postfix``, ``dovecot`` and ``mail`` users. pytest's
``tmp_path`` lies under a private 0700 directory, so pass a directory made with
:func:`tempfile.mkdtemp` instead.
"""

from __future__ import annotations

import grp
import ipaddress
import os
import pwd
import re
import secrets
import shutil
import ssl
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from types import TracebackType

from src.testing.tls import LOOPBACK_NAMES, TestCertificates

from . import mailconfig
from .mailconfig import Layout
from .processes import (
    SBIN_PATH,
    Probe,
    Server,
    free_ports,
    parent_of,
    pid_alive,
    spawn,
    terminate,
    wait_for_greetings,
)

__all__ = ["INSTALL_HINT", "MailStack", "MailStackError", "server_versions", "servers_available"]

INSTALL_HINT = (
    "install them with `bash .ci/install-mail-servers.sh` (as root), or with "
    "`apt-get install postfix dovecot-core dovecot-pop3d` while a policy-rc.d keeps "
    "the system services from starting"
)

_BINARIES = ("postfix", "postconf", "dovecot", "doveconf")
_DOVECOT_LIBEXEC = (Path("/usr/lib/dovecot"), Path("/usr/libexec/dovecot"))
_ACCOUNTS = ("postfix", "dovecot", "dovenull")
_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
_DOMAIN = re.compile(r"[a-z0-9-]+(\.[a-z0-9-]+)+")
_SUN_PATH_MAX = 107  # sockaddr_un.sun_path holds 108 bytes with the terminating NUL
_PORT_NAMES = (
    "submission",
    "smtps",
    "limited",
    "plain",
    "pop3",
    "pop3s",
    "accepting",
    "unchunked",
)
_PORT_ATTEMPTS = 3
_IN_USE = "Address already in use"
_POLL = 0.05


class MailStackError(RuntimeError):
    """The private servers could not be configured, started, reached or stopped."""


class _PortTaken(MailStackError):
    """Another server answered on a port chosen for ours."""


def _which(name: str) -> str | None:
    return shutil.which(name, path=SBIN_PATH)


def _require(name: str) -> str:
    path = _which(name)
    if path is None:
        raise MailStackError(f"{name} is not installed; {INSTALL_HINT}")
    return path


def _output(*args: str) -> str:
    done = subprocess.run(args, capture_output=True, text=True, timeout=30, check=False)
    return (done.stdout or done.stderr).strip()


def server_versions() -> dict[str, str]:
    """The installed versions, e.g. ``{"postfix": "3.7.11", "dovecot": "2.3.19.1"}``."""
    return {
        "postfix": _output(_require("postconf"), "-d", "-h", "mail_version"),
        "dovecot": _output(_require("dovecot"), "--version").split()[0],
    }


def servers_available() -> tuple[bool, str]:
    """Whether a :class:`MailStack` can run here; the reason says how to fix it if not."""
    missing = [name for name in _BINARIES if _which(name) is None]
    if missing:
        return False, f"mail server binaries not found ({', '.join(missing)}); {INSTALL_HINT}"
    if not any((directory / "pop3-login").exists() for directory in _DOVECOT_LIBEXEC):
        return False, f"Dovecot's POP3 server (package dovecot-pop3d) is missing; {INSTALL_HINT}"
    for account in _ACCOUNTS:
        try:
            pwd.getpwnam(account)
        except KeyError:
            return False, f"system user {account!r} is missing; {INSTALL_HINT}"
    try:
        grp.getgrnam("postdrop")
    except KeyError:
        return False, f"system group 'postdrop' is missing; {INSTALL_HINT}"
    if os.geteuid() != 0:
        return False, "the private Postfix and Dovecot masters must be started as root"
    versions = server_versions()
    return True, f"postfix {versions['postfix']}, dovecot {versions['dovecot']}"


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text)[:3])


def _make_dir(path: Path, mode: int = 0o755, owner: tuple[int, int] | None = None) -> None:
    path.mkdir(parents=True, exist_ok=True)
    if owner is not None:
        os.chown(path, *owner)
    path.chmod(mode)


class MailStack:
    """Private Postfix (SMTP submission) and Dovecot (POP3) on loopback ports.

    Use it as a context manager, or call :meth:`start` and :meth:`stop`::

        with MailStack(Path(tempfile.mkdtemp()), certs) as stack:
            with smtplib.SMTP(stack.host, stack.smtp_submission_port) as smtp:
                smtp.starttls(context=stack.client_ssl_context())
                smtp.login("alice", stack.users["alice"])

    Listeners, on ports chosen at start:

    * ``smtp_submission_port``: STARTTLS required, then AUTH PLAIN/LOGIN, then mail.
    * ``smtps_port``: the same behind implicit TLS.
    * ``limited_submission_port``: like submission, with a message size limit of
      ``limited_message_size`` bytes (advertised as SIZE; bigger mail gets 552 5.3.4).
    * ``smtp_plain_port``: like a domain's MX on port 25: plain text is fine
      (STARTTLS is offered, not required), there is no AUTH, and only mail for the
      stack's own domain is taken.
    * ``smtp_accepting_port``: like submission, but mail for unknown local recipients
      is accepted and bounced afterwards (a DSN to the sender, 5.1.1).
    * ``unchunked_submission_port``: like submission, without CHUNKING in the EHLO
      reply, so mail goes with pipelined MAIL, RCPT and DATA.
    * ``pop3_port``: POP3 with STLS. ``pop3s_port``: POP3 behind implicit TLS.

    ``users`` maps account names to passwords (log in with the name or the full
    address; by default alice, bob and carol with random passwords). Mail to them
    lands in :meth:`maildir`, except that RCPT to a ``full_mailboxes`` account (by
    default carol) gets 552 5.2.2, as for a mailbox over its size limit. Accounts in
    ``locked_sessions`` (by default carol) allow one POP3 session at a time: a second
    login waits up to 10 s for the first to end, then gets ``-ERR [IN-USE]``.
    Everyone else may hold concurrent sessions, as Dovecot allows by default.

    ``milters`` is Postfix's ``smtpd_milters`` (say ``"inet:127.0.0.1:8891"`` for an
    OpenDKIM verifier the test runs); mail is refused with 451 while a filter is down.
    ``reuse_processes`` runs Dovecot's login and pop3 processes in its high-performance
    mode (each serves many sessions) instead of one new process per session.
    """

    def __init__(
        self,
        directory: Path,
        certificates: TestCertificates | None = None,
        *,
        host: str = "127.0.0.1",
        domain: str = "example.test",
        users: Mapping[str, str] | None = None,
        full_mailboxes: Iterable[str] | None = None,
        locked_sessions: Iterable[str] | None = None,
        message_size_limit: int = 10 * 1024 * 1024,
        limited_message_size: int = 64 * 1024,
        mail_user: str = "mail",
        startup_timeout: float = 30.0,
        milters: str = "",
        reuse_processes: bool = False,
    ) -> None:
        self._servers: list[Server] = []
        self._ports: dict[str, int] = {}
        # Named in every greeting, so a probe can tell our servers from someone
        # else's that might have grabbed one of our ports first.
        self._instance = f"mailstack-{secrets.token_hex(6)}"
        self.directory = Path(directory).resolve()
        address = ipaddress.ip_address(host)
        if address.version != 4 or not address.is_loopback:
            raise ValueError(f"the stack listens on an IPv4 loopback address only, not {host}")
        self.host = str(address)
        certificates = certificates if certificates is not None else TestCertificates()
        if self.host not in LOOPBACK_NAMES:
            # Same CA, so the same client contexts verify it; a name that matches.
            server_cert = certificates.ca.issue_cert(self.host, *LOOPBACK_NAMES)
            certificates = TestCertificates(ca=certificates.ca, server_cert=server_cert)
        self.certificates = certificates
        self.domain = domain.lower()
        if users is None:
            users = {name: secrets.token_urlsafe(12) for name in ("alice", "bob", "carol")}
        self.users: dict[str, str] = dict(users)
        if full_mailboxes is None:
            full_mailboxes = {"carol"} & self.users.keys()
        self.full_mailboxes: frozenset[str] = frozenset(full_mailboxes)
        if locked_sessions is None:
            locked_sessions = {"carol"} & self.users.keys()
        self.locked_sessions: frozenset[str] = frozenset(locked_sessions)
        self.message_size_limit = message_size_limit
        self.limited_message_size = limited_message_size
        self.startup_timeout = startup_timeout
        self.milters = milters
        self.reuse_processes = reuse_processes
        try:
            account = pwd.getpwnam(mail_user)
        except KeyError:
            raise ValueError(f"no such system user for the maildirs: {mail_user!r}") from None
        self.mail_uid, self.mail_gid = account.pw_uid, account.pw_gid
        self._validate()

    def _validate(self) -> None:
        if not _DOMAIN.fullmatch(self.domain):
            raise ValueError(f"not a plain domain name: {self.domain!r}")
        if not self.users:
            raise ValueError("at least one user is needed")
        for name, password in self.users.items():
            if not _NAME.fullmatch(name):
                raise ValueError(f"user names are lower-case letters, digits, '._-': {name!r}")
            if not password or any(ch in password for ch in ":\r\n\t "):
                raise ValueError(f"the password of {name!r} must be non-empty, no ':' or space")
        if not self.full_mailboxes <= self.users.keys():
            raise ValueError("full_mailboxes must name existing users")
        if not self.locked_sessions <= self.users.keys():
            raise ValueError("locked_sessions must name existing users")
        if any(ch in self.milters for ch in "\r\n"):
            raise ValueError("milters is one line of Postfix's smtpd_milters syntax")
        if not 0 < self.limited_message_size < self.message_size_limit:
            raise ValueError("need 0 < limited_message_size < message_size_limit")

    # -- public API ----------------------------------------------------------------

    def __enter__(self) -> MailStack:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        ports = ", ".join(f"{name}={port}" for name, port in self._ports.items())
        pids = ", ".join(f"{server.name}={server.pid}" for server in self._servers)
        state = f"ports: [{ports}] pids: [{pids}]" if self.running else "stopped"
        return f"<MailStack {self.host} {state}>"

    @property
    def running(self) -> bool:
        """Whether the servers have been started and not stopped."""
        return bool(self._servers)

    def _port(self, name: str) -> int:
        if not self.running:
            raise RuntimeError("the mail stack is not running")
        return self._ports[name]

    @property
    def smtp_submission_port(self) -> int:
        """SMTP submission: STARTTLS required, AUTH required to send."""
        return self._port("submission")

    @property
    def smtps_port(self) -> int:
        """SMTP submission behind implicit TLS."""
        return self._port("smtps")

    @property
    def limited_submission_port(self) -> int:
        """Submission with ``message_size_limit = limited_message_size``."""
        return self._port("limited")

    @property
    def smtp_plain_port(self) -> int:
        """Plain SMTP like a domain's MX: no AUTH, STARTTLS optional, local mail only."""
        return self._port("plain")

    @property
    def smtp_accepting_port(self) -> int:
        """Submission (STARTTLS, AUTH) that accepts mail for unknown local recipients and
        bounces it after the transaction, so the sender gets a delivery status
        notification, as from a server that checks recipients only at delivery."""
        return self._port("accepting")

    @property
    def unchunked_submission_port(self) -> int:
        """Submission without CHUNKING: PIPELINING and SIZE, and the body after DATA."""
        return self._port("unchunked")

    @property
    def pop3_port(self) -> int:
        """POP3; STLS upgrades to TLS."""
        return self._port("pop3")

    @property
    def pop3s_port(self) -> int:
        """POP3 behind implicit TLS."""
        return self._port("pop3s")

    @property
    def pids(self) -> dict[str, int]:
        """The master daemon pid of each running server."""
        return {server.name: server.pid for server in self._servers}

    @property
    def ca_file(self) -> Path:
        """PEM file of the CA that signed the servers' certificate (after start)."""
        return self.directory / "tls" / "ca.pem"

    def address(self, user: str) -> str:
        """The e-mail address of ``user`` in the stack's domain."""
        return f"{user}@{self.domain}"

    def client_ssl_context(self) -> ssl.SSLContext:
        """A verifying client context that trusts the stack's CA."""
        return self.certificates.client_context()

    def maildir(self, user: str) -> Path:
        """The Maildir of ``user`` (with ``new``, ``cur`` and ``tmp`` inside)."""
        if user not in self.users:
            raise KeyError(f"unknown user {user!r}")
        return self.directory / "mail" / user

    def messages(self, user: str) -> list[Path]:
        """The message files now in the Maildir of ``user`` (``new`` and ``cur``)."""
        found: list[Path] = []
        for sub in ("new", "cur"):
            folder = self.maildir(user) / sub
            if folder.is_dir():
                found.extend(p for p in folder.iterdir() if not p.name.startswith("."))
        return sorted(found, key=lambda p: p.name)

    def wait_for_delivery(self, user: str, count: int = 1, timeout: float = 10.0) -> list[Path]:
        """Poll the Maildir of ``user`` until it holds ``count`` messages; return them all.

        Raises :class:`TimeoutError`, with the tail of the server logs, when fewer
        than ``count`` messages are there after ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        while True:
            found = self.messages(user)
            if len(found) >= count:
                return found
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"{user}: {len(found)} of {count} messages after {timeout:g}s\n"
                    + self.log_tail()
                )
            time.sleep(_POLL)

    def clear_mailbox(self, user: str) -> None:
        """Delete every message in the Maildir of ``user``."""
        for path in self.messages(user):
            path.unlink(missing_ok=True)

    def log_mark(self) -> dict[Path, int]:
        """The current size of each server log, for :meth:`log_since`."""
        return self._log_sizes()

    def log_since(self, mark: Mapping[Path, int]) -> str:
        """What the servers have logged since :meth:`log_mark` returned ``mark``."""
        return self._log_text_since(dict(mark))

    def deposit(self, user: str, message: bytes) -> Path:
        """Put ``message`` straight into the Maildir of ``user``, as a delivery would.

        For mailboxes that Postfix will not deliver to (the full ones). The file is
        written under ``tmp`` and then moved into ``new``, owned by the mail user.
        """
        folder = self.maildir(user)
        name = f"{time.time_ns()}.{secrets.token_hex(6)}.mailstack"
        temporary = folder / "tmp" / name
        temporary.write_bytes(message)
        os.chown(temporary, self.mail_uid, self.mail_gid)
        temporary.chmod(0o600)
        final = folder / "new" / name
        temporary.rename(final)
        return final

    def log_tail(self, lines: int = 30) -> str:
        """The last ``lines`` lines of each server log, for error messages."""
        parts = []
        for path in sorted((self.directory / "logs").glob("*.log")):
            text = path.read_text(errors="replace").splitlines()[-lines:]
            parts.append(f"--- {path.name} ---\n" + "\n".join(text))
        return "\n".join(parts)

    def start(self) -> MailStack:
        """Write the configuration, start Dovecot then Postfix, wait until all greet.

        If a chosen port is taken by someone else before a server binds it, the
        start is tried again with fresh ports (three times at most).
        """
        if self.running:
            raise RuntimeError("the mail stack is already running")
        self._check_reachable()
        self._prepare_tree()
        for attempt in range(1, _PORT_ATTEMPTS + 1):
            self._ports = dict(
                zip(_PORT_NAMES, free_ports(len(_PORT_NAMES), self.host), strict=True)
            )
            marks = self._log_sizes()
            try:
                self._start_dovecot()
                self._start_postfix()
                return self
            except MailStackError as exc:
                self.stop()
                clash = isinstance(exc, _PortTaken) or _IN_USE in self._log_text_since(marks)
                if clash and attempt < _PORT_ATTEMPTS:
                    continue
                raise
            except BaseException:
                self.stop()
                raise
        raise AssertionError("unreachable")

    def stop(self) -> None:
        """Stop the servers by pid, Postfix first. Safe to call more than once."""
        servers, self._servers = self._servers, []
        errors: list[Exception] = []
        for server in reversed(servers):
            try:
                terminate(server)
            except Exception as exc:  # go on stopping the others
                errors.append(exc)
        if errors:
            raise MailStackError(f"could not stop every server: {errors!r}")

    # -- files ---------------------------------------------------------------------

    def _layout(self) -> Layout:
        return Layout(
            root=self.directory,
            host=self.host,
            domain=self.domain,
            users=self.users,
            full_mailboxes=self.full_mailboxes,
            mail_uid=self.mail_uid,
            mail_gid=self.mail_gid,
            message_size_limit=self.message_size_limit,
            limited_message_size=self.limited_message_size,
            instance_name=self._instance,
            ports=dict(self._ports),
            locked_sessions=self.locked_sessions,
            milters=self.milters,
            reuse_processes=self.reuse_processes,
        )

    def _check_reachable(self) -> None:
        """Refuse a directory that the servers' unprivileged users could not enter."""
        for parent in self.directory.parents:
            if parent.exists() and not parent.stat().st_mode & 0o001:
                raise MailStackError(
                    f"{parent} is not searchable by other users, so the postfix, dovecot "
                    f"and mail users could not reach {self.directory}; use a directory "
                    "made with tempfile.mkdtemp() (pytest's tmp_path is private)"
                )
        socket_path = self._layout().sasl_socket
        if len(os.fsencode(socket_path)) > _SUN_PATH_MAX:
            raise MailStackError(f"directory path too long for a unix socket: {socket_path}")

    def _prepare_tree(self) -> None:
        """Directories, certificates, accounts and Maildirs, with their owners."""
        layout = self._layout()
        _make_dir(self.directory)
        for folder in (layout.logs, layout.sasl_socket.parent, layout.dovecot / "run"):
            _make_dir(folder)
        _make_dir(layout.dovecot / "state")
        self.certificates.write_files(layout.tls_cert.parent)
        layout.tls_cert.parent.chmod(0o755)

        passwd = layout.dovecot / "users"
        passwd.write_text(mailconfig.dovecot_passwd(layout))
        os.chown(passwd, 0, grp.getgrnam("dovecot").gr_gid)
        passwd.chmod(0o640)

        owner = (self.mail_uid, self.mail_gid)
        _make_dir(layout.mail, 0o700, owner)
        for user in self.users:
            for sub in ("", "new", "cur", "tmp"):
                _make_dir(layout.mail / user / sub, 0o700, owner)

        # Postfix fills in the root-owned queue directory on start; its data
        # directory belongs to the mail_owner.
        postfix = pwd.getpwnam("postfix")
        _make_dir(layout.postfix_etc)
        _make_dir(layout.postfix_spool)
        _make_dir(layout.postfix_data, 0o700, (postfix.pw_uid, postfix.pw_gid))

    def _write(self, path: Path, text: str) -> None:
        path.write_text(text)
        path.chmod(0o644)
        # Postfix waits in 300 ms steps until a file it reads is a second or two old
        # (in case it is still being written). Backdating saves seconds per start.
        past = time.time() - 60
        os.utime(path, (past, past))

    def _log_sizes(self) -> dict[Path, int]:
        return {path: path.stat().st_size for path in (self.directory / "logs").glob("*.log")}

    def _log_text_since(self, sizes: dict[Path, int]) -> str:
        text = []
        for path in (self.directory / "logs").glob("*.log"):
            with path.open("rb") as handle:
                handle.seek(sizes.get(path, 0))
                text.append(handle.read().decode(errors="replace"))
        return "".join(text)

    # -- servers -------------------------------------------------------------------

    def _start_dovecot(self) -> None:
        layout = self._layout()
        conf = layout.dovecot / "dovecot.conf"
        self._write(conf, mailconfig.dovecot_conf(layout))
        server = self._spawn("dovecot", [_require("dovecot"), "-F", "-c", str(conf)])
        self._servers.append(server)
        tls = self.client_ssl_context()
        self._wait_ready(
            server,
            [
                Probe("pop3", self.host, self._ports["pop3"], b"+OK"),
                Probe("pop3s", self.host, self._ports["pop3s"], b"+OK", tls),
            ],
        )

    def _start_postfix(self) -> None:
        layout = self._layout()
        renderers: dict[str, Callable[[Layout], str]] = {
            "main.cf": mailconfig.postfix_main_cf,
            "master.cf": mailconfig.postfix_master_cf,
            "virtual_mailboxes": mailconfig.postfix_virtual_mailboxes,
            "full_mailboxes": mailconfig.postfix_full_mailboxes,
        }
        for name, render in renderers.items():
            self._write(layout.postfix_etc / name, render(layout))
        # start-fg (Postfix 3.3+) keeps the master attached to a process we started.
        foreground = _version_tuple(server_versions()["postfix"]) >= (3, 3)
        command = [_require("postfix"), "-c", str(layout.postfix_etc)]
        server = self._spawn("postfix", [*command, "start-fg" if foreground else "start"])
        self._servers.append(server)
        try:
            master = self._postfix_master_pid(server, foreground)
        except MailStackError as exc:
            raise MailStackError(f"{exc}\n--- postfix check ---\n{self._postfix_check()}") from None
        server.pid = server.pgid = master  # the master leads its own session
        server.detached = not foreground
        tls = self.client_ssl_context()
        self._wait_ready(
            server,
            [
                Probe("submission", self.host, self._ports["submission"], b"220"),
                Probe("smtps", self.host, self._ports["smtps"], b"220", tls),
                Probe("limited", self.host, self._ports["limited"], b"220"),
                Probe("plain", self.host, self._ports["plain"], b"220"),
                Probe("accepting", self.host, self._ports["accepting"], b"220"),
            ],
        )

    def _postfix_master_pid(self, server: Server, foreground: bool) -> int:
        """Read the master's pid file and make sure it names a master we started.

        Unless it runs as pid 1, ``postfix start-fg`` keeps its shell script in front
        and runs the master as that script's child; plain ``postfix start`` (before
        3.3) lets the master detach, so only the pid file knows it.
        """
        pid_file = self._layout().postfix_spool / "pid" / "master.pid"
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            status = server.process.poll()
            if status is not None and (foreground or status != 0):
                break
            try:
                pid = int(pid_file.read_text().split()[0])
            except (OSError, ValueError, IndexError):
                pid = 0
            ours = not foreground or parent_of(pid) == server.process.pid
            if pid and pid_alive(pid) and ours:
                return pid
            time.sleep(_POLL)
        raise MailStackError("Postfix did not start its master daemon\n" + self.log_tail())

    def _postfix_check(self) -> str:
        """What ``postfix check`` says about the configuration.

        Errors found before the master runs (a bad main.cf, say) go to syslog, or to
        stderr when that is a terminal, never to ``maillog_file``; so give the
        command a pseudo-terminal to write to.
        """
        command = [_require("postfix"), "-c", str(self._layout().postfix_etc), "check"]
        leader, follower = os.openpty()
        try:
            with subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=follower, stderr=follower
            ) as process:
                os.close(follower)
                follower = -1
                chunks = []
                while True:
                    try:
                        chunk = os.read(leader, 4096)
                    except OSError:  # EIO: the other side has closed
                        break
                    if not chunk:
                        break
                    chunks.append(chunk)
                process.wait(timeout=30)
        finally:
            os.close(leader)
            if follower != -1:
                os.close(follower)
        return b"".join(chunks).decode(errors="replace").strip() or "(no complaints)"

    def _spawn(self, name: str, command: list[str]) -> Server:
        return spawn(
            name, command, cwd=self.directory, log=self.directory / "logs" / f"{name}-console.log"
        )

    def _wait_ready(self, server: Server, probes: list[Probe]) -> None:
        """Poll until every probe gets its greeting; fail early if the server dies."""
        wait_for_greetings(
            server,
            probes,
            timeout=self.startup_timeout,
            instance=self._instance,
            log_tail=self.log_tail,
            failed=MailStackError,
            taken=_PortTaken,
        )
