"""``mailhandlers check``: can we reach the server, secure it, and log in?

The first thing to run when mail does not go out. It connects the way ``send`` and
``fetch`` would (same encryption, same certificate verification), then reports the
server's capabilities, the negotiated TLS version and cipher, the certificate's
subject, issuer, expiry and names, and whether the login is accepted.
"""

from __future__ import annotations

import argparse
import socket
import ssl
from dataclasses import asdict, dataclass, field
from typing import Any

from ..handlers.errors import (
    POP3AuthenticationError,
    POP3MailboxBusyError,
)
from ..handlers.pop3 import POP3ProtocolHandler
from ..handlers.retry import RetryPolicy
from ..handlers.smtp import SMTPConnectionPool, SMTPProtocolHandler
from .common import (
    ExitCode,
    add_connection_options,
    add_verbose_option,
    client_ssl_context,
    read_password,
    resolve_server,
)
from .output import format_fields, print_json
from .verbose import Redactor

DESCRIPTION = """\
Connect to an SMTP or POP3 server and show its capabilities, the TLS version and
certificate, and whether the login works. Exit status: 0 all fine, 1 TLS or login
refused, 75 server unreachable or busy."""

_NAMES = {
    "commonName": "CN",
    "organizationName": "O",
    "organizationalUnitName": "OU",
    "countryName": "C",
    "stateOrProvinceName": "ST",
    "localityName": "L",
    "emailAddress": "E",
}


@dataclass
class TLSFacts:
    """What a finished TLS handshake tells about the server."""

    version: str | None
    cipher: str | None
    subject: str
    issuer: str
    not_after: str | None
    names: list[str]

    @classmethod
    def of(cls, sock: ssl.SSLSocket) -> TLSFacts:
        """Read the facts from a connected TLS socket."""
        cert: dict[str, Any] = dict(sock.getpeercert() or {})
        cipher = sock.cipher()
        return cls(
            version=sock.version(),
            cipher=cipher[0] if cipher else None,
            subject=_distinguished_name(cert.get("subject", ())),
            issuer=_distinguished_name(cert.get("issuer", ())),
            not_after=cert.get("notAfter"),
            names=[str(value) for _, value in cert.get("subjectAltName", ())],
        )


class ObservingContext(ssl.SSLContext):
    """A client context that remembers what each of its handshakes established."""

    def __init__(self, protocol: int = ssl.PROTOCOL_TLS_CLIENT) -> None:
        super().__init__()
        self.handshakes: list[TLSFacts] = []

    def wrap_socket(self, sock: socket.socket, *args: Any, **kwargs: Any) -> ssl.SSLSocket:
        """Wrap ``sock`` as usual, then note the handshake's facts."""
        tls = super().wrap_socket(sock, *args, **kwargs)
        if tls.version() is not None:  # the handshake is done
            self.handshakes.append(TLSFacts.of(tls))
        return tls

    @property
    def last(self) -> TLSFacts | None:
        """The latest handshake, if any."""
        return self.handshakes[-1] if self.handshakes else None


@dataclass
class CheckReport:
    """The findings, in the order they are printed."""

    protocol: str
    host: str
    port: int
    encryption: str
    server: str | None = None
    tls: TLSFacts | None = None
    capabilities: list[str] = field(default_factory=list)
    auth: str = "not tried (no --user)"
    auth_ok: bool | None = None

    def exit_code(self) -> ExitCode:
        """0 unless the login was refused (1) or the mailbox is busy (75)."""
        if self.auth_ok is False:
            return ExitCode.TEMP_FAIL if self.auth.startswith("busy") else ExitCode.FAILED
        return ExitCode.OK


