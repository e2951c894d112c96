"""Who logs in: :class:`Credentials`, and the one identity pools key on.

A user name with either a password (held as a :class:`Secret`) or an OAuth2 token
source. Built once from a handler's arguments and checked then: no control
characters, a password or a token but not both, a user name XOAUTH2 can carry.

Pools must tell logins apart without holding anything that leads back to a secret.
:attr:`Credentials.identity` is a keyed BLAKE2b digest of the password or fixed token,
keyed with random bytes drawn once per process and never stored or shown, so the
digest cannot be tested against guesses outside the process; it is computed once,
when the credentials are made. A token provider is identified by the provider itself,
so a refreshed token keeps its warm connections.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field

from .._net.control_chars import find_control_character
from .._net.secret import Secret, keyed_digest
from ..errors import ConfigurationError
from .oauth2 import TokenProvider, TokenSource, token_source_for

__all__ = ["CredentialIdentity", "Credentials"]


class CredentialIdentity:
    """Opaque, hashable identity of one set of credentials; its repr shows nothing."""

    __slots__ = ("_value",)

    def __init__(self, value: Hashable) -> None:
        self._value = value

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CredentialIdentity) and self._value == other._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __repr__(self) -> str:
        return "CredentialIdentity(...)"

    def __deepcopy__(self, memo: object) -> CredentialIdentity:
        return self

    def __reduce__(self) -> str | tuple[object, ...]:
        raise TypeError("a credential identity cannot be pickled")


@dataclass(frozen=True, slots=True)
class Credentials:
    """A user name with a password or an OAuth2 token source (or neither, for no login).

    Make them with :meth:`of`, which checks the values; ``identity`` is what
    connection pools compare, never the secret.
    """

    username: str | None = None
    password: Secret | None = field(default=None, repr=False)
    token: TokenSource | None = field(default=None, repr=False)
    identity: CredentialIdentity = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.password is not None and self.token is not None:
            raise ConfigurationError("give either password or oauth2_token, not both", "password")
        if self.token is not None:
            part: Hashable = ("token", self.token.pool_identity())
        elif self.password is not None:
            part = ("password", keyed_digest("password", self.password.reveal()))
        else:
            part = ("none",)
        object.__setattr__(self, "identity", CredentialIdentity((self.username, part)))

    @classmethod
    def of(
        cls,
        username: str | None,
        password: str | None = None,
        oauth2_token: str | TokenProvider | TokenSource | None = None,
    ) -> Credentials:
        """Check and wrap a handler's login arguments.

        Raises :class:`ConfigurationError` for control characters in the user name or
        password, for a password together with a token, and for a user name or token
        that XOAUTH2 cannot carry. The message names the field, never the value.
        """
        for value, name in ((username, "username"), (password, "password")):
            if value is None:
                continue
            if not isinstance(value, str):
                raise ConfigurationError(f"{name} must be a string", name)
            if find_control_character(value) is not None:
                raise ConfigurationError(f"{name} must not contain control characters", name)
        try:
            token = token_source_for(oauth2_token, username, password)
        except ValueError as error:
            field_name = getattr(error, "field", None) or "oauth2_token"
            raise ConfigurationError(str(error), field_name) from None
        return cls(username, Secret(password) if password is not None else None, token)

    @property
    def logs_in(self) -> bool:
        """True when there is something to log in with."""
        return self.password is not None or self.token is not None
