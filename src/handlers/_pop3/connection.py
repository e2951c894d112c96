"""Opening POP3 connections: TLS modes, retries, the deadline, and error translation.

:class:`POP3Connector` holds everything needed to reach one server and turns a client
class into a ready connection: greeting read, STLS done when asked for (and refused
when the server does not offer it), retried with backoff, bounded by an overall
deadline. It does not know about sessions or logins beyond an optional login step
that it runs inside each attempt, so a busy mailbox can be retried as a whole.

Each attempt, and each exchange a handler runs through :meth:`POP3Connector.time_limit`,
is bounded by ``operation_timeout`` as a whole, so a server that drips its replies one
byte at a time cannot hold a caller for longer than that.

Every failure leaves here as a library exception (see :meth:`POP3Connector.translate`);
the original is chained only when it is an OS-level error, never when it holds a
server reply, which might echo what was sent.
"""

from __future__ import annotations

import poplib
import socket
import ssl
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final

from .._net.config import Encryption, Endpoint, Timeouts, check_seconds
from .._net.connect import Proxy
from .._net.deadline import Deadline, SocketGetter, watching_sockets
from .._net.logs import get_logger
from .._net.tls import describe_tls_failure, resolve_context
from ..errors import (
    MailConnectionError,
    MailHandlerError,
    MailTimeoutError,
    POP3ConnectionError,
    POP3ProtocolError,
    POP3SecurityError,
    POP3TimeoutError,
    ProxyError,
)
from ..retry import Clock, RetryPolicy, Sleep, call_with_retry, default_sleep
from .adapter import ClientAdapter
from .wire import error_for_reply

log = get_logger("pop3")

#: Three connection attempts in all, waiting 1 s and then 2 s between them.
DEFAULT_CONNECT_RETRY: Final = RetryPolicy.exponential(max_retries=2, base=1.0, factor=2.0)

#: Added to a missing greeting in 'tls' and 'none' mode: the usual cause.
SILENT_PORT_HINT: Final = (
    " (a port that expects TLS from the first byte, such as 995, stays silent until "
    "the handshake: use encryption='ssl' there)"
)

#: Builds a connected client from ``(host, port, timeout)``; the greeting is read.
ClientFactory = Callable[[str, int, float], Any]
#: Logs a freshly opened connection in; raises the library's errors.
Login = Callable[[ClientAdapter], None]


