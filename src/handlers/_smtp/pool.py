"""A bounded, thread-safe and fork-safe pool of SMTP connections.

Connections are keyed by server, credentials and TLS settings, so a connection
authenticated as one user is never handed to another. An OAuth2 login is keyed by a
digest of its fixed token, or by its token provider (not the token the provider last
returned), so a refreshed token keeps the warm connections usable. Pool state changes under one
lock; sockets are opened, checked and closed outside it. ``max_connections`` is a
hard bound on open connections: a caller that finds the pool full waits (up to
``wait_timeout``) for a release, or for an idle connection of another server that
can be closed to make room.
"""

from __future__ import annotations

import os
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .._auth.credentials import Credentials
from .._auth.oauth2 import TokenProvider, TokenSource
from .._net.config import Encryption, Endpoint, Timeouts, check_seconds
from .._net.connect import Proxy
from .._net.deadline import Deadline
from .._net.forksafe import forget_in_child
from .._net.logs import get_logger
from .._sasl import cleartext_consent
from ..errors import ConfigurationError, PoolTimeoutError
from .connection import SMTPConnection
from .settings import ConnectionKey, SessionSettings, check_auth_mechanism, check_proxy

log = get_logger("smtp.pool")

Clock = Callable[[], float]


@dataclass
class _Checkout:
    """What one get_connection call decided under the lock."""

    reuse: SMTPConnection | None = None
    evict: SMTPConnection | None = None


