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

The handler is made of parts: a :class:`~src.handlers._pop3.session.Session` owns the
connection and its state, a :class:`~src.handlers._pop3.mailbox.Mailbox` runs the
mailbox operations through it, and the handler turns its arguments into settings
values and makes clients from ``POP3`` and ``POP3_SSL``, looked up here on every
connection so that tests can patch them in this module.
"""

from __future__ import annotations

import contextlib
import poplib
import ssl
import time
from collections.abc import Callable, Iterator
from poplib import POP3, POP3_SSL
from types import TracebackType
from typing import Any, Final, cast

from ._auth.oauth2 import TokenProvider, TokenSource
from ._mime.dsn import DeliveryAction, DeliveryReport, RecipientReport, parse_delivery_report
from ._mime.parser import ParseLimits
from ._net.config import Encryption, Endpoint, Timeouts
from ._net.connect import Proxy
from ._net.logs import get_logger
from ._net.tls import resolve_context
from ._pop3.checks import check_byte_count, check_size_limit, credentials_for
from ._pop3.client import FastPOP3, FastPOP3_SSL
from ._pop3.connection import DEFAULT_CONNECT_RETRY, ClientFactory, POP3Connector
from ._pop3.listing import UIDListing
from ._pop3.login import LoginOptions
from ._pop3.mailbox import Mailbox, MessageOptions
from ._pop3.pool import SessionPool
from ._pop3.session import Session, SessionState
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
from .retry import Clock, RetryPolicy, Sleep, default_sleep

__all__ = [
    "DEFAULT_BATCH_BYTES",
    "DEFAULT_CONNECT_RETRY",
    "DEFAULT_MAX_MESSAGE_SIZE",
    "POP3",
    "POP3_SSL",
    "DBUIDStore",
    "DeliveryAction",
    "DeliveryReport",
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
    "RecipientReport",
    "SQLiteUIDStore",
    "SyncResult",
    "TransactionalUIDStore",
    "UIDStore",
    "parse_delivery_report",
    "sync_mailbox",
    "sync_transactional",
]

log = get_logger("pop3")

#: Messages larger than this are refused unless ``max_message_size`` says otherwise.
DEFAULT_MAX_MESSAGE_SIZE: Final = 50 * 1024 * 1024
#: How much :meth:`POP3ProtocolHandler.fetch_each` downloads at a time, by listed size.
DEFAULT_BATCH_BYTES: Final = 4 * 1024 * 1024


class POP3ProtocolHandler:
    """Fetch and delete mail over POP3, on an explicit session or call by call.

    ``encryption`` is ``'ssl'`` (TLS from the first byte, usually port 995), ``'tls'``
    (plain connection upgraded with STLS, refused if the server does not offer it) or
    ``'none'`` (plain text; a warning is logged whenever the password is sent); any
    spelling :meth:`Encryption.parse` accepts, or an :class:`Encryption`, also does.
    Certificates and host names are verified with a shared default context unless
    ``ssl_context`` is given.

    Keyword-only options: ``retry`` (policy for opening connections, by default three
    attempts with 1 s and 2 s waits), ``sleep`` and ``clock`` (injectable for tests),
    ``deadline`` (seconds that opening a connection may take in all, retries included),
    ``max_message_size`` (bytes, ``None`` for no limit), ``include_raw`` and
    ``include_attachment_content`` (extras in the message dicts), ``parse_limits`` and
    ``trace`` (log every command and status line to the ``src.handlers.trace``
    logger at DEBUG, secrets masked; see :mod:`src.handlers._net.trace`).

    Logging in picks the strongest way the server offers (``CAPA``'s ``SASL`` list and
    the greeting's APOP timestamp): SCRAM-SHA-256-PLUS and SCRAM-SHA-1-PLUS over TLS,
    SCRAM-SHA-256, SCRAM-SHA-1, CRAM-MD5, APOP, then PLAIN, LOGIN and USER/PASS, which
    show the password and are used only over TLS or with ``allow_cleartext``. A weaker
    way is tried only when the server does not support the stronger one, never after
    it refused the credentials. ``auth_mechanism`` pins one (``"SCRAM-SHA-256"``,
    ``"APOP"``, ``"USER"``, ``"EXTERNAL"`` for the client certificate of
    ``ssl_context``, in which case ``password`` is left out, ...). ``allow_cleartext``
    defaults to what ``encryption`` says: allowed with ``'none'`` (with a warning),
    never needed with TLS; False keeps even a ``'none'`` connection to logins that do
    not show the password. ``language`` asks for server replies in that language
    (``LANG``, RFC 6856) when offered; ``UTF8`` is sent whenever the server offers it.
    See docs/authentication.md.

    ``oauth2_token`` (an OAuth2 access token, or a callable returning one) logs in with
    SASL ``OAUTHBEARER`` or ``XOAUTH2`` instead, and ``password`` is then left out; a
    token the server refuses is refreshed once (see docs/oauth2.md).
    ``oauth2_initial_response`` (default True) sends the client's first SASL message
    with the ``AUTH`` command when the line fits in 255 octets, False always waits for
    the server's challenge.

    ``proxy`` (a :class:`~src.handlers._net.connect.Proxy` or a URL such as
    ``socks5://proxy.example:1080``) reaches the server through a SOCKS or HTTP proxy;
    without one, every address of the host is tried as Happy Eyeballs (RFC 8305)
    says.

    ``operation_timeout`` bounds each exchange with the server as a whole: opening a
    session (connecting, greeting, STLS, login), or one command and its complete reply,
    however slowly the server drips it. The default is ten times ``timeout``; past it
    the connection is cut and :class:`POP3TimeoutError` raised.

    Bad settings raise :class:`~src.handlers.errors.ConfigurationError` (a
    ``ValueError``) naming the setting. Nothing touches the network until a method
    needs it.
    """

    def __init__(
        self,
        hostname: str,
        port: int,
        username: str,
        password: str | None = None,
        encryption: str | Encryption = "ssl",
        timeout: float = 30,
        *,
        ssl_context: ssl.SSLContext | None = None,
        retry: RetryPolicy | None = None,
        sleep: Sleep = default_sleep,
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
        auth_mechanism: str | None = None,
        allow_cleartext: bool | None = None,
        language: str | None = None,
        proxy: Proxy | str | None = None,
    ) -> None:
        connector = POP3Connector(
            Endpoint(hostname, port, Encryption.parse(encryption)),
            Timeouts(socket=timeout, operation=operation_timeout),
            ssl_context,
            retry if retry is not None else DEFAULT_CONNECT_RETRY,
            sleep,
            clock,
            deadline,
            trace,
            Proxy.from_url(proxy) if isinstance(proxy, str) else proxy,
        )
        options = MessageOptions(
            check_size_limit(max_message_size),
            include_raw,
            include_attachment_content,
            parse_limits,
        )
        external = isinstance(auth_mechanism, str) and auth_mechanism.upper() == "EXTERNAL"
        credentials = credentials_for(username, password, oauth2_token, external=external)
        self._session = Session(
            connector,
            credentials,
            self._client_factory,
            login_options=LoginOptions.check(
                auth_mechanism,
                allow_cleartext,
                language,
                credentials,
                initial_response=oauth2_initial_response,
            ),
        )
        self._mailbox = Mailbox(self._session, options)

    def __repr__(self) -> str:
        return (
            f"<POP3ProtocolHandler {self._session.connector.where} user={self.username!r} "
            f"encryption={self.encryption} state={self.state}>"
        )

    # -- read-only view ----------------------------------------------------------

    @property
    def hostname(self) -> str:
        """The server's host name."""
        return self._session.connector.hostname

    @property
    def port(self) -> int:
        """The server's port."""
        return self._session.connector.port

    @property
    def username(self) -> str:
        """The user name logins are made with."""
        return self._session.credentials.username or ""

    @property
    def encryption(self) -> str:
        """``'ssl'``, ``'tls'`` or ``'none'``."""
        return self._session.connector.encryption.value

    @property
    def authenticated_with(self) -> str | None:
        """How the last login went through: a SASL mechanism such as
        ``"SCRAM-SHA-256"``, ``"APOP"``, or ``"USER"`` for USER/PASS; None before any."""
        return self._session.mechanism

    @property
    def is_connected(self) -> bool:
        """True while a session's connection is open."""
        return self._session.state in (SessionState.CONNECTED, SessionState.AUTHENTICATED)

    @property
    def is_authenticated(self) -> bool:
        """True once the open session has logged in."""
        return self._session.state is SessionState.AUTHENTICATED

    @property
    def pending_deletions(self) -> int:
        """Messages marked for deletion in the open session and not yet committed."""
        return self._session.pending_deletions

    @property
    def state(self) -> str:
        """``'disconnected'``, ``'connected'``, ``'authenticated'`` or ``'broken'``."""
        return self._session.state.value

    # -- session lifecycle -------------------------------------------------------

    def connect(self) -> bool:
        """Open a session, retrying connection failures with backoff.

        Returns True (also when a session is already open). Raises
        :class:`POP3ConnectionError` (or its :class:`POP3TimeoutError`) once the retry
        policy is exhausted, and :class:`POP3SecurityError`, also a
        :class:`POP3ConnectionError`, at once for TLS problems and for a port that
        expects the other encryption mode.
        """
        if self.is_connected:
            log.debug("POP3 session with %s:%d already open", self.hostname, self.port)
            return True
        self._session.open(login=False)
        return True

    def authenticate(self, username: str | None = None, password: str | None = None) -> bool:
        """Log in with the stored credentials, or with these (which replace them).

        Inside a session this logs that session in, once: later calls return True
        at once. With no session open it checks the credentials in a short session
        of its own. Raises :class:`POP3AuthenticationError` for refused credentials
        (never retried) and :class:`POP3MailboxBusyError` for ``[IN-USE]`` or
        ``[LOGIN-DELAY]``.
        """
        self._session.replace_credentials(username, password)
        with self._session.using(login=True):
            return True

    def disconnect(self) -> bool:
        """End the session with ``QUIT``, which commits pending deletions.

        If ``QUIT`` fails the socket is closed anyway and False is returned: deletions
        may not have been committed. Calling it with no session open returns True.
        Never raises.
        """
        failure, _ = self._session.end()
        return failure is None

    def abort(self) -> None:
        """Close the connection at once, without ``QUIT``: pending deletions are dropped.

        The server commits nothing for a session that ends this way. Never raises.
        """
        self._session.abort()

    @contextlib.contextmanager
    def session(self) -> Iterator[POP3ProtocolHandler]:
        """Group calls into one logged-in session, opened here unless one is open.

        A session opened here ends with ``QUIT`` when the block is left; if deletions
        were marked and the server does not confirm ``QUIT``, the exception saying so
        is raised.
        """
        with self._session.using(login=True):
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

    # -- mailbox operations ------------------------------------------------------

    def list_messages(self) -> tuple[list[int], int]:
        """Return the message numbers in the mailbox and their total size in bytes."""
        return self._mailbox.list_messages()

    def get_mailbox_stat(self) -> tuple[int, int]:
        """Return ``(message_count, total_size_bytes)`` from ``STAT``."""
        return self._mailbox.stat()

    def get_message_size(self, message_id: int) -> int:
        """Return the size of one message in bytes, or -1 if it cannot be had."""
        return self._mailbox.size_of(message_id)

    def fetch_message(self, message_id: int) -> dict[str, Any] | None:
        """Download and parse one message.

        Returns None (and logs a warning) when the server refuses it, for instance
        because there is no such message. Raises :class:`POP3MessageTooLargeError` for
        a message over ``max_message_size``, without downloading it when the server
        reports its size.
        """
        return self._mailbox.fetch(message_id)

    def fetch_messages(self, message_ids: list[int] | None = None) -> list[dict[str, Any]]:
        """Download and parse several messages (all when ``message_ids`` is None).

        A message that is refused, missing or too large is logged and skipped. A
        broken connection still raises, since no later message could be fetched.
        """
        return self._mailbox.fetch_many(message_ids)

    def fetch_each(
        self,
        message_ids: list[int] | None,
        handle: Callable[[dict[str, Any]], object],
        *,
        batch_bytes: int = DEFAULT_BATCH_BYTES,
    ) -> list[int]:
        """Download and parse messages (all when ``message_ids`` is None), calling
        ``handle(message)`` for each in turn; return the numbers not handed over.

        Unlike :meth:`fetch_messages`, which returns them all at once, this holds at
        most ``batch_bytes`` of downloaded messages (by the sizes ``LIST`` gives; a
        larger message alone), so a mailbox of any size is fetched in bounded memory,
        each batch pipelined where the server offers PIPELINING. A message that is
        refused, missing or too large is logged, skipped and among the numbers
        returned. ``handle`` is not timed; if it raises, no later message is fetched
        and the exception propagates.
        """
        check_byte_count(batch_bytes, "batch_bytes")
        return self._mailbox.fetch_each(message_ids, handle, batch_bytes)

    def fetch_raw_messages(self, message_ids: list[int] | None = None) -> dict[int, bytes]:
        """Download several messages (all when None) without parsing them.

        Returns message number to the message as the server sent it, dot-unstuffed.
        Refused, missing and too large messages are logged and skipped, as in
        :meth:`fetch_messages`; both send the ``RETR`` commands in batches when the
        server offers PIPELINING, so a slow network costs a few round trips, not one
        per message.
        """
        return self._mailbox.fetch_raw(message_ids)

    def delete_message(self, message_id: int) -> bool:
        """Mark one message for deletion; False if the server refuses.

        In a session the deletion takes effect at ``disconnect()`` and ``reset()``
        can undo it; without a session it is committed before this returns.
        """
        return self._mailbox.delete(message_id)

    def delete_messages(self, message_ids: list[int]) -> tuple[int, int]:
        """Mark several messages for deletion; return ``(deleted, failed)`` counts."""
        return self._mailbox.delete_many(message_ids)

    def reset(self) -> bool:
        """Cancel every deletion marked in the open session (``RSET``).

        Messages are then kept when the session ends. With no logged-in session there
        is nothing to cancel and True is returned without contacting the server.
        False if the server refuses.
        """
        return self._mailbox.reset()

    def get_capabilities(self) -> list[str]:
        """Return the server's ``CAPA`` list, e.g. ``['TOP', 'UIDL', 'SASL PLAIN']``.

        Does not log in. A server without ``CAPA`` gives an empty list.
        """
        return self._mailbox.capabilities()

    def test_connection(self) -> bool:
        """True if the server can be reached, accepts the login and answers ``NOOP``.

        Never raises; the reason for a False is logged.
        """
        return self._mailbox.noop()

    def list_uids(self) -> dict[int, str]:
        """Map each message number to its unique ID (``UIDL``).

        A message whose ID breaks RFC 1939 (not 1 to 70 characters from ``!`` to ``~``)
        is left out, with a warning. Raises :class:`POP3UnsupportedError` if the server
        refuses ``UIDL``.
        """
        return self._mailbox.list_uids()

    def uid_listing(self) -> UIDListing:
        """The ``UIDL`` listing as it came: ``(number, uid)`` pairs, ``uid`` None where
        the server sent an invalid one. What :meth:`sync` works from."""
        return self._mailbox.uid_listing()

    def list_headers(self, message_ids: list[int] | None = None) -> list[dict[str, Any]]:
        """Header summaries (``TOP n 0``) of several messages, all when None.

        Refused messages are logged and skipped; a server that does not offer
        ``TOP`` raises :class:`POP3UnsupportedError`.
        """
        return self._mailbox.headers(message_ids)

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
        # Looked up on every call so that patching POP3 or POP3_SSL in this module (as
        # the specification's tests do) takes effect. The stock poplib classes are
        # swapped for subclasses that close their socket on failure and read fast.
        connector = self._session.connector
        proxy = connector.proxy
        if connector.encryption is Encryption.IMPLICIT_SSL:
            context = resolve_context(connector.ssl_context)
            if POP3_SSL is poplib.POP3_SSL:
                return lambda host, port, timeout: FastPOP3_SSL(
                    host, port, timeout=timeout, context=context, proxy=proxy
                )
            tls_class: Any = POP3_SSL
            return lambda host, port, timeout: tls_class(
                host, port, timeout=timeout, context=context
            )
        if POP3 is poplib.POP3:
            return lambda host, port, timeout: FastPOP3(host, port, timeout=timeout, proxy=proxy)
        plain_class: Any = POP3
        return lambda host, port, timeout: plain_class(host, port, timeout=timeout)


class POP3ConnectionPool(SessionPool[POP3ProtocolHandler]):
    """Hands out connected, logged-in :class:`POP3ProtocolHandler` objects.

    At most ``pool_size`` handlers exist at once. ``encryption``, ``timeout``, ``clock``
    and any other keyword option of :class:`POP3ProtocolHandler` (``ssl_context``,
    ``retry``, ``max_message_size``, ...) are passed to every handler the pool creates;
    ``clock`` also times blocking :meth:`acquire` calls. With ``oauth2_token`` the
    handlers log in with XOAUTH2 and ``password`` is left out; all of them share the
    one token or provider. ``auth_mechanism``, ``allow_cleartext``, ``language`` and
    ``proxy`` are handler options like the others; handlers made with another proxy
    never share a pool.
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
