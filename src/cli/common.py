"""What every command shares: exit codes, errors, connection options, the password.

The password is never a command-line argument (those show in ``ps`` and shell
history). It comes from an environment variable, by default ``MAILHANDLERS_PASSWORD``,
or from a prompt when standard input is a terminal.
"""

from __future__ import annotations

import argparse
import getpass
import os
import ssl
import sys
from enum import IntEnum
from typing import NoReturn

from .output import clean
from .verbose import Redactor

DEFAULT_PASSWORD_ENV = "MAILHANDLERS_PASSWORD"

#: Default ports by protocol and encryption.
DEFAULT_PORTS = {
    "smtp": {"tls": 587, "ssl": 465, "none": 25},
    "pop3": {"tls": 110, "ssl": 995, "none": 110},
}
DEFAULT_ENCRYPTION = {"smtp": "tls", "pop3": "ssl"}
ENCRYPTIONS = ("tls", "ssl", "none")


class ExitCode(IntEnum):
    """Exit statuses; 64 and up follow BSD ``sysexits.h``."""

    OK = 0
    FAILED = 1
    """The server refused (rejected, failed, invalid message, login refused, TLS failed)."""
    USAGE = 2
    """Bad arguments, or no password available."""
    NO_INPUT = 66
    """An input file (body, attachment, CA file, state file) is missing or unreadable."""
    UNAVAILABLE = 69
    """The demo needs the ``testing`` extra, which is not installed."""
    SOFTWARE = 70
    """An internal error: a bug in mailhandlers."""
    CANT_CREATE = 73
    """An output file, directory or the state file could not be written."""
    TEMP_FAIL = 75
    """Try again later: unreachable, timed out, busy, or a transient (4xx) reply."""
    INTERRUPTED = 130
    """Interrupted (Ctrl-C); a POP3 session ends without QUIT, deleting nothing."""


class CLIError(Exception):
    """A failure reported as one line on stderr and an exit code, never a traceback."""

    def __init__(self, message: str, code: ExitCode = ExitCode.FAILED) -> None:
        super().__init__(message)
        self.code = code


class OneLineParser(argparse.ArgumentParser):
    """An argument parser whose mistakes are one line, not the whole usage text."""

    def error(self, message: str) -> NoReturn:
        raise CLIError(f"{message} (see '{self.prog} --help')", ExitCode.USAGE)


# -- argument types -----------------------------------------------------------------


def port_number(text: str) -> int:
    """An argparse type: a TCP port from 1 to 65535."""
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (1 to 65535)")
    return int(text)


def positive_seconds(text: str) -> float:
    """An argparse type: a positive number of seconds."""
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of seconds")
    return value


def count(text: str) -> int:
    """An argparse type: a whole number, zero or more."""
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number (0 or more)")
    return int(text)


