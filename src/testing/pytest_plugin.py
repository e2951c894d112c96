"""pytest fixtures that start in-process mail servers for an application's tests.

The plugin is opt-in: installing mailhandlers registers nothing with pytest. A test
suite switches it on in its root ``conftest.py``::

    pytest_plugins = ["src.testing.pytest_plugin"]

or with ``pytest -p src.testing.pytest_plugin``. Then a test only has to name a fixture::

    def test_signup_sends_a_welcome_mail(smtp_server):
        signup("ada@example.test", smtp=(smtp_server.host, smtp_server.port))
        assert smtp_server.messages[0]["Subject"] == "Welcome"

Fixtures (function-scoped unless stated; every server binds a free loopback port
and is stopped when the test ends):

* ``smtp_server``: plain SMTP, no AUTH.
* ``smtp_server_tls``: mandatory STARTTLS and AUTH for ``mail_account``.
* ``pop3_server``: plain POP3, one mailbox for ``mail_account``.
* ``pop3_server_tls``: the same over implicit TLS (what port 995 speaks).
* ``make_smtp_server`` / ``make_pop3_server``: factories taking the servers' own
  keyword options, for anything else.
* ``mail_account``: the user name and a fresh random password the servers accept.
* ``mail_certs`` (session): a private CA and a loopback certificate.
* ``mail_server_ssl_context`` / ``mail_client_ssl_context`` (session): the server's
  TLS context and a verifying client context that trusts only that CA.

Importing this module costs next to nothing: the servers and their dependencies
(``aiosmtpd``, ``trustme``, from the ``testing`` extra) load only when a test asks
for a fixture, and a missing one fails that test with the install command.

The plugin holds no assertions, so pytest is told not to rewrite it
(PYTEST_DONT_REWRITE); that also keeps pytest from warning when a test suite
imports it before registering it.
"""

from __future__ import annotations

import contextlib
import importlib
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from types import ModuleType
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    import ssl

    from .pop3_server import POP3TestServer
    from .smtp_server import SMTPTestServer
    from .tls import TestCertificates

__all__ = ["INSTALL_HINT", "MailAccount"]

#: How to get the optional packages the fixtures need.
INSTALL_HINT = "pip install 'mailhandlers[testing]'"


@dataclass(frozen=True)
class MailAccount:
    """A login that the test servers of one test accept. The password stays out of repr."""

    username: str
    password: str = field(repr=False)


def _load(module: str, fixture: str) -> ModuleType:
    """Import a server module for ``fixture``; fail the test clearly if a package is missing."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        missing = (error.name or "an optional package").split(".")[0]
    # Failing outside the handler keeps the import traceback out of the report.
    pytest.fail(
        f"the {fixture} fixture needs {missing}, which is not installed: {INSTALL_HINT}",
        pytrace=False,
    )


def _tls_context(request: pytest.FixtureRequest, options: dict[str, Any]) -> None:
    """Give a TLS server the session's certificate unless the test brought its own."""
    if options.get("tls", "none") != "none" and options.get("ssl_context") is None:
        options["ssl_context"] = request.getfixturevalue("mail_server_ssl_context")


# -- TLS material ---------------------------------------------------------------------


@pytest.fixture(scope="session")
def mail_certs() -> TestCertificates:
    """A private certificate authority and a certificate for localhost, 127.0.0.1 and ::1.

    Shared by the whole session. Write them out with ``mail_certs.write_files(path)``
    when the code under test wants PEM files.
    """
    tls: Any = _load("src.testing.tls", "mail_certs")
    certificates: TestCertificates = tls.TestCertificates()
    return certificates


@pytest.fixture(scope="session")
def mail_server_ssl_context(mail_certs: TestCertificates) -> ssl.SSLContext:
    """The server-side TLS context the TLS fixtures present (session-scoped)."""
    return mail_certs.server_context()


@pytest.fixture(scope="session")
def mail_client_ssl_context(mail_certs: TestCertificates) -> ssl.SSLContext:
    """A client context that verifies certificates and trusts only ``mail_certs``.

    Pass it as ``ssl_context=`` to the handlers: verification stays on in tests.
    """
    return mail_certs.client_context()


@pytest.fixture
def mail_account() -> MailAccount:
    """User ``"user"`` with a random password; the AUTH-enabled servers accept only it.

    ``"user"`` is also :meth:`POP3TestServer.add_message`'s default mailbox.
    """
    return MailAccount(username="user", password=secrets.token_urlsafe(16))


