"""Fixtures for the interoperability suite: a private Postfix + Dovecot per session, and
beside it, when a test asks, a private OpenSMTPD, Exim or GNU Mailutils pop3d.

Every test collected under ``tests/interop`` is marked ``interop``, so
``pytest -m "not interop"`` leaves them out and ``pytest -m interop`` runs only them.

Without the server binaries the tests are skipped with a hint on how to install them,
except under ``CI=true``: there a missing server is a failure, never a silent skip.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol, TypeVar

import pytest
from ci import in_ci

from src.testing.tls import TestCertificates

from .extra_servers import (
    Exim,
    MailutilsPOP3,
    OpenSMTPD,
    exim_available,
    opensmtpd_available,
    pop3d_available,
)
from .mailstack import MailStack, servers_available
from .sasl_dovecot import SASLDovecot

_HERE = Path(__file__).parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test that lives in this directory as ``interop``."""
    for item in items:
        if _HERE in Path(item.path).parents:
            item.add_marker(pytest.mark.interop)


@pytest.fixture(scope="session")
def mail_stack(certs: TestCertificates) -> Iterator[MailStack]:
    """A running :class:`MailStack` shared by the whole session, stopped at its end.

    Its directory comes from :func:`tempfile.mkdtemp` rather than ``tmp_path_factory``
    because the servers' unprivileged users must be able to reach it (pytest's base
    temporary directory is private to its owner). It is removed after the servers
    have stopped.
    """
    available, reason = servers_available()
    if not available:
        if in_ci():
            pytest.fail(f"interop tests must run in CI, but: {reason}", pytrace=False)
        pytest.skip(reason)
    directory = Path(tempfile.mkdtemp(prefix="mailstack-"))
    try:
        with MailStack(directory, certs) as stack:
            yield stack
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _require(check: Callable[[], tuple[bool, str]]) -> None:
    """Skip (or, under CI, fail) when an extra server cannot run here."""
    available, reason = check()
    if not available:
        if in_ci():
            pytest.fail(f"interop tests must run in CI, but: {reason}", pytrace=False)
        pytest.skip(reason)


def _server_directory(prefix: str) -> Path:
    """A temporary directory the servers' unprivileged users can enter (see mail_stack)."""
    directory = Path(tempfile.mkdtemp(prefix=prefix))
    directory.chmod(0o755)
    return directory


class _Server(Protocol):
    def start(self) -> None: ...

    def stop(self) -> None: ...


S = TypeVar("S", bound=_Server)


def _running(
    available: Callable[[], tuple[bool, str]], prefix: str, make: Callable[[Path], S]
) -> Iterator[S]:
    """Start the server ``make`` builds in a directory of its own; stop it and remove
    the directory afterwards."""
    _require(available)
    directory = _server_directory(prefix)
    server = make(directory)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="session")
def opensmtpd(mail_stack: MailStack) -> Iterator[OpenSMTPD]:
    """A private OpenSMTPD delivering into the stack's Maildirs, for the session."""
    yield from _running(opensmtpd_available, "opensmtpd-", lambda d: OpenSMTPD(d, mail_stack))


@pytest.fixture(scope="session")
def exim(mail_stack: MailStack) -> Iterator[Exim]:
    """A private Exim delivering into the stack's Maildirs, for the session."""
    yield from _running(exim_available, "exim-", lambda d: Exim(d, mail_stack))


@pytest.fixture(scope="session")
def mailutils_pop3d(certs: TestCertificates) -> Iterator[MailutilsPOP3]:
    """A private GNU Mailutils pop3d with mbox mailboxes of its own, for the session."""
    yield from _running(pop3d_available, "pop3d-", lambda d: MailutilsPOP3(d, certs))


@pytest.fixture(scope="session")
def sasl_dovecot(certs: TestCertificates) -> Iterator[SASLDovecot]:
    """A second private Dovecot offering every SASL mechanism, for the session."""
    yield from _running(servers_available, "sasl-dovecot-", lambda d: SASLDovecot(d, certs))
