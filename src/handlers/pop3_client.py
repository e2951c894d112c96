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
without splitting it into lines.
"""

from __future__ import annotations

import contextlib
import poplib
import socket
import ssl
from typing import Any

from .deadline import announce_socket
from .errors import POP3ConnectionError
from .pop3_wire import MAX_STATUS_LINE, read_dot_terminated, split_lines

#: Bound for replies that are not messages (LIST, UIDL, CAPA listings).
DEFAULT_LISTING_LIMIT = 64 * 1024 * 1024

_LongReply = tuple[bytes, list[bytes], int]


class _FastReplies(poplib.POP3):
    """The reading side shared by the plain and the TLS client."""

    #: Largest RETR/TOP data accepted, in bytes; ``None`` means no bound.
    message_limit: int | None = None
    #: Largest data of any other multi-line reply, in bytes.
    listing_limit: int = DEFAULT_LISTING_LIMIT

    def _create_socket(self, timeout: float) -> socket.socket:
        # Announced before the greeting is read, so a deadline can cut a server that
        # drips it (with implicit TLS, once the handshake is done).
        sock: socket.socket = super()._create_socket(timeout)  # type: ignore[misc]
        announce_socket(sock)
        return sock

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


class FastPOP3(_FastReplies):
    """Plain POP3 client (upgradable with ``stls``); closes its socket if the greeting fails."""

    def __init__(
        self, host: str, port: int = poplib.POP3_PORT, timeout: float | None = None
    ) -> None:
        try:
            super().__init__(host, port, timeout)  # type: ignore[arg-type]
        except BaseException:
            _close_half_built(self)
            raise


class FastPOP3_SSL(_FastReplies, poplib.POP3_SSL):
    """POP3 over TLS from the first byte; closes its socket if the greeting fails."""

    def __init__(
        self,
        host: str,
        port: int = poplib.POP3_SSL_PORT,
        *,
        timeout: float | None = None,
        context: ssl.SSLContext | None = None,
    ) -> None:
        if context is None:
            raise ValueError("FastPOP3_SSL needs an explicit ssl.SSLContext")
        try:
            poplib.POP3_SSL.__init__(self, host, port, timeout=timeout, context=context)  # type: ignore[arg-type]
        except BaseException:
            _close_half_built(self)
            raise


def is_fast_client(client: object) -> bool:
    """Whether ``client`` is one of this module's clients (not a poplib one or a double)."""
    return isinstance(client, _FastReplies) and isinstance(
        getattr(client, "sock", None), socket.socket
    )
