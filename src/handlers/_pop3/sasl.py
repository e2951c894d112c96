"""The POP3 ``AUTH`` command (RFC 5034), which poplib lacks, and XOAUTH2 logins over it.

:func:`sasl_auth` runs one SASL exchange on a poplib client through poplib's own line
methods (``_putcmd``/``_getresp``), so the client's line bound and any wire tracing
attached to those methods apply. Its ``authobject`` follows the protocol of
:meth:`smtplib.SMTP.auth`, so one XOAUTH2 implementation serves both protocols.

:func:`xoauth2_login` logs a client in with an OAuth2 token (see
:mod:`src.handlers._auth.oauth2`): one step when allowed and the ``AUTH`` line fits in 255
octets, otherwise two, and one retry with a fresh token from a provider.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any, Final

from .._auth.oauth2 import (
    MECHANISM,
    POP3_COMMAND_LIMIT,
    TokenSource,
    XOAUTH2Exchange,
    decode_challenge,
    explain,
    initial_response_fits,
    login_with_refresh,
)
from ..errors import MailHandlerError, POP3AuthenticationError, POP3ProtocolError

#: Server challenges answered before an exchange is abandoned (XOAUTH2 needs two).
MAX_SASL_CHALLENGES: Final = 5

#: Turns a failure during ``AUTH`` into the library's error; gets the token to mask.
Translate = Callable[[BaseException, str], MailHandlerError]


def sasl_auth(
    client: Any,
    mechanism: str,
    authobject: Callable[..., str],
    *,
    initial_response_ok: bool = True,
) -> bytes:
    """Run ``AUTH <mechanism>`` on ``client``; return the server's final ``+OK`` line.

    With ``initial_response_ok`` the answer of ``authobject()`` rides on the command
    (base64, or ``=`` when empty); otherwise the command goes alone. Each ``+``
    continuation is base64-decoded and passed to ``authobject``, whose answer is sent
    base64-encoded (an empty answer as an empty line). ``-ERR`` raises
    :class:`poplib.error_proto`, as every poplib command does; a challenge that is
    not base64, or too many challenges, raise :class:`POP3ProtocolError`.
    """
    command = f"AUTH {mechanism}"
    if initial_response_ok:
        command += " " + (_encode(authobject()) or "=")
    client._putcmd(command)
    for _ in range(MAX_SASL_CHALLENGES):
        line: bytes = client._getresp()
        if not _is_continuation(line):
            return line
        try:
            challenge = decode_challenge(line[1:])
        except ValueError:
            raise POP3ProtocolError("the server's AUTH challenge is not valid base64") from None
        client._putcmd(_encode(authobject(challenge)))
    raise POP3ProtocolError(f"the server sent more than {MAX_SASL_CHALLENGES} AUTH challenges")


def xoauth2_login(
    adapter: Any,
    username: str,
    source: TokenSource,
    *,
    initial_response: bool,
    translate: Translate,
    where: str,
    sending: Callable[[str], object] = lambda token: None,
) -> None:
    """Log ``adapter`` (a :class:`~src.handlers._pop3.adapter.ClientAdapter`) in with
    XOAUTH2; raise :class:`POP3AuthenticationError` if refused.

    ``translate`` maps what :func:`sasl_auth` raised to the library's errors; a
    refusal gets the reason from the server's error challenge added to its text.
    ``sending`` hears of each token before it goes out, so the caller can mask it
    in whatever the server says later.
    """

    def attempt(token: str) -> None:
        sending(token)
        exchange = XOAUTH2Exchange(username, token)
        one_step = initial_response and initial_response_fits(username, token, POP3_COMMAND_LIMIT)
        failure = None
        try:
            adapter.sasl(MECHANISM, exchange, initial=one_step)
        except Exception as error:
            failure = translate(error, token)
        if failure is not None:
            # Raised here, not in the handler: the original may hold a server echo.
            raise _explained(failure, exchange, token)

    login_with_refresh(source, attempt, POP3AuthenticationError, where=where)


def _explained(
    failure: MailHandlerError, exchange: XOAUTH2Exchange, token: str
) -> MailHandlerError:
    if not isinstance(failure, POP3AuthenticationError):
        return failure
    return POP3AuthenticationError(
        explain(failure.text, exchange.failure, token), failure.enhanced_code
    )


def _is_continuation(line: bytes) -> bool:
    return line == b"+" or line.startswith(b"+ ")


def _encode(response: str) -> str:
    return base64.b64encode(response.encode("ascii")).decode("ascii")
