"""The ``mailhandlers`` command line, run in-process against loopback test servers.

Most tests call ``main(argv)`` and read stdout/stderr with ``capsys``; two run it as
``python -m src`` in a subprocess. Every server is started here on port 0 and
stopped by its fixture.
"""

from __future__ import annotations

import base64
import io
import json
import os
import smtplib
import socket
import ssl
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from paths import ROOT

from src.cli import demo
from src.cli.main import main
from src.cli.output import ProgressBar, format_table, to_json
from src.cli.verbose import Redactor
from src.handlers.pop3 import POP3ProtocolHandler
from src.testing.pop3_server import POP3TestServer
from src.testing.smtp_server import ReceivedMessage, SMTPTestServer
from src.testing.tls import TestCertificates

USER = "alice"
PASSWORD = "correct horse battery staple"

FIRST = (
    b"From: Bob <bob@example.com>\r\nTo: alice@example.com\r\nSubject: First\r\n"
    b"Date: Mon, 02 Nov 2026 10:00:00 +0000\r\nMessage-ID: <first@example.com>\r\n\r\n"
    b"Hello Alice,\r\n.dot at the start\r\n\r\n"
)
SECOND = (
    b"From: Carol <carol@example.com>\r\nTo: alice@example.com\r\nSubject: Second\r\n"
    b"\r\nSecond body\r\n"
)
THIRD = b"From: dave@example.com\r\nSubject: Third\r\n\r\nThird body\r\n"


@dataclass
class Run:
    """The outcome of one command-line run."""

    code: int
    out: str
    err: str

    @property
    def json(self) -> Any:
        return json.loads(self.out)


CLI = Callable[..., Run]


@pytest.fixture(scope="module")
def cafile(certs: TestCertificates, tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(certs.write_files(tmp_path_factory.mktemp("ca"))["ca"])


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> CLI:
    """Runs ``main(argv)`` with the password in the environment and no terminal."""
    monkeypatch.setenv("MAILHANDLERS_PASSWORD", PASSWORD)
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))

    def run(*argv: str) -> Run:
        code = main(list(argv))
        out, err = capsys.readouterr()
        return Run(code, out, err)

    return run


@pytest.fixture
def smtp_server(server_ssl_context: ssl.SSLContext) -> Iterator[SMTPTestServer]:
    with SMTPTestServer(
        tls="starttls", ssl_context=server_ssl_context, users={USER: PASSWORD}
    ) as server:
        yield server


@pytest.fixture
def pop3_server(server_ssl_context: ssl.SSLContext) -> Iterator[POP3TestServer]:
    with POP3TestServer(
        tls="implicit", ssl_context=server_ssl_context, users={USER: PASSWORD}
    ) as server:
        server.add_message(FIRST, user=USER)
        server.add_message(SECOND, user=USER)
        yield server


def smtp_options(server: SMTPTestServer, cafile: str, *extra: str) -> list[str]:
    return [
        "--host", server.host, "--port", str(server.port), "--cafile", cafile,
        "--user", USER, "--ehlo-name", "localhost", *extra,
    ]  # fmt: skip


def send_args(server: SMTPTestServer, cafile: str, *extra: str) -> list[str]:
    message = ["--from", "app@example.com", "--to", "ada@example.org", "--subject", "Hello"]
    return ["send", *smtp_options(server, cafile), *message, "--text", "Hi Ada", *extra]


def fetch_args(server: POP3TestServer, cafile: str, *extra: str) -> list[str]:
    options = ["--host", server.host, "--port", str(server.port), "--cafile", cafile]
    return ["fetch", *options, "--user", USER, *extra]


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def assert_one_line_error(run: Run) -> None:
    assert run.err.startswith("mailhandlers: error: ")
    assert run.err.count("\n") == 1
    assert "Traceback" not in run.err


def dele_count(server: POP3TestServer) -> int:
    return sum(1 for command in server.commands if command.upper().startswith("DELE"))


# -- send -------------------------------------------------------------------------------


