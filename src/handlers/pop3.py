"""POP3 retrieval: :class:`POP3ProtocolHandler`.

A handler works in one of two ways, and both can be mixed freely:

* **Session**: ``connect()`` (or ``with handler:``, or ``with handler.session():``)
  opens a connection that every later call uses until ``disconnect()``. Logging in
  happens on the first call that needs it, or explicitly with ``authenticate()``.
  Deletions are committed when the session ends with ``QUIT``.
* **Stateless**: a call made while no session is open opens one, logs in with the
  stored credentials, does its work and ends with ``QUIT``, so a stateless
  ``delete_message()`` is committed before it returns.

If the connection breaks in the middle of a session, deletions marked in it are
lost (the server only commits at ``QUIT``), and every later call raises
:class:`POP3ConnectionError` until ``disconnect()`` or ``connect()`` starts afresh.

A handler is not thread-safe: use one per thread, or a :class:`POP3ConnectionPool`.

The handler is built in layers: :class:`~src.handlers._pop3.session.POP3Session` holds
the session's state and plumbing (opening, login, one command, losing and ending the
session), :class:`~src.handlers._pop3.mailbox.POP3Mailbox` adds the mailbox operations,
and this module adds the constructor, the session lifecycle and the making of clients
from ``POP3`` and ``POP3_SSL``, looked up here on every connection so that tests can
patch them in this module. Argument checks live in :mod:`~src.handlers._pop3.checks`.
"""

from __future__ import annotations

import contextlib
import poplib
import ssl
import time
from collections.abc import Iterator
from poplib import POP3, POP3_SSL
from types import TracebackType
from typing import Any, Final, cast

from ._auth.oauth2 import TokenProvider, TokenSource
from ._auth.secret import Secret
from ._mime.parser import ParseLimits
from ._net import trace as wire_log
from ._net.logs import get_logger
from ._net.tls import resolve_context
from ._pop3.checks import check_credentials, check_size_limit, oauth2_source
from ._pop3.client import FastPOP3, FastPOP3_SSL, is_fast_client
from ._pop3.connection import DEFAULT_CONNECT_RETRY, ClientFactory, POP3Connector
from ._pop3.mailbox import POP3Mailbox
from ._pop3.pool import SessionPool
from ._pop3.session import Client
from ._sync.sync import MessageCallback, SyncResult, sync_mailbox
from ._sync.transactional import (
    DBUIDStore,
    TransactionalCallback,
    TransactionalUIDStore,
    sync_leased,
    sync_transactional,
)
from ._sync.uid_store import FileUIDStore, MemoryUIDStore, SQLiteUIDStore, UIDStore
from .errors import (
    POP3AuthenticationError,
    POP3ConnectionError,
    POP3MailboxBusyError,
    POP3MessageTooLargeError,
    POP3SecurityError,
    POP3TimeoutError,
    POP3UnsupportedError,
)
from .retry import Clock, RetryPolicy, Sleep

__all__ = [
    "DEFAULT_CONNECT_RETRY",
    "DEFAULT_MAX_MESSAGE_SIZE",
    "POP3",
    "POP3_SSL",
    "DBUIDStore",
    "FileUIDStore",
    "MemoryUIDStore",
    "POP3AuthenticationError",
    "POP3ConnectionError",
    "POP3ConnectionPool",
    "POP3MailboxBusyError",
    "POP3MessageTooLargeError",
    "POP3ProtocolHandler",
    "POP3SecurityError",
    "POP3TimeoutError",
    "POP3UnsupportedError",
    "ParseLimits",
    "SQLiteUIDStore",
    "SyncResult",
    "TransactionalUIDStore",
    "UIDStore",
    "sync_mailbox",
    "sync_transactional",
]

log = get_logger("pop3")

#: Messages larger than this are refused unless ``max_message_size`` says otherwise.
DEFAULT_MAX_MESSAGE_SIZE: Final = 50 * 1024 * 1024


