"""``mailhandlers send``: send one message and report its DeliveryResult."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ..handlers.retry import RetryPolicy
from ..handlers.smtp import (
    DeliveryResult,
    SMTPConnectionPool,
    SMTPDeliveryStatus,
    SMTPProtocolHandler,
)
from .common import (
    CLIError,
    ExitCode,
    add_connection_options,
    add_verbose_option,
    count,
    optional_ssl_context,
    read_password,
    resolve_server,
)
from .output import format_fields, print_json
from .verbose import Redactor

EXIT_CODES = {
    SMTPDeliveryStatus.SUCCESS: ExitCode.OK,
    SMTPDeliveryStatus.FAILED: ExitCode.FAILED,
    SMTPDeliveryStatus.REJECTED: ExitCode.FAILED,
    SMTPDeliveryStatus.INVALID: ExitCode.FAILED,
    SMTPDeliveryStatus.TEMP_FAILED: ExitCode.TEMP_FAIL,
    SMTPDeliveryStatus.RETRY: ExitCode.TEMP_FAIL,
}

DESCRIPTION = """\
Send one message over SMTP and print the DeliveryResult. Exit status: 0 success,
1 failed/rejected/invalid, 75 temporary failure (try again later)."""


def add_parser(commands: Any) -> None:
    """Register ``send`` on the subcommand table."""
    parser: argparse.ArgumentParser = commands.add_parser(
        "send", help="send a message", description=DESCRIPTION, allow_abbrev=False
    )
    add_connection_options(parser, "smtp")
    smtp = parser.add_argument_group("smtp")
    smtp.add_argument(
        "--retries",
        type=count,
        default=0,
        metavar="N",
        help="retry transient failures N times, waiting 1, 5, 30 s (default: 0, exit 75 instead)",
    )
    smtp.add_argument("--ehlo-name", metavar="NAME", help="name to greet the server with")
    message = parser.add_argument_group("message")
    message.add_argument(
        "--from", dest="sender", required=True, metavar="ADDRESS", help="sender address"
    )
    for name, what in (("--to", "recipients"), ("--cc", "copy to"), ("--bcc", "blind copy to")):
        message.add_argument(
            name,
            action="extend",
            nargs="+",
            default=[],
            required=name == "--to",
            metavar="ADDRESS",
            help=f"{what} (repeatable; 'Name <address>' allowed)",
        )
    message.add_argument("--reply-to", metavar="ADDRESS", help="where replies should go")
    message.add_argument("--subject", default="", help="subject line (default: empty)")
    body = message.add_mutually_exclusive_group()
    body.add_argument("--text", help="plain-text body")
    body.add_argument(
        "--text-file", metavar="PATH", help="plain-text body from a UTF-8 file, - for stdin"
    )
    message.add_argument("--html-file", metavar="PATH", help="HTML body from a UTF-8 file")
    message.add_argument(
        "--attach", action="append", default=[], metavar="PATH", help="attach a file (repeatable)"
    )
    message.add_argument(
        "--header",
        action="append",
        default=[],
        metavar="'NAME: VALUE'",
        help="add a custom header (repeatable)",
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    add_verbose_option(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace, redactor: Redactor) -> int:
    """Send the message described by ``args``; return the exit code for its status."""
    headers = _parse_headers(args.header)
    text = _read_text(args.text_file) if args.text_file else args.text
    html = _read_utf8(args.html_file) if args.html_file else None
    attachments = [{"filename": Path(p).name, "content": _read_file(p)} for p in args.attach]
    password = read_password(args, redactor)
    result = _send(args, password, text, html, attachments, headers)
    if args.json:
        print_json(result.to_dict())
    else:
        print(format_result(result))
    return EXIT_CODES[result.status]


def _send(
    args: argparse.Namespace,
    password: str | None,
    text: str | None,
    html: str | None,
    attachments: list[dict[str, Any]],
    headers: dict[str, str],
) -> DeliveryResult:
    encryption, port = resolve_server(args, "smtp")
    try:
        handler = SMTPProtocolHandler(
            args.host,
            port,
            username=args.user,
            password=password,
            encryption=encryption,
            timeout=args.timeout,
            ssl_context=optional_ssl_context(args.cafile),
            local_hostname=args.ehlo_name,
            retry=RetryPolicy(max_retries=args.retries),
            pool=SMTPConnectionPool(max_connections=1),
            trace=args.verbose,
        )
    except ValueError as error:
        raise CLIError(str(error), ExitCode.USAGE) from None
    with handler:
        return handler.send_message(
            to_addresses=args.to,
            subject=args.subject,
            text_body=text,
            html_body=html,
            cc_addresses=args.cc,
            bcc_addresses=args.bcc,
            reply_to=args.reply_to,
            attachments=attachments,
            custom_headers=headers,
            from_address=args.sender,
            retry=args.retries > 0,
        )


def format_result(result: DeliveryResult) -> str:
    """A DeliveryResult as a two-column table, one line per refused recipient."""
    data = result.to_dict()
    pairs: list[tuple[str, object]] = [
        (name, value) for name, value in data.items() if name != "recipient_failures"
    ]
    failures = data["recipient_failures"] or {"": None}
    for index, (address, reason) in enumerate(failures.items()):
        label = "recipient_failures" if index == 0 else ""
        pairs.append((label, f"{address}: {reason}" if address else None))
    return format_fields(pairs)


def _parse_headers(items: list[str]) -> dict[str, str]:
    headers: dict[str, str] = {}
    for item in items:
        name, colon, value = item.partition(":")
        if not colon or not name.strip():
            raise CLIError(f"--header {item!r} is not in the form 'Name: value'", ExitCode.USAGE)
        headers[name.strip()] = value.strip()
    return headers


def _read_text(path: str) -> str:
    return sys.stdin.read() if path == "-" else _read_utf8(path)


def _read_utf8(path: str) -> str:
    try:
        return _read_file(path).decode("utf-8")
    except UnicodeDecodeError:
        raise CLIError(f"{path} is not UTF-8 text", ExitCode.NO_INPUT) from None


def _read_file(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise CLIError(f"file {path} does not exist", ExitCode.NO_INPUT) from None
    except IsADirectoryError:
        raise CLIError(f"{path} is a directory, not a file", ExitCode.NO_INPUT) from None
    except OSError as error:
        raise CLIError(f"cannot read {path}: {error.strerror}", ExitCode.NO_INPUT) from None
