"""Protocol tracing: the SMTP and POP3 dialogue as log records, with credentials masked.

smtplib and poplib can show their dialogue (``set_debuglevel``), but they ``print`` it,
bypassing logging, and they show AUTH payloads and POP3 passwords as sent. This
library never switches that on. A handler created with ``trace=True`` instead logs
each command and reply line to the ``src.handlers.trace`` logger at DEBUG, after a
:class:`Redactor` has masked every credential:

* SMTP ``AUTH <mechanism> <initial response>`` keeps only the mechanism, and every
  client line that answers a ``334`` challenge is masked (PLAIN, both LOGIN lines,
  CRAM-MD5, ...);
* POP3 ``PASS`` and ``APOP`` lose their secret argument, ``AUTH`` its initial response,
  and every client line that answers a ``+`` continuation is masked;
* a server reply inside an authentication exchange has any masked payload, and the
  pieces it decodes to, masked as well, in case the server echoes them.

Message bodies are never logged, only their size. Error texts built from server
replies are masked with :func:`~.masking.mask_secrets`, the same function.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable
from contextvars import ContextVar, Token
from typing import Any, Literal

from .logs import get_logger
from .masking import MASK, mask_secrets

log = get_logger("trace")

# Decoded pieces shorter than this are not masked in replies: masking one or two
# letters would garble the reply and hide nothing worth hiding.
_MIN_PIECE = 3
_BASE64_TOKEN = re.compile(r"[A-Za-z0-9+/]{4,}={0,2}")
_PIECE_SEPARATORS = re.compile("[\x00\x01]")
_LARGE_SEND = 4096

Protocol = Literal["smtp", "pop3"]

_tracing: ContextVar[bool] = ContextVar("mailhandlers_wire_trace", default=False)


class tracing:
    """Within the block, SMTP connections used by this thread (or task) log their lines.

    A class rather than a generator: every send enters it.
    """

    __slots__ = ("_enabled", "_token")

    def __init__(self, enabled: bool) -> None:
        self._enabled = enabled
        self._token: Token[bool] | None = None

    def __enter__(self) -> None:
        self._token = _tracing.set(self._enabled)

    def __exit__(self, *exc_info: object) -> None:
        if self._token is not None:
            _tracing.reset(self._token)
            self._token = None


def tracing_enabled() -> bool:
    """Whether the current context asked for SMTP tracing (see :func:`tracing`)."""
    return _tracing.get()


def _decoded_pieces(payload: str) -> list[str]:
    """``payload`` and, if it is base64, the NUL/SOH-separated pieces it decodes to."""
    pieces = [payload]
    try:
        decoded = base64.b64decode(payload, validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        return pieces
    pieces.extend(p for p in _PIECE_SEPARATORS.split(decoded) if len(p) >= _MIN_PIECE)
    return pieces


class Redactor:
    """Follows one connection's dialogue and masks what must not be logged.

    Feed it every line in order, whether or not it is logged. Once an authentication
    command is seen, every client line is masked until a server reply other than a
    challenge ends the exchange, so a reply it never sees can only hide more.
    """

    def __init__(self, protocol: Protocol) -> None:
        self.protocol = protocol
        self._in_exchange = False  # an AUTH/PASS/APOP exchange is under way
        self._secrets: list[str] = []
        self._lasting: tuple[str, ...] = ()

    def client_line(self, line: str) -> str:
        """The loggable form of one command line the client sends."""
        if self._in_exchange:
            self._remember(line.strip())
            return MASK
        verb, _, rest = line.partition(" ")
        upper = verb.upper()
        if upper == "AUTH":
            self._in_exchange = True
            mechanism, _, initial = rest.partition(" ")
            if initial:
                self._remember(initial.strip())
                return f"{verb} {mechanism} {MASK}"
            return line
        if self.protocol == "pop3" and upper == "PASS":
            self._in_exchange = True
            self._remember(rest)
            return f"{verb} {MASK}"
        if self.protocol == "pop3" and upper == "APOP":
            self._in_exchange = True
            name, _, digest = rest.partition(" ")
            self._remember(digest)
            return f"{verb} {name} {MASK}"
        return line

    def mask_always(self, secrets: tuple[str, ...]) -> None:
        """Mask every form of ``secrets`` in every later reply, not just during a login
        (a server may echo a password in any reply of the session)."""
        self._lasting = secrets

    def server_line(self, line: str, *, continuation: bool) -> str:
        """The loggable form of one reply line; ``continuation`` marks a SASL challenge
        (SMTP ``334``, POP3 ``+``)."""
        if self._secrets or self._lasting:
            line = mask_secrets(line, [*self._secrets, *self._lasting])
        if self._in_exchange and not continuation:
            self._in_exchange = False
            self._secrets.clear()
        return line

    def _remember(self, payload: str) -> None:
        if payload:
            self._secrets.extend(_decoded_pieces(payload))
            self._secrets.sort(key=len, reverse=True)  # longest first: no partial leftovers


def _lines(data: str | bytes) -> list[str]:
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    return [line for line in text.split("\r\n") if line]


class WireTracer:
    """Logs one connection's lines through a :class:`Redactor` while ``enabled()``."""

    def __init__(self, protocol: Protocol, label: str, enabled: Callable[[], bool]) -> None:
        self.redactor = Redactor(protocol)
        self.label = label
        self._enabled = enabled
        self._prefix = protocol.upper()

    def sent(self, data: str | bytes) -> None:
        """Record command line(s) the client sends."""
        if len(data) > _LARGE_SEND:
            self.sent_data(len(data))
            return
        for line in _lines(data):
            shown = self.redactor.client_line(line)
            if self._enabled():
                log.debug("%s %s >> %s", self._prefix, self.label, shown)

    def sent_data(self, size: int) -> None:
        """Record message data, by size only."""
        if self._enabled():
            log.debug("%s %s >> [%d bytes of message data]", self._prefix, self.label, size)

    def received(self, line: str, *, continuation: bool = False) -> None:
        """Record one reply line from the server."""
        shown = self.redactor.server_line(line, continuation=continuation)
        if self._enabled():
            log.debug("%s %s << %s", self._prefix, self.label, shown)


def watch_pop3(client: Any, label: str, enabled: Callable[[], bool] = lambda: True) -> None:
    """Attach a tracer to a connected poplib-style client (the greeting is logged now).

    Only status lines are logged: multi-line data (messages, listings) is read
    without passing through the hooked methods.
    """
    tracer = WireTracer("pop3", label, enabled)
    welcome = getattr(client, "welcome", b"")
    if welcome:
        tracer.received(_text(welcome))
    putcmd, send, getline = client._putcmd, client._send, client._getline

    def traced_putcmd(line: str) -> None:
        tracer.sent(line)
        putcmd(line)

    def traced_send(command: str) -> None:
        tracer.sent(command)
        send(command)

    def traced_getline() -> tuple[bytes, int]:
        line, octets = getline()
        text = _text(line)
        tracer.received(text, continuation=text == "+" or text.startswith("+ "))
        return line, octets

    client._putcmd = traced_putcmd
    client._send = traced_send
    client._getline = traced_getline


def _text(line: bytes | str) -> str:
    return line.decode("utf-8", "replace") if isinstance(line, bytes) else line
