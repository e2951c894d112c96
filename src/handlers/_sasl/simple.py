"""The mechanisms without a protocol of their own: PLAIN, LOGIN, CRAM-MD5, EXTERNAL,
and the APOP digest of POP3 (not SASL, but the same kind of computation)."""

from __future__ import annotations

import hashlib
import hmac
import re
from typing import ClassVar

from .base import Hidden, Mechanism
from .errors import SASLPrepError, SASLProtocolError


def _utf8(value: str, field: str) -> bytes:
    try:
        return value.encode("utf-8")
    except UnicodeEncodeError:
        raise SASLPrepError(f"the {field} is not valid Unicode text", field) from None


class Plain(Mechanism):
    """PLAIN (RFC 4616): ``authzid NUL username NUL password`` in UTF-8, in one message.

    The server applies SASLprep, so the strings go as given; a NUL in any of them would
    move the field boundaries and is refused.
    """

    cleartext: ClassVar[bool] = True
    max_challenges: ClassVar[int] = 0

    def __init__(self, username: str, password: str, *, authzid: str | None = None) -> None:
        super().__init__("PLAIN")
        parts = {"authzid": authzid or "", "username": username, "password": password}
        for field, value in parts.items():
            if "\0" in value:
                raise SASLPrepError(f"the {field} must not contain NUL", field)
        if not username:
            raise SASLPrepError("the username must not be empty", "username")
        for field, value in parts.items():
            _utf8(value, field)
        self._message = Hidden("\0".join(parts.values()))
        self._password = Hidden(password)

    def _first(self) -> bytes:
        message = _utf8(self._message.reveal(), "password")
        self._remember(self._password.reveal(), message)
        return message

    def _step(self, challenge: bytes) -> bytes:  # pragma: no cover - max_challenges is 0
        raise SASLProtocolError("PLAIN: unexpected challenge")


class Login(Mechanism):
    """LOGIN (obsolete, but widely offered): the username, then the password, each in
    answer to a prompt. The prompts' text is ignored, as every client does; a third
    prompt is a protocol error, so a looping server cannot keep the client answering."""

    cleartext: ClassVar[bool] = True
    max_challenges: ClassVar[int] = 2

    def __init__(self, username: str, password: str) -> None:
        super().__init__("LOGIN")
        if not username:
            raise SASLPrepError("the username must not be empty", "username")
        _utf8(username, "username")
        _utf8(password, "password")
        self._username = username
        self._password = Hidden(password)

    def _first(self) -> None:
        return None

    def _step(self, challenge: bytes) -> bytes:
        if self._challenges == 1:
            return _utf8(self._username, "username")
        password = self._password.reveal()
        response = _utf8(password, "password")
        self._remember(password, response)
        return response


class CramMD5(Mechanism):
    """CRAM-MD5 (RFC 2195): ``username SP hex(HMAC-MD5(password, challenge))``.

    Weak by today's standards (MD5, and the server must store the password), but it
    keeps the password itself off the wire.
    """

    def __init__(self, username: str, password: str) -> None:
        super().__init__("CRAM-MD5")
        if not username:
            raise SASLPrepError("the username must not be empty", "username")
        _utf8(username, "username")
        _utf8(password, "password")
        self._username = username
        self._password = Hidden(password)

    def _first(self) -> None:
        return None

    def _step(self, challenge: bytes) -> bytes:
        if not challenge:
            raise SASLProtocolError("CRAM-MD5: the server's challenge is empty")
        password = self._password.reveal()
        digest = hmac.new(_utf8(password, "password"), challenge, hashlib.md5).hexdigest()
        response = _utf8(self._username, "username") + b" " + digest.encode("ascii")
        self._remember(password, response)
        return response


class External(Mechanism):
    """EXTERNAL (RFC 4422 appendix A): the identity comes from outside SASL, typically
    the TLS client certificate; the message is the authorization identity or empty."""

    max_challenges: ClassVar[int] = 0

    def __init__(self, *, authzid: str | None = None) -> None:
        super().__init__("EXTERNAL")
        self._authzid = authzid or ""

    def _first(self) -> bytes:
        return _utf8(self._authzid, "authzid")

    def _step(self, challenge: bytes) -> bytes:  # pragma: no cover - max_challenges is 0
        raise SASLProtocolError("EXTERNAL: unexpected challenge")


# RFC 1939 section 7: the timestamp is a msg-id, "<" local "@" domain ">"; printable
# ASCII without spaces or angle brackets, bounded so a hostile greeting stays cheap.
_APOP_TIMESTAMP = re.compile(r"<[!-;=?-~]{1,200}@[!-;=?-~]{1,200}>")


def apop_timestamp(greeting: str) -> str | None:
    """The APOP timestamp (``<...@...>``) in a POP3 greeting, or ``None`` if it has none,
    in which case the server does not support APOP."""
    match = _APOP_TIMESTAMP.search(greeting)
    return match.group() if match else None


def apop_digest(timestamp: str, password: str) -> str:
    """The APOP digest (RFC 1939): lowercase hex MD5 of the timestamp and the password.

    ``timestamp`` must be one found by :func:`apop_timestamp`; anything else raises
    :class:`SASLProtocolError`.
    """
    if not _APOP_TIMESTAMP.fullmatch(timestamp):
        raise SASLProtocolError("APOP: the server's greeting timestamp is malformed")
    data = timestamp.encode("ascii") + _utf8(password, "password")
    return hashlib.md5(data).hexdigest()