def message_number(text: str) -> int:
    """An argparse type: a POP3 message number (1 or more)."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a message number (1 or more)")
    return int(text)


# -- shared options -----------------------------------------------------------------


def add_verbose_option(parser: argparse.ArgumentParser) -> None:
    """``-v/--verbose`` on a subcommand, without hiding one given before the command."""
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        default=argparse.SUPPRESS,
        help="show the library's debug log on stderr, passwords redacted",
    )


def add_connection_options(
    parser: argparse.ArgumentParser, protocol: str | None, *, user_required: bool = False
) -> None:
    """Server address, encryption, login and TLS trust options.

    ``protocol`` picks the defaults shown in the help; ``None`` (``check``) decides
    them later from ``--protocol``.
    """
    group = parser.add_argument_group("server")
    group.add_argument("--host", required=True, help="server host name or IP address")
    if protocol is None:
        port_help = "server port (default: by protocol and encryption)"
        encryption_help = (
            "tls = upgraded with STARTTLS (SMTP) or STLS (POP3), ssl = TLS from the first "
            "byte, none = no encryption (default: tls for smtp, ssl for pop3)"
        )
    else:
        ports = DEFAULT_PORTS[protocol]
        port_help = f"server port (default: {ports['tls']} for tls, {ports['ssl']} for ssl, " + (
            f"{ports['none']} for none)"
        )
        upgrade = "STARTTLS" if protocol == "smtp" else "STLS"
        encryption_help = (
            f"tls = plain connection upgraded with {upgrade}, ssl = TLS from the first byte, "
            f"none = no encryption (default: {DEFAULT_ENCRYPTION[protocol]})"
        )
    group.add_argument("--port", type=port_number, help=port_help)
    group.add_argument("--encryption", choices=ENCRYPTIONS, help=encryption_help)
    group.add_argument(
        "--cafile",
        metavar="PEM",
        help="trust the CA certificates in this file instead of the system's",
    )
    group.add_argument(
        "--timeout",
        type=positive_seconds,
        default=30.0,
        metavar="SECONDS",
        help="seconds to wait for each server reply (default: 30)",
    )
    login = parser.add_argument_group("login")
    login.add_argument(
        "--user",
        required=user_required,
        help="user name to log in with" + ("" if user_required else " (default: no login)"),
    )
    login.add_argument(
        "--password-env",
        default=DEFAULT_PASSWORD_ENV,
        metavar="NAME",
        help=(
            "environment variable holding the password (default: %(default)s); when it "
            "is unset and stdin is a terminal, the password is asked for"
        ),
    )


def resolve_server(args: argparse.Namespace, protocol: str) -> tuple[str, int]:
    """The encryption and port to use, filling in the protocol's defaults."""
    encryption: str = args.encryption or DEFAULT_ENCRYPTION[protocol]
    port: int = args.port or DEFAULT_PORTS[protocol][encryption]
    return encryption, port


def read_password(args: argparse.Namespace, redactor: Redactor) -> str | None:
    """The password for ``--user``: from the environment, else a prompt, else an error.

    Returns None when no ``--user`` was given. The password is registered with
    ``redactor`` so that it never appears in verbose output.
    """
    user: str | None = args.user
    if not user:
        return None
    name: str = args.password_env
    password = os.environ.get(name) or _prompt(user, args.host, name)
    redactor.add(password, user)
    if args.encryption == "none":
        warn(f"the password for {user} goes to {args.host} unencrypted (--encryption none)")
    return password


def _prompt(user: str, host: str, variable: str) -> str:
    stdin = sys.stdin
    if stdin is None or not stdin.isatty():
        raise CLIError(
            f"no password for {user}: set the {variable} environment variable "
            "(or run in a terminal to be asked)",
            ExitCode.USAGE,
        )
    try:
        return getpass.getpass(f"Password for {user} at {host}: ")
    except EOFError:
        raise CLIError("no password entered", ExitCode.USAGE) from None


def client_ssl_context(
    cafile: str | None, context_class: type[ssl.SSLContext] = ssl.SSLContext
) -> ssl.SSLContext:
    """A verifying client context (TLS 1.2+) trusting ``cafile``, or the system's CAs."""
    context = context_class(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if cafile is None:
        context.load_default_certs(ssl.Purpose.SERVER_AUTH)
        return context
    try:
        context.load_verify_locations(cafile=cafile)
    except FileNotFoundError:
        raise CLIError(f"CA file {cafile} does not exist", ExitCode.NO_INPUT) from None
    except (ssl.SSLError, OSError, ValueError) as error:
        detail = getattr(error, "strerror", None) or "no PEM certificates in it"
        raise CLIError(f"cannot use CA file {cafile}: {detail}", ExitCode.NO_INPUT) from None
    return context


def optional_ssl_context(cafile: str | None) -> ssl.SSLContext | None:
    """The context for ``--cafile``, or None for the library's shared default."""
    return None if cafile is None else client_ssl_context(cafile)


def warn(message: str) -> None:
    """Print a one-line warning on stderr."""
    print(f"mailhandlers: warning: {clean(message)}", file=sys.stderr)
