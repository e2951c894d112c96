"""Private, loopback-only OpenSMTPD, Exim and GNU Mailutils pop3d for the interop tests.

They run beside the :class:`~.mailstack.MailStack` of the session, in the same style:
configuration written to a directory of their own, listeners on free loopback ports,
the master started as our child in its own session and stopped by its pid
(:func:`.processes.terminate`).

* :class:`OpenSMTPD` and :class:`Exim` deliver into the stack's Maildirs, as the mail
  user, so the stack's helpers (``delivered()``, ``messages()``) and its Dovecot read
  their mail back. Both accept mail only for the stack's domain and for its users;
  nothing is relayed and no DNS lookup is made.
* :class:`MailutilsPOP3` serves mbox files of its own (``<dir>/mail/<user>/INBOX``)
  for users in a virtual domain, so they log in as ``alice@example.test``.

OpenSMTPD and Exim are not installed as Debian packages (their packages conflict with
Postfix's): ``.ci/install-extra-servers.sh`` unpacks them below :data:`MTA_PREFIX`.
OpenSMTPD keeps its queue in ``/var/spool/smtpd`` and its control socket in
``/var/run/smtpd.sock`` (both compiled in), so only one can run per machine.
"""

from __future__ import annotations

import os
import pwd
import re
import secrets
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

import trustme

from src.testing.tls import LOOPBACK_NAMES, TestCertificates

from .mailstack import MailStack
from .processes import (
    SBIN_PATH,
    Probe,
    Server,
    free_ports,
    spawn,
    terminate,
    wait_for_greetings,
    wait_sessions_ended,
)

__all__ = [
    "EXIM",
    "EXTRA_INSTALL_HINT",
    "MTA_PREFIX",
    "SMTPD",
    "Exim",
    "ExtraServerError",
    "MailutilsPOP3",
    "OpenSMTPD",
    "exim_available",
    "opensmtpd_available",
    "pop3d_available",
]

EXTRA_INSTALL_HINT = "install them with `sudo bash .ci/install-extra-servers.sh`"

MTA_PREFIX = Path("/opt/mailhandlers-mtas")
SMTPD = MTA_PREFIX / "opensmtpd" / "usr" / "sbin" / "smtpd"
SMTPCTL = MTA_PREFIX / "opensmtpd" / "usr" / "sbin" / "smtpctl"
EXIM = MTA_PREFIX / "exim4-daemon-light" / "usr" / "sbin" / "exim4"
OPENSMTPD_LIBEXEC = Path("/usr/libexec/opensmtpd")
OPENSMTPD_SPOOL = Path("/var/spool/smtpd")
OPENSMTPD_CONTROL = Path("/var/run/smtpd.sock")
_POLL = 0.05


class ExtraServerError(RuntimeError):
    """One of the extra servers could not be configured, started or reached."""


def _missing_accounts(*names: str) -> list[str]:
    missing = []
    for name in names:
        try:
            pwd.getpwnam(name)
        except KeyError:
            missing.append(name)
    return missing


def _root_check() -> tuple[bool, str] | None:
    if os.geteuid() != 0:
        return False, "the extra mail servers' masters must be started as root"
    return None


def opensmtpd_available() -> tuple[bool, str]:
    """Whether :class:`OpenSMTPD` can run here; the reason says how to fix it if not."""
    if not SMTPD.exists() or not (OPENSMTPD_LIBEXEC / "mail.maildir").exists():
        return False, f"OpenSMTPD is not unpacked in {MTA_PREFIX}; {EXTRA_INSTALL_HINT}"
    if not OPENSMTPD_SPOOL.is_dir():
        return False, f"OpenSMTPD's spool {OPENSMTPD_SPOOL} is missing; {EXTRA_INSTALL_HINT}"
    missing = _missing_accounts("opensmtpd", "opensmtpq")
    if missing:
        return False, f"system users {missing} are missing; {EXTRA_INSTALL_HINT}"
    return _root_check() or (True, "opensmtpd")


def exim_available() -> tuple[bool, str]:
    """Whether :class:`Exim` can run here."""
    if not EXIM.exists():
        return False, f"Exim is not unpacked in {MTA_PREFIX}; {EXTRA_INSTALL_HINT}"
    missing = _missing_accounts("Debian-exim")
    if missing:
        return False, f"system user {missing} is missing; {EXTRA_INSTALL_HINT}"
    return _root_check() or (True, "exim")


