"""The server side of SASL XOAUTH2 and OAUTHBEARER, shared by the SMTP and POP3 test servers.

:class:`XOAUTH2Verifier` checks a client response (``user=...^Aauth=Bearer ...^A^A``)
against a table of valid tokens and decides what the server says: success, or the
JSON of an error challenge like the one Gmail sends. A test changes the table while
the server runs::

    server = SMTPTestServer(oauth2_tokens={"alice@example.com": "token-1"})
    ...
    server.oauth2.expire("token-1")                      # refused from now on
    server.oauth2.tokens["alice@example.com"] = "token-2"  # what a refresh returns

Each exchange is recorded in :attr:`XOAUTH2Verifier.attempts` (never the token).
"""

from __future__ import annotations

import hmac
import json
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["XOAUTH2Attempt", "XOAUTH2Verdict", "XOAUTH2Verifier"]

_RESPONSE = re.compile(rb"\Auser=([^\x01]+)\x01auth=Bearer ([^\x01]+)\x01\x01\Z")
# OAUTHBEARER (RFC 7628): gs2 header with the user, then key=value pairs.
_BEARER = re.compile(rb"\An,a=([^,]+),\x01(?:[a-z]+=[^\x01]*\x01)*?auth=Bearer ([^\x01]+)\x01")


@dataclass(frozen=True)
class XOAUTH2Attempt:
    """One XOAUTH2 exchange as the server saw it.

    ``username`` is ``None`` when the response could not be parsed; ``one_step`` is
    True when the response came with the AUTH command; ``status`` is the status of
    the error challenge sent (``"401"``, ``"400"``), ``None`` on success.
    """

    username: str | None
    one_step: bool
    accepted: bool
    status: str | None = None


@dataclass(frozen=True)
class XOAUTH2Verdict:
    """What to answer. ``username`` is the user the client named (``None`` if the
    response was unreadable); ``error`` is the JSON of the error challenge to send,
    ``None`` when the login succeeded."""

    username: str | None
    error: bytes | None

    @property
    def accepted(self) -> bool:
        """True when the token was valid."""
        return self.error is None


class XOAUTH2Verifier:
    """Valid tokens, expired tokens and the record of attempts; thread-safe.

    ``tokens`` maps each user name to the one token currently valid for it. A token
    in ``expired`` is refused even when ``tokens`` names it. Refusals carry status
    ``"401"``; a response that is not XOAUTH2 at all gets ``"400"``. ``scope`` is
    only text for the error challenge.
    """

    def __init__(self, tokens: Mapping[str, str], *, scope: str = "https://mail.google.com/"):
        self.tokens: dict[str, str] = dict(tokens)
        self.expired: set[str] = set()
        self.scope = scope
        self.attempts: list[XOAUTH2Attempt] = []
        self._lock = threading.Lock()

    def expire(self, token: str) -> None:
        """Refuse ``token`` from now on, as a server does once a token's lifetime ends."""
        with self._lock:
            self.expired.add(token)

    def check(
        self, response: bytes, *, one_step: bool, mechanism: str = "XOAUTH2"
    ) -> XOAUTH2Verdict:
        """Judge one decoded client response of ``mechanism`` (``"XOAUTH2"`` or
        ``"OAUTHBEARER"``, whose response names the user in its gs2 header) and record
        the attempt."""
        match = (_BEARER if mechanism == "OAUTHBEARER" else _RESPONSE).match(response)
        if match is None:
            return self._refuse(None, one_step, "400")
        user = match.group(1).decode("utf-8", "replace")
        token = match.group(2).decode("utf-8", "replace")
        with self._lock:
            valid = self.tokens.get(user)
            accepted = (
                valid is not None
                and token not in self.expired
                and hmac.compare_digest(valid.encode("utf-8"), token.encode("utf-8"))
            )
            if accepted:
                self.attempts.append(XOAUTH2Attempt(user, one_step, True))
        if accepted:
            return XOAUTH2Verdict(user, None)
        return self._refuse(user, one_step, "401")

    def _refuse(self, user: str | None, one_step: bool, status: str) -> XOAUTH2Verdict:
        with self._lock:
            self.attempts.append(XOAUTH2Attempt(user, one_step, False, status))
        body = {"status": status, "schemes": "Bearer", "scope": self.scope}
        return XOAUTH2Verdict(user, json.dumps(body, separators=(",", ":")).encode("ascii"))

    def __repr__(self) -> str:
        with self._lock:
            users, attempts = len(self.tokens), len(self.attempts)
        return f"<XOAUTH2Verifier users={users} attempts={attempts}>"
