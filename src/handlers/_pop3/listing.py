"""The ``LIST`` and ``UIDL`` listings, parsed straight from the reply's bytes.

A listing can have millions of lines, so it is never split into line objects as a
whole: the message numbers, sizes and the places of the unique IDs go into typed
arrays (eight bytes a number), and unique IDs stay inside the reply data until they
are asked for. The usual ``UIDL`` reply (every line a number and a valid ID) is
checked by one pattern and then read, numbers and IDs alike, by splitting a few
thousand lines at a time into words, without a step per line in Python; any other
is walked line by line. A listing costs about twice its own size while it is parsed.

Both listings must give each message number once, in ascending order (RFC 1939
lists messages in order); anything else is a :class:`POP3ProtocolError`, since a
listing that repeats a number cannot be trusted to say which message is which.

A ``UIDL`` line is the message number, one space and the unique ID: 1 to 70
characters from ``!`` to ``~`` (RFC 1939, section 7). A line whose number is fine
but whose ID is not (spaces, control or non-ASCII characters, too long) does not
fail the listing: that message's ID is reported as ``None``, so a caller can leave
it alone rather than mistake it for another message.
"""

from __future__ import annotations

import bisect
import re
from array import array
from collections.abc import Iterator
from itertools import islice
from operator import lt
from typing import Final

from ..errors import POP3ProtocolError

#: The longest unique ID RFC 1939 allows.
MAX_UID_LENGTH: Final = 70

# A number has at most 18 digits, so it always fits a signed 64-bit array slot.
_SCAN_LINE = re.compile(rb"[ \t]*([0-9]{1,18})[ \t]+([0-9]{1,18})(?:[ \t\r][^\n]*)?(?:\n|\Z)")
# The second branch takes a line whose number is followed by an ID that is not valid.
# A valid unique ID (RFC 1939, section 7).
_UID_TEXT = rb"[\x21-\x7e]{1,%d}" % MAX_UID_LENGTH
_UID_LINE = re.compile(rb"([0-9]{1,18})(?: (" + _UID_TEXT + rb")\r?(?:\n|\Z)|[ \t][^\n]*(?:\n|\Z))")


# The usual UIDL reply: every line ``<number> <valid ID>``, CRLF or LF, nothing else.
_PLAIN_UID_LINES = re.compile(rb"(?:[0-9]{1,18} " + _UID_TEXT + rb"\r?\n)*")
# How much of a plain reply is split into words at a time.
_WORDS_CHUNK: Final = 1 << 16


def _word_chunks(data: bytes) -> Iterator[list[str]]:
    """The words of ASCII ``data``, a few thousand lines at a time (cut at line ends)."""
    position, size = 0, len(data)
    while position < size:
        end = data.find(b"\n", position + _WORDS_CHUNK) + 1 or size
        yield data[position:end].decode("ascii").split()
        position = end


def _preview(data: bytes, at: int) -> str:
    end = data.find(b"\n", at)
    line = data[at : end if end != -1 else len(data)][:80]
    return line.decode("ascii", "replace").rstrip("\r")


def _next_number(number: int, previous: int, verb: str) -> int:
    if number <= previous:
        raise POP3ProtocolError(
            f"malformed {verb} listing: message {number} after {previous}; "
            "numbers must be ascending and listed once"
            if previous
            else f"malformed {verb} listing: message number {number}"
        )
    return number


