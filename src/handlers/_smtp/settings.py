"""What one SMTP session is opened with, and the key pooled sessions are shared by.

:class:`SessionSettings` gathers the values a handler builds once from its arguments
(:class:`Endpoint`, :class:`Credentials`, :class:`Timeouts` and the TLS and EHLO
choices); the pool and the connection take it as one value. :class:`ConnectionKey`
says which sessions are interchangeable: same server and mode, same login identity
(a keyed digest, never the secret), same TLS context and EHLO name, same pinned
mechanism, cleartext consent and proxy.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field

from .._auth.credentials import CredentialIdentity, Credentials
from .._net.config import Encryption, Endpoint, Timeouts
from .._net.connect import Proxy
from .._sasl import PREFERENCE, CredentialKind
from ..errors import ConfigurationError


@dataclass(frozen=True, slots=True)
class SessionSettings:
    """Everything needed to open one SMTP session, checked when its parts were made."""

    endpoint: Endpoint
    credentials: Credentials = field(default_factory=Credentials)
    timeouts: Timeouts = field(default_factory=Timeouts)
    ssl_context: ssl.SSLContext | None = field(default=None, compare=False)
    local_hostname: str | None = None
    oauth2_initial_response: bool = True
    """Send a token mechanism's first message with the AUTH command when the line fits."""
    auth_mechanism: str | None = None
    """The one SASL mechanism to log in with (upper case), or ``None`` to choose."""
    allow_cleartext: bool = False
    """Permit PLAIN, LOGIN, OAUTHBEARER and XOAUTH2 on an unencrypted connection."""
    proxy: Proxy | None = None
    """The SOCKS or HTTP proxy the connection goes through, if any."""


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
    auth_mechanism: str | None = None
    allow_cleartext: bool = False
    proxy: Proxy | None = None
    _hash: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        fields = (
            self.host,
            self.port,
            self.encryption,
            self.identity,
            self.context_id,
            self.local_hostname,
            self.auth_mechanism,
            self.allow_cleartext,
            self.proxy,
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
            settings.auth_mechanism,
            settings.allow_cleartext,
            settings.proxy,
        )


def check_auth_mechanism(name: object, credentials: Credentials) -> str | None:
    """``name`` upper-cased if it is a mechanism these credentials can log in with;
    raise :class:`ConfigurationError` otherwise."""
    if name is None:
        return None
    if not isinstance(name, str):
        raise ConfigurationError("auth_mechanism must be a SASL mechanism name", "auth_mechanism")
    name = name.upper()
    if credentials.token is not None:
        kind = CredentialKind.TOKEN
    elif name == "EXTERNAL":
        kind = CredentialKind.CLIENT_CERT
    else:
        kind = CredentialKind.PASSWORD
    if name not in PREFERENCE[kind]:
        raise ConfigurationError(
            "auth_mechanism does not fit these credentials",
            "auth_mechanism",
            PREFERENCE[kind],
        )
    return name


def check_proxy(proxy: object) -> Proxy | None:
    """A :class:`Proxy` from a proxy option (a ``Proxy``, a URL or ``None``); raise
    :class:`ConfigurationError` for anything else or a bad URL."""
    if isinstance(proxy, str):
        return Proxy.from_url(proxy)
    if proxy is None or isinstance(proxy, Proxy):
        return proxy
    raise ConfigurationError("proxy must be a Proxy, a proxy URL or None", "proxy")
