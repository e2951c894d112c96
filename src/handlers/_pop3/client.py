"""poplib clients that are safe on failure and fast on large replies.

The stock :class:`poplib.POP3` has three habits a library cannot live with:

* when the greeting fails (timeout, ``-ERR``, garbage) its constructor raises with
  the socket still open, leaving it to the garbage collector;
* it refuses any line longer than a module-wide 2048 bytes, which real mail exceeds,
  and the only knob is the global ``poplib._MAXLINE`` shared by every user in the
  process;
* it reads multi-line replies one line at a time in Python, which is slow on large
  messages, and it reports a closed connection as ``error_proto('-ERR EOF')``, which
  looks like a server refusal.

:class:`FastPOP3` and :class:`FastPOP3_SSL` fix these on their own instances only. They
keep poplib's public methods and return shapes, and add :meth:`FastPOP3.retr_bytes` and
:meth:`FastPOP3.top_bytes`, which hand back the message as one ``bytes`` object
without splitting it into lines, and pipelined ``RETR``, ``DELE`` and ``LIST n``
(:meth:`FastPOP3.retr_many`, :meth:`FastPOP3.dele_many`, :meth:`FastPOP3.list_many`).
"""

from __future__ import annotations

import contextlib
import itertools
import poplib
import socket
import ssl
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from .._net.connect import Proxy, open_connection
from .._net.deadline import announce_socket
from .._net.tls import answers_tls
from ..errors import POP3ConnectionError, POP3SecurityError
from .listing import parse_capabilities
from .wire import (
    MAX_STATUS_LINE,
    ResponseTooLargeError,
    read_dot_terminated,
    split_lines,
)

#: Bound for replies that are not messages (LIST, UIDL, CAPA listings).
DEFAULT_LISTING_LIMIT = 64 * 1024 * 1024
#: RETR commands kept in flight by :meth:`FastPOP3.retr_many`: enough for a hundred
#: small messages per round trip, yet under 2 KB of commands, which always fit in the
#: socket buffers, so writing them never blocks while the server is blocked writing
#: replies we have not read yet.
PIPELINE_WINDOW = 128

#: Receives ``(number, status line, message)`` for each pipelined RETR, in order;
#: ``message`` is None when the status line is ``-ERR``.
RetrCallback = Callable[[int, bytes, "bytes | None"], object]

_LongReply = tuple[bytes, list[bytes], int]
#: The longest wait, in seconds, for a silent server to answer a TLS hello.
_PROBE_WAIT = 2.0


