"""One interface over every POP3 client: :class:`ClientAdapter`.

A session talks to a poplib-style client: this library's fast subclasses, stock
:class:`poplib.POP3`, or whatever a test put in place of ``POP3``/``POP3_SSL`` (a
``Mock`` included). Each client is wrapped once, when its connection opens, and the
adapter offers every command in terms of parsed values, so each command has one code
path above it. How replies are read is chosen once, at wrapping: the fast clients hand
over whole replies as ``bytes``; any other client gives poplib's ``(status, lines,
octets)`` tuples, whose shape is checked before use.

The adapter runs no time limits and translates no exceptions; the session around it
does both (see :mod:`~src.handlers._pop3.session`).
"""

from __future__ import annotations

import contextlib
import poplib
import socket
import ssl
from collections.abc import Callable, Iterable
from typing import Any

from .._net import trace as wire_log
from .._sasl import Mechanism
from ..errors import POP3MessageTooLargeError, POP3ProtocolError
from .client import FastReplies, RetrCallback
from .listing import ScanListing, UIDListing
from .sasl import authenticate
from .wire import parse_scan_line, strip_ok

#: Receives ``(number, status line, message)`` for each pipelined RETR.
Deliver = RetrCallback


class _LineReader:
    """Reads multi-line replies through poplib's API (stock clients, test doubles)."""

    pipelines = False

    def __init__(self, client: Any) -> None:
        self._client = client

    def listing(self, verb: str) -> bytes:
        return _join(_long_reply(getattr(self._client, verb.lower())(), verb)[1])

    def message(self, number: int, limit: int | None) -> bytes:
        _, lines, octets = _long_reply(self._client.retr(number), "RETR")
        raw = _join(lines)
        check_size(number, octets if isinstance(octets, int) else len(raw), limit)
        return raw

    def headers(self, number: int, limit: int | None) -> bytes:
        return _join(_long_reply(self._client.top(number, 0), "TOP")[1])

    def retrieve_many(
        self, numbers: Iterable[int], limit: int | None, deliver: Deliver
    ) -> None:  # pragma: no cover - never called: pipelines is False
        raise POP3ProtocolError("this client cannot pipeline")

    def delete_many(
        self, numbers: list[int]
    ) -> list[bytes]:  # pragma: no cover - never called: pipelines is False
        raise POP3ProtocolError("this client cannot pipeline")

    def list_many(
        self, numbers: list[int]
    ) -> list[bytes]:  # pragma: no cover - never called: pipelines is False
        raise POP3ProtocolError("this client cannot pipeline")


class _BytesReader(_LineReader):
    """Reads multi-line replies as one ``bytes`` each (this library's fast clients)."""

    pipelines = True
    _client: FastReplies

    def listing(self, verb: str) -> bytes:
        reader = self._client.list_bytes if verb == "LIST" else self._client.uidl_bytes
        return reader()[1]

    def message(self, number: int, limit: int | None) -> bytes:
        self._client.message_limit = limit
        return self._client.retr_bytes(number)[1]

    def headers(self, number: int, limit: int | None) -> bytes:
        self._client.message_limit = limit
        return self._client.top_bytes(number, 0)[1]

    def retrieve_many(self, numbers: Iterable[int], limit: int | None, deliver: Deliver) -> None:
        self._client.message_limit = limit
        self._client.retr_many(numbers, deliver)

    def delete_many(self, numbers: list[int]) -> list[bytes]:
        return self._client.dele_many(numbers)

    def list_many(self, numbers: list[int]) -> list[bytes]:
        return self._client.list_many(numbers)


