"""Connection settings as small frozen values, validated once when they are made.

:class:`Endpoint` says where a server is and how the connection is protected,
:class:`Timeouts` how long each part of a call may take. SMTP and POP3 share both, and
both share one :class:`Encryption` enum. A value that exists is valid: the handlers and
pools build these from their arguments and never check the same thing again.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum

from ..errors import ConfigurationError
from .control_chars import find_control_character

__all__ = ["Encryption", "Endpoint", "Timeouts"]


class Encryption(Enum):
    """How a connection is protected; the same modes for SMTP and POP3."""

    NONE = "none"
    """Plain text from start to end (not recommended)."""
    STARTTLS = "tls"
    """Plain connection upgraded with STARTTLS (SMTP) or STLS (POP3), usually 587/110."""
    IMPLICIT_SSL = "ssl"
    """TLS from the first byte, usually 465 (SMTP) and 995 (POP3)."""

    @classmethod
    def parse(cls, value: Encryption | str) -> Encryption:
        """The mode ``value`` names.

        Accepts a member, its value (``"none"``, ``"tls"``, ``"ssl"``) or its name, in any
        case, and the common spellings ``"plain"``, ``"starttls"``, ``"stls"`` and
        ``"implicit"``. Anything else raises :class:`ConfigurationError` listing them.
        """
        if isinstance(value, cls):
            return value
        if isinstance(value, str):
            found = _SPELLINGS.get(value.strip().lower())
            if found is not None:
                return found
        raise ConfigurationError(
            f"encryption must name a mode, not {value!r}", "encryption", _CHOICES
        )


_SPELLINGS: dict[str, Encryption] = {
    "none": Encryption.NONE,
    "plain": Encryption.NONE,
    "tls": Encryption.STARTTLS,
    "starttls": Encryption.STARTTLS,
    "stls": Encryption.STARTTLS,
    "ssl": Encryption.IMPLICIT_SSL,
    "implicit": Encryption.IMPLICIT_SSL,
    "implicit_ssl": Encryption.IMPLICIT_SSL,
}
_CHOICES = ("none", "tls", "ssl", "plain", "starttls", "stls", "implicit")


def check_host(host: object) -> str:
    """``host`` stripped, if it can be a host name or address; else ConfigurationError."""
    if not isinstance(host, str) or not host.strip():
        raise ConfigurationError("hostname must be a non-empty string", "hostname")
    if find_control_character(host) is not None or " " in host.strip():
        raise ConfigurationError(
            "hostname must not contain spaces or control characters", "hostname"
        )
    return host.strip()


def check_port(port: object) -> int:
    """``port`` if it is an int from 1 to 65535; else ConfigurationError."""
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise ConfigurationError(f"port must be an integer from 1 to 65535 (got {port!r})", "port")
    return port


def check_seconds(value: object, field: str, *, optional: bool = False) -> float | None:
    """A positive, finite number of seconds (or None when ``optional``)."""
    if value is None and optional:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ConfigurationError(f"{field} must be a positive number of seconds", field)
    return float(value)


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A server: host name or address, port, and how the connection is protected.

    ``encryption`` may be given as any spelling :meth:`Encryption.parse` accepts; the
    stored value is always an :class:`Encryption`.
    """

    host: str
    port: int
    encryption: Encryption = Encryption.STARTTLS

    def __post_init__(self) -> None:
        object.__setattr__(self, "host", check_host(self.host))
        check_port(self.port)
        object.__setattr__(self, "encryption", Encryption.parse(self.encryption))

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port} ({self.encryption.value})"


@dataclass(frozen=True, slots=True)
class Timeouts:
    """How long the parts of a call may take, in seconds.

    ``socket`` bounds connecting and every single read or write. ``operation`` bounds
    a whole operation (one send attempt with its connection set-up, one POP3 command
    with its whole reply); ``None`` lets each protocol use its default (ten times
    ``socket`` for SMTP, no extra bound for POP3). ``pool_wait`` bounds the wait for a
    free pooled connection, and always counts against ``operation`` too.
    """

    socket: float = 30.0
    operation: float | None = None
    pool_wait: float = 30.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "socket", check_seconds(self.socket, "timeout"))
        object.__setattr__(
            self, "operation", check_seconds(self.operation, "operation_timeout", optional=True)
        )
        object.__setattr__(self, "pool_wait", check_seconds(self.pool_wait, "pool_wait_timeout"))
