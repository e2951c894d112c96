"""The session under :class:`~src.handlers.pop3.POP3ProtocolHandler`: :class:`POP3Session`.

It holds the session's state (the client, whether it is logged in, broken, and how many
deletions are pending) and the plumbing every call runs on: opening a connection through
the connector and logging in (USER/PASS or XOAUTH2), running one command with its time
limit, losing the session when a command fails, and ending it with ``QUIT`` or at once.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from typing import Any

from .._auth.oauth2 import TokenSource
from .._auth.secret import Secret
from .._net.forksafe import forget_in_child
from .._net.logs import get_logger
from ..errors import (
    MailHandlerError,
    MailValidationError,
    POP3ConnectionError,
    POP3MessageTooLargeError,
    POP3ProtocolError,
    POP3ResponseError,
)
from . import commands
from .checks import check_credentials, oauth2_source
from .connection import (
    ClientFactory,
    POP3Connector,
    TimeLimit,
    chain_cause,
    close_quietly,
    socket_of,
)
from .sasl import xoauth2_login
from .wire import ResponseTooLargeError

# The logger this code used before it moved here from pop3.py: the handler's records all
# keep coming from one logger.
log = get_logger("pop3")

Client = Any  # a poplib.POP3 or anything with its methods (a test double)


class POP3Session:
    """The session state and plumbing that :class:`~src.handlers.pop3.POP3ProtocolHandler`
    builds on; the handler's ``__init__`` sets the attributes declared here and its
    :meth:`_client_factory` makes the clients.
    """

    _connector: POP3Connector
    _oauth2: TokenSource | None
    _oauth2_initial_response: bool
    _username: str
    _password: Secret
    _client: Client | None
    _session_open: bool
    _authenticated: bool
    _broken: bool
    _pending_deletions: int
    _tokens_sent: list[str]

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

    # -- opening and closing -----------------------------------------------------

    @contextlib.contextmanager
    def _session(self, *, login: bool = True) -> Iterator[Client]:
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

    def _install(self, client: Client, *, authenticated: bool) -> None:
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

    def _open(self, *, login: bool) -> Client:
        """A new connection, logged in if asked, with the connector's retries."""
        return self._connector.open(self._client_factory(), self._login if login else None)

    def _client_factory(self) -> ClientFactory:
        """How a connection's client is made; the handler's, which looks up the poplib
        classes in its own module."""
        raise NotImplementedError

    # -- login -------------------------------------------------------------------

    def _replace_credentials(self, username: str | None, password: str | None) -> None:
        if username is None and password is None:
            return
        if self._oauth2 is not None:
            if password is not None:
                raise MailValidationError(
                    "this handler logs in with oauth2_token; it takes no password", "password"
                )
            oauth2_source(self._oauth2, username, None)
        new_username = self._username if username is None else username
        check_credentials(new_username, password if password is not None else "")
        if self._authenticated and new_username != self._username:
            raise MailValidationError(
                "this session is already logged in as another user; disconnect() first",
                "username",
            )
        self._username = new_username
        if password is not None:
            self._password = Secret(password)

    def _ensure_login(self, client: Client) -> None:
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

    def _login_xoauth2(self, client: Client, source: TokenSource) -> None:
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
                error, "AUTH", during_login=True, secrets=self._secrets()
            ),
            where=self._connector.where,
            sending=self._remember_token,
        )
        log.debug("logged in to %s:%d as %r with XOAUTH2", self.hostname, self.port, self._username)

    def _login(self, client: Client) -> None:
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

    def _live_client(self) -> Client:
        if self._client is None:
            raise POP3ConnectionError(
                "the POP3 session was lost, and deletions marked in it were not committed; "
                "call disconnect() or connect() to start again"
            )
        return self._client

    def _call(self, client: Client, method: str, *args: Any) -> Any:
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
            error, verb, during_login=during_login, secrets=self._secrets()
        )

    def _remember_token(self, token: str) -> None:
        if token not in self._tokens_sent:
            self._tokens_sent.append(token)

    def _secrets(self) -> list[str]:
        """Everything secret this handler has sent, for masking server replies."""
        return [self._password.reveal(), *self._tokens_sent]

    def _caller(self, client: Client) -> commands.Call:
        return functools.partial(self._call, client)


# -- module helpers ----------------------------------------------------------------


#: Client methods that read many replies in one exchange, with a per-reply callback last.
_BATCHED = frozenset({"retr_many"})


def _restarting(callback: Callable[..., Any], limit: TimeLimit) -> Callable[..., Any]:
    def restart_then_deliver(*args: Any) -> Any:
        limit.restart()
        return callback(*args)

    return restart_then_deliver


def _commit_failure(failure: MailHandlerError, pending: int) -> MailHandlerError:
    """The error for a session whose closing QUIT, due to commit deletions, failed."""
    what = f"QUIT failed, so {pending} deletion(s) may not have been committed"
    if isinstance(failure, POP3ResponseError):
        return POP3ResponseError(f"{what}: {failure.text}", failure.enhanced_code)
    return POP3ConnectionError(f"{what}: {failure}")
