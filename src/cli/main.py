"""The ``mailhandlers`` entry point: parse, dispatch, and turn failures into exit codes.

A mistake the user can fix (a bad option, an unreachable host, a refused login, a
missing file) becomes one line on stderr and a non-zero exit status; a traceback
appears only for a bug, and only with ``--verbose``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

from .. import __version__
from ..handlers.errors import MailAuthenticationError, MailHandlerError, MailValidationError
from ..handlers.retry import is_retryable
from . import check, demo, fetch, send
from .common import CLIError, ExitCode, OneLineParser
from .output import clean
from .verbose import Redactor, verbose_logging

log = logging.getLogger(__name__)

Command = Callable[[argparse.Namespace, Redactor], int]

EPILOG = """\
exit status: 0 success, 1 mail failure, 2 usage error, 66 input file missing,
69 demo extra missing, 70 internal error, 73 cannot write output, 75 temporary
failure (try again later), 130 interrupted.
The password comes from $MAILHANDLERS_PASSWORD (see --password-env) or a prompt."""


def build_parser() -> argparse.ArgumentParser:
    """The full parser with every subcommand."""
    parser = OneLineParser(
        prog="mailhandlers",
        description="Send mail over SMTP and fetch it over POP3.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="show the debug log, passwords redacted"
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in (send, fetch, check, demo):
        module.add_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with ``argv`` (default: ``sys.argv[1:]``); return the exit code."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    redactor = Redactor()
    verbose = False
    try:
        _refuse_password_argument(arguments)
        args = _parse(arguments)
        if isinstance(args, int):
            return int(args)
        verbose = bool(args.verbose)
        with verbose_logging(verbose, redactor):
            command: Command = args.run
            return int(command(args, redactor))
    except CLIError as error:
        message, code = str(error), error.code
    except KeyboardInterrupt:
        message, code = "interrupted", ExitCode.INTERRUPTED
    except MailHandlerError as error:
        message, code = _describe(error), _exit_code(error)
    except Exception as error:
        if verbose:
            with verbose_logging(True, redactor):
                log.exception("internal error")
        detail = "" if verbose else " (run with --verbose for details)"
        message = f"internal error: {type(error).__name__}{detail}"
        code = ExitCode.SOFTWARE
    return _fail(redactor.redact(message), code)


def _parse(arguments: list[str]) -> argparse.Namespace | int:
    """The parsed arguments, or the exit code when argparse finished (--help, --version)."""
    try:
        return build_parser().parse_args(arguments)
    except SystemExit as done:
        return done.code if isinstance(done.code, int) else ExitCode.OK


def _refuse_password_argument(arguments: list[str]) -> None:
    # Checked before parsing so that the value is never echoed in an error message.
    for argument in arguments:
        if argument == "--password" or argument.startswith("--password="):
            raise CLIError(
                "there is no --password option (it would show in 'ps'): put the password "
                "in $MAILHANDLERS_PASSWORD, or leave it unset to be asked",
                ExitCode.USAGE,
            )


def _exit_code(error: MailHandlerError) -> ExitCode:
    if isinstance(error, MailValidationError):
        return ExitCode.USAGE
    # The library's own verdict: unreachable, timed out, lost, busy, a 4xx reply.
    return ExitCode.TEMP_FAIL if is_retryable(error) else ExitCode.FAILED


def _describe(error: MailHandlerError) -> str:
    if isinstance(error, MailAuthenticationError):
        return f"login refused: {error}"
    return str(error)


def _fail(message: str, code: ExitCode) -> int:
    print(f"mailhandlers: error: {clean(' '.join(message.split()))}", file=sys.stderr)
    return int(code)
