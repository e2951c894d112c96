"""Helpers for the interop tests that drive our own handlers against the private stack.

* :func:`smtp_handler` and :func:`pop3_handler` build handlers for one of the stack's
  listeners in a given encryption mode, trusting the stack's CA, with a pool of their
  own and a ``sleep`` that records instead of waiting.
* :func:`delivered` waits until a message carrying a token is in a Maildir.
* :class:`WireTap` is a loopback TCP relay that records what a client sends, so a
  test can show that a password did (or did not) cross the wire in clear, and can
  cut a connection the way a network failure would.
* :func:`wait_for_log` polls the server logs for a line, within a bounded time.
"""

from __future__ import annotations

import base64
import contextlib
import re
import select
import socket
import struct
import threading
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest

from src.handlers.pop3 import POP3ProtocolHandler
from src.handlers.smtp import SMTPConnectionPool, SMTPProtocolHandler

from .mailstack import MailStack

TIMEOUT = 10.0
_POLL = 0.05
_ABORT = struct.pack("ii", 1, 0)  # SO_LINGER on, zero seconds: close with a reset


def token() -> str:
    """A short unique marker for subjects and bodies."""
    return uuid.uuid4().hex[:16]


def smtp_port(stack: MailStack, mode: str) -> int:
    """The listener each SMTP encryption mode is meant for."""
    return {
        "tls": stack.smtp_submission_port,
        "ssl": stack.smtps_port,
        "none": stack.smtp_plain_port,
    }[mode]


def pop3_port(stack: MailStack, mode: str) -> int:
    """The listener each POP3 encryption mode is meant for ('none' shares the STLS port)."""
    return {"tls": stack.pop3_port, "ssl": stack.pop3s_port, "none": stack.pop3_port}[mode]


def smtp_handler(
    stack: MailStack,
    mode: str,
    user: str | None = "bob",
    *,
    port: int | None = None,
    password: str | None = None,
    login_as: str | None = None,
    sleeps: list[float] | None = None,
    timeout: float = TIMEOUT,
    **options: Any,
) -> SMTPProtocolHandler:
    """A handler logging in as ``user`` (``None``: no login), sending as that user.

    ``login_as`` replaces the user name sent in AUTH (the full address, say).
    Retries keep their default policy but never wait: the waits are appended to
    ``sleeps``.
    """
    waits: list[float] = sleeps if sleeps is not None else []
    sender = stack.address(user or "carol")
    options.setdefault("from_address", sender)
    return SMTPProtocolHandler(
        stack.host,
        port if port is not None else smtp_port(stack, mode),
        login_as or user,
        (password or stack.users[user]) if user is not None else None,
        mode,
        ssl_context=stack.client_ssl_context(),
        pool=SMTPConnectionPool(),
        timeout=timeout,
        sleep=waits.append,
        **options,
    )


def pop3_handler(
    stack: MailStack,
    mode: str,
    user: str = "alice",
    *,
    port: int | None = None,
    password: str | None = None,
    login_as: str | None = None,
    timeout: float = TIMEOUT,
    **options: Any,
) -> POP3ProtocolHandler:
    """A handler for the Maildir of ``user``; connection retries never wait.

    ``login_as`` replaces the user name sent in USER (the full address, say).
    """
    options.setdefault("sleep", lambda seconds: None)
    return POP3ProtocolHandler(
        stack.host,
        port if port is not None else pop3_port(stack, mode),
        login_as or user,
        password if password is not None else stack.users[user],
        mode,
        timeout,
        ssl_context=stack.client_ssl_context(),
        **options,
    )


def delivered(stack: MailStack, user: str, marker: str, count: int = 1) -> list[Path]:
    """Wait until ``count`` messages containing ``marker`` are in the Maildir of ``user``."""
    wanted = marker.encode()
    deadline = time.monotonic() + TIMEOUT
    while True:
        found = [path for path in stack.messages(user) if wanted in _read(path)]
        if len(found) >= count:
            return found
        if time.monotonic() >= deadline:
            raise TimeoutError(
                f"{user}: {len(found)} of {count} messages with {marker!r}\n" + stack.log_tail()
            )
        time.sleep(_POLL)


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:  # moved from new/ to cur/ meanwhile
        return b""


