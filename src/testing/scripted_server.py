"""A raw, line-based TCP server whose behaviour each test writes as a script.

Where :mod:`src.testing.smtp_server` is a correct SMTP implementation, this server
does exactly what a test tells it, which is how misbehaving servers are imitated:
a greeting that never comes, a connection dropped halfway through a message body,
a reply dripped one byte at a time. It speaks no protocol of its own, so it serves
SMTP and POP3 tests alike.

A *script* is a function taking a :class:`Conversation`, the server side of one
accepted connection. Connection ``i`` runs ``scripts[i]``; the last script repeats
for any further connections, and a single callable serves them all::

    def greet_and_hang_up(conv: Conversation) -> None:
        conv.send("421 4.3.2 Try again later")

    with ScriptedServer([greet_and_hang_up, smtp_accept_all]) as server:
        ...  # the first connection gets 421, the second a working server

When a script returns, its connection is closed. Exceptions raised by a script are
collected in :attr:`ScriptedServer.errors`; every line a connection received stays
in :attr:`Conversation.received`.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable, Sequence

__all__ = ["Conversation", "Script", "ScriptedServer"]

log = logging.getLogger(__name__)

_ACCEPT_POLL = 0.05
_JOIN_TIMEOUT = 2.0
_MAX_BUFFER = 1 << 24
_SEND_TIMEOUT = 5.0
_TAIL = 64  # consumed bytes kept for terminators that begin in them


class Conversation:
    """The server side of one accepted connection, handed to a script.

    ``received`` holds every line read so far, line endings included (a final line
    cut short by the peer closing is kept as it was). ``blocks`` holds each complete
    block returned by :meth:`recv_until`, so a test can check whether, for example,
    an SMTP message body was ever read up to its final dot. ``sent`` holds every
    chunk written.
    """

    def __init__(self, sock: socket.socket, index: int, stopping: threading.Event) -> None:
        self.index = index
        try:
            peer = sock.getpeername()
        except OSError:  # the client is already gone
            peer = ("", 0)
        self.peer: tuple[str, int] = (peer[0], peer[1])
        self.received: list[bytes] = []
        self.blocks: list[bytes] = []
        self.sent: list[bytes] = []
        self.tls = False
        self._sock = sock
        self._stopping = stopping
        self._buffer = bytearray()
        self._tail = b""
        self._eof = False
        self._closed = False
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<Conversation #{self.index} {state} received={len(self.received)} lines>"

    @property
    def closed(self) -> bool:
        """Whether this side has closed the connection."""
        return self._closed

    @property
    def peer_closed(self) -> bool:
        """Whether the client has closed its side (seen as end of input)."""
        return self._eof

    @property
    def data(self) -> bytes:
        """Everything received so far, as one byte string."""
        return b"".join(self.received)

    # -- writing -------------------------------------------------------------------

    def send(self, data: bytes | str) -> None:
        """Write ``data``; a ``str`` is UTF-8 encoded and gets CRLF appended."""
        raw = data.encode("utf-8") + b"\r\n" if isinstance(data, str) else bytes(data)
        self.sent.append(raw)
        self._sock.settimeout(_SEND_TIMEOUT)
        self._sock.sendall(raw)

    def drip(self, data: bytes | str, interval: float) -> None:
        """Write ``data`` one byte at a time, waiting ``interval`` seconds before each.

        A ``str`` is encoded and terminated as in :meth:`send`. Returns early, without
        error, if the server is stopping.
        """
        raw = data.encode("utf-8") + b"\r\n" if isinstance(data, str) else bytes(data)
        self.sent.append(raw)
        for index in range(len(raw)):
            if self._stopping.wait(interval):
                return
            self._sock.settimeout(_SEND_TIMEOUT)
            self._sock.sendall(raw[index : index + 1])

    # -- reading -------------------------------------------------------------------

    def recv_line(self, timeout: float = 5.0) -> bytes | None:
        """Read one line, ending included; ``None`` at end of input.

        If the peer closes in the middle of a line, that partial line is returned
        first. Raises :class:`TimeoutError` when no full line arrives in time.
        """
        deadline = time.monotonic() + timeout
        while True:
            end = self._buffer.find(b"\n")
            if end >= 0:
                return self._take(end + 1)
            if self._eof:
                return self._take(len(self._buffer)) if self._buffer else None
            self._fill(deadline)

    def recv_until(self, terminator: bytes, timeout: float = 5.0) -> bytes:
        """Read up to and including ``terminator`` and return it all.

        Use ``b"\\r\\n.\\r\\n"`` to read an SMTP body after the ``354`` reply (the CRLF
        ending the preceding line counts). If the peer closes first, whatever arrived
        is returned without the terminator; check with ``endswith``. Raises
        :class:`TimeoutError` when neither happens in time.
        """
        if not terminator:
            raise ValueError("terminator must not be empty")
        deadline = time.monotonic() + timeout
        # The terminator may begin in bytes already consumed: after reading the line
        # "DATA\r\n", an empty body is just ".\r\n".
        tail = self._tail[-(len(terminator) - 1) :] if len(terminator) > 1 else b""
        start = 0
        while True:
            found = (tail + self._buffer).find(terminator, start)
            if found >= 0:
                block = self._take(found + len(terminator) - len(tail))
                self.blocks.append(block)
                return block
            if self._eof:
                return self._take(len(self._buffer))
            start = max(0, len(tail) + len(self._buffer) - len(terminator) + 1)
            self._fill(deadline)

    def recv_exactly(self, size: int, timeout: float = 5.0) -> bytes:
        """Read exactly ``size`` bytes (an SMTP BDAT chunk) and return them; fewer if
        the peer closes first. Each complete read is appended to ``blocks`` too.
        Raises :class:`TimeoutError` when they do not arrive in time."""
        deadline = time.monotonic() + timeout
        while len(self._buffer) < size and not self._eof:
            self._fill(deadline)
        chunk = self._take(min(size, len(self._buffer)))
        if len(chunk) == size:
            self.blocks.append(chunk)
        return chunk

    def wait_closed(self, timeout: float = 5.0) -> bool:
        """Read (and record) until the peer closes; ``True`` if it did in time.

        Also returns ``False`` as soon as the server is stopping.
        """
        deadline = time.monotonic() + timeout
        while not self._eof:
            if self._stopping.is_set():
                return False
            try:
                self._fill(min(deadline, time.monotonic() + 0.1))
            except TimeoutError:
                if time.monotonic() >= deadline:
                    return False
            except OSError:
                return self._eof
            self._record_complete_lines()
        self._record_complete_lines(final=True)
        return True

    def sleep(self, seconds: float) -> bool:
        """Wait ``seconds``; ``False`` if cut short because the server is stopping."""
        return not self._stopping.wait(seconds)

    # -- connection control ------------------------------------------------------

    def start_tls(self, context: ssl.SSLContext, timeout: float = 5.0) -> None:
        """Run the server side of a TLS handshake on this connection.

        Call it right after sending the reply that invites the handshake (``220`` to
        SMTP ``STARTTLS``, ``+OK`` to POP3 ``STLS``). Unread plaintext already
        buffered is refused, as RFC 3207 requires.
        """
        if self._buffer:
            raise RuntimeError("plaintext received after the TLS request; refusing to upgrade")
        self._sock.settimeout(timeout)
        wrapped = context.wrap_socket(self._sock, server_side=True)
        with self._lock:
            self._sock = wrapped
        self.tls = True

    def close(self) -> None:
        """Close the connection (idempotent)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            sock = self._sock
        with contextlib.suppress(OSError):
            sock.close()

    def abort(self) -> None:
        """Wake any blocked read and close; used by the server when stopping."""
        with self._lock:
            sock = self._sock
        # shutdown() on the plain socket level wakes a reader blocked in another
        # thread; it bypasses SSLSocket.shutdown(), which would drop the TLS object
        # under that reader's feet.
        with contextlib.suppress(OSError):
            socket.socket.shutdown(sock, socket.SHUT_RDWR)
        self.close()

    # -- internals -----------------------------------------------------------------

    def _take(self, size: int) -> bytes:
        chunk = bytes(self._buffer[:size])
        del self._buffer[:size]
        self._tail = (self._tail + chunk)[-_TAIL:]
        self.received.extend(_split_lines(chunk))
        return chunk

    def _record_complete_lines(self, final: bool = False) -> None:
        """Move buffered lines into ``received`` (used while merely waiting)."""
        end = len(self._buffer) if final else self._buffer.rfind(b"\n") + 1
        if end > 0:
            self._take(end)

    def _fill(self, deadline: float) -> None:
        """Read one chunk into the buffer, or mark end of input."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("no data from the client in time")
        if len(self._buffer) > _MAX_BUFFER:
            raise RuntimeError("client sent too much data without a line ending")
        self._sock.settimeout(remaining)
        try:
            chunk = self._sock.recv(65536)
        except TimeoutError:
            raise TimeoutError("no data from the client in time") from None
        except (ssl.SSLZeroReturnError, ssl.SSLEOFError, ConnectionResetError):
            chunk = b""
        except OSError:
            if self._stopping.is_set() or self._closed:
                chunk = b""
            else:
                raise
        if chunk:
            self._buffer += chunk
        else:
            self._eof = True


def _split_lines(chunk: bytes) -> list[bytes]:
    """Split after each LF only (a bare CR inside a line is data, not a line end)."""
    parts = chunk.split(b"\n")
    lines = [part + b"\n" for part in parts[:-1]]
    if parts[-1]:
        lines.append(parts[-1])
    return lines


Script = Callable[[Conversation], None]


class ScriptedServer:
    """A loopback TCP server running one script per accepted connection.

    ``connections`` counts accepted connections, ``conversations`` keeps each one,
    and ``errors`` collects exceptions raised inside scripts (a test should usually
    assert it is empty). Every thread is a daemon; :meth:`stop` closes the listener
    and all open connections and joins the threads.
    """

    def __init__(
        self, scripts: Sequence[Script] | Script, *, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        if callable(scripts):
            self._scripts: list[Script] = [scripts]
        else:
            self._scripts = list(scripts)
            if not self._scripts:
                raise ValueError("at least one script is needed")
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            raise ValueError(f"host must be a loopback IP address such as 127.0.0.1, got {host!r}")
        self.host = host
        self.port = port
        self.connections = 0
        self.conversations: list[Conversation] = []
        self.errors: list[BaseException] = []
        self._lock = threading.Condition()
        self._stopping = threading.Event()
        self._listener: socket.socket | None = None
        self._acceptor: threading.Thread | None = None
        self._workers: list[threading.Thread] = []

    def __repr__(self) -> str:
        state = "running" if self._listener is not None else "stopped"
        return (
            f"<ScriptedServer {self.host}:{self.port} {state} "
            f"connections={self.connections} errors={len(self.errors)}>"
        )

    @property
    def address(self) -> tuple[str, int]:
        """``(host, port)`` for a client to connect to."""
        return (self.host, self.port)

    def start(self) -> None:
        """Bind the port and accept connections in a daemon thread."""
        if self._listener is not None:
            raise RuntimeError("server already running")
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        listener = socket.socket(family, socket.SOCK_STREAM)
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((self.host, self.port))
            listener.listen(16)
            listener.settimeout(_ACCEPT_POLL)
        except BaseException:
            listener.close()
            raise
        self.port = listener.getsockname()[1]
        self._stopping.clear()
        self._listener = listener
        self._acceptor = threading.Thread(
            target=self._accept_loop, args=(listener,), name="scripted-server-accept", daemon=True
        )
        self._acceptor.start()
        log.debug("scripted server listening on %s:%d", self.host, self.port)

    def stop(self) -> None:
        """Close the listener and every connection; join all threads (idempotent)."""
        listener, self._listener = self._listener, None
        if listener is None:
            return
        self._stopping.set()
        with self._lock:
            conversations = list(self.conversations)
            workers = list(self._workers)
        for conversation in conversations:
            conversation.abort()
        if self._acceptor is not None:
            self._acceptor.join(_JOIN_TIMEOUT)
            self._acceptor = None
        listener.close()
        deadline = time.monotonic() + _JOIN_TIMEOUT
        for worker in workers:
            worker.join(max(0.0, deadline - time.monotonic()))
        # A connection accepted while we were stopping is closed here too.
        with self._lock:
            late = [c for c in self.conversations if c not in conversations]
        for conversation in late:
            conversation.abort()
        log.debug("scripted server on %s:%d stopped", self.host, self.port)

    def __enter__(self) -> ScriptedServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def wait_for_connections(self, n: int, timeout: float = 5.0) -> list[Conversation]:
        """Block until ``n`` connections were accepted; return the conversations."""
        with self._lock:
            if not self._lock.wait_for(lambda: self.connections >= n, timeout):
                raise TimeoutError(f"expected {n} connection(s), got {self.connections}")
            return list(self.conversations)

    def join(self, timeout: float = 5.0) -> bool:
        """Wait until every script started so far has finished; ``True`` if all did."""
        deadline = time.monotonic() + timeout
        with self._lock:
            workers = list(self._workers)
        for worker in workers:
            worker.join(max(0.0, deadline - time.monotonic()))
        return not any(worker.is_alive() for worker in workers)

    # -- internals -----------------------------------------------------------------

    def _accept_loop(self, listener: socket.socket) -> None:
        while not self._stopping.is_set():
            try:
                sock, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                if not self._stopping.is_set():
                    log.exception("scripted server stopped accepting connections")
                return
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                index = self.connections
                conversation = Conversation(sock, index, self._stopping)
                script = self._scripts[min(index, len(self._scripts) - 1)]
                worker = threading.Thread(
                    target=self._run,
                    args=(script, conversation),
                    name=f"scripted-server-conn-{index}",
                    daemon=True,
                )
                self.conversations.append(conversation)
                self._workers.append(worker)
                self.connections += 1
                self._lock.notify_all()
            if self._stopping.is_set():
                conversation.abort()
            worker.start()

    def _run(self, script: Script, conversation: Conversation) -> None:
        try:
            script(conversation)
        except BaseException as error:
            if self._stopping.is_set() and isinstance(error, OSError | TimeoutError):
                log.debug("script ended by server stop: %r", error)
            else:
                log.debug("script for connection %d raised %r", conversation.index, error)
                with self._lock:
                    self.errors.append(error)
        finally:
            conversation.close()
