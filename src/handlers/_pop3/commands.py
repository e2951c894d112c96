"""POP3 commands in terms of parsed values, on top of a ``call`` supplied by the handler.

``call(method, *args)`` runs one poplib client method and raises the library's
errors (the handler's version also drops a broken connection). The functions here
send the commands the handler's operations need and check the shape of what comes
back, so the same code serves poplib clients, this library's faster subclasses of
them, and test doubles.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..errors import (
    POP3MessageTooLargeError,
    POP3ProtocolError,
    POP3ResponseError,
    POP3UnsupportedError,
)
from .client import is_fast_client
from .connection import capabilities_from
from .listing import ScanListing, UIDListing
from .wire import parse_scan_line, strip_ok

Call = Callable[..., Any]


def long_reply(reply: object, verb: str) -> tuple[object, list[bytes], object]:
    """Check the ``(status, lines, octets)`` shape poplib gives multi-line replies."""
    if (
        isinstance(reply, tuple | list)
        and len(reply) == 3
        and isinstance(reply[1], list)
        and all(isinstance(line, bytes) for line in reply[1])
    ):
        return reply[0], reply[1], reply[2]
    raise POP3ProtocolError(f"malformed {verb} reply")


def stat(call: Call) -> tuple[int, int]:
    """``STAT``: message count and total size."""
    reply = call("stat")
    if (
        not isinstance(reply, tuple)
        or len(reply) != 2
        or not all(isinstance(value, int) for value in reply)
    ):
        raise POP3ProtocolError("malformed STAT reply")
    return reply[0], reply[1]


def _listing_data(call: Call, client: Any, verb: str) -> bytes:
    """The data of a ``LIST`` or ``UIDL`` reply as one ``bytes``, lines ending in CRLF."""
    if is_fast_client(client):
        return bytes(call(f"{verb.lower()}_bytes")[1])
    return _join(long_reply(call(verb.lower()), verb)[1])


def scan(call: Call, client: Any) -> ScanListing:
    """``LIST``: the number and size of every message not marked for deletion."""
    return ScanListing.parse(_listing_data(call, client, "LIST"))


def size_of(call: Call, number: int) -> int | None:
    """``LIST n``: the size of one message; None if the reply gives none."""
    reply = call("list", number)
    if not isinstance(reply, bytes | str):
        return None
    return parse_scan_line(strip_ok(reply))[1]


def unique_ids(call: Call, client: Any) -> UIDListing:
    """``UIDL``: each message's unique ID; :class:`POP3UnsupportedError` if refused."""
    try:
        data = _listing_data(call, client, "UIDL")
    except POP3ResponseError as error:
        raise POP3UnsupportedError(
            f"server refused UIDL ({error.text}); unique IDs are not available",
            error.enhanced_code,
        ) from None
    return UIDListing.parse(data)


def capabilities(call: Call) -> dict[str, list[str]]:
    """``CAPA``; empty when the server does not support it."""
    try:
        return capabilities_from(call("capa"))
    except POP3ResponseError:
        return {}


def check_size(number: int, size: int | None, limit: int | None) -> None:
    """Raise :class:`POP3MessageTooLargeError` if a known ``size`` is over ``limit``."""
    if limit is not None and size is not None and size > limit:
        raise POP3MessageTooLargeError(number, size, limit)


def retrieve(call: Call, client: Any, number: int, limit: int | None) -> bytes:
    """``RETR n``: the whole message, unstuffed, lines ending in CRLF."""
    if is_fast_client(client):
        client.message_limit = limit
        return bytes(call("retr_bytes", number)[1])
    _, lines, octets = long_reply(call("retr", number), "RETR")
    raw = _join(lines)
    check_size(number, octets if isinstance(octets, int) else len(raw), limit)
    return raw


def can_pipeline(call: Call, client: Any) -> bool:
    """Whether several RETRs may be sent at once: a fast client and PIPELINING in CAPA.

    The answer is kept on the client, so CAPA is asked at most once per connection.
    """
    if not is_fast_client(client):
        return False
    known = getattr(client, "pipelining", None)
    if known is None:
        known = client.pipelining = "PIPELINING" in capabilities(call)
    return bool(known)


def retrieve_many(
    call: Call,
    client: Any,
    numbers: list[int],
    limit: int | None,
    deliver: Callable[[int, bytes | None, bytes], object],
) -> None:
    """Pipelined ``RETR`` of ``numbers`` (see :func:`can_pipeline`).

    Calls ``deliver(number, raw, status)`` in order; ``raw`` is None when the server
    refused that message (``status`` holds its ``-ERR`` line).
    """
    client.message_limit = limit

    def each(number: int, status: bytes, message: bytes | None) -> None:
        deliver(number, message, status)

    call("retr_many", numbers, each)


def headers(call: Call, client: Any, number: int, limit: int | None) -> bytes:
    """``TOP n 0``: the header section of one message.

    A refusal is re-raised as :class:`POP3UnsupportedError` when the server's
    ``CAPA`` list shows it has no ``TOP`` at all.
    """
    try:
        if is_fast_client(client):
            client.message_limit = limit
            return bytes(call("top_bytes", number, 0)[1])
        return _join(long_reply(call("top", number, 0), "TOP")[1])
    except POP3ResponseError as error:
        listed = capabilities(call)
        if listed and "TOP" not in listed:
            raise POP3UnsupportedError(
                f"server refused TOP ({error.text}) and does not list it in CAPA",
                error.enhanced_code,
            ) from None
        raise


def _join(lines: list[bytes]) -> bytes:
    return b"\r\n".join(lines) + (b"\r\n" if lines else b"")
