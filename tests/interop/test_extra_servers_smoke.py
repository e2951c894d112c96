"""The extra servers themselves, checked with the standard library only: what each
advertises, that the greetings are our instances', and that stop() ends every process."""

from __future__ import annotations

import poplib
import shutil
import smtplib
import tempfile
from pathlib import Path

import pytest

from src.testing.tls import TestCertificates

from .extra_servers import Exim, MailutilsPOP3, OpenSMTPD
from .mailstack import MailStack
from .processes import group_members, pid_alive

TIMEOUT = 10


def _ehlo(host: str, port: int) -> set[str]:
    """The EHLO keywords a listener advertises (in plain text), upper-cased."""
    with smtplib.SMTP(host, port, timeout=TIMEOUT) as smtp:
        smtp.ehlo("client.example.test")
        return {name.upper() for name in smtp.esmtp_features}


def test_opensmtpd_advertises_dsn_and_8bitmime_but_no_pipelining(opensmtpd: OpenSMTPD) -> None:
    plain = _ehlo(opensmtpd.host, opensmtpd.port("plain"))
    assert {"8BITMIME", "DSN", "STARTTLS", "SIZE", "ENHANCEDSTATUSCODES"} <= plain
    assert "PIPELINING" not in plain and "AUTH" not in plain
    # AUTH only after STARTTLS on the submission listener (which OpenSMTPD cannot finish).
    submission = _ehlo(opensmtpd.host, opensmtpd.port("submission"))
    assert "AUTH" not in submission and "STARTTLS" in submission


def test_exim_advertises_pipelining_chunking_and_smtputf8(exim: Exim) -> None:
    plain = _ehlo(exim.host, exim.port("plain"))
    assert {"PIPELINING", "CHUNKING", "SMTPUTF8", "8BITMIME", "STARTTLS", "SIZE"} <= plain
    assert "AUTH" not in plain
    with smtplib.SMTP(exim.host, exim.port("submission"), timeout=TIMEOUT) as smtp:
        smtp.starttls(context=exim.client_ssl_context())
        smtp.ehlo()
        assert smtp.esmtp_features["auth"].split() == ["PLAIN", "LOGIN"]


def test_mtas_greet_as_our_instances(opensmtpd: OpenSMTPD, exim: Exim) -> None:
    for server in (opensmtpd, exim):
        with smtplib.SMTP(timeout=TIMEOUT) as smtp:
            code, banner = smtp.connect(server.host, server.port("plain"))
            assert code == 220 and server.instance in banner.decode()


def test_pop3d_capabilities_and_greeting(mailutils_pop3d: MailutilsPOP3) -> None:
    client = poplib.POP3(mailutils_pop3d.host, mailutils_pop3d.ports["pop3"], timeout=TIMEOUT)
    try:
        assert client.getwelcome().startswith(b"+OK POP3 Ready <")
        capabilities = client.capa()
    finally:
        client.quit()
    # RFC 2449 writes "EXPIRE 30"; pop3d 3.15 runs the two together.
    assert "EXPIRE30" in capabilities and "STLS" in capabilities


def _stopped_cleanly(pid: int) -> bool:
    return not pid_alive(pid) and not group_members(pid)


def test_exim_and_pop3d_stop_by_pid(mail_stack: MailStack, certs: TestCertificates) -> None:
    """A second Exim and pop3d, started and stopped: no process of theirs is left.
    (A second OpenSMTPD cannot run beside the session's: its control socket and
    spool are fixed paths.)"""
    directories = [Path(tempfile.mkdtemp(prefix=p)) for p in ("exim-", "pop3d-")]
    for directory in directories:
        directory.chmod(0o755)
    try:
        exim = Exim(directories[0], mail_stack)
        pop3d = MailutilsPOP3(directories[1], certs)
        pids = []
        for server in (exim, pop3d):
            server.start()
            pids.append(server.pid)
            assert pid_alive(server.pid)
            server.stop()
        assert all(_stopped_cleanly(pid) for pid in pids)
        with pytest.raises(RuntimeError):
            exim.pid  # noqa: B018
    finally:
        for directory in directories:
            shutil.rmtree(directory, ignore_errors=True)
