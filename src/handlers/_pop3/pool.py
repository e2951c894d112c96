"""A bounded, thread-safe pool of logged-in POP3 sessions; ``POP3ConnectionPool`` is one.

Things POP3 itself imposes, which shape how the pool behaves:

* A server locks a mailbox from login to ``QUIT``. Two sessions of the same mailbox
  cannot run at once: the second login gets ``-ERR [IN-USE]``. A pool for one
  mailbox therefore serves one thread at a time unless the server allows
  concurrent sessions, and while a session sits idle in the pool the mailbox stays
  locked for everyone else (other processes included).
* A session sees the mailbox as it was at login; mail that arrives later shows up
  only in a new session.
* Deletions are committed only by ``QUIT``. ``release(handler)`` undoes them with
  ``RSET`` so the next user starts clean; ``release(handler, commit=True)`` ends the
  session with ``QUIT`` instead, committing them, and the pool logs in again the
  next time that handler is acquired (which also gives a fresh view of the mailbox).

State changes happen under one re-entrant lock; connecting, logging in, checking and
closing happen outside it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any, Generic, Protocol, Self, TypeVar

from .._auth.oauth2 import TokenSource
from .._net.config import Encryption
from .._net.forksafe import forget_in_child
from .._net.logs import get_logger
from .._net.secret import Secret
from ..errors import (
    ConfigurationError,
    MailHandlerError,
    POP3MailboxBusyError,
    POP3PoolClosedError,
)
from ..retry import Clock

log = get_logger("pop3.pool")


class PooledMailbox(Protocol):
    """What the pool needs of the handlers it keeps."""

    @property
    def is_authenticated(self) -> bool: ...

    def test_connection(self) -> bool: ...

    def connect(self) -> bool: ...

    def authenticate(self) -> bool: ...

    def reset(self) -> bool: ...

    def disconnect(self) -> bool: ...

    def abort(self) -> None: ...


H = TypeVar("H", bound=PooledMailbox)

#: Builds a handler from the pool's settings: host, port, username, password,
#: encryption, timeout, then keyword options (``clock`` and the rest).
HandlerFactory = Callable[..., H]


class SessionPool(Generic[H]):
    """Hands out connected, logged-in handlers made by ``factory``.

    At most ``pool_size`` handlers exist at once. ``encryption``, ``timeout``, ``clock``
    and the other keyword options are passed to every handler the pool creates;
    ``clock`` also times blocking :meth:`acquire` calls.
    """

    def __init__(
        self,
        hostname: str,
        port: int,
        username: str,
        password: str | None = None,
        pool_size: int = 3,
        *,
        encryption: str | Encryption = "ssl",
        timeout: float = 30,
        clock: Clock = time.monotonic,
        factory: HandlerFactory[H],
        **handler_options: Any,
    ) -> None:
        self._factory = factory
        if isinstance(pool_size, bool) or not isinstance(pool_size, int) or pool_size < 1:
            raise ConfigurationError("pool_size must be a positive integer", "pool_size")
        self._hostname = hostname
        self._port = port
        self._username = username
        self._password = Secret(password) if password is not None else None
        if handler_options.get("oauth2_token") is not None:
            # Held masked, like the password, rather than as given.
            handler_options["oauth2_token"] = TokenSource.of(handler_options["oauth2_token"])
        self._encryption = encryption
        self._timeout = timeout
        self._options = handler_options
        self._size = pool_size
        self._clock = clock
        self._new_handler()  # validates the options now; builds nothing on the network
        self._lock = threading.RLock()
        self._released = threading.Condition(self._lock)
        self._idle: list[H] = []
        self._busy: set[H] = set()  # checked out, or being returned
        self._returning: set[H] = set()
        self._closed = False
        self._generation = 0  # bumped in a forked child: handlers from before are not ours
        forget_in_child(self)

    # -- public API ---------------------------------------------------------------

    @property
    def size(self) -> int:
        """The most handlers that may exist at once."""
        return self._size

    @property
    def idle_count(self) -> int:
        """Handlers waiting in the pool."""
        with self._lock:
            return len(self._idle)

    @property
    def in_use_count(self) -> int:
        """Handlers checked out (or being returned)."""
        with self._lock:
            return len(self._busy)

    @property
    def closed(self) -> bool:
        """True after :meth:`close_all`."""
        return self._closed

    def __repr__(self) -> str:
        with self._lock:
            idle, busy = len(self._idle), len(self._busy)
        state = " closed" if self._closed else ""
        return (
            f"<{type(self).__name__} {self._hostname}:{self._port} user={self._username!r}"
            f"{state} [idle: {idle}, in use: {busy}, size: {self._size}]>"
        )

    def acquire(self, *, block: bool = False, timeout: float | None = None) -> H | None:
        """Return a connected, logged-in handler, or None if none can be had now.

        None means every slot is checked out (after waiting up to ``timeout`` seconds
        when ``block`` is true), or the server answered ``[IN-USE]``/``[LOGIN-DELAY]``
        because the mailbox is locked by another session; the log says which. Other
        connection and login errors are raised. Raises :class:`POP3PoolClosedError`
        after :meth:`close_all`.
        """
        give_up_at = None if timeout is None else self._clock() + timeout
        while True:
            handler = self._checkout(block, give_up_at)
            if handler is None:
                return None
            try:
                self._make_ready(handler)
            except POP3MailboxBusyError as error:
                self._discard(handler)
                log.warning(
                    "POP3 pool for %s:%d: mailbox of %r is locked by another session (%s); "
                    "sessions of one mailbox cannot run concurrently",
                    self._hostname,
                    self._port,
                    self._username,
                    error,
                )
                return None
            except BaseException:
                self._discard(handler)
                raise
            log.debug("POP3 pool handed out %r", handler)
            return handler

    def release(self, handler: H, *, commit: bool = False) -> None:
        """Give ``handler`` back to the pool. Releasing it twice does nothing.

        By default pending deletions are undone with ``RSET`` and the session stays
        open for the next user. With ``commit=True`` the session ends with ``QUIT``,
        committing them; the handler logs in again when next acquired.
        """
        with self._lock:
            if handler not in self._busy or handler in self._returning:
                log.debug("POP3 pool: %r is not checked out; release ignored", handler)
                return
            self._returning.add(handler)
            closing = self._closed
            generation = self._generation
        if closing:
            handler.disconnect()
        elif commit:
            if not handler.disconnect():
                log.warning("POP3 pool: QUIT failed on release; deletions may not be committed")
        else:
            self._undo_deletions(handler)
        with self._lock:
            self._returning.discard(handler)
            self._busy.discard(handler)
            if not self._closed and self._generation == generation:
                self._idle.append(handler)
                closing = False
            self._released.notify()
        if closing:
            handler.disconnect()

    def close_all(self) -> None:
        """Close every idle session and refuse new checkouts.

        Handlers still checked out are closed when they are released.
        """
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
            self._released.notify_all()
        for handler in idle:
            handler.disconnect()
        log.debug("POP3 pool for %s:%d closed", self._hostname, self._port)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close_all()

    # -- internals ----------------------------------------------------------------

    def _new_handler(self) -> H:
        return self._factory(
            self._hostname,
            self._port,
            self._username,
            self._password.reveal() if self._password is not None else None,
            self._encryption,
            self._timeout,
            clock=self._clock,
            **self._options,
        )

    def _checkout(self, block: bool, give_up_at: float | None) -> H | None:
        """Reserve an idle handler or a new one under the lock; None when exhausted."""
        with self._lock:
            while True:
                if self._closed:
                    raise POP3PoolClosedError("the POP3 connection pool has been closed")
                if self._idle:
                    handler = self._idle.pop()  # most recently used first: likeliest alive
                    self._busy.add(handler)
                    return handler
                if len(self._busy) < self._size:
                    handler = self._new_handler()
                    self._busy.add(handler)
                    return handler
                remaining = None if give_up_at is None else give_up_at - self._clock()
                if not block or (remaining is not None and remaining <= 0):
                    log.debug("POP3 pool for %s:%d exhausted", self._hostname, self._port)
                    return None
                self._released.wait(remaining)

    def _make_ready(self, handler: H) -> None:
        if handler.is_authenticated and handler.test_connection():
            return
        handler.disconnect()
        handler.connect()
        handler.authenticate()

    def _undo_deletions(self, handler: H) -> None:
        try:
            undone = handler.reset()
        except MailHandlerError:
            undone = False
        if not undone:
            # QUIT would commit what RSET failed to undo, so close without it.
            handler.abort()

    def _discard(self, handler: H) -> None:
        handler.abort()
        with self._lock:
            self._busy.discard(handler)
            self._released.notify()

    def _after_fork_in_child(self) -> None:
        """In a forked child: a fresh lock (another thread of the parent may have held
        the old one at the fork), and none of the parent's sessions, left untouched."""
        self._lock = threading.RLock()
        self._released = threading.Condition(self._lock)
        self._generation += 1
        self._idle = []
        self._busy = set()
        self._returning = set()