def maildir_texts(stack: MailStack, user: str) -> list[bytes]:
    """The bytes of every message now in the Maildir of ``user``."""
    return [_read(path) for path in stack.messages(user)]


def wait_for_log(
    stack: MailStack,
    mark: Mapping[Path, int],
    pattern: str,
    count: int = 1,
    timeout: float = TIMEOUT,
) -> list[re.Match[str]]:
    """Poll the server logs written since ``mark`` until ``pattern`` matches ``count``
    lines; return the matches, in log order."""
    compiled = re.compile(pattern, re.MULTILINE)
    deadline = time.monotonic() + timeout
    while True:
        matches = list(compiled.finditer(stack.log_since(mark)))
        if len(matches) >= count:
            return matches
        if time.monotonic() >= deadline:
            raise TimeoutError(
                f"{len(matches)} of {count} log lines matching {pattern!r}\n" + stack.log_tail()
            )
        time.sleep(_POLL)


def secret_forms(username: str, password: str) -> list[bytes]:
    """The ways a password can appear on the wire: as is, and in AUTH PLAIN/LOGIN."""

    def b64(data: str) -> bytes:
        return base64.b64encode(data.encode())

    return [
        password.encode(),
        b64(password),
        b64(f"\0{username}\0{password}"),
        b64(f"{username}\0{username}\0{password}"),
    ]


class WireTap:
    """A TCP relay on loopback that records the bytes clients send through it.

    Point a handler at ``tap.port`` instead of the server's port. ``sent`` holds
    everything the clients sent, in order (TLS records when the session is
    encrypted). :meth:`cut` closes every relayed connection at once, on both sides,
    as a network failure would. Each relay loop waits at most ``_POLL`` seconds per
    turn and ends when either side closes or the tap is stopped.

    With ``source`` (another loopback address, such as 127.0.0.2) the tap connects
    to the server from there. Dovecot counts a connection whose two ends have the
    same address as secure; from another address it applies
    ``disable_plaintext_auth`` as it would to any remote client.
    """

    def __init__(self, host: str, port: int, *, source: str | None = None) -> None:
        self._target = (host, port)
        self._source = (source, 0) if source is not None else None
        if source is not None:
            try:
                with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
                    probe.bind((source, 0))
            except OSError as exc:
                pytest.skip(f"cannot use {source} as a source address here: {exc}")
        self._listener = socket.create_server((host, 0))
        self._listener.settimeout(_POLL)
        self.host = host
        self.port: int = self._listener.getsockname()[1]
        self.sent = bytearray()
        self.connections = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._relays: list[tuple[threading.Thread, threading.Event]] = []
        self._acceptor = threading.Thread(target=self._accept, name="wiretap", daemon=True)

    def __enter__(self) -> WireTap:
        self._acceptor.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._acceptor.join(timeout=TIMEOUT)
        for thread, _ in self._relays:
            thread.join(timeout=TIMEOUT)
        self._listener.close()

    def cut(self) -> None:
        """Drop every relayed connection now, without a word to either side."""
        with self._lock:
            relays = list(self._relays)
        for _, cut in relays:
            cut.set()
        for thread, _ in relays:
            thread.join(timeout=TIMEOUT)

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            cut = threading.Event()
            thread = threading.Thread(target=self._relay, args=(client, cut), daemon=True)
            with self._lock:
                self.connections += 1
                self._relays.append((thread, cut))
            thread.start()

    def _relay(self, client: socket.socket, cut: threading.Event) -> None:
        with client:
            try:
                server = socket.create_connection(
                    self._target, timeout=TIMEOUT, source_address=self._source
                )
            except OSError:
                return  # the client sees its connection closed
            with server:
                self._pump(client, server, cut)
                if cut.is_set():
                    # An abortive close (RST) on both sides, like a dropped link.
                    for sock in (client, server):
                        with contextlib.suppress(OSError):
                            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _ABORT)

    def _pump(self, client: socket.socket, server: socket.socket, cut: threading.Event) -> None:
        peers = {client: server, server: client}
        while not (self._stop.is_set() or cut.is_set()):
            readable, _, _ = select.select(list(peers), [], [], _POLL)
            for sock in readable:
                try:
                    data = sock.recv(65536)
                    if data:
                        peers[sock].sendall(data)
                except OSError:
                    return
                if not data:
                    return
                if sock is client:
                    with self._lock:
                        self.sent += data
