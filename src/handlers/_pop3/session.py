"""One POP3 session: :class:`Session`, which owns the connection and its state.

A session is in one :class:`SessionState` at a time. It opens a connection through the
:class:`~src.handlers._pop3.connection.POP3Connector` (wrapped once in a
:class:`~src.handlers._pop3.adapter.ClientAdapter`), logs in (SASL, APOP or USER/PASS),
runs each command within its time limit and turns failures into the library's errors,
and ends with ``QUIT`` or at once. Every change of state goes through one reset, so a
lost, ended, aborted or inherited session is forgotten the same way.

A session is *open* from ``connect`` until ``QUIT``/abort, even after its connection
was lost: then every command raises :class:`POP3ConnectionError` until the caller ends
it, since the deletions marked in it are gone and message numbers may have moved.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from enum import Enum
from typing import TypeVar

from .._auth.credentials import Credentials
from .._net.forksafe import forget_in_child
from .._net.logs import get_logger
from .._sasl import Mechanism
from ..errors import (
    ConfigurationError,
    MailHandlerError,
    POP3ConnectionError,
    POP3MessageTooLargeError,
    POP3ProtocolError,
    POP3ResponseError,
)
from .adapter import ClientAdapter
from .connection import ClientFactory, POP3Connector, TimeLimit, chain_cause
from .login import LoginContext, LoginOptions, log_in
from .wire import ResponseTooLargeError

log = get_logger("pop3")

T = TypeVar("T")


class SessionState(Enum):
    """Where a session stands; the value is what ``POP3ProtocolHandler.state`` shows."""

    CLOSED = "disconnected"
    CONNECTED = "connected"
    AUTHENTICATED = "authenticated"
    LOST = "broken"


class Session:
    """The connection to one mailbox and what is known about it.

    ``factory`` makes a connected client (the handler's, which looks up the patchable
    poplib classes). ``login_options`` say how to log in beyond the credentials.
    """

    def __init__(
        self,
        connector: POP3Connector,
        credentials: Credentials,
        factory: Callable[[], ClientFactory],
        *,
        login_options: LoginOptions | None = None,
    ) -> None:
        self.connector = connector
        self.credentials = credentials
        self.login_options = login_options if login_options is not None else LoginOptions()
        #: How the last login went through (``"SCRAM-SHA-256"``, ``"USER"``, ...).
        self.mechanism: str | None = None
        self._factory = factory
        self._tokens_sent: list[str] = []
        self._mechanisms: list[Mechanism] = []
        self._limit: TimeLimit | None = None
        self._adapter: ClientAdapter | None = None
        self._state = SessionState.CLOSED
        self._pending_deletions = 0
        forget_in_child(self)

    # -- state -------------------------------------------------------------------

    @property
    def state(self) -> SessionState:
        """Where the session stands."""
        return self._state

    @property
    def is_open(self) -> bool:
        """True from opening until ``QUIT`` or abort, also after the connection was lost."""
        return self._state is not SessionState.CLOSED

    @property
    def pending_deletions(self) -> int:
        """Deletions marked in this session and not yet committed."""
        return self._pending_deletions

    def _reset(self, state: SessionState) -> ClientAdapter | None:
        """Enter ``state`` with no connection and nothing pending; return the old
        connection, for the caller to close."""
        adapter, self._adapter = self._adapter, None
        self._state = state
        self._pending_deletions = 0
        return adapter

    def _after_fork_in_child(self) -> None:
        """In a forked child: forget the parent's session without touching its socket."""
        self._reset(SessionState.CLOSED)

    def deletion_marked(self) -> None:
        """Count one more deletion that ``QUIT`` would commit."""
        self._pending_deletions += 1

    def deletions_undone(self) -> None:
        """``RSET`` went through: nothing is pending any more."""
        self._pending_deletions = 0

    def secrets(self) -> list[str | bytes]:
        """Everything secret this session may have sent, to mask in server replies:
        the password, the tokens, and what each SASL mechanism used holds."""
        password = self.credentials.password
        found: list[str | bytes] = [password.reveal() if password is not None else ""]
        found += self._tokens_sent
        for mechanism in self._mechanisms:
            found += mechanism.sensitive()
        return found

    # -- opening and ending ------------------------------------------------------

    def open(self, *, login: bool) -> None:
        """Open a connection (logged in if asked), with the connector's retries."""
        adapter = self.connector.open(self._factory(), self._login if login else None)
        self._reset(SessionState.AUTHENTICATED if login else SessionState.CONNECTED)
        self._adapter = adapter
        log.debug("POP3 session with %s open", self.connector.where)

    @contextlib.contextmanager
    def using(self, *, login: bool = True) -> Iterator[Session]:
        """The open session for the block, or a session opened for the block alone.

        A session opened here ends with ``QUIT`` when the block is left normally or by
        an exception (each deletion marked was asked for), and at once when it is
        interrupted; if deletions were due and ``QUIT`` failed, that is raised.
        """
        if self.is_open:
            if login:
                self.ensure_login()
            yield self
            return
        self.open(login=login)
        try:
            yield self
        except Exception:
            self.end()
            raise
        except BaseException:
            self.abort()
            raise
        failure, pending = self.end()
        if failure is not None and pending:
            raise _commit_failure(failure, pending)

    def end(self) -> tuple[MailHandlerError | None, int]:
        """Send ``QUIT`` and close; return what went wrong and how many deletions were due."""
        lost = self._state is SessionState.LOST
        pending = self._pending_deletions
        adapter = self._reset(SessionState.CLOSED)
        if adapter is None:
            failure = POP3ConnectionError("the POP3 session had already been lost")
            return (failure if lost else None), 0
        error: MailHandlerError | None = None
        try:
            with self.connector.time_limit("QUIT", lambda: adapter.socket):
                adapter.quit()
        except Exception as raised:
            error = self._translate(raised, "QUIT")
            log.warning(
                "POP3 QUIT to %s failed (%s); closing the socket, %d deletion(s) "
                "may not be committed",
                self.connector.where,
                error,
                pending,
            )
        finally:
            adapter.close()
        log.debug("POP3 session with %s closed", self.connector.where)
        return error, pending

    def abort(self) -> None:
        """Close the connection at once, without ``QUIT``: pending deletions are dropped."""
        pending = self._pending_deletions
        adapter = self._reset(SessionState.CLOSED)
        if adapter is not None:
            adapter.close()
            log.debug(
                "POP3 session with %s aborted; %d deletion(s) dropped",
                self.connector.where,
                pending,
            )

    def lose(self, verb: str, error: BaseException) -> None:
        """The connection broke or fell out of step during ``verb``: close it for good."""
        if self._adapter is None:
            return
        log.warning(
            "POP3 session with %s lost during %s (%s); %d deletion(s) not committed",
            self.connector.where,
            verb,
            error,
            self._pending_deletions,
        )
        adapter = self._reset(SessionState.LOST)
        if adapter is not None:
            adapter.close()

    # -- logging in --------------------------------------------------------------

    def replace_credentials(self, username: str | None, password: str | None) -> None:
        """Log in with these from now on (the stored ones fill in what is None)."""
        if username is None and password is None:
            return
        old = self.credentials
        if old.token is not None and password is not None:
            raise ConfigurationError(
                "this handler logs in with oauth2_token; it takes no password", "password"
            )
        new_username = old.username if username is None else username
        if not new_username:
            raise ConfigurationError("username must not be empty", "username")
        if self._state is SessionState.AUTHENTICATED and new_username != old.username:
            raise ConfigurationError(
                "this session is already logged in as another user; disconnect() first",
                "username",
            )
        if old.token is not None:
            self.credentials = Credentials.of(new_username, None, old.token)
        else:
            secret = password if password is not None else _revealed(old)
            self.credentials = Credentials.of(new_username, secret)

    def ensure_login(self) -> None:
        """Log the open session in, unless it is already."""
        if self._state is SessionState.AUTHENTICATED:
            return
        adapter = self.live()
        try:
            with self.connector.time_limit("login", lambda: adapter.socket):
                self._login(adapter)
        except POP3ResponseError:
            raise
        except MailHandlerError as error:
            self.lose("login", error)
            raise
        self._state = SessionState.AUTHENTICATED

    def _login(self, adapter: ClientAdapter) -> None:
        """Log in on a connection whose state is not tracked here (see
        :mod:`~src.handlers._pop3.login`)."""
        connector = self.connector
        # What an earlier connection's exchanges held cannot be echoed on this one.
        self._mechanisms.clear()
        context = LoginContext(
            credentials=self.credentials,
            options=self.login_options,
            encryption=connector.encryption,
            host=connector.hostname,
            port=connector.port,
            where=connector.where,
            remember=self._remember,
            secrets=self.secrets,
            translate=lambda error, verb: self._translate(error, verb, during_login=True),
        )
        self.mechanism = log_in(adapter, context)

    def _remember(self, item: Mechanism | str) -> None:
        if isinstance(item, Mechanism):
            self._mechanisms.append(item)
        elif item not in self._tokens_sent:
            self._tokens_sent.append(item)

    # -- commands ----------------------------------------------------------------

    def live(self) -> ClientAdapter:
        """The open connection; :class:`POP3ConnectionError` if it was lost."""
        if self._adapter is None:
            raise POP3ConnectionError(
                "the POP3 session was lost, and deletions marked in it were not committed; "
                "call disconnect() or connect() to start again"
            )
        return self._adapter

    def run(
        self, verb: str, command: Callable[[ClientAdapter], T], *, message: int | None = None
    ) -> T:
        """Run one command on the open connection within its time limit.

        Failures become the library's errors; any but a ``-ERR`` reply loses the
        session, since the stream can no longer be trusted to be in step. ``message``
        names the message a reply over the size limit belongs to.
        """
        adapter = self.live()
        try:
            with self.connector.time_limit(verb, lambda: adapter.socket) as limit:
                self._limit = limit
                return command(adapter)
        except ResponseTooLargeError as error:
            self.lose(verb, error)
            number = error.number if error.number is not None else message
            if number is not None:
                raise POP3MessageTooLargeError(number, None, error.limit) from None
            raise POP3ProtocolError(f"{verb} reply larger than {error.limit} bytes") from None
        except Exception as error:
            translated = self._translate(error, verb)
            if not isinstance(translated, POP3ResponseError):
                self.lose(verb, translated)
            raise translated from chain_cause(error)
        finally:
            self._limit = None

    def restart_limit(self) -> None:
        """Give the running command its full time again (after each reply of a batch)."""
        if self._limit is not None:
            self._limit.restart()

    def _translate(
        self, error: BaseException, verb: str, *, during_login: bool = False
    ) -> MailHandlerError:
        return self.connector.translate(
            error, verb, during_login=during_login, secrets=self.secrets()
        )


def _revealed(credentials: Credentials) -> str:
    return credentials.password.reveal() if credentials.password is not None else ""


def _commit_failure(failure: MailHandlerError, pending: int) -> MailHandlerError:
    """The error for a session whose closing QUIT, due to commit deletions, failed."""
    what = f"QUIT failed, so {pending} deletion(s) may not have been committed"
    if isinstance(failure, POP3ResponseError):
        return POP3ResponseError(f"{what}: {failure.text}", failure.enhanced_code)
    return POP3ConnectionError(f"{what}: {failure}")