def add_parser(commands: Any) -> None:
    """Register ``check`` on the subcommand table."""
    parser: argparse.ArgumentParser = commands.add_parser(
        "check",
        help="diagnose the connection to a server",
        description=DESCRIPTION,
        allow_abbrev=False,
    )
    parser.add_argument(
        "--protocol",
        choices=("smtp", "pop3"),
        default="smtp",
        help="which kind of server to check (default: %(default)s)",
    )
    add_connection_options(parser, None)
    parser.add_argument("--ehlo-name", metavar="NAME", help="SMTP: name to greet the server with")
    parser.add_argument("--json", action="store_true", help="print the findings as JSON")
    add_verbose_option(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace, redactor: Redactor) -> int:
    """Run the checks; connection and TLS failures propagate as errors."""
    encryption, port = resolve_server(args, args.protocol)
    password = read_password(args, redactor)
    context = client_ssl_context(args.cafile, ObservingContext)
    assert isinstance(context, ObservingContext)
    report = CheckReport(args.protocol, args.host, port, encryption)
    if args.protocol == "smtp":
        _check_smtp(args, report, password, context)
    else:
        _check_pop3(args, report, password, context)
    if args.json:
        print_json(asdict(report))
    else:
        print(format_report(report))
    return report.exit_code()


def _check_smtp(
    args: argparse.Namespace, report: CheckReport, password: str | None, context: ObservingContext
) -> None:
    def handler(user: str | None) -> SMTPProtocolHandler:
        return SMTPProtocolHandler(
            args.host,
            report.port,
            user,
            password if user else None,
            report.encryption,
            timeout=args.timeout,
            ssl_context=context,
            local_hostname=args.ehlo_name,
            retry=RetryPolicy.never(),
            pool=SMTPConnectionPool(max_connections=1),
            trace=args.verbose,
        )

    capabilities = handler(None).capabilities()
    report.tls = context.last
    report.server = capabilities.server
    report.capabilities = [
        " ".join([name, *params.split()]) for name, params in capabilities.extensions.items()
    ]
    if args.user:
        with handler(args.user) as login:
            if login.authenticate():
                report.auth, report.auth_ok = f"ok (as {args.user})", True
            else:
                report.auth, report.auth_ok = f"refused: {login.last_error}", False


def _check_pop3(
    args: argparse.Namespace, report: CheckReport, password: str | None, context: ObservingContext
) -> None:
    handler = POP3ProtocolHandler(
        args.host,
        report.port,
        args.user or "anonymous",
        password or "",
        report.encryption,
        args.timeout,
        ssl_context=context,
        retry=RetryPolicy.never(),
        trace=args.verbose,
    )
    handler.connect()
    try:
        report.tls = context.last
        report.capabilities = handler.get_capabilities()
        report.server = next(
            (c.split(" ", 1)[1] for c in report.capabilities if c.startswith("IMPLEMENTATION ")),
            None,
        )
        if args.user:
            _pop3_login(handler, report)
    finally:
        handler.disconnect()


def _pop3_login(handler: POP3ProtocolHandler, report: CheckReport) -> None:
    try:
        handler.authenticate()
    except POP3AuthenticationError as error:
        report.auth, report.auth_ok = f"refused: {error}", False
    except POP3MailboxBusyError as error:
        report.auth, report.auth_ok = f"busy, try later: {error}", False
    else:
        report.auth, report.auth_ok = f"ok (as {handler.username})", True


def format_report(report: CheckReport) -> str:
    """The findings as a two-column table."""
    modes = {"tls": "STARTTLS" if report.protocol == "smtp" else "STLS", "ssl": "TLS", "none": ""}
    pairs: list[tuple[str, object]] = [
        ("server", f"{report.protocol} {report.host}:{report.port} {modes[report.encryption]}"),
        ("greeting", report.server),
    ]
    tls = report.tls
    if tls is None:
        pairs.append(("tls", "none (plain text)"))
    else:
        pairs += [
            ("tls", f"{tls.version} ({tls.cipher})"),
            ("certificate", tls.subject),
            ("issuer", tls.issuer),
            ("valid until", tls.not_after),
            ("names", ", ".join(tls.names) or None),
        ]
    capabilities = report.capabilities or ["(none listed)"]
    pairs += [("capabilities" if i == 0 else "", c) for i, c in enumerate(capabilities)]
    pairs.append(("auth", report.auth))
    return format_fields(pairs)


def _distinguished_name(rdns: Any) -> str:
    parts = []
    for rdn in rdns:
        for name, value in rdn:
            parts.append(f"{_NAMES.get(name, name)}={value}")
    return ", ".join(parts)
