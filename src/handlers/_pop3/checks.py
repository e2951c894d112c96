"""Checks of the arguments :class:`~src.handlers.pop3.POP3ProtocolHandler` takes.

Credentials, the pairing of password and OAuth2 token, the message size limit and message
numbers are checked before anything touches the network; each problem is a
:class:`MailValidationError` naming the field, never echoing a secret.
"""

from __future__ import annotations

from .._auth.oauth2 import TokenProvider, TokenSource, token_source_for
from ..errors import MailValidationError
from ..validation import ensure_safe_command_argument


def check_size_limit(max_message_size: int | None) -> None:
    """``max_message_size`` is None or a positive int."""
    if max_message_size is not None and (
        isinstance(max_message_size, bool)
        or not isinstance(max_message_size, int)
        or max_message_size < 1
    ):
        raise MailValidationError(
            "max_message_size must be a positive byte count", "max_message_size"
        )


def check_credentials(username: str, password: str) -> None:
    """No control characters in either, and a username that is not empty."""
    ensure_safe_command_argument(username, "username")
    ensure_safe_command_argument(password, "password")
    if not username:
        raise MailValidationError("username must not be empty", "username")


def oauth2_source(
    token: str | TokenProvider | TokenSource | None, username: str | None, password: str | None
) -> TokenSource | None:
    """The handler's token source, or None for a password login; checks the pairing."""
    if token is None and password is None:
        raise MailValidationError("password is required unless oauth2_token is given", "password")
    return token_source_for(token, username, password)


def check_message_id(message_id: int) -> None:
    """A message number is an int from 1 up."""
    if isinstance(message_id, bool) or not isinstance(message_id, int) or message_id < 1:
        raise MailValidationError("message numbers are integers starting at 1", "message_id")
