"""The POP3 ``AUTH`` command (RFC 5034), which poplib lacks, over any SASL mechanism.

:func:`authenticate` drives one :class:`~src.handlers._sasl.Mechanism` through one
``AUTH`` exchange on a poplib client, through poplib's own line methods
(``_putcmd``/``_getresp``), so the client's line bound and any wire tracing attached to
those methods apply:

* the initial response rides on the command when ``AUTH <mech> <base64>`` fits the
  255-octet command line (RFC 5034 section 4), as ``=`` when empty; otherwise it
  answers the server's first, empty, challenge;
* each ``+ <base64>`` continuation goes to the mechanism and its answer goes back
  base64-encoded; when the mechanism cannot go on (a wrong SCRAM server signature, a
  malformed challenge) the client sends ``*`` to cancel, reads the server's ``-ERR``,
  and raises the mechanism's error;
* ``+OK`` is checked with :meth:`Mechanism.verify_final`, so a SCRAM server that never
  proved it knows the password is refused with a security error;
* ``-ERR`` becomes :class:`AuthRefused`, holding the :class:`Refusal` read from its
  response code and the library error, with every secret masked.
"""

from __future__ import annotations

import base64
import binascii
import poplib
import re
from collections.abc import Callable, Iterable
from typing import Any, Final

from .._sasl import Mechanism, Refusal, SASLAuthenticationError
from ..errors import MailHandlerError, POP3AuthenticationError, POP3ProtocolError
from .wire import error_for_reply, parse_error_reply

#: Longest POP3 command line, CRLF included (RFC 2449 section 4, applied by RFC 5034).
COMMAND_LIMIT: Final = 255
#: Continuations read before an exchange is abandoned; SCRAM needs two, and the
#: mechanism itself refuses more than it expects.
MAX_SASL_CHALLENGES: Final = 5
#: Replies read after ``*`` while waiting for the server's ``-ERR``.
_CANCEL_READS: Final = 2

_TEMPORARY_CODES: Final = frozenset({"SYS/TEMP", "IN-USE", "LOGIN-DELAY"})
# Servers say so in words: Dovecot "Unsupported authentication mechanism.", others
# "Unrecognized authentication type", "unknown mechanism", "not supported".
_UNSUPPORTED: Final = re.compile(
    r"\b(unsupported|unknown|unrecognized|not supported|not available|invalid)\b.*"
    r"\b(mechanism|authentication type|auth type|sasl)\b|\bmechanism\b.*\bnot supported\b",
    re.IGNORECASE,
)


class AuthRefused(Exception):
    """The server answered ``AUTH`` (or ``APOP``/``PASS``) with ``-ERR``.

    ``refusal`` says why, as far as the reply tells; ``error`` is the library error to
    raise (masked) when no other mechanism is tried.
    """

    def __init__(self, refusal: Refusal, error: MailHandlerError) -> None:
        super().__init__(refusal.value)
        self.refusal = refusal
        self.error = error


def classify(reply: bytes | str) -> Refusal:
    """What a ``-ERR`` reply to a login command means (RFC 2449, RFC 3206 codes).

    ``[AUTH]`` refuses the credentials; ``[SYS/TEMP]``, ``[IN-USE]`` and
    ``[LOGIN-DELAY]`` are temporary; a reply without a code that says the mechanism is
    unknown or unsupported lets the next mechanism be tried. Anything else counts as a
    refusal of the credentials, so an unclear reply never leads to a weaker mechanism.
    """
    parsed = parse_error_reply(reply)
    if parsed is None:
        return Refusal.CREDENTIALS
    if parsed.code in _TEMPORARY_CODES:
        return Refusal.TEMPORARY
    if parsed.code is None and _UNSUPPORTED.search(parsed.text):
        return Refusal.MECHANISM_UNSUPPORTED
    return Refusal.CREDENTIALS


def refused(reply: bytes | str, secrets: Iterable[str | bytes | None]) -> AuthRefused:
    """The :class:`AuthRefused` for a ``-ERR`` reply to a login command."""
    return AuthRefused(classify(reply), error_for_reply(reply, during_login=True, secrets=secrets))


