"""A small threaded POP3 server that runs inside the test process.

:class:`POP3TestServer` listens on a loopback address (port chosen by the kernel) and
serves each connection from its own daemon thread. It speaks enough of POP3 for a
client library to be tested against it: USER/PASS, SASL ``AUTH PLAIN`` and (with
``oauth2_tokens``) ``AUTH XOAUTH2``, ``CAPA``,
the TRANSACTION commands, ``STLS`` and implicit TLS, response codes in brackets, and
one-session-per-maildrop locking. Deletions are committed only by ``QUIT``; a session
that ends in any other way leaves the maildrop untouched.

Misbehaviour is switched on through :attr:`POP3TestServer.faults`, a mutable
:class:`POP3Faults`. Faults are read each time they matter, so a change also reaches
sessions that are already open.

Example::

    with POP3TestServer() as server:
        uid = server.add_message(b"Subject: hi\\r\\n\\r\\nbody\\r\\n")
        client = poplib.POP3(server.host, server.port)
        ...

Structure: the public :class:`POP3TestServer` owns the maildrops and the shared
counters, :class:`_Listener` accepts connections, and each :class:`_POP3Session`
reads command lines and dispatches them to ``_cmd_<verb>`` methods.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import hmac
import ipaddress
import itertools
import logging
import selectors
import socket
import ssl
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from types import TracebackType
from typing import Any, Literal

from .xoauth2 import XOAUTH2Verifier

__all__ = ["POP3Faults", "POP3TestServer", "SASLHandler", "TLSMode"]

log = logging.getLogger(__name__)

TLSMode = Literal["none", "starttls", "implicit"]

#: Checks one decoded SASL client response; returns the authenticated user or ``None``.
SASLHandler = Callable[[bytes], str | None]

#: Mechanisms the server carries out itself, with several steps where they need them.
#: The SCRAM ones are run by scramp's server side (the ``test`` extra); the others are
#: checked by hand here.
BUILT_IN_MECHANISMS = frozenset(
    {
        "SCRAM-SHA-256-PLUS",
        "SCRAM-SHA-1-PLUS",
        "SCRAM-SHA-256",
        "SCRAM-SHA-1",
        "CRAM-MD5",
        "LOGIN",
        "OAUTHBEARER",
        "EXTERNAL",
    }
)
_SCRAM_ITERATIONS = 4096
_MAX_SASL_STEPS = 4

_RECV_SIZE = 65536
_POLL_INTERVAL = 0.05
_HARD_LINE_LIMIT = 1 << 20  # command lines longer than this are refused even without a limit
_JOIN_TIMEOUT = 2.0
_ENDLESS_CHUNK = b"+and this line is followed by another\r\n" * 256
_ENDLESS_CHUNKS = 100_000  # about 1 GB: far beyond any client's bound, yet finite
_ENDLESS_SEND_TIMEOUT = 1.0  # a client that stops reading this long has given up

_TIMESTAMPS = itertools.count(1)
_AUTHORIZATION = "AUTHORIZATION"
_TRANSACTION = "TRANSACTION"
_UPDATE = "UPDATE"

# The states in which each command is accepted.
_COMMAND_STATES: dict[str, frozenset[str]] = {
    "USER": frozenset({_AUTHORIZATION}),
    "PASS": frozenset({_AUTHORIZATION}),
    "AUTH": frozenset({_AUTHORIZATION}),
    "APOP": frozenset({_AUTHORIZATION}),
    "UTF8": frozenset({_AUTHORIZATION}),
    "LANG": frozenset({_AUTHORIZATION, _TRANSACTION}),
    "STLS": frozenset({_AUTHORIZATION}),
    "CAPA": frozenset({_AUTHORIZATION, _TRANSACTION}),
    "QUIT": frozenset({_AUTHORIZATION, _TRANSACTION}),
    "STAT": frozenset({_TRANSACTION}),
    "LIST": frozenset({_TRANSACTION}),
    "RETR": frozenset({_TRANSACTION}),
    "TOP": frozenset({_TRANSACTION}),
    "UIDL": frozenset({_TRANSACTION}),
    "DELE": frozenset({_TRANSACTION}),
    "NOOP": frozenset({_TRANSACTION}),
    "RSET": frozenset({_TRANSACTION}),
}


@dataclass
class POP3Faults:
    """Switches that make the server misbehave; every one is off by default.

    Verb names are compared case-insensitively.
    """

    reject_login: bool = False
    """Refuse every login (PASS or AUTH) with ``-ERR [AUTH]``."""
    in_use: bool = False
    """Answer a correct login with ``-ERR [IN-USE]``."""
    login_delay: bool = False
    """Answer a correct login with ``-ERR [LOGIN-DELAY]``."""
    no_greeting: bool = False
    """Accept the connection but never send a greeting (or anything else)."""
    greeting_delay: float = 0.0
    """Seconds to wait before the greeting."""
    reply_delay: float = 0.0
    """Seconds to wait before every reply to a command."""
    drop_after: str | None = None
    """Verb after which the connection is closed instead of answered."""
    drop_after_processing: bool = False
    """With ``drop_after``: carry the command out first (a ``QUIT`` commits) but send
    no reply, so the client cannot tell whether it happened."""
    drop_mid_retr_after_bytes: int | None = None
    """Send only this many bytes of a ``RETR`` reply (status line included), then close."""
    error_replies: dict[str, str] = field(default_factory=dict)
    """Verb -> full reply line (e.g. ``"-ERR [SYS/TEMP] busy"``) sent instead of
    carrying the command out."""
    stls_error: bool = False
    """Answer ``STLS`` with ``-ERR``."""
    advertise_stls: bool = True
    """In ``starttls`` mode, whether ``CAPA`` lists ``STLS`` (it is accepted either way)."""
    drip_interval: float | None = None
    """Send every reply (greeting included) one byte at a time, this many seconds apart."""
    garbage_reply: bytes | None = None
    """Raw bytes sent in place of replies: see ``garbage_on``."""
    garbage_on: str | None = None
    """Verb whose reply ``garbage_reply`` replaces; ``None`` means every reply,
    the greeting included."""
    drip_on: str | None = None
    """With ``drip_interval``: the verb whose reply is dripped; ``None`` means every
    reply, the greeting included."""
    silent_on: str | None = None
    """Verb that is never answered: the session reads nothing more and ends when the
    client hangs up (or the server stops)."""
    endless_on: str | None = None
    """Verb answered with ``+OK`` and data lines that never reach the terminating
    ``.``, until the client hangs up (or about 1 GB has been sent)."""
    bad_scram_signature: bool = False
    """Send a SCRAM server-final message whose signature is wrong, as an impostor that
    does not know the password would."""

    def reset(self) -> None:
        """Switch every fault back off."""
        fresh = POP3Faults()
        for item in fields(self):
            setattr(self, item.name, getattr(fresh, item.name))


@dataclass(frozen=True)
class _StoredMessage:
    """One message of a maildrop, with its wire form computed once."""

    uid: str
    raw: bytes
    lines: tuple[bytes, ...]  # without line endings
    size: int  # octets with CRLF line endings, before dot-stuffing

    @classmethod
    def build(cls, uid: str, raw: bytes) -> _StoredMessage:
        text = raw.replace(b"\r\n", b"\n")
        lines = text.split(b"\n")
        if lines and lines[-1] == b"":
            lines.pop()
        return cls(uid, raw, tuple(lines), sum(len(line) + 2 for line in lines))


class _Hangup(Exception):
    """Raised inside a session to end it at once, without a reply."""


class _LineTooLong(Exception):
    """A command line exceeded the allowed length; the rest of it was discarded."""


class _LineReader:
    """Buffers received bytes and hands them out one line at a time."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def clear(self) -> None:
        """Drop anything received but not yet read (used when TLS starts)."""
        self._buffer.clear()

    def readline(self, sock: socket.socket, limit: int) -> bytes | None:
        """Return the next line without its ending, or ``None`` at end of stream.

        Raises :class:`_LineTooLong` (after discarding the whole line) when the line
        is longer than ``limit`` octets.
        """
        too_long = False
        while True:
            end = self._buffer.find(b"\n")
            if end >= 0:
                line = bytes(self._buffer[:end])
                del self._buffer[: end + 1]
                if line.endswith(b"\r"):
                    line = line[:-1]
                if too_long or len(line) > limit:
                    raise _LineTooLong
                return line
            if len(self._buffer) > limit + 1:
                too_long = True
                self._buffer.clear()
            data = sock.recv(_RECV_SIZE)
            if not data:
                return None
            self._buffer += data


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _mask(verb: str, text: str) -> str:
    """The command line as recorded: secrets replaced by ``***``."""
    _, _, rest = text.partition(" ")
    if verb == "PASS" and rest:
        return f"{text.split(' ', 1)[0]} ***"
    if verb == "AUTH":
        parts = rest.split()
        if len(parts) > 1:
            return f"{text.split(' ', 1)[0]} {parts[0]} ***"
    return text