def test_send_prints_the_result_as_a_table(
    cli: CLI, smtp_server: SMTPTestServer, cafile: str
) -> None:
    run = cli(*send_args(smtp_server, cafile))
    assert run.code == 0, run.err
    assert run.err == ""
    lines = dict(line.split(None, 1) for line in run.out.splitlines() if " " in line)
    assert lines["status"].strip() == "success"
    assert lines["smtp_code"].strip() == "250"
    [received] = smtp_server.wait_for_messages(1)
    assert received["Subject"] == "Hello"
    assert received.secure and received.username == USER


def test_send_json_is_the_delivery_result(
    cli: CLI, smtp_server: SMTPTestServer, cafile: str
) -> None:
    run = cli(*send_args(smtp_server, cafile, "--json"))
    assert run.code == 0
    result = run.json
    assert result["status"] == "success"
    assert result["recipient_failures"] == {}
    [received] = smtp_server.wait_for_messages(1)
    assert received["Message-ID"] == result["message_id"]


def test_send_builds_the_message_from_files_and_options(
    cli: CLI, smtp_server: SMTPTestServer, cafile: str, tmp_path: Path
) -> None:
    html = tmp_path / "body.html"
    html.write_text("<p>Hi <b>Ada</b></p>", encoding="utf-8")
    attachment = tmp_path / "report.csv"
    attachment.write_bytes(b"month,total\n10,42\n")
    run = cli(
        *send_args(smtp_server, cafile),
        "--html-file", str(html), "--attach", str(attachment),
        "--cc", "bob@example.org", "--bcc", "hidden@example.org",
        "--reply-to", "help@example.com", "--header", "X-Ticket: 42",
    )  # fmt: skip
    assert run.code == 0, run.out
    [received] = smtp_server.wait_for_messages(1)
    message = received.message
    assert sorted(received.rcpt_tos) == ["ada@example.org", "bob@example.org", "hidden@example.org"]
    assert message["Bcc"] is None
    assert message["X-Ticket"] == "42"
    assert message["Reply-To"] == "help@example.com"
    [part] = list(message.iter_attachments())
    assert part.get_filename() == "report.csv"
    assert part.get_content() == "month,total\n10,42\n"
    body = message.get_body(("html",))
    assert body is not None and "<b>Ada</b>" in body.get_content()


def test_rejected_recipient_exits_1(cli: CLI, smtp_server: SMTPTestServer, cafile: str) -> None:
    smtp_server.faults.reject_recipients["ada@example.org"] = (550, "5.1.1 No such user")
    run = cli(*send_args(smtp_server, cafile, "--json"))
    assert run.code == 1
    assert run.json["status"] == "rejected"
    assert run.json["recipient_failures"] == {"ada@example.org": "550 5.1.1 No such user"}


def test_transient_refusal_exits_75(cli: CLI, smtp_server: SMTPTestServer, cafile: str) -> None:
    smtp_server.faults.reject_recipients["ada@example.org"] = (450, "4.2.0 Mailbox busy")
    run = cli(*send_args(smtp_server, cafile, "--json"))
    assert run.code == 75
    assert run.json["status"] == "retry"
    assert run.json["is_retryable"] is True


def test_invalid_message_exits_1_before_connecting(
    cli: CLI, smtp_server: SMTPTestServer, cafile: str
) -> None:
    run = cli(*send_args(smtp_server, cafile, "--to", "not an address", "--json"))
    assert run.code == 1
    assert run.json["status"] == "invalid"
    assert smtp_server.sessions == 0


def test_unreachable_server_exits_75(cli: CLI) -> None:
    port = str(closed_port())
    run = cli("send", "--host", "127.0.0.1", "--port", port, "--encryption", "none",
              "--from", "a@example.com", "--to", "b@example.com", "--text", "x")  # fmt: skip
    assert run.code == 75
    assert "Connection refused" in run.out or "connect" in run.out