class FastReplies(poplib.POP3):
    """The reading side shared by the plain and the TLS client, and how both connect."""

    #: Largest RETR/TOP data accepted, in bytes; ``None`` means no bound.
    message_limit: int | None = None
    #: Largest data of any other multi-line reply, in bytes.
    listing_limit: int = DEFAULT_LISTING_LIMIT
    #: Whether the server listed PIPELINING in CAPA; None until someone asked.
    pipelining: bool | None = None
    #: The proxy to connect through; set before the constructor connects.
    proxy: Proxy | None = None

    def _create_socket(self, timeout: float) -> socket.socket:
        # Announced before the greeting is read, so a deadline can cut a server that
        # drips it (with implicit TLS, once the handshake is done).
        sock = self._connect(timeout)
        announce_socket(sock)
        return sock

    def _connect(self, timeout: float) -> socket.socket:
        """The TCP connection, opened by :func:`~src.handlers._net.connect.open_connection`
        (Happy Eyeballs, proxies) rather than :func:`socket.create_connection`."""
        return open_connection(self.host, self.port, timeout=timeout, proxy=self.proxy)

    def _getline(self) -> tuple[bytes, int]:
        line = self.file.readline(MAX_STATUS_LINE + 1)
        if len(line) > MAX_STATUS_LINE:
            raise poplib.error_proto("line too long")
        if not line:
            raise POP3ConnectionError("server closed the connection")
        octets = len(line)
        if line[-2:] == b"\r\n":
            return line[:-2], octets
        if line[:1] == b"\r":
            return line[1:-1], octets
        return line[:-1], octets

    def _status(self) -> bytes:
        line, _ = self._getline()
        if not line.startswith(b"+"):
            raise poplib.error_proto(line)
        return line

    def _send(self, command: str) -> None:
        self.sock.sendall(command.encode(self.encoding) + b"\r\n")

    def _data(self, limit: int | None) -> bytes:
        return read_dot_terminated(self.file, limit)  # type: ignore[arg-type]

    def _getlongresp(self) -> _LongReply:
        status = self._status()
        data = self._data(self.listing_limit)
        return status, split_lines(data), len(data)

    def list_bytes(self) -> tuple[bytes, bytes]:
        """Send ``LIST``; return the status line and the listing as one ``bytes``."""
        return self._listing("LIST")

    def uidl_bytes(self) -> tuple[bytes, bytes]:
        """Send ``UIDL``; return the status line and the listing as one ``bytes``."""
        return self._listing("UIDL")

    def capa(self) -> dict[str, list[str]]:
        """Send ``CAPA``; skip lines that cannot be capabilities instead of failing."""
        return parse_capabilities(self._listing("CAPA")[1])

    def _listing(self, command: str) -> tuple[bytes, bytes]:
        self._send(command)
        status = self._status()
        return status, self._data(self.listing_limit)

    def retr_bytes(self, which: int | str) -> tuple[bytes, bytes]:
        """Send ``RETR which``; return the status line and the unstuffed message."""
        self._send(f"RETR {which}")
        status = self._status()
        return status, self._data(self.message_limit)

    def top_bytes(self, which: int | str, howmuch: int) -> tuple[bytes, bytes]:
        """Send ``TOP which howmuch``; return the status line and the unstuffed text."""
        self._send(f"TOP {which} {howmuch}")
        status = self._status()
        return status, self._data(self.message_limit)

    def retr_many(
        self, numbers: Iterable[int], deliver: RetrCallback, window: int = PIPELINE_WINDOW
    ) -> None:
        """RETR every message in ``numbers`` with up to ``window`` commands in flight.

        Only for servers that list PIPELINING in CAPA (RFC 2449). Replies are read in
        order and handed to ``deliver(number, status, message)``; a ``-ERR`` reply
        (``message`` None) affects only its own message. If ``deliver`` raises, the
        replies still in flight are read and dropped first, so the session stays in
        step. A reply over :attr:`message_limit` raises
        :class:`~src.handlers._pop3.wire.ResponseTooLargeError` naming its message; the
        stream is then out of step and the connection must be dropped.
        """
        if window < 1:
            raise ValueError("window must be at least 1")
        remaining = iter(numbers)
        in_flight: deque[int] = deque()

        def send_more(count: int) -> None:
            batch = list(itertools.islice(remaining, count))
            if batch:
                self.sock.sendall(b"".join(b"RETR %d\r\n" % number for number in batch))
                in_flight.extend(batch)

        send_more(window)
        while in_flight:
            number = in_flight.popleft()
            status, message = self._pipelined_reply(number)
            if len(in_flight) <= window // 2:
                send_more(window - len(in_flight))
            try:
                deliver(number, status, message)
            except BaseException:
                self._drain(len(in_flight))
                raise

    def dele_many(self, numbers: Iterable[int], window: int = PIPELINE_WINDOW) -> list[bytes]:
        """DELE every message in ``numbers`` with up to ``window`` commands in flight.

        Only for servers that list PIPELINING in CAPA (RFC 2449). Returns the status
        lines in the order of ``numbers``; a ``-ERR`` affects only its own message.
        """
        return self._statuses("DELE", numbers, window)

    def list_many(self, numbers: Iterable[int], window: int = PIPELINE_WINDOW) -> list[bytes]:
        """``LIST n`` for every message in ``numbers``, pipelined as :meth:`dele_many`;
        the status lines (``+OK n size`` or ``-ERR ...``) in the order of ``numbers``."""
        return self._statuses("LIST", numbers, window)

    def _statuses(self, verb: str, numbers: Iterable[int], window: int) -> list[bytes]:
        if window < 1:
            raise ValueError("window must be at least 1")
        command = verb.encode("ascii") + b" %d\r\n"
        pending = list(numbers)
        replies: list[bytes] = []
        for start in range(0, len(pending), window):
            batch = pending[start : start + window]
            self.sock.sendall(b"".join(command % number for number in batch))
            replies.extend(self._getline()[0] for _ in batch)
        return replies

    def _pipelined_reply(self, number: int) -> tuple[bytes, bytes | None]:
        line, _ = self._getline()
        if not line.startswith(b"+"):
            return line, None
        try:
            return line, self._data(self.message_limit)
        except ResponseTooLargeError as error:
            raise ResponseTooLargeError(error.limit, number) from None

    def _drain(self, count: int) -> None:
        """Read and drop ``count`` pipelined RETR replies."""
        for _ in range(count):
            line, _ = self._getline()
            if line.startswith(b"+"):
                self._data(None)

    def retr(self, which: Any) -> _LongReply:
        status, data = self.retr_bytes(which)
        return status, split_lines(data), len(data)

    def top(self, which: Any, howmuch: int) -> _LongReply:
        status, data = self.top_bytes(which, howmuch)
        return status, split_lines(data), len(data)