def _parse_oauthbearer(message: bytes) -> tuple[str, str]:
    """The user (``a=`` of the gs2 header) and the token of an OAUTHBEARER message."""
    text = message.decode("utf-8", "replace")
    header, _, rest = text.partition("\x01")
    user = ""
    for part in header.split(","):
        if part.startswith("a="):
            user = part[2:].replace("=2C", ",").replace("=3D", "=")
    token = ""
    for pair in rest.split("\x01"):
        if pair.startswith("auth=Bearer "):
            token = pair[len("auth=Bearer ") :]
    return user, token


def _dot_stuff(lines: Iterable[bytes]) -> Iterable[bytes]:
    for line in lines:
        yield (b"." + line if line.startswith(b".") else line) + b"\r\n"


class POP3TestServer:
    """An in-process POP3 server on loopback for tests.

    ``users`` maps user names to passwords (default ``{"user": "password"}``).
    ``tls`` is ``"none"``, ``"starttls"`` (``STLS`` offered) or ``"implicit"`` (TLS from
    the first byte); both TLS modes need ``ssl_context``, a server-side context.
    ``uidl``, ``top`` and ``pipelining`` switch those capabilities (disabled commands
    answer ``-ERR``). ``sasl_mechanisms`` are offered through ``AUTH``; ``PLAIN`` is
    built in and others need a checker in ``sasl_handlers`` (mechanism name -> function
    receiving the decoded client response and returning the user name or ``None``).
    ``oauth2_tokens`` (user name -> the one valid access token) adds ``XOAUTH2``, in
    one step or two, with the error continuation for a refused token; :attr:`oauth2`
    (an :class:`~src.testing.xoauth2.XOAUTH2Verifier`) then holds the tokens, lets a
    test expire one, and records every attempt.
    Built in as well, when listed in ``sasl_mechanisms``: ``SCRAM-SHA-256``,
    ``SCRAM-SHA-1`` and their ``-PLUS`` variants (run by scramp's server side, with the
    ``tls-server-end-point`` channel binding scramp computes from ``certificate``, the
    server certificate in DER, which the ``-PLUS`` ones need), ``CRAM-MD5``, ``LOGIN``
    and (with ``oauth2_tokens``) ``OAUTHBEARER``, each checked against ``users``, and
    ``EXTERNAL``, which logs in the user named by the first subjectAltName of the
    client's TLS certificate (the server context must ask for one).
    ``apop`` puts a timestamp in the greeting and accepts ``APOP``; ``utf8`` offers
    RFC 6856 ``UTF8`` and ``languages`` its ``LANG``. :attr:`logins` records who
    logged in and how.
    ``max_line_length`` bounds command lines (longer ones get ``-ERR``).
    ``max_sessions`` bounds concurrent connections; extra ones get ``-ERR [SYS/TEMP]``
    (in plain text modes) and are closed.

    ``extra_capabilities`` holds raw lines added to every ``CAPA`` listing before
    ``STLS`` (an empty or non-ASCII line imitates a sloppy server).

    Attributes the tests read: ``host`` and ``port`` (after :meth:`start`), ``faults``,
    ``commands`` (every command line received, in order, with PASS and AUTH secrets
    replaced by ``***``), ``sessions_started``, ``max_concurrent_sessions`` and
    ``errors`` (unexpected exceptions raised in session threads; should stay empty).
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        users: dict[str, str] | None = None,
        tls: TLSMode = "none",
        ssl_context: ssl.SSLContext | None = None,
        uidl: bool = True,
        top: bool = True,
        pipelining: bool = True,
        sasl_mechanisms: Sequence[str] = ("PLAIN",),
        max_line_length: int | None = None,
        sasl_handlers: Mapping[str, SASLHandler] | None = None,
        max_sessions: int = 64,
        oauth2_tokens: Mapping[str, str] | None = None,
        apop: bool = False,
        utf8: bool = False,
        languages: Sequence[str] = (),
        certificate: bytes | None = None,
    ) -> None:
        if not _is_loopback(host):
            raise ValueError(f"the test server binds to loopback only, not {host!r}")
        if tls not in ("none", "starttls", "implicit"):
            raise ValueError(f"unknown tls mode {tls!r}")
        if tls != "none" and ssl_context is None:
            raise ValueError(f"tls={tls!r} needs a server ssl_context")
        if tls == "none" and ssl_context is not None:
            raise ValueError("ssl_context given but tls='none'")
        if max_line_length is not None and max_line_length < 1:
            raise ValueError("max_line_length must be positive")
        if max_sessions < 1:
            raise ValueError("max_sessions must be positive")
        handlers: dict[str, SASLHandler] = {"PLAIN": self._check_plain}
        handlers.update({name.upper(): check for name, check in (sasl_handlers or {}).items()})
        mechanisms = tuple(name.upper() for name in sasl_mechanisms)
        built_in = {"XOAUTH2"} if oauth2_tokens is not None else set()
        mechanisms += tuple(sorted(built_in - set(mechanisms)))
        built_in |= BUILT_IN_MECHANISMS - {"OAUTHBEARER"}
        if oauth2_tokens is not None:
            built_in.add("OAUTHBEARER")
        unknown = [name for name in mechanisms if name not in handlers and name not in built_in]
        if unknown:
            raise ValueError(f"no sasl_handlers entry for {', '.join(unknown)}")
        if any(name.endswith("-PLUS") for name in mechanisms) and certificate is None:
            raise ValueError("the -PLUS mechanisms need the server's certificate (DER)")

        self.host = host
        self.port = 0
        self.users: dict[str, str] = dict({"user": "password"} if users is None else users)
        self.tls: TLSMode = tls
        self.ssl_context = ssl_context
        self.uidl = uidl
        self.top = top
        self.pipelining = pipelining
        self.sasl_mechanisms = mechanisms
        self.max_line_length = max_line_length
        self.max_sessions = max_sessions
        self.faults = POP3Faults()
        self.extra_capabilities: list[bytes] = []
        self.commands: list[str] = []
        self.errors: list[BaseException] = []
        self.sessions_started = 0
        self.max_concurrent_sessions = 0

        self.apop = apop
        self.utf8 = utf8
        self.languages = tuple(languages)
        self.certificate = certificate
        #: ``(user, mechanism)`` of every successful login, in order (``"USER"`` for
        #: USER/PASS, ``"APOP"``, or the SASL mechanism).
        self.logins: list[tuple[str, str]] = []
        self._sasl_handlers = handlers
        self.oauth2 = XOAUTH2Verifier(oauth2_tokens) if oauth2_tokens is not None else None
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._maildrops: dict[str, list[_StoredMessage]] = {}
        self._locked_users: set[str] = set()
        self._sessions: set[_POP3Session] = set()
        self._uid_counter = itertools.count(1)
        self._stopping = threading.Event()
        self._listener: _Listener | None = None

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> POP3TestServer:
        """Bind, start accepting, and return ``self``. ``port`` is valid afterwards."""
        if self._listener is not None or self._stopping.is_set():
            raise RuntimeError("a POP3TestServer can be started only once")
        self._listener = _Listener(self)
        self.port = self._listener.port
        self._listener.start()
        log.debug("POP3 test server listening on %s:%d (tls=%s)", self.host, self.port, self.tls)
        return self

    def stop(self) -> None:
        """Close the listening socket and every connection, and join all threads."""
        self._stopping.set()
        if self._listener is not None:
            self._listener.close()
        with self._lock:
            sessions = list(self._sessions)
        for session in sessions:
            session.abort()
        for session in sessions:
            session.thread.join(_JOIN_TIMEOUT)
        log.debug("POP3 test server on port %d stopped", self.port)

    def __enter__(self) -> POP3TestServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        with self._lock:
            active = len(self._sessions)
        return (
            f"<POP3TestServer {self.host}:{self.port} tls={self.tls} "
            f"[sessions: {active} active, {self.sessions_started} started]>"
        )

    # -- maildrops -------------------------------------------------------------------

    def add_message(self, raw: bytes, user: str = "user", *, uid: str | None = None) -> str:
        """Append ``raw`` to ``user``'s maildrop and return its unique ID (UIDL).

        ``uid`` replaces the generated unique ID and is sent as given (UTF-8), even
        when it breaks RFC 1939 (spaces, control or non-ASCII characters, over 70
        characters, shared with another message): a faulty server, on purpose.
        Sessions already logged in keep the maildrop they saw at login.
        """
        if not isinstance(raw, bytes):
            raise TypeError("messages are bytes")
        serial = next(self._uid_counter)
        if uid is None:
            uid = f"{serial:06d}.{hashlib.sha256(raw).hexdigest()[:12]}"
        stored = _StoredMessage.build(uid, raw)
        with self._lock:
            self._maildrops.setdefault(user, []).append(stored)
        return uid

    def messages(self, user: str = "user") -> list[bytes]:
        """The messages committed in ``user``'s maildrop now, in order."""
        with self._lock:
            return [stored.raw for stored in self._maildrops.get(user, [])]

    def uids(self, user: str = "user") -> list[str]:
        """The unique IDs of ``user``'s committed messages, in order."""
        with self._lock:
            return [stored.uid for stored in self._maildrops.get(user, [])]

    # -- sessions --------------------------------------------------------------------

    @property
    def active_sessions(self) -> int:
        """How many connections are open right now."""
        with self._lock:
            return len(self._sessions)

    def wait_idle(self, timeout: float = 5.0) -> bool:
        """Wait until no session is open (maildrop locks released); ``False`` on timeout."""
        with self._changed:
            return self._changed.wait_for(lambda: not self._sessions, timeout)

    def drop_connections(self) -> int:
        """Close every open connection now, as a crashing server would. Nothing is
        committed. Returns how many were closed."""
        with self._lock:
            sessions = list(self._sessions)
        for session in sessions:
            session.abort()
        return len(sessions)

    # -- used by the listener and sessions -------------------------------------------

    @property
    def stopping(self) -> threading.Event:
        """Set once :meth:`stop` has begun."""
        return self._stopping

    def _line_limit(self) -> int:
        return self.max_line_length if self.max_line_length is not None else _HARD_LINE_LIMIT

    def _open_session(self, conn: socket.socket) -> None:
        with self._lock:
            admitted = not self._stopping.is_set() and len(self._sessions) < self.max_sessions
            if admitted:
                session = _POP3Session(self, conn)
                self._sessions.add(session)
                self.sessions_started += 1
                self.max_concurrent_sessions = max(
                    self.max_concurrent_sessions, len(self._sessions)
                )
        if not admitted:
            log.debug("POP3 test server refusing a connection (busy or stopping)")
            with contextlib.suppress(OSError):
                if self.tls != "implicit" and not self._stopping.is_set():
                    conn.sendall(b"-ERR [SYS/TEMP] too many sessions\r\n")
            conn.close()
            return
        session.thread.start()

    def _session_ended(self, session: _POP3Session, user: str | None) -> None:
        with self._changed:
            self._sessions.discard(session)
            if user is not None:
                self._locked_users.discard(user)
            self._changed.notify_all()

    def _record_command(self, line: str) -> None:
        with self._lock:
            self.commands.append(line)

    def _record_error(self, error: BaseException) -> None:
        with self._lock:
            self.errors.append(error)

    def _lock_maildrop(self, user: str) -> list[_StoredMessage] | None:
        """Take ``user``'s maildrop lock; return a snapshot, or ``None`` if held."""
        with self._lock:
            if user in self._locked_users:
                return None
            self._locked_users.add(user)
            return list(self._maildrops.get(user, []))

    def _unlock_maildrop(self, user: str, delete: set[str]) -> None:
        """Remove the messages whose IDs are in ``delete`` and release the lock."""
        with self._changed:
            if delete:
                kept = [m for m in self._maildrops.get(user, []) if m.uid not in delete]
                self._maildrops[user] = kept
            self._locked_users.discard(user)
            self._changed.notify_all()

    def _sasl_check(self, mechanism: str, response: bytes) -> str | None:
        return self._sasl_handlers[mechanism](response)

    def _scram_server(self, mechanism: str, users_seen: list[str]) -> Any:
        import scramp  # type: ignore[import-untyped]

        scram = scramp.ScramMechanism(mechanism)
        infos: dict[str, Any] = {}

        def auth_fn(user: str) -> Any:
            users_seen.append(user)
            password = self.users.get(user)
            if password is None:  # an unknown user fails on the proof, like a wrong password
                password = base64.b64encode(hashlib.sha256(user.encode()).digest()).decode()
            if user not in infos:
                infos[user] = scram.make_auth_info(password, iteration_count=_SCRAM_ITERATIONS)
            return infos[user]

        binding = None
        if mechanism.endswith("-PLUS"):
            assert self.certificate is not None
            data = bytes(scramp.core.CBindData.from_der(self.certificate))
            binding = ("tls-server-end-point", data)
        return scram.make_server(auth_fn, channel_binding=binding)

    def _login_recorded(self, user: str, mechanism: str) -> None:
        with self._lock:
            self.logins.append((user, mechanism))

    def _password_ok(self, user: str, password: str) -> bool:
        expected = self.users.get(user)
        return expected is not None and expected == password

    def _check_plain(self, response: bytes) -> str | None:
        parts = response.split(b"\0")
        if len(parts) != 3:
            return None
        authzid, authcid, password = (part.decode("utf-8", "replace") for part in parts)
        if authzid and authzid != authcid:
            return None
        return authcid if self._password_ok(authcid, password) else None


