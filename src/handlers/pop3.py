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
"""

from __future__ import annotations

import contextlib
import functools
import logging
import poplib
import ssl
import time
from collections.abc import Callable, Iterable, Iterator
from poplib import POP3, POP3_SSL
from types import TracebackType
from typing import Any, Final

from . import pop3_commands as commands
from . import wire_log
from .credentials import Secret
from .errors import (
    MailHandlerError,
    MailValidationError,
    POP3AuthenticationError,
    POP3ConnectionError,
    POP3MailboxBusyError,
    POP3MessageTooLargeError,
    POP3ProtocolError,
    POP3ResponseError,
    POP3SecurityError,
    POP3TimeoutError,
    POP3UnsupportedError,
)
from .forksafe import forget_in_child
from .message_parser import ParseLimits, parse_header_summary, parse_message
from .oauth2 import TokenProvider, TokenSource, check_username
from .pop3_client import FastPOP3, FastPOP3_SSL, is_fast_client
from .pop3_connection import (
    DEFAULT_CONNECT_RETRY,
    ClientFactory,
    POP3Connector,
    TimeLimit,
    chain_cause,
    close_quietly,
    socket_of,
)
from .pop3_pool import POP3ConnectionPool
from .pop3_sasl import xoauth2_login
from .pop3_sync import MessageCallback, SyncResult, sync_mailbox
from .pop3_wire import ResponseTooLargeError, error_for_reply
from .retry import Clock, RetryPolicy, Sleep
from .tls import resolve_context
from .uid_store import UIDStore
from .validation import ensure_safe_command_argument

__all__ = [
    "DEFAULT_CONNECT_RETRY",
    "DEFAULT_MAX_MESSAGE_SIZE",
    "POP3",
    "POP3_SSL",
    "POP3AuthenticationError",
    "POP3ConnectionError",
    "POP3ConnectionPool",
    "POP3MailboxBusyError",
    "POP3MessageTooLargeError",
    "POP3ProtocolHandler",
    "POP3SecurityError",
    "POP3TimeoutError",
    "POP3UnsupportedError",
    "SyncResult",
]

log = logging.getLogger(__name__)

#: Messages larger than this are refused unless ``max_message_size`` says otherwise.
DEFAULT_MAX_MESSAGE_SIZE: Final = 50 * 1024 * 1024

_Client = Any  # a poplib.POP3 or anything with its methods (a test double)


class POP3ProtocolHandler:
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
    ``trace`` (log every command and status line to the ``src.handlers.wire_log``
    logger at DEBUG, the password masked; see :mod:`src.handlers.wire_log`).

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
        _check_size_limit(max_message_size)
        self._oauth2 = _oauth2_source(oauth2_token, username, password)
        self._oauth2_initial_response = oauth2_initial_response
        _check_credentials(username, password or "")
        self._username = username
        self._password = Secret(password or "")
        self._max_message_size = max_message_size
        self._include_raw = include_raw
        self._include_attachment_content = include_attachment_content
        self._parse_limits = parse_limits
        self._trace = trace
        self._client: _Client | None = None
        self._session_open = False
        self._authenticated = False
        self._broken = False
        self._pending_deletions = 0

    # -- read-only view ----------------------------------------------------------

    @property
    def hostname(self) -> str:
        """The server's host name."""
        return self._connector.hostname

    @property
    def port(self) -> int:
        """The server's port."""
        return self._connector.port

    @property
    def username(self) -> str:
        """The user name logins are made with."""
        return self._username

    @property
    def encryption(self) -> str:
        """``'ssl'``, ``'tls'`` or ``'none'``."""
        return self._connector.encryption

    @property
    def is_connected(self) -> bool:
        """True while a session's connection is open."""
        return self._client is not None

    @property
    def is_authenticated(self) -> bool:
        """True once the open session has logged in."""
        return self._authenticated

    @property
    def pending_deletions(self) -> int:
        """Messages marked for deletion in the open session and not yet committed."""
        return self._pending_deletions

    @property
    def state(self) -> str:
        """``'disconnected'``, ``'connected'``, ``'authenticated'`` or ``'broken'``."""
        if self._broken:
            return "broken"
        if self._client is None:
            return "disconnected"
        return "authenticated" if self._authenticated else "connected"

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

    def abort(self) -> None:
        """Close the connection at once, without ``QUIT``: pending deletions are dropped.

        The server commits nothing for a session that ends this way. Never raises.
        """
        client, pending = self._client, self._pending_deletions
        self._client = None
        self._session_open = self._authenticated = self._broken = False
        self._pending_deletions = 0
        if client is not None:
            close_quietly(client)
            log.debug(
                "POP3 session with %s:%d aborted; %d deletion(s) dropped",
                self.hostname,
                self.port,
                pending,
            )

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

    # -- mailbox operations ------------------------------------------------------

    def list_messages(self) -> tuple[list[int], int]:
        """Return the message numbers in the mailbox and their total size in bytes."""
        with self._session() as client:
            listing = commands.scan(self._caller(client))
        return [number for number, _ in listing], sum(size for _, size in listing)

    def get_mailbox_stat(self) -> tuple[int, int]:
        """Return ``(message_count, total_size_bytes)`` from ``STAT``."""
        with self._session() as client:
            return commands.stat(self._caller(client))

    def get_message_size(self, message_id: int) -> int:
        """Return the size of one message in bytes, or -1 if it cannot be had."""
        _check_message_id(message_id)
        try:
            with self._session() as client:
                size = commands.size_of(self._caller(client), message_id)
        except MailHandlerError as error:
            log.warning("size of POP3 message %d unavailable: %s", message_id, error)
            return -1
        return -1 if size is None else size

    def fetch_message(self, message_id: int) -> dict[str, Any] | None:
        """Download and parse one message.

        Returns None (and logs a warning) when the server refuses it, for instance
        because there is no such message. Raises :class:`POP3MessageTooLargeError` for
        a message over ``max_message_size``, without downloading it when the server
        reports its size.
        """
        _check_message_id(message_id)
        with self._session() as client:
            return self._fetch(client, message_id, None)

    def fetch_messages(self, message_ids: list[int] | None = None) -> list[dict[str, Any]]:
        """Download and parse several messages (all when ``message_ids`` is None).

        A message that is refused, missing or too large is logged and skipped. A
        broken connection still raises, since no later message could be fetched.
        """
        messages = []

        def parse(number: int, raw: bytes, size: int) -> None:
            messages.append(
                parse_message(
                    raw,
                    number,
                    size=size,
                    include_raw=self._include_raw,
                    include_attachment_content=self._include_attachment_content,
                    limits=self._parse_limits,
                )
            )

        self._retrieve_each(message_ids, parse)
        return messages

    def fetch_raw_messages(self, message_ids: list[int] | None = None) -> dict[int, bytes]:
        """Download several messages (all when None) without parsing them.

        Returns message number to the message as the server sent it, dot-unstuffed.
        Refused, missing and too large messages are logged and skipped, as in
        :meth:`fetch_messages`; both send the ``RETR`` commands in batches when the
        server offers PIPELINING, so a slow network costs a few round trips, not one
        per message.
        """
        raws: dict[int, bytes] = {}

        def keep(number: int, raw: bytes, size: int) -> None:
            raws[number] = raw

        self._retrieve_each(message_ids, keep)
        return raws

    def _retrieve_each(
        self, message_ids: list[int] | None, handle: Callable[[int, bytes, int], None]
    ) -> None:
        """RETR the wanted messages in one session and hand each to ``handle``."""
        with self._session() as client:
            call = self._caller(client)
            sizes = dict(commands.scan(call))
            wanted = []
            for number in self._targets(message_ids, sizes):
                try:
                    commands.check_size(number, sizes[number], self._max_message_size)
                except POP3MessageTooLargeError as error:
                    log.warning("skipping POP3 message %d: %s", number, error)
                    continue
                wanted.append(number)
            if len(wanted) > 1 and commands.can_pipeline(call, client):

                def deliver(number: int, raw: bytes | None, status: bytes) -> None:
                    if raw is None:
                        refusal = error_for_reply(status)
                        log.warning("POP3 server refused message %d: %s", number, refusal)
                        return
                    handle(number, raw, sizes[number])

                try:
                    commands.retrieve_many(
                        call, client, wanted, self._max_message_size, deliver
                    )
                except POP3MessageTooLargeError as error:
                    # Larger than LIST said: skipped, as below, but the session went
                    # with it (the rest of the reply was never read).
                    log.warning("skipping POP3 message %s: %s", error.message_number, error)
                    self._live_client()  # raises: no later message can be fetched
                    raise
                return
            for number in wanted:
                try:
                    raw = self._retrieve_one(self._live_client(), number)
                except POP3MessageTooLargeError as error:
                    log.warning("skipping POP3 message %d: %s", number, error)
                    continue
                if raw is not None:
                    handle(number, raw, sizes[number])

    def delete_message(self, message_id: int) -> bool:
        """Mark one message for deletion; False if the server refuses.

        In a session the deletion takes effect at ``disconnect()`` and ``reset()``
        can undo it; without a session it is committed before this returns.
        """
        _check_message_id(message_id)
        with self._session() as client:
            return self._delete(client, message_id)

    def delete_messages(self, message_ids: list[int]) -> tuple[int, int]:
        """Mark several messages for deletion; return ``(deleted, failed)`` counts."""
        for message_id in message_ids:
            _check_message_id(message_id)
        with self._session() as client:
            outcomes = [self._delete(client, number) for number in message_ids]
        deleted = sum(outcomes)
        return deleted, len(outcomes) - deleted

    def reset(self) -> bool:
        """Cancel every deletion marked in the open session (``RSET``).

        Messages are then kept when the session ends. With no logged-in session there
        is nothing to cancel and True is returned without contacting the server.
        False if the server refuses.
        """
        if self._client is None or not self._authenticated:
            log.debug("POP3 reset: no logged-in session, nothing to undo")
            return True
        try:
            self._call(self._client, "rset")
        except POP3ResponseError as error:
            log.warning("POP3 server refused RSET: %s", error)
            return False
        self._pending_deletions = 0
        return True

    def get_capabilities(self) -> list[str]:
        """Return the server's ``CAPA`` list, e.g. ``['TOP', 'UIDL', 'SASL PLAIN']``.

        Does not log in. A server without ``CAPA`` gives an empty list.
        """
        with self._session(login=False) as client:
            capabilities = commands.capabilities(self._caller(client))
        return [" ".join([name, *arguments]) for name, arguments in capabilities.items()]

    def test_connection(self) -> bool:
        """True if the server can be reached, accepts the login and answers ``NOOP``.

        Never raises; the reason for a False is logged.
        """
        try:
            with self._session() as client:
                self._call(client, "noop")
        except MailHandlerError as error:
            log.warning("POP3 health check of %s:%d failed: %s", self.hostname, self.port, error)
            return False
        return True

    # -- unique IDs and headers --------------------------------------------------

    def list_uids(self) -> dict[int, str]:
        """Map each message number to its unique ID (``UIDL``).

        Raises :class:`POP3UnsupportedError` if the server refuses ``UIDL``.
        """
        with self._session() as client:
            return commands.unique_ids(self._caller(client))

    def list_headers(self, message_ids: list[int] | None = None) -> list[dict[str, Any]]:
        """Header summaries (``TOP n 0``) of several messages, all when None.

        Refused messages are logged and skipped; a server that does not offer
        ``TOP`` raises :class:`POP3UnsupportedError`.
        """
        with self._session() as client:
            sizes = dict(commands.scan(self._caller(client)))
            summaries = []
            for number in self._targets(message_ids, sizes):
                headers = self._headers(self._live_client(), number)
                if headers is not None:
                    summaries.append(parse_header_summary(headers, number, size=sizes[number]))
        return summaries

    def sync(
        self,
        store: UIDStore,
        handler_fn: MessageCallback,
        *,
        delete_after: bool = False,
        prune: bool = True,
    ) -> SyncResult:
        """Hand every message whose unique ID is not in ``store`` to ``handler_fn``.

        See :func:`src.handlers.pop3_sync.sync_mailbox` for the guarantees.
        """
        return sync_mailbox(self, store, handler_fn, delete_after=delete_after, prune=prune)

    # -- opening and closing -----------------------------------------------------

    @contextlib.contextmanager
    def _session(self, *, login: bool = True) -> Iterator[_Client]:
        """Yield the open session's client, or open a session for the block."""
        if self._session_open:
            client = self._live_client()
            if login:
                self._ensure_login(client)
            yield client
            return
        self._install(self._open(login=login), authenticated=login)
        try:
            yield self._client
        except Exception:
            # QUIT still commits what was marked: each deletion was asked for.
            self._end_session()
            raise
        except BaseException:
            # Interrupted (Ctrl-C, exit): leave at once, committing nothing.
            self.abort()
            raise
        failure, pending = self._end_session()
        if failure is not None and pending:
            raise _commit_failure(failure, pending)

    def _install(self, client: _Client, *, authenticated: bool) -> None:
        self._client = client
        self._session_open = True
        self._authenticated = authenticated
        self._broken = False
        self._pending_deletions = 0
        forget_in_child(self)
        log.debug("POP3 session with %s:%d open", self.hostname, self.port)

    def _after_fork_in_child(self) -> None:
        """In a forked child: drop the parent's session without touching its socket."""
        self._client = None
        self._session_open = self._authenticated = self._broken = False
        self._pending_deletions = 0

    def _end_session(self) -> tuple[MailHandlerError | None, int]:
        """Send QUIT and close; return what went wrong and how many deletions were due."""
        client, broken, pending = self._client, self._broken, self._pending_deletions
        self._client = None
        self._session_open = self._authenticated = self._broken = False
        self._pending_deletions = 0
        if client is None:
            lost = POP3ConnectionError("the POP3 session had already been lost")
            return (lost if broken else None), 0
        failure: MailHandlerError | None = None
        try:
            with self._connector.time_limit("QUIT", lambda: socket_of(client)):
                client.quit()
        except Exception as error:
            failure = self._translate(error, "QUIT")
            log.warning(
                "POP3 QUIT to %s:%d failed (%s); closing the socket, %d deletion(s) "
                "may not be committed",
                self.hostname,
                self.port,
                failure,
                pending,
            )
        finally:
            close_quietly(client)
        log.debug("POP3 session with %s:%d closed", self.hostname, self.port)
        return failure, pending

    def _open(self, *, login: bool) -> _Client:
        """A new connection, logged in if asked, with the connector's retries."""
        return self._connector.open(self._client_factory(), self._login if login else None)

    def _client_factory(self) -> ClientFactory:
        factory = self._plain_client_factory()
        if not self._trace:
            return factory

        def traced(host: str, port: int, timeout: float) -> _Client:
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

    # -- login -------------------------------------------------------------------

    def _replace_credentials(self, username: str | None, password: str | None) -> None:
        if username is None and password is None:
            return
        if self._oauth2 is not None:
            if password is not None:
                raise MailValidationError(
                    "this handler logs in with oauth2_token; it takes no password", "password"
                )
            _oauth2_source(self._oauth2, username, None)
        new_username = self._username if username is None else username
        _check_credentials(new_username, password if password is not None else "")
        if self._authenticated and new_username != self._username:
            raise MailValidationError(
                "this session is already logged in as another user; disconnect() first",
                "username",
            )
        self._username = new_username
        if password is not None:
            self._password = Secret(password)

    def _ensure_login(self, client: _Client) -> None:
        if self._authenticated:
            return
        try:
            with self._connector.time_limit("login", lambda: socket_of(client)):
                self._login(client)
        except POP3ResponseError:
            raise
        except MailHandlerError as error:
            self._lose_session("login", error)
            raise
        self._authenticated = True

    def _login_xoauth2(self, client: _Client, source: TokenSource) -> None:
        """AUTH XOAUTH2 on ``client``; a refused token from a provider is renewed once."""
        if self.encryption == "none":
            log.warning(
                "sending a POP3 OAuth2 token for %r to %s:%d without encryption",
                self._username,
                self.hostname,
                self.port,
            )
        xoauth2_login(
            client,
            self._username,
            source,
            initial_response=self._oauth2_initial_response,
            translate=lambda error, token: self._connector.translate(
                error, "AUTH", during_login=True, secret=token
            ),
            where=self._connector.where,
        )
        log.debug("logged in to %s:%d as %r with XOAUTH2", self.hostname, self.port, self._username)

    def _login(self, client: _Client) -> None:
        """USER and PASS (or XOAUTH2) on ``client``, whose state is not tracked here."""
        if self._oauth2 is not None:
            self._login_xoauth2(client, self._oauth2)
            return
        for verb, method, argument in (
            ("USER", client.user, self._username),
            ("PASS", client.pass_, self._password.reveal()),
        ):
            if verb == "PASS" and self.encryption == "none":
                # Only now: a server that insists on TLS refuses USER already
                # (Dovecot's disable_plaintext_auth), and the password stays here.
                log.warning(
                    "sending the POP3 password for %r to %s:%d without encryption",
                    self._username,
                    self.hostname,
                    self.port,
                )
            failure = None
            try:
                method(argument)
            except Exception as error:
                failure = self._translate(error, verb, during_login=True)
            if failure is not None:
                # Raised outside the handler so the original, which may hold the
                # password or the server's echo of it, is not kept as the context.
                raise failure
        log.debug("logged in to %s:%d as %r", self.hostname, self.port, self._username)

    # -- commands ----------------------------------------------------------------

    def _live_client(self) -> _Client:
        if self._client is None:
            raise POP3ConnectionError(
                "the POP3 session was lost, and deletions marked in it were not committed; "
                "call disconnect() or connect() to start again"
            )
        return self._client

    def _call(self, client: _Client, method: str, *args: Any) -> Any:
        """Run one client method; translate failures and drop a broken connection."""
        verb = method.rstrip("_").split("_")[0].upper()
        try:
            with self._connector.time_limit(verb, lambda: socket_of(client)) as limit:
                if method in _BATCHED and args:
                    # A pipelined batch is many replies: each gets the full limit, so a
                    # large mailbox on a slow link is not cut while replies keep coming.
                    args = (*args[:-1], _restarting(args[-1], limit))
                return getattr(client, method)(*args)
        except ResponseTooLargeError as error:
            self._lose_session(verb, error)
            if verb in ("RETR", "TOP") and args:
                number = error.number if error.number is not None else args[0]
                raise POP3MessageTooLargeError(number, None, error.limit) from None
            raise POP3ProtocolError(f"{verb} reply larger than {error.limit} bytes") from None
        except Exception as error:
            translated = self._translate(error, verb)
            if not isinstance(translated, POP3ResponseError):
                self._lose_session(verb, translated)
            raise translated from chain_cause(error)

    def _lose_session(self, verb: str, error: BaseException) -> None:
        client = self._client
        if client is None:
            return
        log.warning(
            "POP3 session with %s:%d lost during %s (%s); %d deletion(s) not committed",
            self.hostname,
            self.port,
            verb,
            error,
            self._pending_deletions,
        )
        self._client = None
        self._authenticated = False
        self._broken = True
        self._pending_deletions = 0
        close_quietly(client)

    def _translate(
        self, error: BaseException, verb: str, *, during_login: bool = False
    ) -> MailHandlerError:
        return self._connector.translate(
            error, verb, during_login=during_login, secret=self._password.reveal()
        )

    def _targets(self, requested: Iterable[int] | None, sizes: dict[int, int]) -> list[int]:
        if requested is None:
            return sorted(sizes)
        targets = []
        for number in requested:
            _check_message_id(number)
            if number in sizes:
                targets.append(number)
            else:
                log.warning("POP3 message %d is not in the mailbox; skipped", number)
        return targets

    def _caller(self, client: _Client) -> commands.Call:
        return functools.partial(self._call, client)

    def _retrieve_one(self, client: _Client, number: int) -> bytes | None:
        """RETR one message whose size was checked; None if the server refuses it."""
        try:
            return commands.retrieve(self._caller(client), client, number, self._max_message_size)
        except POP3ResponseError as error:
            log.warning("POP3 server refused message %d: %s", number, error)
            return None

    def _fetch(self, client: _Client, number: int, size: int | None) -> dict[str, Any] | None:
        call = self._caller(client)
        try:
            if size is None:
                size = commands.size_of(call, number)
            commands.check_size(number, size, self._max_message_size)
            raw = commands.retrieve(call, client, number, self._max_message_size)
        except POP3ResponseError as error:
            log.warning("POP3 server refused message %d: %s", number, error)
            return None
        return parse_message(
            raw,
            number,
            size=size if size is not None else len(raw),
            include_raw=self._include_raw,
            include_attachment_content=self._include_attachment_content,
            limits=self._parse_limits,
        )

    def _headers(self, client: _Client, number: int) -> bytes | None:
        try:
            return commands.headers(self._caller(client), client, number, self._max_message_size)
        except POP3UnsupportedError:
            raise
        except POP3ResponseError as error:
            log.warning("POP3 server refused the headers of message %d: %s", number, error)
            return None

    def _delete(self, client: _Client, number: int) -> bool:
        try:
            self._call(client, "dele", number)
        except POP3ResponseError as error:
            log.warning("POP3 server refused to delete message %d: %s", number, error)
            return False
        self._pending_deletions += 1
        return True