def pop3d_available() -> tuple[bool, str]:
    """Whether :class:`MailutilsPOP3` can run here."""
    if shutil.which("pop3d", path=SBIN_PATH) is None:
        return False, f"GNU Mailutils' pop3d is not installed; {EXTRA_INSTALL_HINT}"
    if shutil.which("openssl") is None:
        return False, "openssl (for password hashes) is not installed"
    return _root_check() or (True, "pop3d")


def _crypt(password: str) -> str:
    """A SHA-512 crypt(3) hash, as OpenSMTPD and Mailutils check passwords."""
    done = subprocess.run(
        ["openssl", "passwd", "-6", "-stdin"],
        input=password,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return done.stdout.strip()


class _PrivateServer:
    """What the three servers share: a directory, ports, one master process, logs."""

    name = "server"
    port_names: tuple[str, ...] = ()
    greeting = b"220"

    def __init__(
        self, directory: Path, certificates: TestCertificates, *, startup_timeout: float = 20.0
    ) -> None:
        self.directory = Path(directory).resolve()
        self.host = "127.0.0.1"
        self.certificates = certificates
        self.startup_timeout = startup_timeout
        self.instance = f"{self.name}-{secrets.token_hex(6)}"
        self.ports: dict[str, int] = {}
        self._server: Server | None = None

    def __enter__(self) -> _PrivateServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        pid = self._server.pid if self._server else None
        return f"<{type(self).__name__} {self.host} ports={self.ports} pid={pid}>"

    @property
    def pid(self) -> int:
        if self._server is None:
            raise RuntimeError(f"{self.name} is not running")
        return self._server.pid

    @property
    def logs(self) -> Path:
        return self.directory / "logs"

    def client_ssl_context(self) -> ssl.SSLContext:
        return self.certificates.client_context()

    def wait_idle(self, timeout: float = 10.0) -> None:
        """Wait until the master has no session processes left.

        A session process may still be writing its mailbox after its client has gone
        (a dropped connection is noticed by the server a moment later), so what a test
        reads or writes in the mailbox between sessions waits for this first.
        """
        if self._server is not None and not wait_sessions_ended(self._server.pid, timeout):
            raise TimeoutError(f"{self.name} still has sessions after {timeout} s")

    def log_mark(self) -> dict[Path, int]:
        return {path: path.stat().st_size for path in self.logs.glob("*log")}

    def log_since(self, mark: Mapping[Path, int]) -> str:
        text = []
        for path in sorted(self.logs.glob("*log")):
            with path.open("rb") as handle:
                handle.seek(mark.get(path, 0))
                text.append(handle.read().decode(errors="replace"))
        return "".join(text)

    def log_tail(self, lines: int = 30) -> str:
        parts = []
        for path in sorted(self.logs.glob("*log")):
            text = path.read_text(errors="replace").splitlines()[-lines:]
            parts.append(f"--- {self.name}: {path.name} ---\n" + "\n".join(text))
        return "\n".join(parts)

    def wait_for_log(self, mark: Mapping[Path, int], pattern: str, timeout: float = 10.0) -> str:
        """Poll the logs written since ``mark`` until ``pattern`` matches; return the line."""
        compiled = re.compile(pattern, re.MULTILINE)
        deadline = time.monotonic() + timeout
        while True:
            match = compiled.search(self.log_since(mark))
            if match is not None:
                return match.group(0)
            if time.monotonic() >= deadline:
                raise TimeoutError(f"no log line matching {pattern!r}\n" + self.log_tail())
            time.sleep(_POLL)

    def start(self) -> None:
        if self._server is not None:
            raise RuntimeError(f"{self.name} is already running")
        for attempt in (1, 2, 3):
            self.ports = dict(
                zip(self.port_names, free_ports(len(self.port_names), self.host), strict=True)
            )
            self.logs.mkdir(parents=True, exist_ok=True)
            command = self._prepare()
            self._server = self._spawn(command)
            try:
                self._wait_ready()
                return
            except ExtraServerError as exc:
                self.stop()
                if "in use" in str(exc).lower() and attempt < 3:
                    continue
                raise
            except BaseException:
                self.stop()
                raise

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            terminate(server)

    # -- for the subclasses ------------------------------------------------------

    def _write_tls(self, key_owner: int | None = None) -> dict[str, Path]:
        tls = self.directory / "tls"
        paths = self.certificates.write_files(tls)
        tls.chmod(0o755)
        if key_owner is not None:
            os.chown(paths["key"], key_owner, -1)
        return paths

    def _prepare(self) -> list[str]:
        """Write the configuration; return the command that runs the master."""
        raise NotImplementedError

    def _probes(self) -> list[Probe]:
        raise NotImplementedError

    def _spawn(self, command: list[str]) -> Server:
        return spawn(
            self.name, command, cwd=self.directory, log=self.logs / f"{self.name}-console.log"
        )

    def _wait_ready(self) -> None:
        assert self._server is not None
        wait_for_greetings(
            self._server,
            self._probes(),
            timeout=self.startup_timeout,
            instance=self.instance if self._names_instance else None,
            log_tail=self.log_tail,
            failed=ExtraServerError,
            taken=ExtraServerError,
        )

    _names_instance = True


class _MTA(_PrivateServer):
    """An MTA that delivers into the Maildirs of a running :class:`MailStack`."""

    def __init__(self, directory: Path, stack: MailStack, **options: float) -> None:
        super().__init__(directory, stack.certificates, **options)
        self.stack = stack
        self.domain = stack.domain
        # Accepted recipients: the stack's users except its "full" ones.
        self.users = {u: p for u, p in stack.users.items() if u not in stack.full_mailboxes}

    def port(self, name: str) -> int:
        if self._server is None:
            raise RuntimeError(f"{self.name} is not running")
        return self.ports[name]

    def address(self, user: str) -> str:
        return self.stack.address(user)


class OpenSMTPD(_MTA):
    """OpenSMTPD 6.8 with three listeners, configured as a small mail host would be.

    * ``plain``: like an MX on port 25: STARTTLS offered, no AUTH, local mail only.
    * ``submission``: STARTTLS required (``tls-require``), then AUTH.
    * ``smtps``: implicit TLS, then AUTH.

    Everything else is OpenSMTPD's default, notably its limit of 100 messages per
    session, after which every ``MAIL FROM`` gets ``452 4.5.3``. Mail for the stack's
    users goes to their Maildirs (``mail.maildir``, as the mail user); any other
    recipient gets ``550 Invalid recipient`` and unknown users of the domain get
    ``524 5.2.4``.

    The server certificate is RSA (our CA still signs it): OpenSMTPD's privilege-
    separated key process cannot sign with an ECDSA key under OpenSSL 3.
    """

    name = "opensmtpd"
    port_names = ("plain", "submission", "smtps")

    def __init__(self, directory: Path, stack: MailStack, **options: float) -> None:
        super().__init__(directory, stack, **options)
        rsa = stack.certificates.ca.issue_cert(*LOOPBACK_NAMES, key_type=trustme.KeyType.RSA)
        self.certificates = TestCertificates(ca=stack.certificates.ca, server_cert=rsa)

    def _prepare(self) -> list[str]:
        d = self.directory
        paths = self._write_tls()
        mail = self.stack.directory / "mail"
        tables = {
            "creds": "".join(f"{u} {_crypt(p)}\n" for u, p in sorted(self.users.items())),
            "recipients": "".join(f"{self.address(u)} mail\n" for u in sorted(self.users)),
            "mailusers": f"mail {self.stack.mail_uid}:{self.stack.mail_gid}:{mail}\n",
        }
        for name, text in tables.items():
            (d / name).write_text(text)
            (d / name).chmod(0o640)
        hostname = f"{self.instance}.{self.domain}"
        conf = f"""\
# Written by the interop tests: a private, loopback-only OpenSMTPD.
pki testpki cert "{paths["cert"]}"
pki testpki key "{paths["key"]}"
table creds file:{d / "creds"}
table recipients file:{d / "recipients"}
table mailusers file:{d / "mailusers"}
smtp max-message-size {self.stack.message_size_limit}

listen on {self.host} port {self.ports["plain"]} tls pki testpki hostname {hostname}
listen on {self.host} port {self.ports["submission"]} tls-require pki testpki \\
    auth <creds> hostname {hostname}
listen on {self.host} port {self.ports["smtps"]} smtps pki testpki \\
    auth <creds> hostname {hostname}

action "deliver" maildir "{mail}/%{{rcpt.user}}" virtual <recipients> userbase <mailusers>
match from any for domain "{self.domain}" action "deliver"
match auth from any for domain "{self.domain}" action "deliver"
"""
        config = d / "smtpd.conf"
        config.write_text(conf)
        config.chmod(0o644)
        checked = subprocess.run(
            [str(SMTPD), "-n", "-f", str(config)],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        if checked.returncode != 0:
            raise ExtraServerError(f"smtpd.conf refused: {checked.stderr or checked.stdout}")
        if OPENSMTPD_CONTROL.exists() and _socket_in_use(OPENSMTPD_CONTROL):
            raise ExtraServerError(f"another OpenSMTPD runs here ({OPENSMTPD_CONTROL} answers)")
        # -d: stay in the foreground and log to stderr (our console log).
        return [str(SMTPD), "-d", "-f", str(config)]

    def _probes(self) -> list[Probe]:
        return [
            Probe("plain", self.host, self.ports["plain"], b"220"),
            Probe("submission", self.host, self.ports["submission"], b"220"),
        ]


def _socket_in_use(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        try:
            sock.connect(str(path))
        except OSError:
            return False
        return True


class Exim(_MTA):
    """Exim 4.96 (exim4-daemon-light, GnuTLS) with four listeners.

    * ``plain``: like an MX: STARTTLS offered, no AUTH, local mail only.
    * ``submission``: STARTTLS, then AUTH PLAIN/LOGIN (advertised only under TLS).
    * ``smtps``: implicit TLS, then AUTH.
    * ``limited``: like ``plain``, but ``smtp_accept_max_per_connection`` is
      ``limited_messages`` instead of Exim's default 1,000, so the 421 that ends
      a busy session comes after a few messages rather than a thousand.

    Exim advertises PIPELINING, CHUNKING and SMTPUTF8; mail to the non-ASCII address
    ``utf8_local_part`` (``jörg@<domain>``) goes to the first user's (alice's) Maildir.
    It runs as the mail user
    (``exim_user``), so it can write the stack's Maildirs; with ``-C`` it gives up
    root for its re-executions anyway.
    """

    name = "exim"
    port_names = ("plain", "submission", "smtps", "limited")

    def __init__(
        self, directory: Path, stack: MailStack, *, limited_messages: int = 20, **options: float
    ) -> None:
        super().__init__(directory, stack, **options)
        self.limited_messages = limited_messages
        self.utf8_local_part = "jörg"

    def _prepare(self) -> list[str]:
        d = self.directory
        uid, gid = self.stack.mail_uid, self.stack.mail_gid
        paths = self._write_tls(key_owner=uid)
        for sub in ("spool", "logs"):
            (d / sub).mkdir(parents=True, exist_ok=True)
            os.chown(d / sub, uid, gid)
        passwords = d / "passwords"
        passwords.write_text("".join(f"{u}: {p}\n" for u, p in sorted(self.users.items())))
        os.chown(passwords, uid, gid)
        passwords.chmod(0o600)
        p = self.ports
        mail = self.stack.directory / "mail"
        local_parts = " : ".join(sorted(self.users))
        password_of = "${lookup{${sg{%s}{@.*}{}}}lsearch{" + str(passwords) + "}{$value}{:}}"
        conf = f"""\
# Written by the interop tests: a private, loopback-only Exim.
exim_path = {EXIM}
exim_user = {uid}
exim_group = {gid}
never_users = root
spool_directory = {d / "spool"}
log_file_path = {d / "logs"}/%slog
pid_file_path = {d / "exim.pid"}
primary_hostname = mx.{self.domain}
smtp_banner = $primary_hostname ESMTP Exim $version_number {self.instance}
local_interfaces = <; {self.host}.{p["plain"]} ; {self.host}.{p["submission"]} ; \\
    {self.host}.{p["smtps"]} ; {self.host}.{p["limited"]}
tls_on_connect_ports = {p["smtps"]}
tls_advertise_hosts = *
tls_certificate = {paths["cert"]}
tls_privatekey = {paths["key"]}
domainlist local_domains = {self.domain}
smtp_accept_max_per_connection = ${{if eq{{$received_port}}{{{p["limited"]}}}\\
    {{{self.limited_messages}}}{{1000}}}}
message_size_limit = {self.stack.message_size_limit}
# By default Exim stops delivering at once after 10 messages in one connection and
# leaves the rest to a queue runner, which this instance does not have.
smtp_accept_queue_per_connection = 0
acl_smtp_rcpt = acl_check_rcpt
host_lookup =
rfc1413_hosts =
keep_environment =
delay_warning =

begin acl
acl_check_rcpt:
  deny    message = relay not permitted
          !domains = +local_domains
  require verify = recipient
  accept

begin routers
# A non-ASCII address (SMTPUTF8) that delivers to the first user's Maildir.
utf8_alias:
  driver = redirect
  domains = +local_domains
  local_parts = {self.utf8_local_part}
  data = {self.address(min(self.users))}

local_users:
  driver = accept
  domains = +local_domains
  local_parts = {local_parts}
  transport = maildir_delivery

begin transports
maildir_delivery:
  driver = appendfile
  directory = {mail}/${{local_part_data}}
  maildir_format
  user = {uid}
  group = {gid}
  mode = 0600
  create_directory = false

begin authenticators
PLAIN:
  driver = plaintext
  public_name = PLAIN
  server_prompts = :
  server_condition = ${{if eq{{$auth3}}{{{password_of % "$auth2"}}}}}
  server_set_id = $auth2
  server_advertise_condition = ${{if and{{{{def:tls_in_cipher}}\\
    {{!eq{{$received_port}}{{{p["plain"]}}}}}{{!eq{{$received_port}}{{{p["limited"]}}}}}}}}}
LOGIN:
  driver = plaintext
  public_name = LOGIN
  server_prompts = <| Username: | Password:
  server_condition = ${{if eq{{$auth2}}{{{password_of % "$auth1"}}}}}
  server_set_id = $auth1
  server_advertise_condition = ${{if and{{{{def:tls_in_cipher}}\\
    {{!eq{{$received_port}}{{{p["plain"]}}}}}{{!eq{{$received_port}}{{{p["limited"]}}}}}}}}}
"""
        config = d / "exim.conf"
        config.write_text(conf, encoding="utf-8")
        config.chmod(0o644)
        checked = subprocess.run(
            [str(EXIM), "-C", str(config), "-bV"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        if checked.returncode != 0:
            raise ExtraServerError(f"exim.conf refused: {checked.stdout}{checked.stderr}")
        # -bdf: daemon in the foreground; -odi: deliver before answering the final
        # dot, so a 250 means the message is in the Maildir; no queue runner.
        return [str(EXIM), "-C", str(config), "-bdf", "-odi"]

    def _probes(self) -> list[Probe]:
        tls = self.client_ssl_context()
        return [
            Probe("plain", self.host, self.ports["plain"], b"220"),
            Probe("submission", self.host, self.ports["submission"], b"220"),
            Probe("smtps", self.host, self.ports["smtps"], b"220", tls),
            Probe("limited", self.host, self.ports["limited"], b"220"),
        ]


class MailutilsPOP3(_PrivateServer):
    """GNU Mailutils' pop3d serving mbox files, with STLS (``pop3``) and implicit TLS
    (``pop3s``) listeners.

    Users (``alice`` and ``bob`` by default, random passwords) live in a virtual
    domain, so they log in as ``alice@example.test``. Their mailbox is the mbox file
    ``<dir>/mail/<user>/INBOX``, owned by the mail user; :meth:`deposit` appends to it.
    ``expire`` days are announced as the EXPIRE capability (nothing is deleted,
    ``delete-expired`` stays off). The greeting carries an APOP timestamp.
    """

    name = "pop3d"
    port_names = ("pop3", "pop3s")
    greeting = b"+OK"
    _names_instance = False  # the greeting is fixed: "+OK POP3 Ready <pid.time@host>"

    def __init__(
        self,
        directory: Path,
        certificates: TestCertificates,
        *,
        domain: str = "example.test",
        users: Mapping[str, str] | None = None,
        expire: int = 30,
        mail_user: str = "mail",
        **options: float,
    ) -> None:
        super().__init__(directory, certificates, **options)
        self.domain = domain
        if users is None:
            users = {name: secrets.token_urlsafe(12) for name in ("alice", "bob")}
        self.users = dict(users)
        self.expire = expire
        account = pwd.getpwnam(mail_user)
        self.mail_uid, self.mail_gid = account.pw_uid, account.pw_gid

    def address(self, user: str) -> str:
        return f"{user}@{self.domain}"

    def mbox(self, user: str) -> Path:
        if user not in self.users:
            raise KeyError(f"unknown user {user!r}")
        return self.directory / "mail" / user / "INBOX"

    def deposit(self, user: str, message: bytes, sender: str = "sender@example.test") -> None:
        """Append ``message`` (LF line ends) to the mbox of ``user``, as a local
        delivery agent would: a ``From `` separator line, ``>``-quoting of body lines
        that start with ``From ``, and an empty line after the message. Waits for the
        sessions still running to end first, since they rewrite the mbox as they close."""
        self.wait_idle()
        lines = message.split(b"\n")
        if lines and lines[-1] == b"":
            lines.pop()
        quoted = [b">" + line if re.match(rb">*From ", line) else line for line in lines]
        stamp = time.strftime("%a %b %d %H:%M:%S %Y", time.gmtime()).encode()
        entry = b"From " + sender.encode() + b" " + stamp + b"\n" + b"\n".join(quoted) + b"\n\n"
        path = self.mbox(user)
        with path.open("ab") as handle:
            handle.write(entry)
        os.chown(path, self.mail_uid, self.mail_gid)
        path.chmod(0o600)

    def clear_mailbox(self, user: str) -> None:
        self.wait_idle()
        path = self.mbox(user)
        path.write_bytes(b"")
        os.chown(path, self.mail_uid, self.mail_gid)
        path.chmod(0o600)

    def mbox_bytes(self, user: str, *, settled: bool = True) -> bytes:
        """The mbox of ``user``; with ``settled``, as it is once every session has
        ended (pass ``settled=False`` to read it while a session of the test is open)."""
        if settled:
            self.wait_idle()
        return self.mbox(user).read_bytes()

    def _prepare(self) -> list[str]:
        d = self.directory
        paths = self._write_tls()
        owner = (self.mail_uid, self.mail_gid)
        (d / "passwd").mkdir(exist_ok=True)
        (d / "passwd").chmod(0o755)
        (d / "mail").mkdir(exist_ok=True)
        os.chown(d / "mail", *owner)
        (d / "mail").chmod(0o755)
        lines = []
        for user, password in sorted(self.users.items()):
            home = d / "mail" / user
            home.mkdir(exist_ok=True)
            os.chown(home, *owner)
            home.chmod(0o700)
            if not self.mbox(user).exists():
                self.clear_mailbox(user)
            lines.append(f"{user}:{_crypt(password)}:{self.mail_uid}:{self.mail_gid}::{home}:")
        passwd = d / "passwd" / self.domain
        passwd.write_text("\n".join(lines) + "\n")
        passwd.chmod(0o600)
        tls = f"tls {{ ssl-certificate-file {paths['cert']}; ssl-key-file {paths['key']}; }};"
        conf = f"""\
# Written by the interop tests: a private, loopback-only GNU Mailutils pop3d.
mode daemon;
foreground yes;
pidfile {d / "pop3d.pid"};
logging {{ syslog no; }};
auth {{
  authorization virtdomain;
  authentication generic;
}};
virtdomain {{ passwd-dir {d / "passwd"}; }};
tls-file-checks {{ key-file none; cert-file none; ca-file none; }};
expire {self.expire};
server {self.host}:{self.ports["pop3"]} {{
  tls-mode stls;
  {tls}
}};
server {self.host}:{self.ports["pop3s"]} {{
  tls-mode connection;
  {tls}
}};
"""
        config = d / "pop3d.conf"
        config.write_text(conf)
        config.chmod(0o600)
        return [
            shutil.which("pop3d", path=SBIN_PATH) or "pop3d",
            "--no-site-config",
            f"--config-file={config}",
        ]

    def _probes(self) -> list[Probe]:
        return [
            Probe("pop3", self.host, self.ports["pop3"], b"+OK"),
            Probe("pop3s", self.host, self.ports["pop3s"], b"+OK", self.client_ssl_context()),
        ]