class _Listener:
    """Owns the listening socket and the thread that accepts connections."""

    def __init__(self, server: POP3TestServer) -> None:
        self._server = server
        family = socket.AF_INET6 if ":" in server.host else socket.AF_INET
        self._sock = socket.create_server((server.host, 0), family=family, backlog=128)
        self.port: int = self._sock.getsockname()[1]
        self._thread = threading.Thread(
            target=self._run, name=f"pop3-test-listener-{self.port}", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        """Stop accepting (the server's stopping event must be set) and close."""
        if self._thread.is_alive():
            self._thread.join(_JOIN_TIMEOUT)
        self._sock.close()

    def _run(self) -> None:
        stopping = self._server.stopping
        with selectors.DefaultSelector() as selector:
            selector.register(self._sock, selectors.EVENT_READ)
            while not stopping.is_set():
                if not selector.select(_POLL_INTERVAL):
                    continue
                try:
                    conn, _ = self._sock.accept()
                except OSError:
                    continue
                # As real servers do: pipelined replies are small writes in a row,
                # which Nagle's algorithm would hold back for the client's delayed ACK.
                with contextlib.suppress(OSError):
                    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                self._server._open_session(conn)


class _POP3Session:
    """One client connection, served by its own daemon thread."""

    def __init__(self, server: POP3TestServer, sock: socket.socket) -> None:
        self._server = server
        self._sock = sock
        self._sock_lock = threading.Lock()
        self._closed = False
        self._reader = _LineReader()
        self._state = _AUTHORIZATION
        self._tls_active = False
        self._pending_user: str | None = None
        self._user: str | None = None
        self._maildrop: list[_StoredMessage] = []
        self._deleted: set[int] = set()  # 1-based message numbers marked by DELE
        self._muted = False
        self._timestamp = f"<{threading.get_ident()}.{next(_TIMESTAMPS)}@mailhandlers.test>"
        self.language: str | None = None
        self.thread = threading.Thread(target=self._run, name="pop3-test-session", daemon=True)

    # -- lifecycle -------------------------------------------------------------------

    def abort(self) -> None:
        """Wake the session thread from any blocking socket call by shutting the socket."""
        with self._sock_lock:
            if self._closed:
                return
            with contextlib.suppress(OSError):
                # The base-class call leaves an SSLSocket's TLS state alone, so the
                # session thread just sees end of stream.
                socket.socket.shutdown(self._sock, socket.SHUT_RDWR)

    def _close(self) -> None:
        with self._sock_lock:
            if self._closed:
                return
            self._closed = True
            sock = self._sock
        with contextlib.suppress(OSError):
            sock.close()

    def _run(self) -> None:
        try:
            self._serve()
        except (_Hangup, OSError) as error:
            log.debug("POP3 test session ended: %r", error)
        except Exception as error:  # a bug in this server: make it visible to tests
            log.exception("POP3 test session failed")
            self._server._record_error(error)
        finally:
            self._close()
            self._server._session_ended(self, self._user if self._state != _UPDATE else None)

    def _serve(self) -> None:
        faults = self._server.faults
        if self._server.tls == "implicit":
            self._start_tls()
        if faults.no_greeting:
            while self._sock.recv(_RECV_SIZE):
                pass
            return
        self._pause(faults.greeting_delay)
        greeting = "+OK mailhandlers POP3 test server ready"
        if self._server.apop:
            greeting += f" {self._timestamp}"
        self._send(greeting.encode("ascii") + b"\r\n", verb=None)
        while self._state != _UPDATE:
            try:
                line = self._reader.readline(self._sock, self._server._line_limit())
            except _LineTooLong:
                self._reply("-ERR line too long", verb=None)
                continue
            if line is None:
                return
            self._handle(line)

    # -- I/O -------------------------------------------------------------------------

    def _pause(self, seconds: float) -> None:
        if seconds > 0 and self._server.stopping.wait(seconds):
            raise _Hangup("server stopping")

    def _send(self, payload: bytes, verb: str | None, truncate: int | None = None) -> None:
        """Apply the reply faults to ``payload`` and write it."""
        if self._muted:
            return
        faults = self._server.faults
        if faults.garbage_reply is not None and (
            faults.garbage_on is None or (verb is not None and faults.garbage_on.upper() == verb)
        ):
            payload = faults.garbage_reply
        if verb is not None:
            self._pause(faults.reply_delay)
        if truncate is not None:
            payload = payload[:truncate]
        interval = faults.drip_interval
        if interval and (faults.drip_on is None or faults.drip_on.upper() == verb):
            for index in range(len(payload)):
                self._sock.sendall(payload[index : index + 1])
                self._pause(interval)
        else:
            self._sock.sendall(payload)
        if truncate is not None:
            raise _Hangup("dropped in the middle of a reply")

    def _reply(self, text: str, verb: str | None) -> None:
        self._send(text.encode("utf-8") + b"\r\n", verb)

    def _reply_lines(
        self, first: str, lines: Iterable[bytes], verb: str, truncate: int | None = None
    ) -> None:
        payload = b"".join([first.encode("utf-8"), b"\r\n", *_dot_stuff(lines), b".\r\n"])
        self._send(payload, verb, truncate)

    def _start_tls(self) -> None:
        context = self._server.ssl_context
        assert context is not None  # checked in POP3TestServer.__init__
        with self._sock_lock:
            if self._closed:
                raise _Hangup("closed")
            tls_sock = context.wrap_socket(
                self._sock, server_side=True, do_handshake_on_connect=False
            )
            self._sock = tls_sock
        self._reader.clear()
        tls_sock.do_handshake()
        self._tls_active = True

    # -- dispatch --------------------------------------------------------------------

    def _handle(self, line: bytes) -> None:
        text = line.decode("utf-8", "replace")
        word, _, rest = text.partition(" ")
        verb = word.upper()
        self._server._record_command(_mask(verb, text))
        faults = self._server.faults
        if faults.drop_after is not None and verb == faults.drop_after.upper():
            if faults.drop_after_processing:
                self._muted = True
                self._dispatch(verb, rest)
            raise _Hangup(f"dropped after {verb}")
        errors = {key.upper(): value for key, value in faults.error_replies.items()}
        if verb in errors:
            self._reply(errors[verb], verb)
            return
        if faults.silent_on is not None and verb == faults.silent_on.upper():
            while self._sock.recv(_RECV_SIZE):
                pass
            raise _Hangup(f"never answered {verb}")
        if faults.endless_on is not None and verb == faults.endless_on.upper():
            self._sock.settimeout(_ENDLESS_SEND_TIMEOUT)
            self._sock.sendall(b"+OK here it comes\r\n")
            for _ in range(_ENDLESS_CHUNKS):
                self._sock.sendall(_ENDLESS_CHUNK)
            raise _Hangup(f"gave up on an endless {verb} reply")
        self._dispatch(verb, rest)

    def _dispatch(self, verb: str, rest: str) -> None:
        server = self._server
        enabled = verb in _COMMAND_STATES and not (
            (verb == "UIDL" and not server.uidl)
            or (verb == "TOP" and not server.top)
            or (verb == "APOP" and not server.apop)
            or (verb == "UTF8" and not server.utf8)
            or (verb == "LANG" and not server.languages)
        )
        if not enabled:
            self._reply("-ERR unknown command", verb)
            return
        if self._state not in _COMMAND_STATES[verb]:
            self._reply(f"-ERR {verb} is not valid in the {self._state} state", verb)
            return
        handler: Callable[[str], None] = getattr(self, f"_cmd_{verb.lower()}")
        handler(rest)

    def _message(self, argument: str, verb: str) -> int | None:
        """Parse a message number; reply ``-ERR`` and return ``None`` when unusable."""
        if not argument.isdigit():
            self._reply("-ERR a message number is required", verb)
            return None
        number = int(argument)
        if not 1 <= number <= len(self._maildrop):
            self._reply(f"-ERR no such message, only {len(self._maildrop)} in maildrop", verb)
            return None
        if number in self._deleted:
            self._reply(f"-ERR message {number} already deleted", verb)
            return None
        return number

    def _visible(self) -> list[tuple[int, _StoredMessage]]:
        return [
            (number, stored)
            for number, stored in enumerate(self._maildrop, start=1)
            if number not in self._deleted
        ]

    # -- AUTHORIZATION ---------------------------------------------------------------

    def _cmd_capa(self, rest: str) -> None:
        server = self._server
        capabilities = ["USER"]
        if server.top:
            capabilities.append("TOP")
        if server.uidl:
            capabilities.append("UIDL")
        if server.pipelining:
            capabilities.append("PIPELINING")
        capabilities += ["RESP-CODES", "AUTH-RESP-CODE"]
        if server.sasl_mechanisms:
            capabilities.append("SASL " + " ".join(server.sasl_mechanisms))
        if server.utf8:
            capabilities.append("UTF8")
        if server.languages:
            capabilities.append("LANG")
        if (
            server.tls == "starttls"
            and not self._tls_active
            and self._state == _AUTHORIZATION
            and server.faults.advertise_stls
        ):
            capabilities.append("STLS")
        capabilities.append("IMPLEMENTATION mailhandlers-test-server")
        lines = [item.encode("ascii") for item in capabilities]
        # Before STLS (or the last line), so a client must read past them to find it.
        at = lines.index(b"STLS") if b"STLS" in lines else len(lines) - 1
        lines[at:at] = server.extra_capabilities
        self._reply_lines("+OK capability list follows", lines, "CAPA")

    def _cmd_stls(self, rest: str) -> None:
        if self._server.tls != "starttls" or self._tls_active:
            self._reply("-ERR TLS is not available here", "STLS")
            return
        if self._server.faults.stls_error:
            self._reply("-ERR [SYS/TEMP] TLS is temporarily unavailable", "STLS")
            return
        self._reply("+OK begin TLS negotiation", "STLS")
        self._pending_user = None
        self._start_tls()

    def _cmd_user(self, rest: str) -> None:
        name = rest.strip()
        if not name:
            self._reply("-ERR a user name is required", "USER")
            return
        self._pending_user = name
        self._reply("+OK send PASS", "USER")

    def _cmd_pass(self, rest: str) -> None:
        user, self._pending_user = self._pending_user, None
        if user is None:
            self._reply("-ERR send USER first", "PASS")
            return
        self._finish_login(
            user if self._server._password_ok(user, rest) else None, "PASS", how="USER"
        )

    def _cmd_apop(self, rest: str) -> None:
        user, _, digest = rest.strip().rpartition(" ")
        password = self._server.users.get(user)
        expected = (
            hashlib.md5((self._timestamp + password).encode("utf-8")).hexdigest()
            if password is not None
            else None
        )
        ok = expected is not None and hmac.compare_digest(expected, digest.lower())
        self._finish_login(user if ok else None, "APOP", how="APOP")

    def _cmd_utf8(self, rest: str) -> None:
        self._reply("+OK UTF8 enabled", "UTF8")

    def _cmd_lang(self, rest: str) -> None:
        tag = rest.strip()
        languages = self._server.languages
        if not tag:
            self._reply_lines(
                "+OK language listing follows",
                [f"{lang} {lang}".encode("ascii") for lang in languages],
                "LANG",
            )
        elif tag in languages or tag == "*":
            self.language = languages[0] if tag == "*" else tag
            self._reply(f"+OK language changed to {self.language}", "LANG")
        else:
            self._reply("-ERR unsupported language", "LANG")

    def _cmd_auth(self, rest: str) -> None:
        server = self._server
        parts = rest.split()
        if not parts:
            mechanisms = [name.encode("ascii") for name in server.sasl_mechanisms]
            self._reply_lines("+OK mechanisms follow", mechanisms, "AUTH")
            return
        mechanism = parts[0].upper()
        if mechanism not in server.sasl_mechanisms or len(parts) > 2:
            self._reply(f"-ERR unsupported mechanism or syntax: {parts[0]}", "AUTH")
            return
        if mechanism in BUILT_IN_MECHANISMS and mechanism not in server._sasl_handlers:
            initial = None
            if len(parts) == 2:
                try:
                    initial = b"" if parts[1] == "=" else base64.b64decode(parts[1], validate=True)
                except (binascii.Error, ValueError):
                    self._reply("-ERR [AUTH] invalid base64", "AUTH")
                    return
            self._built_in_sasl(mechanism, initial)
            return
        if len(parts) == 2:
            encoded = parts[1]
        else:
            if self._muted:  # the continuation could never be answered
                raise _Hangup("dropped during AUTH")
            self._send(b"+ \r\n", "AUTH")
            try:
                line = self._reader.readline(self._sock, server._line_limit())
            except _LineTooLong:
                self._reply("-ERR [AUTH] response too long", "AUTH")
                return
            if line is None:
                raise _Hangup("closed during AUTH")
            encoded = line.decode("ascii", "replace").strip()
        if encoded == "*":
            self._reply("-ERR authentication cancelled", "AUTH")
            return
        try:
            response = b"" if encoded == "=" else base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            self._reply("-ERR [AUTH] invalid base64", "AUTH")
            return
        if mechanism == "XOAUTH2" and server.oauth2 is not None:
            self._finish_xoauth2(server.oauth2, response, one_step=len(parts) == 2)
            return
        self._finish_login(server._sasl_check(mechanism, response), "AUTH", how=mechanism)

    def _challenge(self, data: bytes) -> bytes | None:
        """Send one continuation; return the decoded answer, or None when the client
        cancelled (``*``) or sent something unreadable (the reply is sent then)."""
        if self._muted:
            raise _Hangup("dropped during AUTH")
        self._send(b"+ " + base64.b64encode(data) + b"\r\n", "AUTH")
        try:
            line = self._reader.readline(self._sock, self._server._line_limit())
        except _LineTooLong:
            self._reply("-ERR [AUTH] response too long", "AUTH")
            return None
        if line is None:
            raise _Hangup("closed during AUTH")
        encoded = line.decode("ascii", "replace").strip()
        if encoded == "*":
            self._reply("-ERR authentication cancelled", "AUTH")
            return None
        try:
            return base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            self._reply("-ERR [AUTH] invalid base64", "AUTH")
            return None

    def _built_in_sasl(self, mechanism: str, initial: bytes | None) -> None:
        """Carry out one of :data:`BUILT_IN_MECHANISMS`; ``initial`` is the client's
        first message, ``None`` when it has not sent one yet."""
        if mechanism.startswith("SCRAM-"):
            self._scram(mechanism, initial)
        elif mechanism == "CRAM-MD5":
            challenge = f"<{next(_TIMESTAMPS)}.{threading.get_ident()}@mailhandlers.test>"
            answer = self._challenge(challenge.encode("ascii"))
            if answer is None:
                return
            user, _, digest = answer.decode("utf-8", "replace").rpartition(" ")
            password = self._server.users.get(user)
            ok = password is not None and hmac.compare_digest(
                hmac.new(password.encode(), challenge.encode(), hashlib.md5).hexdigest(), digest
            )
            self._finish_login(user if ok else None, "AUTH", how=mechanism)
        elif mechanism == "LOGIN":
            name = initial if initial else self._challenge(b"Username:")
            if name is None:
                return
            secret = self._challenge(b"Password:")
            if secret is None:
                return
            user = name.decode("utf-8", "replace")
            ok = self._server._password_ok(user, secret.decode("utf-8", "replace"))
            self._finish_login(user if ok else None, "AUTH", how=mechanism)
        elif mechanism == "EXTERNAL":
            self._external(initial)
        else:
            self._oauthbearer(initial)

    def _external(self, initial: bytes | None) -> None:
        authzid = initial if initial is not None else self._challenge(b"")
        if authzid is None:
            return
        certificate = self._sock.getpeercert() if isinstance(self._sock, ssl.SSLSocket) else None
        alt_names: Any = (certificate or {}).get("subjectAltName", ())
        names = [str(entry[1]) for entry in alt_names]
        user = names[0] if names else None
        if user is not None and authzid and authzid.decode("utf-8", "replace") != user:
            user = None
        self._finish_login(
            user if user is not None and user in self._server.users else None,
            "AUTH",
            how="EXTERNAL",
        )

    def _scram(self, mechanism: str, initial: bytes | None) -> None:
        import scramp

        seen: list[str] = []
        scram = self._server._scram_server(mechanism, seen)
        first = initial if initial is not None else self._challenge(b"")
        if first is None:
            return
        try:
            scram.set_client_first(first.decode("utf-8"))
        except (scramp.ScramException, UnicodeDecodeError):
            self._reply("-ERR [AUTH] malformed SCRAM client-first message", "AUTH")
            return
        final = self._challenge(scram.get_server_first().encode("utf-8"))
        if final is None:
            return
        try:
            scram.set_client_final(final.decode("utf-8"))
            proven = True
        except (scramp.ScramException, UnicodeDecodeError):
            proven = False
        server_final = scram.get_server_final()
        if proven and self._server.faults.bad_scram_signature:
            server_final = "v=" + base64.b64encode(b"\0" * 32).decode("ascii")
        answer = self._challenge(server_final.encode("utf-8"))
        if answer is None:
            return
        self._finish_login(seen[-1] if proven and seen else None, "AUTH", how=mechanism)

    def _oauthbearer(self, initial: bytes | None) -> None:
        verifier = self._server.oauth2
        assert verifier is not None  # OAUTHBEARER is offered only with oauth2_tokens
        message = initial if initial is not None else self._challenge(b"")
        if message is None:
            return
        user, token = _parse_oauthbearer(message)
        response = f"user={user}\x01auth=Bearer {token}\x01\x01".encode()
        verdict = verifier.check(response, one_step=initial is not None)
        if verdict.accepted:
            self._finish_login(verdict.username, "AUTH", how="OAUTHBEARER")
            return
        assert verdict.error is not None
        if self._challenge(verdict.error) is None:
            return
        self._finish_login(None, "AUTH", how="OAUTHBEARER")

    def _finish_xoauth2(
        self, verifier: XOAUTH2Verifier, response: bytes, *, one_step: bool
    ) -> None:
        """Judge an XOAUTH2 response. A refused token gets the error continuation
        (``+ <base64 JSON>``) and, once the client has answered it, ``-ERR``."""
        verdict = verifier.check(response, one_step=one_step)
        if verdict.accepted:
            self._finish_login(verdict.username, "AUTH", how="XOAUTH2")
            return
        assert verdict.error is not None
        if self._muted:  # the continuation could never be answered
            raise _Hangup("dropped during AUTH")
        self._send(b"+ " + base64.b64encode(verdict.error) + b"\r\n", "AUTH")
        with contextlib.suppress(_LineTooLong):  # any answer ends the exchange
            if self._reader.readline(self._sock, self._server._line_limit()) is None:
                raise _Hangup("closed during AUTH")
        self._finish_login(None, "AUTH", how="XOAUTH2")

    def _finish_login(self, user: str | None, verb: str, *, how: str) -> None:
        """Reply to a login attempt whose credentials check gave ``user``."""
        faults = self._server.faults
        if user is None or faults.reject_login:
            self._reply("-ERR [AUTH] authentication failed", verb)
            return
        if faults.login_delay:
            self._reply("-ERR [LOGIN-DELAY] logged in too recently, try later", verb)
            return
        if faults.in_use:
            self._reply("-ERR [IN-USE] maildrop is locked", verb)
            return
        maildrop = self._server._lock_maildrop(user)
        if maildrop is None:
            self._reply("-ERR [IN-USE] maildrop is locked by another session", verb)
            return
        self._user = user
        self._server._login_recorded(user, how)
        self._maildrop = maildrop
        self._state = _TRANSACTION
        total = sum(stored.size for stored in maildrop)
        self._reply(f"+OK {user} has {len(maildrop)} messages ({total} octets)", verb)

    # -- TRANSACTION -----------------------------------------------------------------

    def _cmd_quit(self, rest: str) -> None:
        if self._state == _TRANSACTION and self._user is not None:
            deleted = {self._maildrop[number - 1].uid for number in self._deleted}
            self._state = _UPDATE
            # Commit and release before replying, so a client that reconnects as soon
            # as it reads +OK finds the maildrop free and up to date.
            self._server._unlock_maildrop(self._user, deleted)
            self._reply(f"+OK bye, {len(deleted)} messages deleted", "QUIT")
        else:
            self._state = _UPDATE
            self._reply("+OK bye", "QUIT")

    def _cmd_stat(self, rest: str) -> None:
        visible = self._visible()
        total = sum(stored.size for _, stored in visible)
        self._reply(f"+OK {len(visible)} {total}", "STAT")

    def _cmd_list(self, rest: str) -> None:
        if rest.strip():
            number = self._message(rest.strip(), "LIST")
            if number is not None:
                self._reply(f"+OK {number} {self._maildrop[number - 1].size}", "LIST")
            return
        visible = self._visible()
        lines = [f"{number} {stored.size}".encode("ascii") for number, stored in visible]
        self._reply_lines(f"+OK {len(visible)} messages", lines, "LIST")

    def _cmd_uidl(self, rest: str) -> None:
        if rest.strip():
            number = self._message(rest.strip(), "UIDL")
            if number is not None:
                self._reply(f"+OK {number} {self._maildrop[number - 1].uid}", "UIDL")
            return
        lines = [f"{number} {stored.uid}".encode() for number, stored in self._visible()]
        self._reply_lines("+OK unique-id listing follows", lines, "UIDL")

    def _cmd_retr(self, rest: str) -> None:
        number = self._message(rest.strip(), "RETR")
        if number is None:
            return
        stored = self._maildrop[number - 1]
        truncate = self._server.faults.drop_mid_retr_after_bytes
        self._reply_lines(f"+OK {stored.size} octets", stored.lines, "RETR", truncate)

    def _cmd_top(self, rest: str) -> None:
        parts = rest.split()
        if len(parts) != 2 or not parts[1].isdigit():
            self._reply("-ERR usage: TOP message lines", "TOP")
            return
        number = self._message(parts[0], "TOP")
        if number is None:
            return
        lines = self._maildrop[number - 1].lines
        try:
            header_end = lines.index(b"")
        except ValueError:
            header_end = len(lines)
        selected = lines[: header_end + 1 + int(parts[1])]
        self._reply_lines("+OK top of message follows", selected, "TOP")

    def _cmd_dele(self, rest: str) -> None:
        number = self._message(rest.strip(), "DELE")
        if number is not None:
            self._deleted.add(number)
            self._reply(f"+OK message {number} deleted", "DELE")

    def _cmd_noop(self, rest: str) -> None:
        self._reply("+OK", "NOOP")

    def _cmd_rset(self, rest: str) -> None:
        self._deleted.clear()
        self._reply(f"+OK maildrop has {len(self._maildrop)} messages", "RSET")