class ScanListing:
    """A parsed ``LIST`` reply: message numbers (ascending) and their sizes."""

    __slots__ = ("numbers", "sizes")

    def __init__(self, numbers: array[int], sizes: array[int]) -> None:
        self.numbers = numbers
        self.sizes = sizes

    @classmethod
    def parse(cls, data: bytes) -> ScanListing:
        """Parse the data of a ``LIST`` reply (lines of ``<number> <size>``)."""
        numbers: array[int] = array("q")
        sizes: array[int] = array("q")
        position, end, previous = 0, len(data), 0
        match = _SCAN_LINE.match
        while position < end:
            found = match(data, position)
            if found is None:
                raise POP3ProtocolError(f"malformed scan listing: {_preview(data, position)!r}")
            previous = _next_number(int(found[1]), previous, "LIST")
            numbers.append(previous)
            sizes.append(int(found[2]))
            position = found.end()
        return cls(numbers, sizes)

    def __len__(self) -> int:
        return len(self.numbers)

    def __contains__(self, number: object) -> bool:
        return isinstance(number, int) and self._index(number) is not None

    def size_of(self, number: int) -> int:
        """The size of message ``number``; KeyError if it is not listed."""
        index = self._index(number)
        if index is None:
            raise KeyError(number)
        return self.sizes[index]

    @property
    def total_size(self) -> int:
        """The sum of every listed size."""
        return sum(self.sizes)

    def _index(self, number: int) -> int | None:
        index = bisect.bisect_left(self.numbers, number)
        return index if index < len(self.numbers) and self.numbers[index] == number else None


class UIDListing:
    """A parsed ``UIDL`` reply: each message number with its unique ID, or ``None``
    where the server sent an ID that RFC 1939 does not allow.

    Iterating gives ``(number, uid)`` pairs in ascending order of number.
    """

    __slots__ = ("_data", "_lengths", "_starts", "numbers")

    def __init__(
        self,
        data: bytes,
        numbers: array[int],
        starts: array[int] | None,
        lengths: array[int] | None,
    ) -> None:
        self._data = data
        self.numbers = numbers
        # None when every line of ``data`` is a number and a valid ID: the IDs are
        # then read back by splitting the lines into words.
        self._starts = starts
        self._lengths = lengths

    @classmethod
    def parse(cls, data: bytes) -> UIDListing:
        """Parse the data of a ``UIDL`` reply (lines of ``<number> <unique-id>``)."""
        if _PLAIN_UID_LINES.fullmatch(data) is not None:
            # The usual reply, read without a step per line in Python.
            plain: array[int] = array("q")
            for words in _word_chunks(data):
                plain.extend(map(int, words[0::2]))
            if not plain or (plain[0] > 0 and all(map(lt, plain, islice(plain, 1, None)))):
                return cls(data, plain, None, None)
        numbers: array[int] = array("q")
        starts: array[int] = array("q")
        lengths: array[int] = array("B")
        position, previous = 0, 0
        for found in _UID_LINE.finditer(data):
            if found.start() != position:
                break
            previous = _next_number(int(found[1]), previous, "UIDL")
            numbers.append(previous)
            start, end = found.span(2)
            starts.append(start)  # -1 when the ID is not a valid one
            lengths.append(end - start)
            position = found.end()
        if position != len(data):
            raise POP3ProtocolError(f"malformed unique-id listing: {_preview(data, position)!r}")
        return cls(data, numbers, starts, lengths)

    def __len__(self) -> int:
        return len(self.numbers)

    def __iter__(self) -> Iterator[tuple[int, str | None]]:
        data = self._data
        if self._starts is None or self._lengths is None:
            numbers, index = self.numbers, 0
            for words in _word_chunks(data):
                uids = words[1::2]
                following = index + len(uids)
                yield from zip(numbers[index:following], uids, strict=True)
                index = following
            return
        for number, start, length in zip(self.numbers, self._starts, self._lengths, strict=True):
            yield number, (data[start : start + length].decode("ascii") if start >= 0 else None)

    @property
    def invalid(self) -> tuple[int, ...]:
        """Numbers of the messages whose unique ID is not a valid RFC 1939 one."""
        if self._starts is None:
            return ()
        return tuple(
            number for number, start in zip(self.numbers, self._starts, strict=True) if start < 0
        )


def parse_capabilities(data: bytes) -> dict[str, list[str]]:
    """Parse the data of a ``CAPA`` reply into ``{NAME: [arguments]}``.

    ``CAPA`` only advises, so a line that cannot be a capability (empty, or not
    ASCII) is skipped rather than failing the command that asked.
    """
    capabilities: dict[str, list[str]] = {}
    for raw in data.split(b"\n"):
        try:
            words = raw.decode("ascii").split()
        except UnicodeDecodeError:
            continue
        if words:
            capabilities[words[0].upper()] = words[1:]
    return capabilities
