"""Bytes-level POP3 helpers: reading dot-terminated replies and interpreting replies.

Nothing here opens a socket. The reader works on any buffered binary stream that has
``peek`` (the file object of a socket, or ``io.BufferedReader`` in tests), so it can be
exercised without a server.

A multi-line reply (RFC 1939, section 3) is a series of lines ended by a line holding
a single ``.``; a data line that starts with ``.`` is sent with one more ``.`` in
front. :func:`read_dot_terminated` reads such a reply in large chunks rather than line
by line, stops exactly after the terminating line (so nothing that follows it is
consumed) and undoes the dot-stuffing in one pass.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from .._net.masking import mask_secrets
from ..errors import (
    POP3AuthenticationError,
    POP3ConnectionError,
    POP3MailboxBusyError,
    POP3ProtocolError,
    POP3ResponseError,
)

#: Upper bound for a status line or a single listing line. RFC 1939 allows 512
#: octets; real servers stay far below this.
MAX_STATUS_LINE = 64 * 1024

# The end of a multi-line reply: a line holding only ".", after either CRLF or a
# bare LF (some servers send bare LF; a stuffed data line can never match).
_TERMINATOR = re.compile(rb"\n\.\r?\n")
_TERMINATOR_MAX_LEN = 4
_READ_CHUNK = 1 << 16

_RESPONSE_CODE = re.compile(r"^\[([^\]\s]+)\]")
_BUSY_CODES = frozenset({"IN-USE", "LOGIN-DELAY"})
_SYSTEM_CODE_PREFIX = "SYS/"


class PeekableStream(Protocol):
    """The part of ``io.BufferedReader`` the reader needs."""

    def peek(self, size: int = ..., /) -> bytes: ...

    def read(self, size: int | None = ..., /) -> bytes: ...


class ResponseTooLargeError(Exception):
    """A multi-line reply grew past the caller's limit; the stream is now out of step.

    ``number`` is the message whose reply it was, when a pipelined read knows it.
    """

    def __init__(self, limit: int, number: int | None = None) -> None:
        super().__init__(f"reply exceeds the limit of {limit} bytes")
        self.limit = limit
        self.number = number


def read_dot_terminated(stream: PeekableStream, max_bytes: int | None = None) -> bytes:
    """Read the data part of a multi-line reply and return it unstuffed.

    The returned bytes keep the line endings the server sent and end with the line
    ending of the last data line (empty data gives ``b""``). The terminating ``.``
    line is consumed; nothing after it is.

    Raises :class:`ResponseTooLargeError` once more than ``max_bytes`` have arrived
    without a terminator, and :class:`POP3ConnectionError` at end of stream.
    """
    # A virtual line ending in front lets a terminator or a stuffed dot on the very
    # first line be found by the same search as every other one.
    buffer = bytearray(b"\r\n")
    limit = None if max_bytes is None else max_bytes + len(buffer) + _TERMINATOR_MAX_LEN
    while True:
        chunk = stream.peek(_READ_CHUNK)
        if not chunk:
            raise POP3ConnectionError("server closed the connection in the middle of a reply")
        search_from = max(len(buffer) - _TERMINATOR_MAX_LEN + 1, 0)
        buffer += chunk
        match = _TERMINATOR.search(buffer, search_from)
        if match is not None:
            stream.read(len(chunk) - (len(buffer) - match.end()))
            return _finish(buffer, match.start() + 1)
        stream.read(len(chunk))
        if limit is not None and len(buffer) > limit:
            raise ResponseTooLargeError(max_bytes if max_bytes is not None else 0)


def _finish(buffer: bytearray, end: int) -> bytes:
    """The unstuffed data in ``buffer[2:end]`` (after the virtual line ending).

    Copied out once and the buffer freed before unstuffing, so a large message is held
    at most twice (never four times) while it is being finished.
    """
    with memoryview(buffer) as view:
        data = bytes(view[2:end])
    buffer.clear()
    if data.startswith(b".."):  # the first line was stuffed
        data = data[1:]
    return unstuff(data)


def unstuff(data: bytes) -> bytes:
    """Remove the extra leading dot of every line in ``data`` that follows a line feed.

    Like poplib, only a doubled dot is reduced, so a server that forgets to stuff a
    line that starts with a single dot does not lose that dot.
    """
    return data.replace(b"\n..", b"\n.")


def split_lines(data: bytes) -> list[bytes]:
    """Split reply data into lines without their endings (CRLF, or bare LF)."""
    if not data:
        return []
    if data.count(b"\n") == data.count(b"\r\n"):
        lines = data.split(b"\r\n")
    else:
        lines = [line[:-1] if line.endswith(b"\r") else line for line in data.split(b"\n")]
    if lines and lines[-1] == b"":
        lines.pop()
    return lines


@dataclass(frozen=True)
class ErrorReply:
    """A ``-ERR`` reply taken apart: its text and its RFC 2449 response code."""

    text: str
    code: str | None


def parse_error_reply(reply: bytes | str) -> ErrorReply | None:
    """Return the parts of a ``-ERR`` reply, or ``None`` if ``reply`` is not one."""
    text = reply.decode("utf-8", "replace") if isinstance(reply, bytes) else reply
    text = text.strip()
    if not text.upper().startswith("-ERR"):
        return None
    rest = text[4:].strip()
    match = _RESPONSE_CODE.match(rest)
    return ErrorReply(rest, match.group(1).upper() if match else None)


def error_for_reply(
    reply: bytes | str, *, during_login: bool = False, secrets: Iterable[str | bytes | None] = ()
) -> POP3ResponseError | POP3ProtocolError:
    """Turn a reply poplib refused into the library's exception.

    ``[IN-USE]`` and ``[LOGIN-DELAY]`` become :class:`POP3MailboxBusyError`. During a
    login, any other ``-ERR`` means the credentials were refused, except the RFC 3206
    ``[SYS/...]`` codes, which blame the server rather than the credentials. Anything
    that is not ``-ERR`` at all is a protocol error. Every form of each of ``secrets``
    (as is, or in base64, as a server echoing a SASL response sends it) is masked out
    of the text.
    """
    secrets = tuple(secrets)
    parsed = parse_error_reply(reply)
    if parsed is None:
        text = reply.decode("utf-8", "replace") if isinstance(reply, bytes) else reply
        shown = mask_secrets(text[:1000], secrets)[:200]
        return POP3ProtocolError(f"unexpected reply from server: {shown!r}")
    text = mask_secrets(parsed.text, secrets)
    if parsed.code in _BUSY_CODES:
        return POP3MailboxBusyError(text, parsed.code)
    if during_login and not (parsed.code or "").startswith(_SYSTEM_CODE_PREFIX):
        return POP3AuthenticationError(text, parsed.code)
    return POP3ResponseError(text, parsed.code)


def parse_scan_line(line: bytes | str) -> tuple[int, int]:
    """Parse ``"<number> <size>"`` (a LIST line or the text of a ``+OK`` LIST reply)."""
    parts = _words(line)
    try:
        number, size = int(parts[0]), int(parts[1])
    except (IndexError, ValueError):
        raise POP3ProtocolError(f"malformed scan listing: {_preview(line)!r}") from None
    if number < 1 or size < 0:
        raise POP3ProtocolError(f"malformed scan listing: {_preview(line)!r}")
    return number, size


def strip_ok(reply: bytes | str) -> str:
    """The text after ``+OK`` in a single-line reply."""
    text = reply.decode("utf-8", "replace") if isinstance(reply, bytes) else reply
    text = text.strip()
    return text[3:].strip() if text.upper().startswith("+OK") else text


def _words(line: bytes | str) -> list[str]:
    text = line.decode("ascii", "replace") if isinstance(line, bytes) else line
    return text.split()


def _preview(line: bytes | str) -> str:
    text = line.decode("ascii", "replace") if isinstance(line, bytes) else line
    return text[:80]