# -- SMTP -----------------------------------------------------------------------------


@pytest.fixture
def make_smtp_server(request: pytest.FixtureRequest) -> Iterator[Callable[..., SMTPTestServer]]:
    """A factory: ``make_smtp_server(**options)`` returns a started :class:`SMTPTestServer`.

    ``options`` are the server's keyword arguments (``tls``, ``users``,
    ``size_limit``, ``faults``, ``on_message`` ...). A TLS server without an
    ``ssl_context`` gets ``mail_server_ssl_context``. Every server made is
    stopped when the test ends.
    """
    module: Any = _load("src.testing.smtp_server", "smtp_server")
    with contextlib.ExitStack() as stack:

        def make(**options: Any) -> SMTPTestServer:
            _tls_context(request, options)
            server: SMTPTestServer = module.SMTPTestServer(**options)
            server.start()
            stack.callback(server.stop)
            return server

        yield make


@pytest.fixture
def smtp_server(make_smtp_server: Callable[..., SMTPTestServer]) -> SMTPTestServer:
    """A plain SMTP server (no TLS, no AUTH), started on a free loopback port.

    Connect with ``encryption="none"`` to ``smtp_server.host``/``smtp_server.port``.
    ``smtp_server.messages`` lists what it accepted; ``messages[0]["Subject"]`` reads
    a header and ``messages[0].message`` is the parsed :class:`EmailMessage`. Inject
    failures through ``smtp_server.faults`` (an :class:`SMTPFaults`): a reply to the
    N-th MAIL, refused recipients, a dropped connection after DATA, a reply delay.
    """
    return make_smtp_server()


@pytest.fixture
def smtp_server_tls(
    make_smtp_server: Callable[..., SMTPTestServer], mail_account: MailAccount
) -> SMTPTestServer:
    """An SMTP submission server: STARTTLS required, then AUTH as ``mail_account``.

    Connect with ``encryption="tls"``, ``ssl_context=mail_client_ssl_context`` and
    the account's user name and password; mail is refused until the client has
    logged in. Otherwise like ``smtp_server``.
    """
    return make_smtp_server(
        tls="starttls",
        require_starttls=True,
        users={mail_account.username: mail_account.password},
        auth_required=True,
    )


# -- POP3 -----------------------------------------------------------------------------


@pytest.fixture
def make_pop3_server(
    request: pytest.FixtureRequest, mail_account: MailAccount
) -> Iterator[Callable[..., POP3TestServer]]:
    """A factory: ``make_pop3_server(**options)`` returns a started :class:`POP3TestServer`.

    ``options`` are the server's keyword arguments (``tls``, ``users``, ``uidl``,
    ``max_sessions`` ...); ``users`` defaults to ``mail_account``. A TLS
    server without an ``ssl_context`` gets ``mail_server_ssl_context``.
    Every server made is stopped when the test ends.
    """
    module: Any = _load("src.testing.pop3_server", "pop3_server")
    with contextlib.ExitStack() as stack:

        def make(**options: Any) -> POP3TestServer:
            options.setdefault("users", {mail_account.username: mail_account.password})
            _tls_context(request, options)
            server: POP3TestServer = module.POP3TestServer(**options)
            stack.callback(server.stop)
            return server.start()

        yield make


@pytest.fixture
def pop3_server(make_pop3_server: Callable[..., POP3TestServer]) -> POP3TestServer:
    """A plain POP3 server with an empty mailbox for ``mail_account``.

    Put mail in with ``pop3_server.add_message(raw_bytes)`` (it returns the UIDL) and
    connect with ``encryption="none"``. ``pop3_server.messages()`` shows what is left
    after the client's ``QUIT``. Faults such as ``[IN-USE]`` logins, slow replies and
    dropped connections are switched on through ``pop3_server.faults``.
    """
    return make_pop3_server()


@pytest.fixture
def pop3_server_tls(make_pop3_server: Callable[..., POP3TestServer]) -> POP3TestServer:
    """Like ``pop3_server``, but TLS from the first byte (``encryption="ssl"``).

    Connect with ``ssl_context=mail_client_ssl_context``. For STLS instead, use
    ``make_pop3_server(tls="starttls")``.
    """
    return make_pop3_server(tls="implicit")