def authenticate(
    client: Any,
    mechanism: Mechanism,
    *,
    secrets: Callable[[], Iterable[str | bytes | None]] = tuple,
    initial_response: bool = True,
) -> None:
    """Run ``AUTH <mechanism>`` on ``client`` until the server accepts or refuses.

    ``secrets`` returns what to mask in a server reply quoted in an error (the
    session's secrets and the mechanism's :meth:`~Mechanism.sensitive`). Without
    ``initial_response`` the command always goes alone and the client's first message
    answers the server's empty challenge. Raises
    :class:`AuthRefused` for ``-ERR``, the mechanism's own error (SASL security,
    protocol or authentication error) after cancelling, and
    :class:`POP3ProtocolError` for a server that breaks the exchange.
    """

    def masked() -> tuple[str | bytes | None, ...]:
        return (*secrets(), *mechanism.sensitive())

    command = f"AUTH {mechanism.name}"
    initial = mechanism.initial_response()
    pending = initial
    if initial is not None and initial_response:
        inline = f"{command} {_encode(initial) or '='}"
        if len(inline) + 2 <= COMMAND_LIMIT:
            command, pending = inline, None
    try:
        client._putcmd(command)
        for _ in range(MAX_SASL_CHALLENGES):
            line: bytes = client._getresp()
            if not _is_continuation(line):
                mechanism.verify_final(None)
                return
            challenge = _decode(line[1:])
            if challenge is None:
                _cancel(client)
                raise POP3ProtocolError("the server's AUTH challenge is not valid base64")
            if pending is not None:
                # The response that did not fit on the command line answers the
                # server's empty first challenge.
                answer, pending = pending, None
                if challenge:
                    _cancel(client)
                    raise POP3ProtocolError(
                        f"{mechanism.name}: the server sent a challenge where the client "
                        "speaks first"
                    )
            else:
                try:
                    answer = mechanism.respond(challenge)
                except SASLAuthenticationError as error:
                    # The server refused inside the mechanism (SCRAM "e="): the
                    # exchange ends with its -ERR, which says the rest.
                    reply = _cancel(client) or b"-ERR [AUTH] " + error.text.encode()
                    refusal = refused(reply, masked())
                    raise _with_reason(refusal, mechanism) from None
                except MailHandlerError:
                    _cancel(client)
                    raise
            client._putcmd(_encode(answer))
        _cancel(client)
        raise POP3ProtocolError(f"the server sent more than {MAX_SASL_CHALLENGES} AUTH challenges")
    except poplib.error_proto as error:
        reply = error.args[0] if error.args else b""
        failure = refused(reply if isinstance(reply, bytes | str) else str(reply), masked())
        raise _with_reason(failure, mechanism) from None


def _with_reason(failure: AuthRefused, mechanism: Mechanism) -> AuthRefused:
    """``failure`` with the reason the server gave inside the mechanism added."""
    if mechanism.failure is None or not isinstance(failure.error, POP3AuthenticationError):
        return failure
    explained = mechanism.refusal(None, failure.error.text, failure.error.enhanced_code)
    return AuthRefused(
        failure.refusal, POP3AuthenticationError(explained.text, failure.error.enhanced_code)
    )


def _cancel(client: Any) -> bytes | None:
    """Send ``*`` and read the server's answer, which ends the exchange (RFC 5034);
    return that ``-ERR`` reply, if it came."""
    try:
        client._putcmd("*")
        for _ in range(_CANCEL_READS):
            line = client._getresp()
            if not _is_continuation(line):
                return None
    except poplib.error_proto as error:
        reply = error.args[0] if error.args else b""
        return reply if isinstance(reply, bytes) else str(reply).encode()
    return None


def _is_continuation(line: bytes) -> bool:
    return line == b"+" or line.startswith(b"+ ")


def _decode(payload: bytes) -> bytes | None:
    try:
        return base64.b64decode(payload.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None


def _encode(response: bytes) -> str:
    return base64.b64encode(response).decode("ascii")