def test_refused_login_fails_without_showing_the_password(
    cli: CLI, smtp_server: SMTPTestServer, cafile: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MAILHANDLERS_PASSWORD", "wrong-but-secret-42")
    run = cli(*send_args(smtp_server, cafile, "--json"))
    assert run.code == 1
    assert run.json["status"] == "failed"
    assert "wrong-but-secret-42" not in run.out + run.err
    assert smtp_server.messages == []


def test_password_from_a_named_variable(
    cli: CLI, smtp_server: SMTPTestServer, cafile: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MAILHANDLERS_PASSWORD")
    monkeypatch.setenv("APP_SMTP_SECRET", PASSWORD)
    run = cli(*send_args(smtp_server, cafile, "--password-env", "APP_SMTP_SECRET"))
    assert run.code == 0, run.err


def test_no_password_and_no_terminal_is_a_usage_error(
    cli: CLI, smtp_server: SMTPTestServer, cafile: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MAILHANDLERS_PASSWORD")
    run = cli(*send_args(smtp_server, cafile))
    assert run.code == 2
    assert_one_line_error(run)
    assert "MAILHANDLERS_PASSWORD" in run.err
    assert smtp_server.sessions == 0


def test_password_is_asked_for_on_a_terminal(
    cli: CLI, smtp_server: SMTPTestServer, cafile: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    prompts: list[str] = []

    def fake_getpass(prompt: str) -> str:
        prompts.append(prompt)
        return PASSWORD

    monkeypatch.delenv("MAILHANDLERS_PASSWORD")
    monkeypatch.setattr(sys, "stdin", Terminal())
    monkeypatch.setattr("src.cli.common.getpass.getpass", fake_getpass)
    run = cli(*send_args(smtp_server, cafile))
    assert run.code == 0, run.err
    assert prompts == [f"Password for {USER} at 127.0.0.1: "]


@pytest.mark.parametrize("form", [["--password", "hunter2-secret"], ["--password=hunter2-secret"]])
def test_there_is_no_password_option(cli: CLI, form: list[str]) -> None:
    run = cli("send", "--host", "127.0.0.1", *form)
    assert run.code == 2
    assert_one_line_error(run)
    assert "hunter2-secret" not in run.err
    assert "MAILHANDLERS_PASSWORD" in run.err


# -- user mistakes ------------------------------------------------------------------------


def test_user_mistakes_give_one_line_and_no_traceback(cli: CLI, tmp_path: Path) -> None:
    base = ["--host", "127.0.0.1", "--from", "a@example.com", "--to", "b@example.com"]
    cases: list[tuple[list[str], int, str]] = [
        (["send", *base, "--port", "70000"], 2, "not a port number"),
        (["send", *base, "--port", "smtp"], 2, "not a port number"),
        (["send", "--host", "127.0.0.1"], 2, "required"),
        (["send", *base, "--attach", str(tmp_path / "missing.pdf")], 66, "does not exist"),
        (["send", *base, "--html-file", str(tmp_path)], 66, "is a directory"),
        (["send", *base, "--text", "x", "--header", "NoColon"], 2, "Name: value"),
        (["send", *base, "--cafile", str(tmp_path / "ca.pem"), "--text", "x"], 66, "CA file"),
        (["fetch", "--host", "127.0.0.1"], 2, "--user"),
        (["fetch", "--host", "127.0.0.1", "--user", "u", "--all", "--delete"], 2, "--output-dir"),
        (["fetch", "--host", "127.0.0.1", "--user", "u", "--since-last"], 2, "--state"),
        (["fetch", "--host", "127.0.0.1", "--user", "u", "--message", "0"], 2, "message number"),
        (["frobnicate"], 2, "invalid choice"),
        ([], 2, "required"),
        (["send", *base, "--pass", "abbreviations-are-off"], 2, "unrecognized"),
    ]
    for argv, code, fragment in cases:
        run = cli(*argv)
        assert (run.code, run.out) == (code, ""), argv
        assert_one_line_error(run)
        assert fragment in run.err, (argv, run.err)


def test_unreachable_server_is_one_line_for_check_and_fetch(cli: CLI) -> None:
    port = str(closed_port())
    for argv in (
        ["check", "--host", "127.0.0.1", "--port", port, "--encryption", "none"],
        ["fetch", "--host", "127.0.0.1", "--port", port, "--user", "u"],
    ):
        run = cli(*argv)
        assert run.code == 75, argv
        assert_one_line_error(run)
        assert "refused" in run.err


def test_fetch_with_a_refused_login_is_one_line(
    cli: CLI, pop3_server: POP3TestServer, cafile: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MAILHANDLERS_PASSWORD", "not-the-password-77")
    run = cli(*fetch_args(pop3_server, cafile))
    assert run.code == 1
    assert_one_line_error(run)
    assert "login refused" in run.err
    assert "not-the-password-77" not in run.err


def test_a_bug_is_one_line_unless_verbose(cli: CLI, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object) -> int:
        raise RuntimeError("a bug")

    monkeypatch.setattr("src.cli.demo.run", broken)
    quiet = cli("demo")
    assert quiet.code == 70
    assert_one_line_error(quiet)
    assert "internal error: RuntimeError (run with --verbose for details)" in quiet.err
    loud = cli("demo", "--verbose")
    assert loud.code == 70
    assert "Traceback" in loud.err and "RuntimeError: a bug" in loud.err
    assert loud.err.endswith("mailhandlers: error: internal error: RuntimeError\n")


def test_version(cli: CLI) -> None:
    run = cli("--version")
    assert (run.code, run.out) == (0, "mailhandlers 0.1.0\n")


@pytest.mark.parametrize("command", ["send", "fetch", "check", "demo"])
def test_every_command_has_help(cli: CLI, command: str) -> None:
    run = cli(command, "--help")
    assert run.code == 0
    assert run.out.startswith(f"usage: mailhandlers {command}")
    assert "--verbose" in run.out


# -- fetch --------------------------------------------------------------------------------


def test_fetch_lists_the_mailbox(cli: CLI, pop3_server: POP3TestServer, cafile: str) -> None:
    run = cli(*fetch_args(pop3_server, cafile))
    assert run.code == 0, run.err
    first_uid, second_uid = pop3_server.uids(USER)
    rows = run.out.splitlines()
    assert rows[0].split() == ["#", "uid", "size", "date", "(UTC)", "from", "subject"]
    assert rows[2].split()[:2] == ["1", first_uid]
    assert "2026-11-02 10:00" in rows[2] and "First" in rows[2]
    assert rows[3].split()[:2] == ["2", second_uid] and "Second" in rows[3]
    assert rows[-1] == "2 message(s)"
    assert pop3_server.messages(USER) == [FIRST, SECOND]


def test_fetch_list_as_json(cli: CLI, pop3_server: POP3TestServer, cafile: str) -> None:
    run = cli(*fetch_args(pop3_server, cafile, "--list", "--json"))
    assert run.code == 0
    entries = run.json["messages"]
    assert [e["uid"] for e in entries] == pop3_server.uids(USER)
    assert [e["subject"] for e in entries] == ["First", "Second"]
    assert entries[0]["from"] == "bob@example.com"


def test_fetch_one_message_as_json_without_raw_bytes(
    cli: CLI, pop3_server: POP3TestServer, cafile: str
) -> None:
    run = cli(*fetch_args(pop3_server, cafile, "--message", "2", "--json"))
    assert run.code == 0
    [message] = run.json["messages"]
    assert message["subject"] == "Second"
    assert message["textBody"] == "Second body"
    assert message["uid"] == pop3_server.uids(USER)[1]
    assert "raw" not in message and "savedTo" not in message
    assert pop3_server.messages(USER) == [FIRST, SECOND]


def test_fetch_a_missing_message_exits_1(
    cli: CLI, pop3_server: POP3TestServer, cafile: str
) -> None:
    run = cli(*fetch_args(pop3_server, cafile, "--message", "9"))
    assert run.code == 1
    assert "message 9" in run.err
    assert "Traceback" not in run.err


def test_fetch_all_saves_byte_exact_eml_files(
    cli: CLI, pop3_server: POP3TestServer, cafile: str, tmp_path: Path
) -> None:
    out = tmp_path / "inbox"
    run = cli(*fetch_args(pop3_server, cafile, "--all", "--output-dir", str(out), "--json"))
    assert run.code == 0, run.err
    saved = [Path(m["savedTo"]) for m in run.json["messages"]]
    assert [p.name for p in saved] == [f"{uid}.eml" for uid in pop3_server.uids(USER)]
    assert [p.read_bytes() for p in saved] == [FIRST, SECOND]
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in saved)
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in saved)
    assert pop3_server.messages(USER) == [FIRST, SECOND]


def test_since_last_fetches_only_new_messages(
    cli: CLI, pop3_server: POP3TestServer, cafile: str, tmp_path: Path
) -> None:
    state = tmp_path / "seen.uids"
    args = fetch_args(pop3_server, cafile, "--since-last", "--state", str(state), "--json")
    first = cli(*args)
    assert first.code == 0, first.err
    assert [m["subject"] for m in first.json["messages"]] == ["First", "Second"]
    pop3_server.add_message(THIRD, user=USER)
    second = cli(*args)
    assert second.code == 0, second.err
    assert [m["subject"] for m in second.json["messages"]] == ["Third"]
    assert second.json["skipped"] == 2
    assert cli(*args).json["messages"] == []
    assert set(pop3_server.uids(USER)) <= set(state.read_text().split())


def test_delete_comes_after_the_file_and_directory_are_synced(
    cli: CLI,
    pop3_server: POP3TestServer,
    cafile: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    deletes_seen_at_fsync: list[int] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        deletes_seen_at_fsync.append(dele_count(pop3_server))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    out = tmp_path / "inbox"
    run = cli(*fetch_args(pop3_server, cafile, "--all", "--output-dir", str(out), "--delete"))
    assert run.code == 0, run.err
    assert "2 fetched, 0 already seen, 2 deleted, 0 failed" in run.out
    assert len(deletes_seen_at_fsync) >= 4  # each file and its directory entry
    assert set(deletes_seen_at_fsync) == {0}
    assert dele_count(pop3_server) == 2
    assert pop3_server.wait_idle()
    assert pop3_server.messages(USER) == []
    assert sorted(p.read_bytes() for p in out.glob("*.eml")) == sorted([FIRST, SECOND])


def test_a_crash_between_writing_and_quit_deletes_nothing(
    cli: CLI,
    pop3_server: POP3TestServer,
    cafile: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real_delete = POP3ProtocolHandler.delete_messages

    def delete_then_die(self: POP3ProtocolHandler, ids: list[int]) -> tuple[int, int]:
        real_delete(self, ids)
        raise KeyboardInterrupt  # the process goes away before QUIT

    monkeypatch.setattr(POP3ProtocolHandler, "delete_messages", delete_then_die)
    out = tmp_path / "inbox"
    run = cli(*fetch_args(pop3_server, cafile, "--all", "--output-dir", str(out), "--delete"))
    assert run.code == 130
    assert run.err == "mailhandlers: error: interrupted\n"
    assert dele_count(pop3_server) == 2
    assert not any(c.upper().startswith("QUIT") for c in pop3_server.commands)
    assert pop3_server.wait_idle()
    assert pop3_server.messages(USER) == [FIRST, SECOND]
    assert len(list(out.glob("*.eml"))) == 2


def test_a_connection_lost_at_quit_deletes_nothing(
    cli: CLI, pop3_server: POP3TestServer, cafile: str, tmp_path: Path
) -> None:
    pop3_server.faults.drop_after = "QUIT"
    out = tmp_path / "inbox"
    run = cli(*fetch_args(pop3_server, cafile, "--all", "--output-dir", str(out), "--delete"))
    assert run.code == 75
    assert_one_line_error(run)
    assert "2 deletion(s)" in run.err
    assert pop3_server.wait_idle()
    assert pop3_server.messages(USER) == [FIRST, SECOND]
    assert len(list(out.glob("*.eml"))) == 2


def test_since_last_delete_also_removes_messages_saved_earlier(
    cli: CLI, pop3_server: POP3TestServer, cafile: str, tmp_path: Path
) -> None:
    out, state = tmp_path / "inbox", tmp_path / "seen.uids"
    args = fetch_args(pop3_server, cafile, "--since-last", "--state", str(state))
    assert cli(*args, "--output-dir", str(out)).code == 0
    pop3_server.add_message(THIRD, user=USER)
    run = cli(*args, "--output-dir", str(out), "--delete")
    assert run.code == 0, run.err
    assert "1 fetched, 2 already seen, 3 deleted, 0 failed" in run.out
    assert pop3_server.wait_idle()
    assert pop3_server.messages(USER) == []
    assert sorted(p.read_bytes() for p in out.glob("*.eml")) == sorted([FIRST, SECOND, THIRD])


def test_since_last_delete_keeps_messages_that_were_never_saved(
    cli: CLI, pop3_server: POP3TestServer, cafile: str, tmp_path: Path
) -> None:
    out, state = tmp_path / "inbox", tmp_path / "seen.uids"
    args = fetch_args(pop3_server, cafile, "--since-last", "--state", str(state))
    assert cli(*args).code == 0  # recorded as seen, but not saved anywhere
    run = cli(*args, "--output-dir", str(out), "--delete")
    assert run.code == 0, run.err
    assert "0 fetched, 2 already seen, 0 deleted" in run.out
    assert pop3_server.wait_idle()
    assert pop3_server.messages(USER) == [FIRST, SECOND]


def test_fetch_from_a_server_without_uidl_or_top(cli: CLI, tmp_path: Path) -> None:
    with POP3TestServer(uidl=False, top=False, users={USER: PASSWORD}) as server:
        server.add_message(FIRST, user=USER)
        options = ["fetch", "--host", server.host, "--port", str(server.port)]
        options += ["--encryption", "none", "--user", USER]
        listing = cli(*options, "--json")
        saved = cli(*options, "--all", "--output-dir", str(tmp_path), "--json")
        sync = cli(*options, "--since-last", "--state", str(tmp_path / "seen.uids"))
    assert listing.code == 0
    assert listing.json["messages"] == [
        {"number": 1, "uid": None, "size": len(FIRST), "receivedAt": 0, "from": "", "subject": ""}
    ]
    assert saved.code == 0
    [message] = saved.json["messages"]
    assert Path(message["savedTo"]).name.startswith("message-1-")
    assert Path(message["savedTo"]).read_bytes() == FIRST
    assert sync.code == 1
    assert "UIDL" in sync.err.splitlines()[-1]
    assert "Traceback" not in sync.err


def test_progress_bar_only_on_a_terminal(
    cli: CLI, pop3_server: POP3TestServer, cafile: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    piped = cli(*fetch_args(pop3_server, cafile, "--all"))
    assert "\r" not in piped.out
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    terminal = cli(*fetch_args(pop3_server, cafile, "--all"))
    assert terminal.code == 0
    assert "] 1/2 messages" in terminal.out and "] 2/2 messages" in terminal.out
    assert terminal.out.split("\r")[-1].lstrip().startswith("#")  # the bar was erased


def test_progress_bar_draws_and_erases() -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    stream = Terminal()
    bar = ProgressBar(4, stream)
    for _ in range(4):
        bar.advance()
    bar.close()
    frames = stream.getvalue().split("\r")
    assert frames[1].startswith("[#######") and frames[1].endswith("1/4 messages")
    assert frames[4] == f"[{'#' * ProgressBar.WIDTH}] 4/4 messages"
    assert frames[-1] == "" and frames[-2].strip() == ""
    silent = io.StringIO()
    ProgressBar(4, silent).advance()
    assert silent.getvalue() == ""


# -- check --------------------------------------------------------------------------------


def test_check_smtp_shows_tls_certificate_capabilities_and_login(
    cli: CLI, smtp_server: SMTPTestServer, cafile: str
) -> None:
    run = cli("check", *smtp_options(smtp_server, cafile))
    assert run.code == 0, run.err
    fields: dict[str, str] = {}
    for line in run.out.splitlines():
        name, _, value = line.partition("  ")
        fields.setdefault(name.strip(), value.strip())
    assert fields["tls"].startswith("TLSv1.")
    assert "trustme" in fields["certificate"]
    assert "127.0.0.1" in fields["names"]
    assert "AUTH LOGIN PLAIN" in run.out
    assert fields["auth"] == f"ok (as {USER})"


def test_check_smtp_json_and_refused_login(
    cli: CLI, smtp_server: SMTPTestServer, cafile: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MAILHANDLERS_PASSWORD", "nope-nope-nope")
    run = cli("check", *smtp_options(smtp_server, cafile), "--json")
    assert run.code == 1
    report = run.json
    assert report["encryption"] == "tls"
    assert report["tls"]["version"].startswith("TLSv1.")
    assert report["auth_ok"] is False and report["auth"].startswith("refused: 535")
    assert "nope-nope-nope" not in run.out + run.err


def test_check_plain_smtp_without_a_user(cli: CLI) -> None:
    with SMTPTestServer() as server:
        run = cli("check", "--host", server.host, "--port", str(server.port),
                  "--encryption", "none", "--ehlo-name", "localhost", "--json")  # fmt: skip
    assert run.code == 0
    assert run.json["tls"] is None
    assert run.json["auth_ok"] is None and run.json["auth"].startswith("not tried")
    assert "SMTPUTF8" in run.json["capabilities"]


def test_check_pop3_shows_tls_capabilities_and_login(
    cli: CLI, pop3_server: POP3TestServer, cafile: str
) -> None:
    options = ["--host", pop3_server.host, "--port", str(pop3_server.port), "--cafile", cafile]
    run = cli("check", "--protocol", "pop3", *options, "--user", USER, "--json")
    assert run.code == 0, run.err
    report = run.json
    assert report["encryption"] == "ssl"
    assert report["tls"]["version"].startswith("TLSv1.")
    assert "trustme" in report["tls"]["subject"]
    assert {"UIDL", "TOP", "USER"} <= set(report["capabilities"])
    assert report["auth_ok"] is True
    assert pop3_server.messages(USER) == [FIRST, SECOND]


def test_check_pop3_refused_login(
    cli: CLI, pop3_server: POP3TestServer, cafile: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MAILHANDLERS_PASSWORD", "bad-pop3-password")
    options = ["--host", pop3_server.host, "--port", str(pop3_server.port), "--cafile", cafile]
    run = cli("check", "--protocol", "pop3", *options, "--user", USER)
    assert run.code == 1
    assert "auth          refused" in run.out
    assert "bad-pop3-password" not in run.out + run.err


def test_check_refuses_an_untrusted_certificate(cli: CLI, smtp_server: SMTPTestServer) -> None:
    run = cli("check", "--host", smtp_server.host, "--port", str(smtp_server.port),
              "--ehlo-name", "localhost")  # fmt: skip
    assert run.code == 1
    assert_one_line_error(run)
    assert "could not be verified" in run.err


# -- verbose ------------------------------------------------------------------------------


def _secret_forms() -> list[str]:
    encoded = [PASSWORD, f"\0{USER}\0{PASSWORD}", f"{USER}\0{USER}\0{PASSWORD}"]
    return [PASSWORD, *(base64.b64encode(f.encode()).decode() for f in encoded)]


def test_verbose_send_shows_the_dialogue_but_no_secret(
    cli: CLI, smtp_server: SMTPTestServer, cafile: str
) -> None:
    run = cli("--verbose", *send_args(smtp_server, cafile))
    assert run.code == 0
    assert ">> MAIL FROM:<app@example.com>" in run.err
    assert "AUTH PLAIN ***" in run.err or "AUTH LOGIN" in run.err
    for secret in _secret_forms():
        assert secret not in run.err + run.out


def test_verbose_fetch_masks_the_password(
    cli: CLI, pop3_server: POP3TestServer, cafile: str
) -> None:
    run = cli(*fetch_args(pop3_server, cafile, "-v"))
    assert run.code == 0
    assert "AUTH PLAIN ***" in run.err
    assert ">> UIDL" in run.err
    for secret in _secret_forms():
        assert secret not in run.err + run.out


def test_redactor_masks_the_password_and_its_encodings() -> None:
    redactor = Redactor()
    redactor.add(PASSWORD, USER)
    plain = base64.b64encode(f"\0{USER}\0{PASSWORD}".encode()).decode()
    login = base64.b64encode(PASSWORD.encode()).decode()
    text = f"PASS {PASSWORD} / AUTH PLAIN {plain} / {login}"
    assert redactor.redact(text) == "PASS *** / AUTH PLAIN *** / ***"


# -- output -------------------------------------------------------------------------------


def test_terminal_control_characters_from_mail_are_neutralised() -> None:
    table = format_table(["subject"], [["evil \x1b]0;pwned\x07 \x9b31m"]])
    assert "\x1b" not in table and "\x07" not in table and "\x9b" not in table
    assert "\x9b" not in to_json({"subject": "\x9b31m"})
    assert json.loads(to_json({"subject": "\x9b31m"})) == {"subject": "\x9b31m"}


# -- demo ---------------------------------------------------------------------------------


def test_smtp_test_server_hands_messages_to_on_message() -> None:
    seen: list[ReceivedMessage] = []
    with POP3TestServer() as pop3:

        def deliver(message: ReceivedMessage) -> None:
            seen.append(message)
            pop3.add_message(message.data)

        with SMTPTestServer(on_message=deliver) as smtp:
            with smtplib.SMTP(smtp.host, smtp.port, local_hostname="localhost") as client:
                client.sendmail("a@example.com", ["b@example.com"], b"Subject: x\r\n\r\nhi\r\n")
            assert smtp.messages == seen
        assert pop3.messages() == [seen[0].data]
        assert seen[0].data.startswith(b"Subject: x\r\n")


def test_demo_sends_and_fetches_back(cli: CLI) -> None:
    run = cli("demo", "--json")
    assert run.code == 0, run.err
    delivery, fetched = run.json["delivery"], run.json["fetched"]
    assert delivery["status"] == "success"
    assert fetched["messageIdHeader"] == delivery["message_id"]
    assert fetched["subject"] == "Monthly report"
    assert fetched["htmlBody"] and fetched["textBody"]
    assert [a["filename"] for a in fetched["attachments"]] == ["report.csv"]
    assert "raw" not in fetched


def test_demo_ends_with_a_one_line_verdict(cli: CLI) -> None:
    run = cli("demo")
    assert run.code == 0, run.err
    assert run.out.endswith(
        "\ndemo: OK — sent 1 message over STARTTLS+AUTH and fetched it back over POP3S, verified\n"
    )
    assert cli("demo", "--json").json["verdict"].startswith("demo: OK — ")


def test_demo_says_failed_and_why_when_the_fetched_message_differs(
    cli: CLI, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_fetch = demo._fetch

    def mangled_fetch(*args: Any) -> dict[str, Any] | None:
        fetched = real_fetch(*args)
        assert fetched is not None
        return {**fetched, "subject": "Something else"}

    monkeypatch.setattr(demo, "_fetch", mangled_fetch)
    run = cli("demo")
    assert run.code == 1
    last = run.out.splitlines()[-1]
    assert last.startswith("demo: FAILED — the fetched message's subject is 'Something else'")


def test_demo_says_failed_when_nothing_arrives(cli: CLI, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(demo, "_fetch", lambda *args: None)
    run = cli("demo", "--json")
    assert run.code == 1
    assert run.json["verdict"] == "demo: FAILED — the POP3 mailbox was empty"


def _python_m_src(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "src", *argv],
        capture_output=True, text=True, timeout=120, cwd=ROOT, check=False,
    )  # fmt: skip


def test_python_m_src_help() -> None:
    done = _python_m_src("--help")
    assert done.returncode == 0, done.stderr
    for command in ("send", "fetch", "check", "demo"):
        assert command in done.stdout
    assert "exit status" in done.stdout


def test_python_m_src_demo() -> None:
    done = _python_m_src("demo")
    assert done.returncode == 0, done.stderr
    assert '"status": "success"' in done.stdout
    assert '"subject": "Monthly report"' in done.stdout
    assert done.stdout.splitlines()[-1].startswith("demo: OK — ")
    assert done.stderr == ""
