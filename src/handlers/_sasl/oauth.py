"""Bearer-token mechanisms: OAUTHBEARER (RFC 7628) and Google's and Microsoft's XOAUTH2.

Both send the token readable, so they count as cleartext. When the server refuses, it
first sends an error challenge (JSON with ``status``, ``scope``, ...); the client must
answer it (``\\x01`` for OAUTHBEARER, empty for XOAUTH2) and the server then sends its
final refusal. The mechanism records the JSON in :attr:`Mechanism.failure`, so the
refusal built by :meth:`Mechanism.refusal` says why, without the token.
"""

from __future__ import annotations

import json
import re
from typing import ClassVar

from .base import Hidden, Mechanism
from .errors import SASLFailure, SASLPrepError, safe_field

# Control characters would break the \x01-separated framing; a space would end the
# "Bearer" value. RFC 6750's b64token alphabet is narrower, but providers differ.
_BAD_TOKEN = re.compile(r"[\x00-\x20\x7f]")
_BAD_FIELD = re.compile(r"[\x00-\x1f\x7f]")


def _check(value: str, field: str, pattern: re.Pattern[str]) -> None:
    if pattern.search(value):
        raise SASLPrepError(f"the {field} contains characters the mechanism cannot frame", field)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise SASLPrepError(f"the {field} is not valid Unicode text", field) from None


def parse_error_challenge(mechanism: str, challenge: bytes) -> SASLFailure:
    """The server's JSON error challenge as a :class:`SASLFailure`.

    Anything unreadable gives a failure without details: the login has failed either
    way, and the server's final reply says so.
    """
    try:
        data = json.loads(challenge.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return SASLFailure(mechanism)
    if not isinstance(data, dict):
        return SASLFailure(mechanism)

    def field(name: str) -> str | None:
        value = data.get(name)
        return safe_field(value) if isinstance(value, str | int) else None

    return SASLFailure(
        mechanism,
        status=field("status"),
        scope=field("scope"),
        schemes=field("schemes"),
        openid_configuration=field("openid-configuration"),
    )


def _saslname(value: str) -> str:
    # RFC 5801 saslname: "," and "=" would end or corrupt the gs2 header.
    return value.replace("=", "=3D").replace(",", "=2C")


class OAuthBearer(Mechanism):
    """OAUTHBEARER (RFC 7628):
    ``n,a=<user>,^Ahost=<host>^Aport=<port>^Aauth=Bearer <token>^A^A``.

    ``host`` and ``port`` are the server the client connected to (optional, but some
    providers check them); ``username`` goes in the gs2 header when given.
    """

    cleartext: ClassVar[bool] = True

    def __init__(
        self,
        username: str | None,
        token: str,
        *,
        host: str | None = None,
        port: int | None = None,
    ) -> None:
        super().__init__("OAUTHBEARER")
        if not token:
            raise SASLPrepError("the token must not be empty", "token")
        _check(token, "token", _BAD_TOKEN)
        _check(username or "", "username", _BAD_FIELD)
        _check(host or "", "host", _BAD_FIELD)
        gs2 = f"n,a={_saslname(username)}," if username else "n,,"
        pairs = ""
        if host:
            pairs += f"host={host}\x01"
        if port is not None:
            pairs += f"port={int(port)}\x01"
        self._message = Hidden(f"{gs2}\x01{pairs}auth=Bearer {token}\x01\x01")
        self._token = Hidden(token)

    def _first(self) -> bytes:
        message = self._message.reveal().encode("utf-8")
        self._remember(self._token.reveal(), message)
        return message

    def _step(self, challenge: bytes) -> bytes:
        self.failure = parse_error_challenge(self.name, challenge)
        return b"\x01"


class XOAuth2(Mechanism):
    """XOAUTH2 (Google, Microsoft): ``user=<user>^Aauth=Bearer <token>^A^A``."""

    cleartext: ClassVar[bool] = True

    def __init__(self, username: str, token: str) -> None:
        super().__init__("XOAUTH2")
        if not username:
            raise SASLPrepError("the username must not be empty", "username")
        if not token:
            raise SASLPrepError("the token must not be empty", "token")
        _check(token, "token", _BAD_TOKEN)
        _check(username, "username", _BAD_FIELD)
        self._message = Hidden(f"user={username}\x01auth=Bearer {token}\x01\x01")
        self._token = Hidden(token)

    def _first(self) -> bytes:
        message = self._message.reveal().encode("utf-8")
        self._remember(self._token.reveal(), message)
        return message

    def _step(self, challenge: bytes) -> bytes:
        self.failure = parse_error_challenge(self.name, challenge)
        return b""
