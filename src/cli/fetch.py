"""``mailhandlers fetch``: list, fetch, save and (safely) delete POP3 messages.

Everything happens in one logged-in session. Deletions are asked for only after
every fetched message was saved durably (see :mod:`src.cli.files`) and are committed
by the closing ``QUIT``; a run that fails or is interrupted before then deletes
nothing that was not saved.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..handlers._sync.uid_store import FileUIDStore
from ..handlers.errors import MailHandlerError, POP3MessageTooLargeError, POP3UnsupportedError
from ..handlers.pop3 import DEFAULT_MAX_MESSAGE_SIZE, POP3ProtocolHandler
from ..handlers.retry import RetryPolicy
from .common import (
    CLIError,
    ExitCode,
    add_connection_options,
    add_verbose_option,
    count,
    message_number,
    optional_ssl_context,
    read_password,
    resolve_server,
    warn,
)
from .files import eml_name, prepare_directory, save_durably
from .output import ProgressBar, format_table, print_json
from .verbose import Redactor

DESCRIPTION = """\
List or fetch messages over POP3. Without --message, --all or --since-last the
mailbox is listed. Messages are saved as .eml files named after their unique ID."""

Message = dict[str, Any]


@dataclass
class FetchReport:
    """What one run did, for printing."""

    messages: list[Message] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    skipped: int = 0
    deleted: int = 0


def add_parser(commands: Any) -> None:
    """Register ``fetch`` on the subcommand table."""
    parser: argparse.ArgumentParser = commands.add_parser(
        "fetch", help="list or fetch messages (POP3)", description=DESCRIPTION, allow_abbrev=False
    )
    add_connection_options(parser, "pop3", user_required=True)
    parser.add_argument(
        "--retries",
        type=count,
        default=0,
        metavar="N",
        help="retry a failed connection N times, waiting 1, 2, 4... s (default: 0)",
    )
    what = parser.add_argument_group("what to fetch").add_mutually_exclusive_group()
    what.add_argument("--list", action="store_true", help="list the mailbox (the default)")
    what.add_argument("--message", type=message_number, metavar="N", help="fetch message N")
    what.add_argument("--all", action="store_true", help="fetch every message")
    what.add_argument(
        "--since-last",
        action="store_true",
        help="fetch only messages whose unique ID is not in --state yet (UIDL sync)",
    )
    options = parser.add_argument_group("fetch options")
    options.add_argument(
        "--state", metavar="FILE", help="with --since-last: file of unique IDs already fetched"
    )
    options.add_argument("--output-dir", metavar="DIR", help="save each message as DIR/<uid>.eml")
    options.add_argument(
        "--delete",
        action="store_true",
        help="delete fetched messages from the server once saved (needs --output-dir)",
    )
    options.add_argument(
        "--max-size",
        type=count,
        default=DEFAULT_MAX_MESSAGE_SIZE,
        metavar="BYTES",
        help="skip larger messages (default: %(default)s; 0 = no limit)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    add_verbose_option(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace, redactor: Redactor) -> int:
    """Carry out one ``fetch`` invocation; return its exit code."""
    _check_options(args)
    password = read_password(args, redactor) or ""
    directory = prepare_directory(args.output_dir) if args.output_dir else None
    store = _open_store(args.state) if args.since_last else None
    handler = _make_handler(args, password)
    listing: list[Message] | None = None
    with handler.session():
        if store is not None:
            report = _sync(handler, store, directory, args.delete)
        elif args.message is not None or args.all:
            report = _fetch(handler, args.message, directory, args.delete)
        else:
            listing = _listing(handler)
    if listing is not None:
        _print_listing(listing, args.json)
        return ExitCode.OK
    _print_report(report, args.json)
    return ExitCode.FAILED if report.failed else ExitCode.OK


def _check_options(args: argparse.Namespace) -> None:
    fetching = args.message is not None or args.all or args.since_last
    if args.since_last and not args.state:
        raise CLIError(
            "--since-last needs --state FILE to remember what was fetched", ExitCode.USAGE
        )
    if args.state and not args.since_last:
        raise CLIError("--state is only used with --since-last", ExitCode.USAGE)
    if args.output_dir and not fetching:
        raise CLIError("--output-dir needs --message, --all or --since-last", ExitCode.USAGE)
    if args.delete and not args.output_dir:
        raise CLIError(
            "--delete needs --output-dir: a message is deleted only once it is saved",
            ExitCode.USAGE,
        )


def _open_store(path: str) -> FileUIDStore:
    parent = Path(path).parent
    if not parent.is_dir():
        message = f"directory {parent} for the --state file does not exist"
        raise CLIError(message, ExitCode.CANT_CREATE)
    try:
        return FileUIDStore(path)
    except ValueError:
        raise CLIError(f"{path} is not a mailhandlers state file", ExitCode.USAGE) from None
    except OSError as error:
        raise CLIError(f"cannot read {path}: {error.strerror}", ExitCode.NO_INPUT) from None


def _make_handler(args: argparse.Namespace, password: str) -> POP3ProtocolHandler:
    encryption, port = resolve_server(args, "pop3")
    retry = (
        RetryPolicy.exponential(max_retries=args.retries) if args.retries else RetryPolicy.never()
    )
    return POP3ProtocolHandler(
        args.host,
        port,
        args.user,
        password,
        encryption,
        args.timeout,
        ssl_context=optional_ssl_context(args.cafile),
        retry=retry,
        max_message_size=args.max_size or None,
        include_raw=True,
        trace=args.verbose,
    )


# -- listing --------------------------------------------------------------------------


def _listing(handler: POP3ProtocolHandler) -> list[Message]:
    uids = _uids(handler)
    try:
        summaries = handler.list_headers()
    except POP3UnsupportedError:
        numbers, _ = handler.list_messages()
        summaries = [{"messageId": n, "size": handler.get_message_size(n)} for n in numbers]
    return [
        {
            "number": summary["messageId"],
            "uid": uids.get(summary["messageId"]),
            "size": summary.get("size"),
            "receivedAt": summary.get("receivedAt", 0),
            "from": summary.get("from", ""),
            "subject": summary.get("subject", ""),
        }
        for summary in summaries
    ]


def _uids(handler: POP3ProtocolHandler) -> dict[int, str]:
    try:
        return handler.list_uids()
    except POP3UnsupportedError:
        return {}


# -- fetching -------------------------------------------------------------------------


def _fetch(
    handler: POP3ProtocolHandler, number: int | None, directory: Path | None, delete: bool
) -> FetchReport:
    uids = _uids(handler)
    numbers = [number] if number is not None else handler.list_messages()[0]
    report = FetchReport()
    saved: list[int] = []
    progress = ProgressBar(len(numbers))
    try:
        for current in numbers:
            message = _fetch_one(handler, current, report)
            if message is not None:
                message["uid"] = uids.get(current)
                if _keep(message, directory, report):
                    saved.append(current)
            progress.advance()
    finally:
        progress.close()
    if delete:
        report.deleted = _delete(handler, saved)
    return report


def _fetch_one(handler: POP3ProtocolHandler, number: int, report: FetchReport) -> Message | None:
    try:
        message = handler.fetch_message(number)
    except POP3MessageTooLargeError as error:
        report.failed.append(f"message {number}: {error}")
        return None
    if message is None:
        report.failed.append(f"message {number}: no such message, or refused by the server")
    return message


def _keep(message: Message, directory: Path | None, report: FetchReport) -> bool:
    """Save ``message`` if asked, then add it to the report; True if it was saved."""
    raw: bytes = message.pop("raw")
    saved = False
    if directory is not None:
        name = eml_name(message.get("uid"), message["messageId"], raw)
        try:
            message["savedTo"] = str(save_durably(directory, name, raw))
        except OSError as error:
            raise CLIError(f"cannot save {name}: {error.strerror}", ExitCode.CANT_CREATE) from None
        saved = True
    report.messages.append(message)
    return saved


def _delete(handler: POP3ProtocolHandler, numbers: list[int]) -> int:
    deleted, _ = handler.delete_messages(numbers) if numbers else (0, 0)
    return deleted


# -- incremental sync -----------------------------------------------------------------


def _sync(
    handler: POP3ProtocolHandler, store: FileUIDStore, directory: Path | None, delete: bool
) -> FetchReport:
    uids = handler.list_uids()
    report = FetchReport()
    progress = ProgressBar(len({uid for uid in uids.values() if uid not in store}))
    described: set[str] = set()

    def take(message: Message) -> None:
        try:
            _keep(message, directory, report)
        except CLIError as error:
            report.failed.append(f"{message['uid']}: {error}")
            described.add(message["uid"])
            raise
        progress.advance()

    try:
        result = handler.sync(store, take, delete_after=False)
    except MailHandlerError:
        raise
    except OSError as error:
        message = f"cannot update {store.path}: {error.strerror}"
        raise CLIError(message, ExitCode.CANT_CREATE) from None
    finally:
        progress.close()
    report.skipped = result.skipped
    report.failed += [
        f"{uid}: refused or too large" for uid in result.failed_uids if uid not in described
    ]
    if delete and directory is not None:
        report.deleted = _delete(handler, _saved_numbers(uids, store, directory))
    return report


def _saved_numbers(uids: dict[int, str], store: FileUIDStore, directory: Path) -> list[int]:
    """Messages recorded as fetched whose file is in ``directory``.

    Earlier runs may have saved messages without deleting them (a run that died
    before QUIT); their files show they are safe to delete now.
    """
    return [
        number
        for number, uid in sorted(uids.items())
        if uid in store and (directory / eml_name(uid, number, b"")).is_file()
    ]


# -- printing -------------------------------------------------------------------------


def _date(milliseconds: object) -> str:
    if not isinstance(milliseconds, int) or milliseconds <= 0:
        return "-"
    return datetime.fromtimestamp(milliseconds / 1000, UTC).strftime("%Y-%m-%d %H:%M")


def _print_listing(entries: list[Message], as_json: bool) -> None:
    if as_json:
        print_json({"messages": entries})
        return
    rows = [
        (e["number"], e["uid"], e["size"], _date(e["receivedAt"]), e["from"], e["subject"])
        for e in entries
    ]
    if rows:
        print(format_table(("#", "uid", "size", "date (UTC)", "from", "subject"), rows))
    print(f"{len(entries)} message(s)")


def _print_report(report: FetchReport, as_json: bool) -> None:
    for failure in report.failed:
        warn(f"not fetched: {failure}")
    if as_json:
        print_json(
            {
                "messages": report.messages,
                "skipped": report.skipped,
                "deleted": report.deleted,
                "failed": report.failed,
            }
        )
        return
    rows = [
        (
            m["messageId"],
            m.get("uid"),
            m["size"],
            _date(m["receivedAt"]),
            m["from"],
            m["subject"],
            m["attachmentCount"],
            Path(m["savedTo"]).name if "savedTo" in m else None,
        )
        for m in report.messages
    ]
    headers = ("#", "uid", "size", "date (UTC)", "from", "subject", "attachments", "saved as")
    if rows:
        print(format_table(headers, rows))
    print(
        f"{len(report.messages)} fetched, {report.skipped} already seen, "
        f"{report.deleted} deleted, {len(report.failed)} failed"
    )
