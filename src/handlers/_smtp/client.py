"""The one owner of an SMTP socket: :class:`SMTPClient`, an ``smtplib.SMTP`` subclass.

Everything that reaches or leaves the socket goes through it: smtplib's own commands,
the pipelined envelope and the message body (:meth:`SMTPClient.write_commands`,
:meth:`SMTPClient.write_body`), and every reply, read by :meth:`SMTPClient.getreply`
within :data:`MAX_REPLY_BYTES`. The socket is opened by
:func:`src.handlers._net.connect.open_connection` (Happy Eyeballs, SOCKS and HTTP
proxies) in :meth:`SMTPClient._get_socket`; implicit TLS is :class:`SMTPSSLClient`,
whose ``smtplib.SMTP_SSL._get_socket`` wraps the socket that one returns. The
protocol trace is written only while the caller asked for it
(:func:`src.handlers._net.trace.tracing`); otherwise nothing is called.
"""

from __future__ import annotations

import smtplib
import socket
import ssl
from typing import Any

from .._net import trace as wire_log
from .._net.connect import Proxy, open_connection

#: Largest reply accepted, all its lines together. smtplib bounds each line but not
#: how many there are, so a server repeating "250-" lines would grow one reply until
#: memory or the operation deadline ran out.
MAX_REPLY_BYTES = 64 * 1024
_MAX_LINE = 8192  # smtplib's own bound on one reply line


class SMTPClient(smtplib.SMTP):
    """smtplib's client with bounded replies, pipelined writes and an opt-in trace.

    Its socket comes from :func:`open_connection` (Happy Eyeballs, or through
    ``proxy``); ``label`` names the server in trace records. :class:`SMTPSSLClient`
    is the implicit-TLS variant.
    """

    def __init__(
        self,
        label: str,
        *,
        local_hostname: str,
        timeout: float,
        proxy: Proxy | None = None,
    ) -> None:
        super().__init__(local_hostname=local_hostname, timeout=timeout)
        self._proxy = proxy
        self._label = label
        self._tracer: wire_log.WireTracer | None = None
        self._secrets: tuple[str, ...] = ()

    def connect(
        self, host: str = "localhost", port: int = 0, source_address: Any = None
    ) -> tuple[int, bytes]:
        """smtplib's connect, remembering ``host`` for SNI and certificate checks
        (smtplib keeps only the one given to its constructor)."""
        self._host = host
        return super().connect(host, port, source_address)

    def _get_socket(self, host: str, port: int, timeout: float) -> socket.socket:
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout > 0:
            # smtplib would accept None (blocking for ever); a session needs a bound.
            raise ValueError("the SMTP socket timeout must be a positive number of seconds")
        return open_connection(host, port, timeout=timeout, proxy=self._proxy)

    # -- tracing ------------------------------------------------------------------

    def mask_in_trace(self, secrets: tuple[str, ...]) -> None:
        """Mask every form of ``secrets`` in every reply the trace shows from now on."""
        self._secrets = secrets
        if self._tracer is not None:
            self._tracer.redactor.mask_always(secrets)

    def _trace(self) -> wire_log.WireTracer | None:
        if not wire_log.tracing_enabled():
            return None
        if self._tracer is None:
            self._tracer = wire_log.WireTracer("smtp", self._label, lambda: True)
            self._tracer.redactor.mask_always(self._secrets)
        return self._tracer

    # -- writing ------------------------------------------------------------------

    def send(self, s: Any) -> None:
        """smtplib's send, traced when tracing is on."""
        tracer = self._trace()
        if tracer is not None:
            tracer.sent(s if isinstance(s, str) else bytes(s))
        super().send(s)

    def write_commands(self, commands: list[str], data: bytes = b"") -> None:
        """Send several command lines in one write (RFC 2920 pipelining), followed by
        ``data`` (a BDAT chunk) in the same write; the data is traced by size only."""
        tracer = self._trace()
        if tracer is not None:
            for command in commands:
                tracer.sent(command)
            if data:
                tracer.sent_data(len(data))
        self._write(("\r\n".join(commands) + "\r\n").encode("utf-8") + data)

    def write_body(self, payload: bytes) -> None:
        """Send message data, already dot-stuffed and terminated; traced by size only."""
        tracer = self._trace()
        if tracer is not None:
            tracer.sent_data(len(payload))
        self._write(payload)

    def _write(self, data: bytes) -> None:
        if self.sock is None:
            raise smtplib.SMTPServerDisconnected("please run connect() first")
        self.sock.sendall(data)

    # -- reading ------------------------------------------------------------------

    def getreply(self) -> tuple[int, bytes]:
        """smtplib's ``getreply``, refusing a reply longer than :data:`MAX_REPLY_BYTES`."""
        if self.file is None:
            if self.sock is None:
                raise smtplib.SMTPServerDisconnected("please run connect() first")
            self.file = self.sock.makefile("rb")
        lines: list[bytes] = []
        size = 0
        while True:
            try:
                line = self.file.readline(_MAX_LINE + 1)
            except OSError as error:
                if not isinstance(error, TimeoutError):
                    # After a timeout the socket stays for the caller to decide on:
                    # a silent greeting is probed for TLS on it.
                    self.close()
                raise smtplib.SMTPServerDisconnected(
                    f"Connection unexpectedly closed: {error}"
                ) from error
            if not line:
                self.close()
                raise smtplib.SMTPServerDisconnected("Connection unexpectedly closed")
            size += len(line)
            if len(line) > _MAX_LINE or size > MAX_REPLY_BYTES:
                self.close()
                what = "Line" if len(line) > _MAX_LINE else "Reply"
                raise smtplib.SMTPResponseException(500, f"{what} too long.")
            lines.append(line[4:].strip(b" \t\r\n"))
            try:
                code = int(line[:3])
            except ValueError:
                code = -1
                break
            if line[3:4] != b"-":
                break
        text = b"\n".join(lines)
        tracer = self._trace()
        if tracer is not None:
            shown = text.decode("utf-8", "replace")
            for part in shown.split("\n"):
                tracer.received(f"{code} {part}", continuation=code == 334)
        return code, text


class SMTPSSLClient(smtplib.SMTP_SSL, SMTPClient):
    """:class:`SMTPClient` with implicit TLS: ``smtplib.SMTP_SSL._get_socket`` comes
    first in the method order and wraps, with ``tls_context``, the socket that
    :meth:`SMTPClient._get_socket` opened."""

    def __init__(
        self,
        label: str,
        *,
        local_hostname: str,
        timeout: float,
        tls_context: ssl.SSLContext,
        proxy: Proxy | None = None,
    ) -> None:
        # smtplib.SMTP_SSL.__init__ calls SMTP.__init__ directly, so it would skip
        # SMTPClient's; set what SMTP_SSL's own __init__ sets, then run SMTPClient's.
        self.keyfile = self.certfile = None
        self.context = tls_context
        SMTPClient.__init__(
            self, label, local_hostname=local_hostname, timeout=timeout, proxy=proxy
        )