def _close_half_built(client: poplib.POP3) -> None:
    """Close what a constructor that failed after connecting left open."""
    file = getattr(client, "file", None)
    sock = getattr(client, "sock", None)
    with contextlib.suppress(OSError):
        if file is not None:
            file.close()
    with contextlib.suppress(OSError):
        if sock is not None:
            sock.close()


class FastPOP3(FastReplies):
    """Plain POP3 client (upgradable with ``stls``); closes its socket if the greeting fails.

    A server that stays silent instead of greeting is asked whether it expects TLS
    from the first byte (see :func:`~src.handlers._net.tls.answers_tls`); if it does,
    :class:`POP3SecurityError` says to use ``encryption='ssl'``, which no retry of the
    same settings could fix.
    """

    def __init__(
        self,
        host: str,
        port: int = poplib.POP3_PORT,
        timeout: float | None = None,
        *,
        proxy: Proxy | None = None,
    ) -> None:
        self.proxy = proxy
        try:
            super().__init__(host, port, timeout)  # type: ignore[arg-type]
        except TimeoutError:
            sock = getattr(self, "sock", None)
            wait = min((timeout or _PROBE_WAIT) / 2, _PROBE_WAIT)
            implicit = isinstance(sock, socket.socket) and answers_tls(sock, host, wait)
            _close_half_built(self)
            if implicit:
                raise POP3SecurityError(
                    f"{host}:{port} expects TLS from the first byte (it answered a TLS "
                    "handshake instead of greeting): use encryption='ssl' for this port"
                ) from None
            raise
        except BaseException:
            _close_half_built(self)
            raise


class FastPOP3_SSL(FastReplies, poplib.POP3_SSL):
    """POP3 over TLS from the first byte; closes its socket if the greeting fails."""

    def __init__(
        self,
        host: str,
        port: int = poplib.POP3_SSL_PORT,
        *,
        timeout: float | None = None,
        context: ssl.SSLContext | None = None,
        proxy: Proxy | None = None,
    ) -> None:
        self.proxy = proxy
        if context is None:
            raise ValueError("FastPOP3_SSL needs an explicit ssl.SSLContext")
        try:
            poplib.POP3_SSL.__init__(self, host, port, timeout=timeout, context=context)  # type: ignore[arg-type]
        except BaseException:
            _close_half_built(self)
            raise

    def _connect(self, timeout: float) -> socket.socket:
        # poplib.POP3_SSL._create_socket calls POP3's by name, so it cannot wrap the
        # socket FastReplies opens; the handshake is done here instead.
        sock = super()._connect(timeout)
        context: ssl.SSLContext = self.context  # type: ignore[attr-defined]
        try:
            return context.wrap_socket(sock, server_hostname=self.host)
        except BaseException:
            sock.close()
            raise
