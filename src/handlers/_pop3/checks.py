"""Checks of the arguments :class:`~src.handlers.pop3.POP3ProtocolHandler` takes.

Settings become values here, each checked as it is made: the credentials (with the
pairing of password and OAuth2 token) and the message size limit; the endpoint and the
timeouts check themselves (:mod:`src.handlers._net.config`). A bad setting is a
:class:`ConfigurationError` naming the field, never echoing a secret. Message numbers,
which come with each call, are checked here too.
"""

from __future__ import annotations

from .._auth.credentials import Credentials
from .._auth.oauth2 import TokenProvider, TokenSource
from ..errors import ConfigurationError, MailValidationError


def check_byte_count(value: int, field: str) -> int:
    """``value`` if it is a positive int (not a bool); else a ConfigurationError naming
    ``field``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigurationError(f"{field} must be a positive byte count", field)
    return value


def check_size_limit(max_message_size: int | None) -> int | None:
    """``max_message_size`` if it is None or a positive int."""
    if max_message_size is None:
        return None
    return check_byte_count(max_message_size, "max_message_size")


def credentials_for(
    username: str,
    password: str | None,
    oauth2_token: str | TokenProvider | TokenSource | None,
    *,
    external: bool = False,
) -> Credentials:
    """The handler's credentials: a user name with a password or an OAuth2 token, or
    (``external``, the TLS client certificate logs in) with neither."""
    if external and (password is not None or oauth2_token is not None):
        raise ConfigurationError(
            "auth_mechanism='EXTERNAL' logs in with the client certificate; leave out "
            "password and oauth2_token",
            "auth_mechanism",
        )
    if oauth2_token is None and password is None and not external:
        raise ConfigurationError("password is required unless oauth2_token is given", "password")
    if isinstance(username, str) and not username:
        raise ConfigurationError("username must not be empty", "username")
    return Credentials.of(username, password, oauth2_token)


def check_message_id(message_id: int) -> None:
    """A message number is an int from 1 up."""
    if isinstance(message_id, bool) or not isinstance(message_id, int) or message_id < 1:
        raise MailValidationError("message numbers are integers starting at 1", "message_id")