class POP3ProtocolHandler(POP3Mailbox):
    """Fetch and delete mail over POP3, on an explicit session or call by call.

    ``encryption`` is ``'ssl'`` (TLS from the first byte, usually port 995), ``'tls'``
    (plain connection upgraded with STLS, refused if the server does not offer it) or
    ``'none'`` (plain text; a warning is logged whenever the password is sent).
    Certificates and host names are verified with a shared default context unless
    ``ssl_context`` is given.

    Keyword-only options: ``retry`` (policy for opening connections, by default three
    attempts with 1 s and 2 s waits), ``sleep`` and ``clock`` (injectable for tests),
    ``deadline`` (seconds that opening a connection may take in all, retries included),
    ``max_message_size`` (bytes, ``None`` for no limit), ``include_raw`` and
    ``include_attachment_content`` (extras in the message dicts), ``parse_limits`` and
    ``trace`` (log every command and status line to the ``src.handlers._net.trace``
    logger at DEBUG, the password masked; see :mod:`src.handlers._net.trace`).

    ``oauth2_token`` (an OAuth2 access token, or a callable returning one) logs in with
    SASL ``AUTH XOAUTH2`` instead of USER/PASS, and ``password`` is then left out;
    ``oauth2_initial_response`` (default True) sends the token with the ``AUTH``
    command when the line fits in 255 octets, False always waits for the server's
    challenge. See docs/oauth2.md.

    ``operation_timeout`` bounds each exchange with the server as a whole: opening a
    session (connecting, greeting, STLS, login), or one command and its complete reply,
    however slowly the server drips it. The default is ten times ``timeout``; past it
    the connection is cut and :class:`POP3TimeoutError` raised.

    Nothing touches the network until a method needs it.
    """

    def __init__(
        self,
        hostname: str,
        port: int,
        username: str,
        password: str | None = None,
        encryption: str = "ssl",
        timeout: float = 30,
        *,
        ssl_context: ssl.SSLContext | None = None,
        retry: RetryPolicy | None = None,
        sleep: Sleep = time.sleep,
        clock: Clock = time.monotonic,
        deadline: float | None = None,
        operation_timeout: float | None = None,
        max_message_size: int | None = DEFAULT_MAX_MESSAGE_SIZE,
        include_raw: bool = False,
        include_attachment_content: bool = False,
        parse_limits: ParseLimits | None = None,
        oauth2_token: str | TokenProvider | TokenSource | None = None,
        oauth2_initial_response: bool = True,
        trace: bool = False,
    ) -> None:
        self._connector = POP3Connector(
            hostname,
            port,
            encryption,
            timeout,
            ssl_context,
            retry if retry is not None else DEFAULT_CONNECT_RETRY,
            sleep,
            clock,
            deadline,
            operation_timeout=operation_timeout,
        )
        check_size_limit(max_message_size)
        self._oauth2 = oauth2_source(oauth2_token, username, password)
        self._oauth2_initial_response = oauth2_initial_response
        check_credentials(username, password or "")
        self._username = username
        self._password = Secret(password or "")
        self._max_message_size = max_message_size
        self._include_raw = include_raw
        self._include_attachment_content = include_attachment_content
        self._parse_limits = parse_limits
        self._trace = trace
        self._client: Client | None = None
        self._session_open = False
        self._authenticated = False
        self._broken = False
        self._pending_deletions = 0

    def __repr__(self) -> str:
        return (
            f"<POP3ProtocolHandler {self._connector.where} user={self._username!r} "
            f"encryption={self.encryption} state={self.state}>"
        )

    # -- session lifecycle -------------------------------------------------------

    def connect(self) -> bool:
        """Open a session, retrying connection failures with backoff.

        Returns True (also when a session is already open). Raises
        :class:`POP3ConnectionError` (or :class:`POP3TimeoutError`) once the retry
        policy is exhausted, and :class:`POP3SecurityError` for TLS problems, which
        are not retried.
        """
        if self._client is not None:
            log.debug("POP3 session with %s:%d already open", self.hostname, self.port)
            return True
        self._install(self._open(login=False), authenticated=False)
        return True

    def authenticate(self, username: str | None = None, password: str | None = None) -> bool:
        """Log in with the stored credentials, or with these (which replace them).

        Inside a session this logs that session in, once: later calls return True
        at once. With no session open it checks the credentials in a short session
        of its own. Raises :class:`POP3AuthenticationError` for refused credentials
        (never retried) and :class:`POP3MailboxBusyError` for ``[IN-USE]`` or
        ``[LOGIN-DELAY]``.
        """
        self._replace_credentials(username, password)
        if not self._session_open:
            with self._session(login=True):
                return True
        self._ensure_login(self._live_client())
        return True

    def disconnect(self) -> bool:
        """End the session with ``QUIT``, which commits pending deletions.

        If ``QUIT`` fails the socket is closed anyway and False is returned: deletions
        may not have been committed. Calling it with no session open returns True.
        Never raises.
        """
        failure, _ = self._end_session()
        return failure is None

    @contextlib.contextmanager
    def session(self) -> Iterator[POP3ProtocolHandler]:
        """Group calls into one logged-in session, opened here unless one is open.

        A session opened here ends with ``QUIT`` when the block is left; if deletions
        were marked and the server does not confirm ``QUIT``, the exception saying so
        is raised.
        """
        with self._session(login=True):
            yield self

    def __enter__(self) -> POP3ProtocolHandler:
        """Connect; leaving the block disconnects (``QUIT``, committing deletions)."""
        self.connect()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is not None and not issubclass(exc_type, Exception):
            self.abort()  # interrupted (Ctrl-C, exit): leave at once, committing nothing
        else:
            self.disconnect()

    # -- syncing -----------------------------------------------------------------

    def sync(
        self,
        store: UIDStore | TransactionalUIDStore,
        handler_fn: MessageCallback | TransactionalCallback,
        *,
        delete_after: bool = False,
        prune: bool = True,
        lease_wait: float = 0.0,
    ) -> SyncResult:
        """Hand every message whose unique ID is not in ``store`` to ``handler_fn``.

        See :func:`src.handlers._sync.sync.sync_mailbox` for the guarantees. With a
        :class:`TransactionalUIDStore` (such as :class:`DBUIDStore`) it is called as
        ``handler_fn(message, cursor)`` and the save and the UID record commit
        together (:func:`src.handlers._sync.transactional.sync_transactional`). A
        store with a run lease (:class:`SQLiteUIDStore`, :class:`DBUIDStore`) is held
        for the run; another process's run is waited for up to ``lease_wait`` seconds
        (``DBUIDStore`` uses its own ``lease_wait``), then
        :class:`~src.handlers.errors.AccountBusyError` is raised.
        """
        if isinstance(store, TransactionalUIDStore):
            fn = cast(TransactionalCallback, handler_fn)
            return sync_transactional(self, store, fn, delete_after=delete_after, prune=prune)
        return sync_leased(
            self,
            store,
            cast(MessageCallback, handler_fn),
            delete_after=delete_after,
            prune=prune,
            lease_wait=lease_wait,
        )

    # -- making clients ----------------------------------------------------------

    def _client_factory(self) -> ClientFactory:
        factory = self._plain_client_factory()
        if not self._trace:
            return factory

        def traced(host: str, port: int, timeout: float) -> Client:
            client = factory(host, port, timeout)
            if is_fast_client(client):
                wire_log.watch_pop3(client, f"{host}:{port}")
            return client

        return traced

    def _plain_client_factory(self) -> ClientFactory:
        # Looked up on every call so that patching POP3 or POP3_SSL in this module (as
        # the specification's tests do) takes effect. The stock poplib classes are
        # swapped for subclasses that close their socket on failure and read fast.
        if self.encryption == "ssl":
            tls_class: Any = FastPOP3_SSL if POP3_SSL is poplib.POP3_SSL else POP3_SSL
            context = resolve_context(self._connector.ssl_context)
            return lambda host, port, timeout: tls_class(
                host, port, timeout=timeout, context=context
            )
        plain_class: Any = FastPOP3 if POP3 is poplib.POP3 else POP3
        return lambda host, port, timeout: plain_class(host, port, timeout=timeout)


class POP3ConnectionPool(SessionPool[POP3ProtocolHandler]):
    """Hands out connected, logged-in :class:`POP3ProtocolHandler` objects.

    At most ``pool_size`` handlers exist at once. ``encryption``, ``timeout``, ``clock``
    and any other keyword option of :class:`POP3ProtocolHandler` (``ssl_context``,
    ``retry``, ``max_message_size``, ...) are passed to every handler the pool creates;
    ``clock`` also times blocking :meth:`acquire` calls. With ``oauth2_token`` the
    handlers log in with XOAUTH2 and ``password`` is left out; all of them share the
    one token or provider.
    """

    def __init__(
        self,
        hostname: str,
        port: int,
        username: str,
        password: str | None = None,
        pool_size: int = 3,
        *,
        encryption: str = "ssl",
        timeout: float = 30,
        clock: Clock = time.monotonic,
        **handler_options: Any,
    ) -> None:
        super().__init__(
            hostname,
            port,
            username,
            password,
            pool_size,
            encryption=encryption,
            timeout=timeout,
            clock=clock,
            factory=POP3ProtocolHandler,
            **handler_options,
        )