class SMTPConnectionPool:
    """Reuses authenticated SMTP connections across sends and threads.

    ``idle_timeout``: a connection unused for longer is closed instead of reused.
    ``stale_timeout``: a connection older than this is closed instead of reused.
    """

    def __init__(
        self,
        max_connections: int = 10,
        idle_timeout: float = 300,
        stale_timeout: float = 3600,
        *,
        wait_timeout: float = 30.0,
        clock: Clock = time.monotonic,
        opener: Callable[..., SMTPConnection] = SMTPConnection.open,
    ) -> None:
        if isinstance(max_connections, bool) or not isinstance(max_connections, int):
            raise ConfigurationError("max_connections must be an integer", "max_connections")
        if max_connections < 1:
            raise ConfigurationError("max_connections must be at least 1", "max_connections")
        for value, name in (
            (idle_timeout, "idle_timeout"),
            (stale_timeout, "stale_timeout"),
            (wait_timeout, "wait_timeout"),
        ):
            check_seconds(value, name)
        self.max_connections = max_connections
        self.idle_timeout = idle_timeout
        self.stale_timeout = stale_timeout
        self.wait_timeout = wait_timeout
        self._clock = clock
        self._opener = opener
        self._init_state()
        forget_in_child(self)

    def _init_state(self) -> None:
        self._lock = threading.RLock()
        self._freed = threading.Condition(self._lock)
        self._pid = os.getpid()
        self._idle: dict[ConnectionKey, list[SMTPConnection]] = {}
        self._open = 0  # idle + in use + being opened: the number bounded by max_connections
        self._in_use = 0
        self._generation = 0  # bumped by close_all: older connections are not kept
        self._stats = dict.fromkeys(
            ("created", "reused", "closed", "expired", "dropped", "discarded", "retired", "waits"),
            0,
        )
        # Per key, the number of messages after which the server refused another on
        # the same session: connections are retired when they reach it.
        self._message_limits: dict[ConnectionKey, int] = {}
        self._refused_after: dict[ConnectionKey, int] = {}

    def _after_fork_in_child(self) -> None:
        """In a forked child: drop the parent's sockets without touching them."""
        self._init_state()

    # ------------------------------------------------------------------ checkout

    def get_connection(
        self,
        host: str,
        port: int,
        username: str | None = None,
        password: str | None = None,
        encryption: Encryption | str = Encryption.STARTTLS,
        *,
        ssl_context: ssl.SSLContext | None = None,
        timeout: float = 30.0,
        local_hostname: str | None = None,
        wait_timeout: float | None = None,
        deadline: Deadline | None = None,
        oauth2_token: str | TokenProvider | TokenSource | None = None,
        oauth2_initial_response: bool = True,
        auth_mechanism: str | None = None,
        allow_cleartext: bool | None = None,
        proxy: Proxy | str | None = None,
    ) -> SMTPConnection:
        """Return a healthy connection for this server and login, opening one if needed.

        With ``oauth2_token`` (a token, a provider or a :class:`TokenSource`) new
        connections log in with OAUTHBEARER or XOAUTH2 instead of the password;
        ``auth_mechanism``, ``allow_cleartext`` and ``proxy`` are the handler's
        options of those names (see :class:`SMTPProtocolHandler`). Bad settings raise
        :class:`ConfigurationError`.

        Raises :class:`PoolTimeoutError` if the pool stays full for ``wait_timeout``
        seconds, or the library error that opening a connection raised.
        """
        credentials = Credentials.of(username, password, oauth2_token)
        endpoint = Endpoint(host, port, Encryption.parse(encryption))
        settings = SessionSettings(
            endpoint,
            credentials,
            Timeouts(socket=timeout),
            ssl_context,
            local_hostname,
            oauth2_initial_response,
            check_auth_mechanism(auth_mechanism, credentials),
            cleartext_consent(allow_cleartext, endpoint.encryption),
            check_proxy(proxy),
        )
        return self.checkout(settings, wait_timeout=wait_timeout, deadline=deadline)

    def checkout(
        self,
        settings: SessionSettings,
        key: ConnectionKey | None = None,
        *,
        wait_timeout: float | None = None,
        deadline: Deadline | None = None,
    ) -> SMTPConnection:
        """:meth:`get_connection` for settings made once; ``key`` is
        ``ConnectionKey.of(settings)``, passed by callers that keep it."""
        if key is None:
            key = ConnectionKey.of(settings)
        host, port = settings.endpoint.host, settings.endpoint.port
        limit = self.wait_timeout if wait_timeout is None else wait_timeout
        while True:
            checkout = self._reserve(key, limit, deadline)
            if checkout.evict is not None:
                self._close(checkout.evict, "evicted to make room")
            candidate = checkout.reuse
            if candidate is not None:
                reason = self._unfit_reason(candidate)
                if reason is None:
                    self._count("reused")
                    log.debug("reusing SMTP connection to %s:%s", host, port)
                    return candidate
                self._count(
                    {"dropped by server": "dropped", "message limit reached": "retired"}.get(
                        reason, "expired"
                    )
                )
                self._close(candidate, reason, polite=reason != "dropped by server")
            try:
                connection = self._opener(settings, key=key, clock=self._clock(), deadline=deadline)
            except BaseException:
                self._give_back_slot()
                raise
            connection.generation = self._generation
            connection.checked_out = True
            self._count("created")
            return connection

    def _reserve(
        self, key: ConnectionKey, wait_timeout: float, operation: Deadline | None
    ) -> _Checkout:
        """Under the lock: take an idle connection, or a slot to open one (maybe by
        evicting another server's idle connection), or wait, never past ``operation``."""
        deadline = time.monotonic() + wait_timeout
        if operation is not None and operation.remaining() < wait_timeout:
            deadline = time.monotonic() + max(0.0, operation.remaining())
        with self._lock:
            while True:
                idle = self._idle.get(key)
                if idle:
                    self._in_use += 1
                    reused = idle.pop()
                    reused.checked_out = True
                    return _Checkout(reuse=reused)
                if self._open < self.max_connections:
                    self._open += 1
                    self._in_use += 1
                    return _Checkout()
                victim = self._oldest_idle()
                if victim is not None:
                    self._in_use += 1  # the victim's slot passes to this caller
                    return _Checkout(evict=victim)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    if operation is not None and operation.remaining() <= 0:
                        raise PoolTimeoutError(
                            f"all {self.max_connections} connections stayed busy until the "
                            f"operation_timeout of {operation.seconds:g}s ran out"
                        )
                    raise PoolTimeoutError(
                        f"all {self.max_connections} connections stayed busy for {wait_timeout:g}s"
                    )
                self._stats["waits"] += 1
                self._freed.wait(remaining)

    def _oldest_idle(self) -> SMTPConnection | None:
        oldest: SMTPConnection | None = None
        for connections in self._idle.values():
            if connections and (oldest is None or connections[0].last_used < oldest.last_used):
                oldest = connections[0]
        if oldest is not None:
            self._idle[oldest.key].remove(oldest)  # type: ignore[index]
        return oldest

    def _unfit_reason(self, connection: SMTPConnection) -> str | None:
        if self._at_message_limit(connection):
            return "message limit reached"
        now = self._clock()
        if now - connection.last_used > self.idle_timeout:
            return "idle too long"
        if now - connection.created_at > self.stale_timeout:
            return "too old"
        if connection.is_dropped():
            return "dropped by server"
        return None

    def _at_message_limit(self, connection: SMTPConnection) -> bool:
        limit = self._message_limits.get(connection.key)  # type: ignore[call-overload]
        return limit is not None and connection.messages_sent >= limit

    def _learn_message_limit(self, connection: SMTPConnection) -> None:
        """Under the lock: a retired connection's server refused another message after
        ``messages_sent``. Two sessions refused at the same count make it the key's
        limit (one refusal may be a passing 4xx, and learning a limit of 1 from it would
        cost a login per message); later connections of the key retire on reaching it."""
        count = connection.messages_sent
        if not isinstance(connection.key, ConnectionKey) or count <= 0:
            return
        if self._refused_after.get(connection.key) == count:
            if self._message_limits.get(connection.key) != count:
                log.debug("SMTP server takes %d messages per connection; rolling over", count)
            self._message_limits[connection.key] = count
        self._refused_after[connection.key] = count

    # ------------------------------------------------------------------ release

    def release_connection(self, host: str, port: int, conn: SMTPConnection) -> None:
        """Give ``conn`` back. A broken connection, or one from another process, is
        closed instead of kept. ``host`` and ``port`` are accepted for compatibility;
        the connection knows its own key."""
        with self._lock:
            # A connection inherited across fork() was never counted in this process.
            inherited = conn.pid != self._pid
            if not inherited and not conn.checked_out:
                log.warning("SMTP connection released twice; ignoring the second release")
                return
            conn.checked_out = False
            if conn.retired:
                self._learn_message_limit(conn)
            retire = conn.retired or self._at_message_limit(conn)
            keep = (
                not conn.broken
                and not retire
                and not inherited
                and conn.generation == self._generation
                and isinstance(conn.key, ConnectionKey)
            )
            if not inherited:
                self._in_use = max(0, self._in_use - 1)
            if keep:
                conn.last_used = self._clock()
                self._idle.setdefault(conn.key, []).append(conn)  # type: ignore[arg-type]
            elif not inherited:
                self._open = max(0, self._open - 1)
            self._freed.notify()
        if keep:
            return
        if retire and not conn.broken and not inherited:
            self._count("retired")
            self._close(conn, "message limit reached")
        else:
            self._count("discarded")
            self._close(conn, "broken", polite=False)

    def _give_back_slot(self) -> None:
        with self._lock:
            self._open = max(0, self._open - 1)
            self._in_use = max(0, self._in_use - 1)
            self._freed.notify()

    def _close(self, conn: SMTPConnection, reason: str, polite: bool = True) -> None:
        """Close outside the lock. Callers have already accounted for the slot, except
        for checkout replacements, which keep their slot for the new connection."""
        log.debug("closing SMTP connection: %s", reason)
        conn.close(polite=polite and conn.pid == os.getpid())
        self._count("closed")

    def _count(self, name: str, amount: int = 1) -> None:
        with self._lock:
            self._stats[name] += amount

    # ------------------------------------------------------------------ shutdown

    def close_all(self) -> None:
        """Close every idle connection now; connections in use close when released."""
        with self._lock:
            idle = [c for connections in self._idle.values() for c in connections]
            self._idle.clear()
            self._generation += 1
            self._open = max(0, self._open - len(idle))
            self._freed.notify_all()
        for conn in idle:
            self._close(conn, "pool closed")

    def get_stats(self) -> dict[str, Any]:
        """Counters: created, reused, closed, expired, dropped, discarded, retired (at
        the server's per-connection message limit), waits, plus the current in_use, idle
        and open counts and the bound."""
        with self._lock:
            stats: dict[str, Any] = dict(self._stats)
            stats["in_use"] = self._in_use
            stats["idle"] = sum(len(c) for c in self._idle.values())
            stats["open"] = self._open
            stats["max_connections"] = self.max_connections
        return stats

    def __repr__(self) -> str:
        stats = self.get_stats()
        return (
            f"<SMTPConnectionPool [in use: {stats['in_use']}, idle: {stats['idle']}, "
            f"max: {self.max_connections}]>"
        )
