"""The typed errors of the SASL layer and what a server said when it refused a login.

Every class derives from the library's tree in :mod:`src.handlers.errors`, so a protocol
layer can let them through unchanged or wrap them. No message built here contains a
password, token or SASL payload: texts are fixed, or made of server fields reduced to a
safe alphabet and length.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import (
    MailAuthenticationError,
    MailHandlerError,
    MailProtocolError,
    MailSecurityError,
    MailValidationError,
)

_FIELD_LIMIT = 200
_UNSAFE = re.compile(r"[^\x20-\x7e]")


def safe_field(value: object) -> str:
    """``value`` as printable ASCII of bounded length, fit for an error message."""
    return _UNSAFE.sub("?", str(value))[:_FIELD_LIMIT]


class SASLProtocolError(MailProtocolError):
    """The server broke the rules of the SASL mechanism (malformed or unexpected message,
    nonce mismatch, too many steps). The exchange should be cancelled."""


class SASLSecurityError(MailSecurityError):
    """The server's part of the exchange cannot be trusted or is too weak (a SCRAM
    iteration count below the floor, a channel binding that cannot be honoured)."""


class SASLServerVerificationError(SASLSecurityError):
    """The server could not prove that it knows the password (SCRAM server signature
    missing or wrong). It may be an impostor; nothing it says should be trusted."""


class SASLPrepError(MailValidationError):
    """A username or password cannot be prepared with SASLprep (RFC 4013), or cannot be
    framed by the mechanism; nothing was sent. ``field`` names which one."""


class SASLStateError(MailHandlerError, RuntimeError):
    """A mechanism object was used out of order (a bug in the caller, not the server)."""


class CleartextRefusedError(MailSecurityError):
    """The only mechanisms left would send the secret readable on an unencrypted
    connection, and cleartext was not allowed; nothing was sent."""


class NoMechanismError(MailAuthenticationError):
    """The server offers no mechanism usable with the given credentials; nothing was sent.

    ``offered`` holds the mechanism names the server listed (``None`` when unknown).
    """

    def __init__(self, text: str, offered: tuple[str, ...] | None = None) -> None:
        super().__init__(None, text)
        self.offered = offered


@dataclass(frozen=True)
class SASLFailure:
    """What the server said, inside the mechanism, about why it refused.

    ``server_error`` is a SCRAM ``e=`` value (``"invalid-proof"``, ...); ``status``,
    ``scope``, ``schemes`` and ``openid_configuration`` come from an OAUTHBEARER or XOAUTH2
    error challenge. Every field is ``None`` when absent and made safe for messages.
    """

    mechanism: str
    server_error: str | None = None
    status: str | None = None
    scope: str | None = None
    schemes: str | None = None
    openid_configuration: str | None = None

    def describe(self) -> str:
        """A short explanation for an error message, e.g. ``OAUTHBEARER status 401``."""
        parts = []
        if self.server_error is not None:
            parts.append(f"server error {self.server_error}")
        if self.status is not None:
            parts.append(f"status {self.status}")
        if self.scope is not None:
            parts.append(f"scope {self.scope}")
        if self.schemes is not None:
            parts.append(f"schemes {self.schemes}")
        if not parts:
            parts.append("the server gave no reason")
        return f"{self.mechanism}: " + ", ".join(parts)


class SASLAuthenticationError(MailAuthenticationError):
    """The server refused the login inside the mechanism (a SCRAM ``e=`` attribute, an
    OAUTHBEARER/XOAUTH2 error challenge), or the protocol layer built this from the final
    refusal with :meth:`Mechanism.refusal`. ``failure`` holds the server's reasons."""

    def __init__(
        self,
        code: int | None,
        text: str,
        failure: SASLFailure | None = None,
        enhanced_code: str | None = None,
    ) -> None:
        super().__init__(code, text, enhanced_code)
        self.failure = failure