class ClientAdapter:
    """A connected client, wrapped once; every POP3 command the library sends."""

    def __init__(self, client: Any) -> None:
        self.client = client
        fast = isinstance(client, FastReplies) and isinstance(
            getattr(client, "sock", None), socket.socket
        )
        self._reader = _BytesReader(client) if fast else _LineReader(client)
        self._pipelining: bool | None = None

    @property
    def socket(self) -> socket.socket | None:
        """The socket the client talks over, for a deadline to cut; None for a double."""
        sock = getattr(self.client, "sock", None)
        return sock if isinstance(sock, socket.socket) else None

    def watch(self, label: str) -> None:
        """Log the dialogue to the trace logger (only a real poplib client has the
        line methods the trace hooks)."""
        if isinstance(self.client, poplib.POP3):
            wire_log.watch_pop3(self.client, label)

    # -- logging in ----------------------------------------------------------------

    def capabilities(self) -> dict[str, list[str]]:
        """``CAPA`` as ``{NAME: [arguments]}``; empty if the server refuses it.

        A listing the client could not parse (stock poplib fails on an empty or
        non-ASCII line) is a :class:`POP3ProtocolError`.
        """
        try:
            reply = self.client.capa()
        except poplib.error_proto:
            return {}
        except (ValueError, IndexError):
            raise POP3ProtocolError("unusable CAPA reply from the server") from None
        if not isinstance(reply, dict):
            return {}
        listed = {str(name).upper(): [str(arg) for arg in args] for name, args in reply.items()}
        self._pipelining = "PIPELINING" in listed
        return listed

    def stls(self, context: ssl.SSLContext) -> None:
        """``STLS`` and the TLS handshake."""
        self.client.stls(context=context)

    def user(self, name: str) -> None:
        """``USER``."""
        self.client.user(name)

    def password(self, password: str) -> None:
        """``PASS``."""
        self.client.pass_(password)

    def authenticate(
        self,
        mechanism: Mechanism,
        secrets: Callable[[], Iterable[str | bytes | None]],
        *,
        initial_response: bool = True,
    ) -> None:
        """``AUTH`` with ``mechanism`` (see :func:`~src.handlers._pop3.sasl.authenticate`)."""
        authenticate(self.client, mechanism, secrets=secrets, initial_response=initial_response)

    def command(self, line: str) -> bytes:
        """One command with a single-line reply (``APOP``, ``UTF8``, ``LANG``)."""
        reply: bytes = self.client._shortcmd(line)
        return reply

    # -- the mailbox ---------------------------------------------------------------

    def stat(self) -> tuple[int, int]:
        """``STAT``: message count and total size."""
        reply = self.client.stat()
        if (
            not isinstance(reply, tuple)
            or len(reply) != 2
            or not all(isinstance(value, int) for value in reply)
        ):
            raise POP3ProtocolError("malformed STAT reply")
        return reply[0], reply[1]

    def scan(self) -> ScanListing:
        """``LIST``: the number and size of every message not marked for deletion."""
        return ScanListing.parse(self._reader.listing("LIST"))

    def size_of(self, number: int) -> int | None:
        """``LIST n``: the size of one message; None if the reply gives none."""
        reply = self.client.list(number)
        if not isinstance(reply, bytes | str):
            return None
        return parse_scan_line(strip_ok(reply))[1]

    def sizes_of(self, numbers: list[int]) -> list[int | None]:
        """Pipelined ``LIST n`` of ``numbers`` (only after :meth:`can_pipeline`): each
        message's size, in order, None where the server refused (no such message)."""
        sizes: list[int | None] = []
        for number, status in zip(numbers, self._reader.list_many(numbers), strict=True):
            if not status.startswith(b"+"):
                sizes.append(None)
                continue
            listed, size = parse_scan_line(strip_ok(status))
            if listed != number:
                raise POP3ProtocolError(f"LIST {number} was answered for message {listed}")
            sizes.append(size)
        return sizes

    def unique_ids(self) -> UIDListing:
        """``UIDL``: every message's unique ID (None where it is invalid)."""
        return UIDListing.parse(self._reader.listing("UIDL"))

    def retrieve(self, number: int, limit: int | None) -> bytes:
        """``RETR n``: the whole message, unstuffed; over ``limit`` bytes is refused."""
        return self._reader.message(number, limit)

    def can_pipeline(self) -> bool:
        """Whether several RETRs or DELEs may be sent at once: a fast client and PIPELINING in
        CAPA (the listing the login read, or asked now, at most once per connection)."""
        if not self._reader.pipelines:
            return False
        if self._pipelining is None:
            self._pipelining = "PIPELINING" in self.capabilities()
        return self._pipelining

    def retrieve_many(self, numbers: Iterable[int], limit: int | None, deliver: Deliver) -> None:
        """Pipelined ``RETR`` of ``numbers`` (only after :meth:`can_pipeline`)."""
        self._reader.retrieve_many(numbers, limit, deliver)

    def headers(self, number: int, limit: int | None) -> bytes:
        """``TOP n 0``: the header section of one message."""
        return self._reader.headers(number, limit)

    def delete(self, number: int) -> None:
        """``DELE n``."""
        self.client.dele(number)

    def delete_many(self, numbers: list[int]) -> list[bytes]:
        """Pipelined ``DELE`` of ``numbers`` (only after :meth:`can_pipeline`); the
        status line of each, in order."""
        return self._reader.delete_many(numbers)

    def reset(self) -> None:
        """``RSET``."""
        self.client.rset()

    def noop(self) -> None:
        """``NOOP``."""
        self.client.noop()

    def quit(self) -> None:
        """``QUIT``."""
        self.client.quit()

    def close(self) -> None:
        """Close the socket, ignoring every error."""
        with contextlib.suppress(Exception):
            self.client.close()


def check_size(number: int, size: int | None, limit: int | None) -> None:
    """Raise :class:`POP3MessageTooLargeError` if a known ``size`` is over ``limit``."""
    if limit is not None and size is not None and size > limit:
        raise POP3MessageTooLargeError(number, size, limit)


def _long_reply(reply: object, verb: str) -> tuple[object, list[bytes], object]:
    """Check the ``(status, lines, octets)`` shape poplib gives multi-line replies."""
    if (
        isinstance(reply, tuple | list)
        and len(reply) == 3
        and isinstance(reply[1], list)
        and all(isinstance(line, bytes) for line in reply[1])
    ):
        return reply[0], reply[1], reply[2]
    raise POP3ProtocolError(f"malformed {verb} reply")


def _join(lines: list[bytes]) -> bytes:
    return b"\r\n".join(lines) + (b"\r\n" if lines else b"")
