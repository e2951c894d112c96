"""An in-process SMTP server for tests, built on ``aiosmtpd``.

:class:`SMTPTestServer` runs a real ESMTP implementation on a loopback port in a
background thread. It records every accepted message as a :class:`ReceivedMessage`,
optionally offers STARTTLS or implicit TLS, AUTH PLAIN/LOGIN against a dict of users,
AUTH XOAUTH2 against a dict of OAuth2 tokens (and, when ``mechanisms`` names them,
CRAM-MD5, SCRAM-SHA-1/256 with and without -PLUS, played by ``scramp``, and
OAUTHBEARER), SMTPUTF8 and a size limit,
and lets a test inject failures through its mutable
:class:`SMTPFaults`::

    with SMTPTestServer(tls="starttls", ssl_context=certs.server_context(),
                        users={"alice": "secret"}) as server:
        server.faults.reject_recipients["bob@example.com"] = (550, "5.1.1 No such user")
        ...  # send with the client under test
        [message] = server.wait_for_messages(1)
        assert message["Subject"] == "Hello"

The server binds only to loopback addresses. Stopping it closes every open client
connection, the listener and the event loop, so no resource warnings leak into the
test that used it.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hmac
import ipaddress
import logging
import socket
import ssl
import threading
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from typing import Any, Literal

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import (
    MISSING,
    SMTP,
    AuthResult,
    LoginPassword,
    Session,
    TLSSetupException,
    auth_mechanism,
)

from .xoauth2 import XOAUTH2Verifier

__all__ = ["ReceivedMessage", "SMTPFaults", "SMTPTestServer", "TLSMode"]

log = logging.getLogger(__name__)

TLSMode = Literal["none", "starttls", "implicit"]
Reply = tuple[int, str]

_TLS_MODES = ("none", "starttls", "implicit")
#: Every mechanism the server can offer; ``mechanisms=`` picks among them.
_MECHANISMS = (
    "PLAIN",
    "LOGIN",
    "CRAM-MD5",
    "SCRAM-SHA-1",
    "SCRAM-SHA-256",
    "SCRAM-SHA-1-PLUS",
    "SCRAM-SHA-256-PLUS",
    "XOAUTH2",
    "OAUTHBEARER",
    "EXTERNAL",
)
_STOP_TIMEOUT = 5.0
_AIOSMTPD_LOGGER = "mail.log"  # the logger aiosmtpd's protocol code writes to
# Longest client line inside an AUTH exchange (RFC 4954); aiosmtpd's own line reader
# stops at 1001 octets, shorter than a Microsoft 365 access token.
_SASL_LINE_LIMIT = 12288


def _format_reply(code: int, text: str) -> str:
    """Render an SMTP reply; a ``text`` with newlines becomes a multi-line reply."""
    if not 200 <= code <= 599:
        raise ValueError(f"SMTP reply code out of range: {code}")
    lines = text.splitlines() or [""]
    rendered = [f"{code}-{line}" for line in lines[:-1]]
    rendered.append(f"{code} {lines[-1]}")
    return "\r\n".join(rendered)


@dataclass
class ReceivedMessage:
    """One message the server accepted: the envelope and the raw DATA bytes.

    ``data`` is exactly what the client sent between ``DATA`` and the final dot, with
    dot-stuffing removed. ``secure`` tells whether the transaction ran over TLS and
    ``username`` names the authenticated user, if any.
    """

    mail_from: str
    rcpt_tos: list[str]
    data: bytes
    mail_options: list[str] = field(default_factory=list)
    rcpt_options: list[str] = field(default_factory=list)
    secure: bool = False
    username: str | None = None

    @property
    def message(self) -> EmailMessage:
        """The message parsed with :data:`email.policy.default`."""
        parsed = BytesParser(_class=EmailMessage, policy=policy.default).parsebytes(self.data)
        assert isinstance(parsed, EmailMessage)
        return parsed

    def __getitem__(self, header: str) -> str | None:
        """The (decoded) value of ``header``, or ``None`` when the message lacks it."""
        value = self.message[header]
        return None if value is None else str(value)


@dataclass
class SMTPFaults:
    """Failures to inject; tests may change these fields while the server runs.

    * ``reject_recipients`` maps an address (compared case-insensitively) to the reply
      given to its ``RCPT TO`` instead of 250.
    * ``mail_replies`` maps the N-th ``MAIL FROM`` received since start or
      :meth:`SMTPTestServer.clear` (1-based, across all connections) to its reply.
    * ``data_reply`` replaces the 250 after the final dot. A 2xx or 3xx reply still
      stores the message; an error reply does not.
    * ``drop_after_data``: for that many upcoming messages, close the connection right
      after the final dot without any reply and without storing the message.
    * ``reply_delay`` is waited before every server reply, greeting included.
    * ``auth_replies`` maps a mechanism name to the reply that refuses ``AUTH`` with
      it at once (504 not supported, 454 temporary, ...).
    * ``wrong_scram_signature``: the SCRAM server-final message carries a wrong
      signature (an impostor that does not know the password).
    """

    reject_recipients: dict[str, Reply] = field(default_factory=dict)
    mail_replies: dict[int, Reply] = field(default_factory=dict)
    data_reply: Reply | None = None
    drop_after_data: int = 0
    reply_delay: float = 0.0
    auth_replies: dict[str, Reply] = field(default_factory=dict)
    wrong_scram_signature: bool = False

    def reset(self) -> None:
        """Remove every injected fault."""
        self.reject_recipients.clear()
        self.mail_replies.clear()
        self.data_reply = None
        self.drop_after_data = 0
        self.reply_delay = 0.0

    def recipient_reply(self, address: str) -> Reply | None:
        """The injected reply for ``address``, if any."""
        if address in self.reject_recipients:
            return self.reject_recipients[address]
        folded = address.casefold()
        for candidate, reply in self.reject_recipients.items():
            if candidate.casefold() == folded:
                return reply
        return None


class _QuietSession(Session):
    """aiosmtpd's session without the deprecation log line on every successful AUTH."""

    @property
    def login_data(self) -> Any:
        return self._login_data

    @login_data.setter
    def login_data(self, value: Any) -> None:
        self._login_data = value