# -- module helpers ----------------------------------------------------------------


#: Client methods that read many replies in one exchange, with a per-reply callback last.
_BATCHED = frozenset({"retr_many"})


def _restarting(callback: Callable[..., Any], limit: TimeLimit) -> Callable[..., Any]:
    def restart_then_deliver(*args: Any) -> Any:
        limit.restart()
        return callback(*args)

    return restart_then_deliver


def _check_size_limit(max_message_size: int | None) -> None:
    if max_message_size is not None and (
        isinstance(max_message_size, bool)
        or not isinstance(max_message_size, int)
        or max_message_size < 1
    ):
        raise MailValidationError(
            "max_message_size must be a positive byte count", "max_message_size"
        )


def _check_credentials(username: str, password: str) -> None:
    ensure_safe_command_argument(username, "username")
    ensure_safe_command_argument(password, "password")
    if not username:
        raise MailValidationError("username must not be empty", "username")


def _oauth2_source(
    token: str | TokenProvider | TokenSource | None, username: str | None, password: str | None
) -> TokenSource | None:
    """The handler's token source, or None for a password login; checks the pairing."""
    if token is None:
        if password is None:
            raise MailValidationError(
                "password is required unless oauth2_token is given", "password"
            )
        return None
    if password is not None:
        raise MailValidationError("give either password or oauth2_token, not both", "password")
    if username is not None:
        try:
            check_username(username)
        except ValueError as error:
            raise MailValidationError(str(error), "username") from None
    try:
        return TokenSource.of(token)
    except ValueError as error:
        raise MailValidationError(str(error), "oauth2_token") from None


def _check_message_id(message_id: int) -> None:
    if isinstance(message_id, bool) or not isinstance(message_id, int) or message_id < 1:
        raise MailValidationError("message numbers are integers starting at 1", "message_id")


def _commit_failure(failure: MailHandlerError, pending: int) -> MailHandlerError:
    """The error for a session whose closing QUIT, due to commit deletions, failed."""
    what = f"QUIT failed, so {pending} deletion(s) may not have been committed"
    if isinstance(failure, POP3ResponseError):
        return POP3ResponseError(f"{what}: {failure.text}", failure.enhanced_code)
    return POP3ConnectionError(f"{what}: {failure}")