@dataclass(frozen=True)
class POP3Connector:
    """How to reach one POP3 server; the values are checked when they are made, and
    nothing touches the network until :meth:`open`. With ``trace`` every connection's
    dialogue is logged (see :mod:`src.handlers._net.trace`); with ``proxy`` every
    connection goes through that SOCKS or HTTP proxy."""

    endpoint: Endpoint
    timeouts: Timeouts
    ssl_context: ssl.SSLContext | None = None
    retry: RetryPolicy = DEFAULT_CONNECT_RETRY
    sleep: Sleep = default_sleep
    clock: Clock = time.monotonic
    deadline: float | None = None
    trace: bool = False
    proxy: Proxy | None = None

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "deadline", check_seconds(self.deadline, "deadline", optional=True)
        )

    @property
    def hostname(self) -> str:
        """The server's host name."""
        return self.endpoint.host

    @property
    def port(self) -> int:
        """The server's port."""
        return self.endpoint.port

    @property
    def encryption(self) -> Encryption:
        """How the connection is protected."""
        return self.endpoint.encryption

    @property
    def timeout(self) -> float:
        """Seconds each socket operation may take."""
        return self.timeouts.socket

    @property
    def where(self) -> str:
        """``host:port``, for messages."""
        return f"{self.hostname}:{self.port}"

    @property
    def exchange_limit(self) -> float:
        """Seconds one exchange may take: ``operation_timeout``, or ten times ``timeout``."""
        operation = self.timeouts.operation
        return operation if operation is not None else 10 * self.timeout

    def time_limit(self, what: str, target: SocketGetter) -> TimeLimit:
        """A :class:`TimeLimit` of :attr:`exchange_limit` seconds for ``what``."""
        return TimeLimit(self.exchange_limit, what, target)

    def open(self, factory: ClientFactory, login: Login | None = None) -> ClientAdapter:
        """A new connection (logged in by ``login`` if given), retried within the policy.

        Each attempt as a whole (connecting, greeting, STLS, login) is bounded by
        :attr:`exchange_limit`.
        """
        started = self.clock()

        def attempt() -> ClientAdapter:
            talking = _OpeningSocket()
            with (
                self.time_limit(f"opening a session with {self.where}", talking),
                watching_sockets(talking.announced.append),
            ):
                adapter = self._connect_once(factory, self._attempt_timeout(started), talking)
                if login is not None:
                    try:
                        login(adapter)
                    except BaseException:
                        adapter.close()
                        raise
            return adapter

        def before_retry(error: BaseException, number: int, delay: float) -> None:
            if self.deadline is not None and self.clock() - started + delay >= self.deadline:
                raise POP3TimeoutError(
                    f"could not open a POP3 session with {self.where} within the "
                    f"{self.deadline:g}s deadline: {error}"
                ) from error
            log.debug(
                "POP3 connect retry %d to %s in %.1fs after: %s", number, self.where, delay, error
            )

        return call_with_retry(attempt, self.retry, sleep=self.sleep, on_retry=before_retry)

    def translate(
        self,
        error: BaseException,
        verb: str,
        *,
        during_login: bool = False,
        handshake: bool = False,
        secrets: Iterable[str | bytes | None] = (),
    ) -> MailHandlerError:
        """The library exception for ``error``, raised while running ``verb``; every form
        of ``secrets`` is masked out of a server reply it quotes."""
        if isinstance(error, MailTimeoutError) and not isinstance(error, POP3ConnectionError):
            return POP3TimeoutError(f"{verb}: {error}")
        if isinstance(error, MailConnectionError) and not isinstance(
            error, POP3ConnectionError | ProxyError
        ):
            return POP3ConnectionError(f"{verb}: {error}")
        if isinstance(error, MailHandlerError):
            return error
        if isinstance(error, poplib.error_proto):
            return error_for_reply(reply_text(error), during_login=during_login, secrets=secrets)
        if handshake and isinstance(error, ssl.SSLError):
            return POP3SecurityError(describe_tls_failure(error, self.hostname))
        if isinstance(error, TimeoutError):
            return POP3TimeoutError(f"{verb}: no answer from {self.where} within {self.timeout:g}s")
        if isinstance(error, OSError):
            return POP3ConnectionError(f"{verb}: connection to {self.where} failed: {error}")
        return POP3ProtocolError(
            f"{verb}: unusable reply from {self.where} ({type(error).__name__})"
        )

    def _attempt_timeout(self, started: float) -> float:
        if self.deadline is None:
            return self.timeout
        remaining = self.deadline - (self.clock() - started)
        if remaining <= 0:
            raise POP3TimeoutError(
                f"the {self.deadline:g}s deadline for reaching {self.where} has passed"
            )
        return min(self.timeout, remaining)

    def _connect_once(
        self, factory: ClientFactory, timeout: float, talking: _OpeningSocket
    ) -> ClientAdapter:
        log.debug("connecting to POP3 server %s (%s)", self.where, self.encryption.value)
        try:
            client = factory(self.hostname, self.port, timeout)
        except Exception as error:
            translated = self.translate(error, "connect", handshake=True)
            if (
                isinstance(translated, POP3TimeoutError)
                and self.encryption is not Encryption.IMPLICIT_SSL
            ):
                translated = POP3TimeoutError(f"{translated}{SILENT_PORT_HINT}")
            raise translated from chain_cause(error)
        adapter = ClientAdapter(client)
        if self.trace:
            adapter.watch(self.where)
        talking.adapter = adapter
        if timeout < self.timeout:
            _set_timeout(adapter, self.timeout)  # the shortened timeout was for connecting only
        if self.encryption is Encryption.STARTTLS:
            try:
                self._start_tls(adapter)
            except BaseException:
                adapter.close()
                raise
        return adapter

    def _start_tls(self, adapter: ClientAdapter) -> None:
        try:
            offered = "STLS" in adapter.capabilities()
        except MailHandlerError:
            raise
        except Exception as error:
            raise self.translate(error, "CAPA") from chain_cause(error)
        if not offered:
            raise POP3SecurityError(
                f"{self.where} does not offer STLS; refusing to continue without TLS "
                "(encryption='tls')"
            )
        try:
            adapter.stls(resolve_context(self.ssl_context))
        except poplib.error_proto as error:
            refusal = error_for_reply(reply_text(error))
            raise POP3SecurityError(f"server refused STLS: {refusal}") from None
        except ssl.SSLError as error:
            raise POP3SecurityError(describe_tls_failure(error, self.hostname)) from error
        except Exception as error:
            raise self.translate(error, "STLS") from chain_cause(error)
        log.debug("TLS established with %s via STLS", self.where)


class TimeLimit:
    """Bounds one exchange with the server as a whole, however slowly it answers.

    An exchange is opening a session, or one command and its complete reply. When
    ``seconds`` pass, the watchdog of :mod:`src.handlers._net.deadline` cuts the socket that
    ``target`` returns; the read blocked on it fails, and leaving the block turns that
    failure into a :class:`POP3TimeoutError`.
    """

    def __init__(self, seconds: float, what: str, target: SocketGetter) -> None:
        self._deadline = Deadline(seconds)
        self._deadline.target = target
        self._what = what

    def __enter__(self) -> TimeLimit:
        self._deadline.__enter__()
        return self

    def restart(self) -> None:
        """Count the full limit again from now (after each reply of a pipelined batch)."""
        self._deadline.restart()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._deadline.__exit__(exc_type, exc, tb)
        if isinstance(exc, Exception) and self._deadline.expired:
            raise POP3TimeoutError(
                f"{self._what}: no complete answer within {self._deadline.seconds:g}s "
                "(operation_timeout)"
            ) from chain_cause(exc)


class _OpeningSocket:
    """The socket an opening attempt talks over, for its deadline to cut: the one the
    client announced while still reading the greeting, then the client's own (which
    STLS replaces)."""

    def __init__(self) -> None:
        self.announced: list[socket.socket] = []
        self.adapter: ClientAdapter | None = None

    def __call__(self) -> socket.socket | None:
        if self.adapter is not None:
            return self.adapter.socket
        return self.announced[-1] if self.announced else None


def reply_text(error: poplib.error_proto) -> bytes | str:
    """The server reply a ``poplib.error_proto`` carries."""
    reply = error.args[0] if error.args else b""
    return reply if isinstance(reply, bytes | str) else str(reply)


def chain_cause(error: BaseException) -> BaseException | None:
    """Chain OS-level causes for debugging; never a server reply, which may echo input."""
    return None if isinstance(error, poplib.error_proto | MailHandlerError) else error


def _set_timeout(adapter: ClientAdapter, timeout: float) -> None:
    sock = adapter.socket
    if sock is not None:
        sock.settimeout(timeout)