class _SMTP(SMTP):
    """aiosmtpd's protocol plus connection tracking and the reply-delay fault."""

    def __init__(self, handler: Any, *, owner: SMTPTestServer, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self._owner = owner
        self._mid_reply = False

    def _create_session(self) -> Session:
        return _QuietSession(self.loop)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        first = self.transport is None
        super().connection_made(transport)
        if first:
            self._owner._connection_opened(self)

    def connection_lost(self, error: Exception | None) -> None:
        try:
            super().connection_lost(error)
        finally:
            self._owner._connection_closed(self)

    async def push(self, status: str | bytes) -> None:
        delay = self._owner.faults.reply_delay if self._owner._live else 0.0
        if delay > 0 and not self._mid_reply:
            await asyncio.sleep(delay)
        raw = status.encode("utf-8", "surrogateescape") if isinstance(status, str) else status
        last_line = raw.rsplit(b"\n", 1)[-1]
        self._mid_reply = last_line[3:4] == b"-"
        await super().push(raw)

    def drop(self) -> None:
        """Close the connection at once, without a reply or a TLS goodbye."""
        transport = self.transport
        if isinstance(transport, asyncio.WriteTransport):
            transport.abort()
        elif transport is not None:
            transport.close()

    @property
    def is_secure(self) -> bool:
        """Whether this connection currently runs over TLS."""
        return self.transport is not None and (
            self.transport.get_extra_info("ssl_object") is not None
        )

    async def auth_XOAUTH2(self, _: Any, args: list[str]) -> AuthResult:
        """XOAUTH2, one step (response on the AUTH line) or two (after ``334 ``).

        A refused token gets the error challenge (``334`` and base64 JSON); whatever
        the client answers, the login then fails with 535, as Gmail does.
        """
        verifier = self._owner.oauth2
        if verifier is None:  # not offered; refuse if asked anyway
            return AuthResult(success=False, handled=False)
        one_step = len(args) == 2
        response = _decode_sasl(args[1]) if one_step else await self._sasl_challenge(b"")
        if response is None:
            await self.push("501 5.5.2 Can't decode base64 (or AUTH cancelled)")
            return AuthResult(success=False, handled=True)
        verdict = verifier.check(response, one_step=one_step)
        with self._owner._condition:
            self._owner.auth_attempts.append(("XOAUTH2", verdict.username or ""))
        if verdict.accepted:
            return AuthResult(success=True, auth_data=verdict.username)
        assert verdict.error is not None
        await self._sasl_challenge(verdict.error)
        return AuthResult(
            success=False, handled=False, message="535 5.7.8 Username and Password not accepted"
        )

    async def auth_OAUTHBEARER(self, _: Any, args: list[str]) -> AuthResult:
        """OAUTHBEARER (RFC 7628), checked like XOAUTH2; a refusal sends the error
        challenge, expects the client's ``\\x01`` and then fails with 535."""
        verifier = self._owner.oauth2
        if verifier is None:
            return AuthResult(success=False, handled=False)
        one_step = len(args) == 2
        response = _decode_sasl(args[1]) if one_step else await self._sasl_challenge(b"")
        if response is None:
            await self.push("501 5.5.2 Can't decode base64 (or AUTH cancelled)")
            return AuthResult(success=False, handled=True)
        verdict = verifier.check(response, one_step=one_step, mechanism="OAUTHBEARER")
        with self._owner._condition:
            self._owner.auth_attempts.append(("OAUTHBEARER", verdict.username or ""))
        if verdict.accepted:
            return AuthResult(success=True, auth_data=verdict.username)
        assert verdict.error is not None
        await self._sasl_challenge(verdict.error)
        return AuthResult(success=False, handled=False, message="535 5.7.8 Token not accepted")

    @auth_mechanism("CRAM-MD5")
    async def auth_CRAM_MD5(self, _: Any, args: list[str]) -> AuthResult:
        """CRAM-MD5 (RFC 2195) against :attr:`SMTPTestServer.users`."""
        challenge = f"<{time.monotonic_ns()}.{id(self)}@{self._owner.server_name}>".encode()
        response = await self._sasl_challenge(challenge)
        if response is None:
            await self.push("501 5.5.2 Can't decode base64 (or AUTH cancelled)")
            return AuthResult(success=False, handled=True)
        user, _sep, digest = response.decode("utf-8", "replace").rpartition(" ")
        with self._owner._condition:
            self._owner.auth_attempts.append(("CRAM-MD5", user))
        password = (self._owner.users or {}).get(user)
        if password is not None:
            expected = hmac.new(password.encode(), challenge, "md5").hexdigest()
            if hmac.compare_digest(expected, digest):
                return AuthResult(success=True, auth_data=user)
        return AuthResult(success=False, handled=False)

    async def auth_EXTERNAL(self, _: Any, args: list[str]) -> AuthResult:
        """EXTERNAL (RFC 4422): the TLS client certificate's common name is the user;
        the server context must request certificates (``verify_mode``)."""
        ssl_object = self.transport.get_extra_info("ssl_object") if self.transport else None
        certificate = ssl_object.getpeercert() if ssl_object is not None else None
        response = _decode_sasl(args[1]) if len(args) == 2 else await self._sasl_challenge(b"")
        if response is None:
            await self.push("501 5.5.2 Can't decode base64 (or AUTH cancelled)")
            return AuthResult(success=False, handled=True)
        names = dict(pair[0] for pair in certificate.get("subject", ())) if certificate else {}
        user = str(names.get("commonName", ""))
        with self._owner._condition:
            self._owner.auth_attempts.append(("EXTERNAL", user))
        if user and (not response or response.decode("utf-8", "replace") == user):
            return AuthResult(success=True, auth_data=user)
        return AuthResult(success=False, handled=False)

    @auth_mechanism("SCRAM-SHA-1")
    async def auth_SCRAM_SHA_1(self, _: Any, args: list[str]) -> AuthResult:
        """SCRAM-SHA-1, played by scramp's server."""
        return await self._scram("SCRAM-SHA-1", args)

    @auth_mechanism("SCRAM-SHA-256")
    async def auth_SCRAM_SHA_256(self, _: Any, args: list[str]) -> AuthResult:
        """SCRAM-SHA-256, played by scramp's server."""
        return await self._scram("SCRAM-SHA-256", args)

    @auth_mechanism("SCRAM-SHA-1-PLUS")
    async def auth_SCRAM_SHA_1_PLUS(self, _: Any, args: list[str]) -> AuthResult:
        """SCRAM-SHA-1-PLUS with ``tls-server-end-point``, played by scramp's server."""
        return await self._scram("SCRAM-SHA-1-PLUS", args)

    @auth_mechanism("SCRAM-SHA-256-PLUS")
    async def auth_SCRAM_SHA_256_PLUS(self, _: Any, args: list[str]) -> AuthResult:
        """SCRAM-SHA-256-PLUS with ``tls-server-end-point``, played by scramp's server."""
        return await self._scram("SCRAM-SHA-256-PLUS", args)

    async def _scram(self, name: str, args: list[str]) -> AuthResult:
        """One SCRAM exchange with scramp's server checking the client against
        :attr:`SMTPTestServer.users`; the server-final message goes in a ``334``."""
        import scramp  # type: ignore[import-untyped]  # only the SCRAM tests need it

        owner = self._owner
        mechanism = scramp.ScramMechanism(name)
        binding = None
        if name.endswith("-PLUS"):
            if owner.certificate_der is None or not self.is_secure:
                return AuthResult(success=False, handled=False)
            data = scramp.core.CBindData.from_der(owner.certificate_der)
            binding = ("tls-server-end-point", bytes(data))
        seen: list[str] = []

        def auth_info(username: str) -> tuple[bytes, bytes, bytes, int]:
            seen.append(username)
            password = (owner.users or {}).get(username)
            if password is None:
                raise scramp.ScramException("unknown user", "unknown-user")
            info = mechanism.make_auth_info(password, iteration_count=4096)
            return info  # type: ignore[no-any-return]

        server = mechanism.make_server(auth_info, channel_binding=binding)
        first = _decode_sasl(args[1]) if len(args) == 2 else await self._sasl_challenge(b"")
        try:
            if first is None:
                raise scramp.ScramException("cancelled")
            server.set_client_first(first.decode("utf-8"))
            final = await self._sasl_challenge(server.get_server_first().encode())
            if final is None:
                raise scramp.ScramException("cancelled")
            server.set_client_final(final.decode("utf-8"))
            accepted = True
        except (scramp.ScramException, UnicodeDecodeError):
            accepted = False
        with owner._condition:
            owner.auth_attempts.append((name, seen[0] if seen else ""))
        if first is None or (not accepted and not seen):
            await self.push("501 5.5.2 Can't decode base64 (or AUTH cancelled)")
            return AuthResult(success=False, handled=True)
        if not accepted:
            return AuthResult(success=False, handled=False)
        server_final = server.get_server_final()
        if owner.faults.wrong_scram_signature:
            server_final = "v=" + base64.b64encode(b"\0" * 32).decode("ascii")
        answer = await self._sasl_challenge(server_final.encode())
        if answer != b"":
            await self.push("501 5.5.2 AUTH cancelled")
            return AuthResult(success=False, handled=True)
        return AuthResult(success=True, auth_data=seen[0])

    async def _sasl_challenge(self, payload: bytes) -> bytes | None:
        """Send ``334 <base64 payload>`` and return the client's decoded answer; ``None``
        when it cancelled with ``*``, is not base64, is too long or never came."""
        await self.push(b"334 " + base64.b64encode(payload))
        pieces: list[bytes] = []
        size = 0
        while size <= _SASL_LINE_LIMIT:
            try:
                line = await self._reader.readuntil(b"\n")
            except asyncio.LimitOverrunError as error:
                chunk = await self._reader.read(error.consumed)
                pieces.append(chunk)
                size += len(chunk)
                continue
            except asyncio.IncompleteReadError:
                return None
            return _decode_sasl(b"".join([*pieces, line]).decode("ascii", "replace"))
        return None


class _Handler:
    """aiosmtpd hooks that implement recording and fault injection.

    No attribute here may start with ``auth_``: aiosmtpd would take it for an AUTH
    mechanism.
    """

    def __init__(self, owner: SMTPTestServer) -> None:
        self._owner = owner

    async def handle_EHLO(
        self, server: _SMTP, session: Session, envelope: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        session.host_name = hostname
        if not self._owner.offers_auth:
            responses = [line for line in responses if not line[4:].upper().startswith("AUTH")]
        return responses

    async def handle_AUTH(
        self, server: _SMTP, session: Session, envelope: Any, args: list[str]
    ) -> Any:
        if not self._owner.offers_auth:
            return "502 5.5.1 AUTH not available"
        refusal = self._owner.faults.auth_replies.get(args[0].upper() if args else "")
        if refusal is not None:
            return _format_reply(*refusal)
        return MISSING

    async def handle_MAIL(
        self, server: _SMTP, session: Session, envelope: Any, address: str, options: list[str]
    ) -> str:
        number = self._owner._count_mail_command()
        if self._owner.auth_required and not session.authenticated:
            return "530 5.7.0 Authentication required"
        reply = self._owner.faults.mail_replies.get(number)
        if reply is not None and reply[0] >= 400:
            return _format_reply(*reply)
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return _format_reply(*reply) if reply is not None else "250 2.1.0 OK"

    async def handle_RCPT(
        self, server: _SMTP, session: Session, envelope: Any, address: str, options: list[str]
    ) -> str:
        reply = self._owner.faults.recipient_reply(address)
        if reply is not None and reply[0] >= 400:
            return _format_reply(*reply)
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(options)
        return _format_reply(*reply) if reply is not None else "250 2.1.5 OK"

    async def handle_DATA(self, server: _SMTP, session: Session, envelope: Any) -> str:
        if self._owner._take_drop():
            log.debug("dropping connection after the final dot, as instructed")
            server.drop()
            # Wait to be cancelled by connection_lost(): no reply must ever follow.
            await asyncio.get_running_loop().create_future()
        username = session.auth_data if session.authenticated else None
        received = ReceivedMessage(
            mail_from=envelope.mail_from,
            rcpt_tos=list(envelope.rcpt_tos),
            data=bytes(envelope.original_content),
            mail_options=list(envelope.mail_options),
            rcpt_options=list(envelope.rcpt_options),
            secure=server.is_secure,
            username=username if isinstance(username, str) else None,
        )
        reply = self._owner.faults.data_reply
        if reply is None or reply[0] < 400:
            self._owner._store(received)
        return _format_reply(*reply) if reply is not None else "250 2.0.0 OK: queued"

    async def handle_exception(self, error: Exception) -> str:
        if isinstance(error, TLSSetupException | ssl.SSLError | ConnectionError):
            log.debug("client connection failed: %r", error)
            return "421 4.7.0 Connection failed"
        log.error("SMTP test server failed while handling a command", exc_info=error)
        return "451 4.3.0 Internal test server error"


class _Controller(Controller):
    """aiosmtpd's threaded controller, serving a socket bound beforehand.

    Binding in the caller's thread makes a busy port fail at once and tells us the
    real port before aiosmtpd's start-up probe connects to it.
    """

    def __init__(
        self, owner: SMTPTestServer, handler: _Handler, listener: socket.socket, **kwargs: Any
    ) -> None:
        host, port = listener.getsockname()[:2]
        super().__init__(handler, hostname=host, port=port, **kwargs)
        self._owner = owner
        self._listener = listener
        self.loop.set_exception_handler(_loop_exception_handler)

    def factory(self) -> _SMTP:
        self._owner._count_session()
        return _SMTP(self.handler, owner=self._owner, loop=self.loop, **self.SMTP_kwargs)

    def _create_server(self) -> Awaitable[asyncio.AbstractServer]:
        return self.loop.create_server(
            self._factory_invoker, sock=self._listener, ssl=self.ssl_context
        )

    def release(self) -> None:
        """Free the loop and the socket of a controller whose start failed."""
        thread = self._thread
        if thread is not None and thread.is_alive():
            self.stop(no_assert=True)
        elif not self.loop.is_closed():
            self.loop.close()
        self._listener.close()

    async def shutdown(self) -> None:
        """Close the listener and every connection, then finish the remaining tasks."""
        # Stop accepting first and let connections accepted a moment ago attach to
        # the server: closing it under them makes asyncio leak their sockets.
        with contextlib.suppress(NotImplementedError, ValueError, OSError):
            self.loop.remove_reader(self._listener.fileno())
        for _ in range(3):
            await asyncio.sleep(0)
        if self.server is not None:
            self.server.close()
        self._owner._drop_all_connections()
        deadline = time.monotonic() + 2.0
        while self._owner._has_connections() and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        current = asyncio.current_task()
        tasks = [task for task in asyncio.all_tasks() if task is not current]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self.server is not None:
            await self.server.wait_closed()


def _loop_exception_handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """Log expected network failures quietly; leave anything else to asyncio.

    Clients under test fail TLS handshakes, reset connections and get cut off by
    :meth:`SMTPTestServer.stop` (which cancels half-accepted connections) on purpose.
    """
    error = context.get("exception")
    expected = ssl.SSLError | ConnectionError | TimeoutError | asyncio.CancelledError
    if isinstance(error, expected):
        log.debug("%s: %r", context.get("message", "connection error"), error)
        return
    loop.default_exception_handler(context)


class _DemoteExpectedWarnings(logging.Filter):
    """Turn aiosmtpd's warnings about client misbehaviour into DEBUG records.

    Tests provoke unknown commands and aborted AUTH exchanges deliberately, and the
    client under test already sees the error reply. A demoted record is only kept
    when its logger is enabled for DEBUG (``caplog.set_level(logging.DEBUG)``).
    """

    TEMPLATES = frozenset(
        {
            "%r unrecognised: %s",
            "%r too many bogus commands",
            "%r aborted AUTH with '*'",
            "%r over limit for %s",
        }
    )

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno != logging.WARNING or record.msg not in self.TEMPLATES:
            return True
        record.levelno = logging.DEBUG
        record.levelname = logging.getLevelName(logging.DEBUG)
        return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)


def _install_log_filter() -> None:
    """Attach the demoting filter to aiosmtpd's logger, once per process."""
    aiosmtpd_log = logging.getLogger(_AIOSMTPD_LOGGER)
    if not any(isinstance(f, _DemoteExpectedWarnings) for f in aiosmtpd_log.filters):
        aiosmtpd_log.addFilter(_DemoteExpectedWarnings())


def _check_loopback(host: str) -> None:
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ValueError(f"host must be a loopback IP address such as 127.0.0.1, got {host!r}")


def _listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host``:``port`` (0 picks a free port)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((host, port))
        listener.listen(64)
        listener.setblocking(False)
    except BaseException:
        listener.close()
        raise
    return listener


class SMTPTestServer:
    """A real ESMTP server on a loopback port, for tests; see the module docstring.

    ``tls`` chooses plain SMTP, STARTTLS (offered, and mandatory with
    ``require_starttls``) or implicit TLS from the first byte; both TLS modes need
    ``ssl_context``, a server context. With ``users`` set, AUTH PLAIN and LOGIN are
    offered and checked against that dict; with ``auth_require_tls`` (the default)
    only once the connection is encrypted. ``auth_required`` refuses ``MAIL`` until
    the client has authenticated. ``size_limit`` is advertised as ``SIZE`` and
    enforced; ``smtputf8`` offers SMTPUTF8. ``server_name`` appears in the greeting
    and the EHLO reply; ``idle_timeout`` closes silent client connections.

    What the server saw is kept in ``messages`` (accepted messages, in order),
    ``auth_attempts`` (``(mechanism, username)`` pairs, never passwords) and
    ``sessions`` (TCP connections accepted, counted before any TLS handshake).
    ``port`` 0 picks a free port; after :meth:`start` it holds the real one, which
    a restart reuses.

    With ``oauth2_tokens`` (user name -> the one valid access token) AUTH XOAUTH2 is
    offered too, in one step or two; :attr:`oauth2` (an
    :class:`~src.testing.xoauth2.XOAUTH2Verifier`) then holds the tokens, lets a test
    expire one, and records every attempt. PLAIN and LOGIN are offered only with
    ``users``.

    ``mechanisms`` replaces that default with the listed ones: CRAM-MD5 and SCRAM
    check ``users`` (SCRAM through ``scramp``'s server, which the ``-PLUS`` variants
    give the ``tls-server-end-point`` binding of ``certificate_der``, the server
    certificate in DER), OAUTHBEARER checks ``oauth2_tokens`` like XOAUTH2, and
    EXTERNAL takes the TLS client certificate's common name as the user.

    ``on_message`` is called with each accepted message, on the server's thread and
    before the client gets its reply; that is where a test delivers it onwards, e.g.
    ``on_message=lambda m: pop3_server.add_message(m.data)``. If it raises, the client
    gets a 451 reply and the message is not recorded.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        tls: TLSMode = "none",
        ssl_context: ssl.SSLContext | None = None,
        users: Mapping[str, str] | None = None,
        auth_require_tls: bool = True,
        auth_required: bool = False,
        require_starttls: bool = False,
        smtputf8: bool = True,
        size_limit: int | None = None,
        server_name: str = "localhost",
        idle_timeout: float = 60.0,
        faults: SMTPFaults | None = None,
        oauth2_tokens: Mapping[str, str] | None = None,
        on_message: Callable[[ReceivedMessage], object] | None = None,
        mechanisms: Sequence[str] | None = None,
        certificate_der: bytes | None = None,
    ) -> None:
        _check_loopback(host)
        if tls not in _TLS_MODES:
            raise ValueError(f"tls must be one of {_TLS_MODES}, got {tls!r}")
        if tls != "none" and ssl_context is None:
            raise ValueError(f"tls={tls!r} needs an ssl_context")
        if tls == "none" and ssl_context is not None:
            raise ValueError("ssl_context given but tls='none'")
        if require_starttls and tls != "starttls":
            raise ValueError("require_starttls needs tls='starttls'")
        if auth_required and users is None and oauth2_tokens is None:
            raise ValueError("auth_required needs users or oauth2_tokens")
        if size_limit is not None and size_limit <= 0:
            raise ValueError("size_limit must be positive or None")
        if not server_name or any(ch in server_name for ch in "\r\n \t"):
            raise ValueError(f"invalid server_name {server_name!r}")
        if not 0 <= port <= 65535:
            raise ValueError(f"invalid port {port}")
        self.host = host
        self.port = port
        self.tls: TLSMode = tls
        self.ssl_context = ssl_context
        self.users: dict[str, str] | None = None if users is None else dict(users)
        self.oauth2 = XOAUTH2Verifier(oauth2_tokens) if oauth2_tokens is not None else None
        unknown = {name.upper() for name in mechanisms or ()} - set(_MECHANISMS)
        if unknown:
            raise ValueError(f"unknown mechanisms {sorted(unknown)}; known: {_MECHANISMS}")
        self.mechanisms = None if mechanisms is None else [name.upper() for name in mechanisms]
        self.certificate_der = certificate_der
        self.auth_require_tls = auth_require_tls
        self.auth_required = auth_required
        self.require_starttls = require_starttls
        self.smtputf8 = smtputf8
        self.size_limit = size_limit
        self.server_name = server_name
        self.idle_timeout = idle_timeout
        self.faults = faults if faults is not None else SMTPFaults()
        self.on_message = on_message
        self.messages: list[ReceivedMessage] = []
        self.auth_attempts: list[tuple[str, str]] = []
        self.sessions = 0
        self._mail_commands = 0
        self._condition = threading.Condition()
        self._controller: _Controller | None = None
        self._live = False
        self._connections: set[_SMTP] = set()  # touched only on the server's loop

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return (
            f"<SMTPTestServer {self.host}:{self.port} tls={self.tls} {state} "
            f"sessions={self.sessions} messages={len(self.messages)}>"
        )

    # -- lifecycle ---------------------------------------------------------------

    @property
    def running(self) -> bool:
        """Whether the server is accepting connections."""
        return self._controller is not None

    @property
    def address(self) -> tuple[str, int]:
        """``(host, port)`` for a client to connect to."""
        return (self.host, self.port)

    def start(self) -> None:
        """Bind the port and start serving in a daemon thread."""
        if self._controller is not None:
            raise RuntimeError("server already running")
        _install_log_filter()
        listener = _listen(self.host, self.port)
        try:
            controller = self._make_controller(listener)
        except BaseException:
            listener.close()
            raise
        try:
            controller.start()
        except BaseException:
            controller.release()
            raise
        self.port = controller.port
        self._controller = controller
        # aiosmtpd's start-up probe has come and gone; sessions and the reply delay
        # count from here on.
        self._live = True
        log.debug("SMTP test server listening on %s:%d (tls=%s)", self.host, self.port, self.tls)

    def _make_controller(self, listener: socket.socket) -> _Controller:
        return _Controller(
            self,
            _Handler(self),
            listener,
            ssl_context=self.ssl_context if self.tls == "implicit" else None,
            server_hostname=self.server_name,
            ident="mailhandlers test server",
            data_size_limit=self.size_limit,
            enable_SMTPUTF8=self.smtputf8,
            decode_data=False,
            tls_context=self.ssl_context if self.tls == "starttls" else None,
            require_starttls=self.require_starttls,
            # Under implicit TLS every connection is already encrypted, but aiosmtpd
            # only counts STARTTLS as encryption; its check would hide AUTH for good.
            auth_require_tls=self.auth_require_tls and self.tls != "implicit",
            authenticator=self._authenticate,
            auth_exclude_mechanism=self._excluded_mechanisms(),
            timeout=self.idle_timeout,
        )

    def stop(self) -> None:
        """Close every client connection and the listener; wait for the thread to end."""
        controller, self._controller = self._controller, None
        if controller is None:
            return
        self._live = False
        try:
            future = asyncio.run_coroutine_threadsafe(controller.shutdown(), controller.loop)
            future.result(_STOP_TIMEOUT)
        finally:
            controller.stop(no_assert=True)
        log.debug("SMTP test server on %s:%d stopped", self.host, self.port)

    def __enter__(self) -> SMTPTestServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- recorded state ----------------------------------------------------------

    def clear(self) -> None:
        """Forget recorded messages and AUTH attempts; reset the session and MAIL counts.

        Faults are left alone; use ``faults.reset()`` for those.
        """
        with self._condition:
            self.messages.clear()
            self.auth_attempts.clear()
            self.sessions = 0
            self._mail_commands = 0

    def wait_for_messages(self, n: int, timeout: float = 5.0) -> list[ReceivedMessage]:
        """Block until at least ``n`` messages arrived; return a copy of all of them.

        Raises :class:`TimeoutError` if fewer than ``n`` arrive within ``timeout``.
        """
        with self._condition:
            if not self._condition.wait_for(lambda: len(self.messages) >= n, timeout):
                raise TimeoutError(
                    f"expected {n} message(s) within {timeout}s, got {len(self.messages)}"
                )
            return list(self.messages)

    # -- called from the server thread -------------------------------------------

    def _store(self, message: ReceivedMessage) -> None:
        if self.on_message is not None:
            self.on_message(message)
        with self._condition:
            self.messages.append(message)
            self._condition.notify_all()

    def _count_mail_command(self) -> int:
        with self._condition:
            self._mail_commands += 1
            return self._mail_commands

    def _take_drop(self) -> bool:
        with self._condition:
            if self.faults.drop_after_data > 0:
                self.faults.drop_after_data -= 1
                return True
            return False

    def _count_session(self) -> None:
        if self._live:
            with self._condition:
                self.sessions += 1

    def _connection_opened(self, connection: _SMTP) -> None:
        self._connections.add(connection)

    def _connection_closed(self, connection: _SMTP) -> None:
        self._connections.discard(connection)

    def _has_connections(self) -> bool:
        return bool(self._connections)

    def _drop_all_connections(self) -> None:
        for connection in list(self._connections):
            connection.drop()

    @property
    def offers_auth(self) -> bool:
        """Whether AUTH is offered at all (``users`` or ``oauth2_tokens`` given)."""
        return self.users is not None or self.oauth2 is not None

    def _excluded_mechanisms(self) -> list[str]:
        if self.mechanisms is not None:
            return [name for name in _MECHANISMS if name not in self.mechanisms]
        excluded = [name for name in _MECHANISMS if name not in ("PLAIN", "LOGIN", "XOAUTH2")]
        if self.users is None:
            excluded += ["PLAIN", "LOGIN"]
        return excluded if self.oauth2 is not None else [*excluded, "XOAUTH2"]

    def _authenticate(
        self, server: _SMTP, session: Session, envelope: Any, mechanism: str, data: Any
    ) -> AuthResult:
        if not isinstance(data, LoginPassword):
            return AuthResult(success=False, handled=False)
        username = data.login.decode("utf-8", "replace")
        with self._condition:
            self.auth_attempts.append((mechanism, username))
        expected = (self.users or {}).get(username)
        if expected is not None and hmac.compare_digest(expected.encode("utf-8"), data.password):
            return AuthResult(success=True, auth_data=username)
        return AuthResult(success=False, handled=False)


def _decode_sasl(text: str) -> bytes | None:
    """A client's base64 SASL answer decoded; ``None`` for ``*`` or invalid base64."""
    text = text.strip()
    if text == "*":
        return None
    if text == "=":  # RFC 4954: an empty initial response
        return b""
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None
