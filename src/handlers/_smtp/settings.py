"""What one SMTP session is opened with, and the key pooled sessions are shared by.

:class:`SessionSettings` gathers the values a handler builds once from its arguments
(:class:`Endpoint`, :class:`Credentials`, :class:`Timeouts` and the TLS and EHLO
choices); the pool and the connection take it as one value. :class:`ConnectionKey`
says which sessions are interchangeable: same server and mode, same login identity
(a keyed digest, never the secret), same TLS context and EHLO name.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field

from .._auth.credentials import CredentialIdentity, Credentials
from .._net.config import Encryption, Endpoint, Timeouts


@dataclass(frozen=True, slots=True)
class SessionSettings:
    """Everything needed to open one SMTP session, checked when its parts were made."""

    endpoint: Endpoint
    credentials: Credentials = field(default_factory=Credentials)
    timeouts: Timeouts = field(default_factory=Timeouts)
    ssl_context: ssl.SSLContext | None = field(default=None, compare=False)
    local_hostname: str | None = None
    oauth2_initial_response: bool = True
    """Send the XOAUTH2 token with the AUTH command when the line fits."""


@dataclass(frozen=True, slots=True)
class ConnectionKey:
    """Identifies sessions that may be handed to any caller with the same settings.

    Its hash is computed once: the pool looks keys up several times per message.
    """

    host: str
    port: int
    encryption: Encryption
    identity: CredentialIdentity = field(repr=False)
    context_id: int
    local_hostname: str | None
    _hash: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        fields = (
            self.host,
            self.port,
            self.encryption,
            self.identity,
            self.context_id,
            self.local_hostname,
        )
        object.__setattr__(self, "_hash", hash(fields))

    def __hash__(self) -> int:
        return self._hash

    @classmethod
    def of(cls, settings: SessionSettings) -> ConnectionKey:
        """The key of ``settings``; build it once per handler, not per send."""
        endpoint = settings.endpoint
        context = settings.ssl_context
        return cls(
            endpoint.host.lower(),
            endpoint.port,
            endpoint.encryption,
            settings.credentials.identity,
            id(context) if context is not None else 0,
            settings.local_hostname,
        )
