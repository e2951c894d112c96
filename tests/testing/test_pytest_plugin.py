"""The pytest plugin's fixtures, used the way an application's test suite uses them."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import tomllib
from collections.abc import Iterator
from email.message import EmailMessage
from typing import Any

import pytest
from fake_sleep import Sleeps
from paths import ROOT

from src.handlers import SMTPConnectionPool, SMTPDeliveryStatus, SMTPProtocolHandler
from src.handlers.errors import POP3MailboxBusyError, POP3TimeoutError
from src.handlers.pop3 import POP3ProtocolHandler
from src.handlers.retry import RetryPolicy
from src.testing.pop3_server import POP3TestServer
from src.testing.pytest_plugin import INSTALL_HINT, MailAccount
from src.testing.smtp_server import ReceivedMessage, SMTPTestServer

# tests/conftest.py opts this suite in to the plugin, as an application would.
PLUGIN = "src.testing.pytest_plugin"

SENDER = "app@example.test"


@pytest.fixture
def smtp_pool() -> Iterator[SMTPConnectionPool]:
    pool = SMTPConnectionPool(max_connections=4)
    yield pool
    pool.close_all()


def plain_sender(
    server: SMTPTestServer, pool: SMTPConnectionPool, sleeps: Sleeps, **options: Any
) -> SMTPProtocolHandler:
    return SMTPProtocolHandler(
        server.host,
        server.port,
        encryption="none",
        from_address=SENDER,
        pool=pool,
        sleep=sleeps,
        **options,
    )


def raw_message(subject: str, body: str = "Hello.\n") -> bytes:
    message = EmailMessage()
    message["From"] = "Ada <ada@example.test>"
    message["To"] = "app@example.test"
    message["Subject"] = subject
    message.set_content(body)
    return message.as_bytes()


# -- SMTP fixtures --------------------------------------------------------------------


def test_a_plain_send_lands_in_smtp_server_messages(
    smtp_server: SMTPTestServer, smtp_pool: SMTPConnectionPool, sleeps: Sleeps
) -> None:
    result = plain_sender(smtp_server, smtp_pool, sleeps).send_message(
        ["ada@example.test"], "Welcome aboard", text_body="Hi Ada"
    )
    assert result.status is SMTPDeliveryStatus.SUCCESS
    assert smtp_server.messages[0]["Subject"] == "Welcome aboard"
    assert smtp_server.messages[0].rcpt_tos == ["ada@example.test"]
    assert not smtp_server.messages[0].secure


def test_smtp_server_tls_needs_starttls_and_the_generated_login(
    smtp_server_tls: SMTPTestServer,
    mail_account: MailAccount,
    mail_client_ssl_context: Any,
    smtp_pool: SMTPConnectionPool,
) -> None:
    handler = SMTPProtocolHandler(
        smtp_server_tls.host,
        smtp_server_tls.port,
        mail_account.username,
        mail_account.password,
        "tls",
        SENDER,
        ssl_context=mail_client_ssl_context,
        pool=smtp_pool,
    )
    result = handler.send_message(["ada@example.test"], "Over TLS", text_body="x")
    assert result.success, result.smtp_error
    [received] = smtp_server_tls.messages
    assert received.secure and received.username == mail_account.username


def test_smtp_server_tls_refuses_a_wrong_password(
    smtp_server_tls: SMTPTestServer,
    mail_account: MailAccount,
    mail_client_ssl_context: Any,
    smtp_pool: SMTPConnectionPool,
) -> None:
    handler = SMTPProtocolHandler(
        smtp_server_tls.host,
        smtp_server_tls.port,
        mail_account.username,
        "wrong",
        "tls",
        SENDER,
        ssl_context=mail_client_ssl_context,
        pool=smtp_pool,
    )
    result = handler.send_message(["ada@example.test"], "Nope", text_body="x", retry=False)
    assert result.status is SMTPDeliveryStatus.FAILED
    assert smtp_server_tls.messages == []
    assert smtp_server_tls.auth_attempts[-1][1] == mail_account.username


def test_a_transient_reply_to_the_second_mail_moves_to_a_new_connection_at_once(
    smtp_server: SMTPTestServer, smtp_pool: SMTPConnectionPool, sleeps: Sleeps
) -> None:
    # A 4xx to MAIL on a connection that already carried mail may be the server's
    # per-session limit: a new connection is tried at once, without a back-off.
    smtp_server.faults.mail_replies[2] = (451, "4.3.0 Try again later")
    handler = plain_sender(smtp_server, smtp_pool, sleeps)
    first = handler.send_message(["ada@example.test"], "one", text_body="1")
    second = handler.send_message(["ada@example.test"], "two", text_body="2")
    assert first.success and first.retry_count == 0
    assert second.success and second.retry_count == 0
    assert sleeps == []
    assert smtp_pool.get_stats()["retired"] == 1
    assert [m["Subject"] for m in smtp_server.messages] == ["one", "two"]


def test_the_same_fault_without_retry_is_reported_as_retryable(
    smtp_server: SMTPTestServer, smtp_pool: SMTPConnectionPool, sleeps: Sleeps
) -> None:
    smtp_server.faults.mail_replies[1] = (451, "4.3.0 Try again later")
    result = plain_sender(smtp_server, smtp_pool, sleeps).send_message(
        ["ada@example.test"], "later", text_body="x", retry=False
    )
    assert result.status is SMTPDeliveryStatus.RETRY
    assert (result.smtp_code, result.is_retryable) == (451, True)
    assert smtp_server.messages == []


def test_a_rejected_recipient_is_reported_and_the_others_still_get_the_message(
    smtp_server: SMTPTestServer, smtp_pool: SMTPConnectionPool, sleeps: Sleeps
) -> None:
    smtp_server.faults.reject_recipients["bob@example.test"] = (550, "5.1.1 No such user")
    result = plain_sender(smtp_server, smtp_pool, sleeps).send_message(
        ["ada@example.test", "bob@example.test"], "Party", text_body="Come!"
    )
    assert result.success
    assert list(result.recipient_failures) == ["bob@example.test"]
    assert smtp_server.messages[0].rcpt_tos == ["ada@example.test"]


def test_a_drop_after_data_is_an_unknown_outcome_and_not_resent(
    smtp_server: SMTPTestServer, smtp_pool: SMTPConnectionPool, sleeps: Sleeps
) -> None:
    smtp_server.faults.drop_after_data = 1
    result = plain_sender(smtp_server, smtp_pool, sleeps).send_message(
        ["ada@example.test"], "Invoice", text_body="x"
    )
    assert result.outcome_unknown and not result.is_retryable
    assert smtp_server.messages == []
    assert sleeps == []


def test_a_slow_smtp_server_times_out(
    smtp_server: SMTPTestServer, smtp_pool: SMTPConnectionPool, sleeps: Sleeps
) -> None:
    smtp_server.faults.reply_delay = 2.0
    result = plain_sender(smtp_server, smtp_pool, sleeps, timeout=0.2).send_message(
        ["ada@example.test"], "Slow", text_body="x", retry=False
    )
    assert result.status is SMTPDeliveryStatus.RETRY and result.is_retryable
    assert smtp_server.messages == []


def test_make_smtp_server_takes_the_servers_own_options(
    make_smtp_server: Any, mail_client_ssl_context: Any, smtp_pool: SMTPConnectionPool
) -> None:
    server = make_smtp_server(tls="implicit", size_limit=2000)
    assert server.running and server.tls == "implicit"
    handler = SMTPProtocolHandler(
        server.host,
        server.port,
        encryption="ssl",
        from_address=SENDER,
        ssl_context=mail_client_ssl_context,
        pool=smtp_pool,
    )
    too_big = handler.send_message(["ada@example.test"], "Big", text_body="x" * 5000)
    fits = handler.send_message(["ada@example.test"], "Small", text_body="x")
    assert not too_big.success and fits.success
    assert [m["Subject"] for m in server.messages] == ["Small"]
    assert server.messages[0].secure


# -- POP3 fixtures --------------------------------------------------------------------


def pop3_handler(
    server: POP3TestServer, account: MailAccount, sleeps: Sleeps, **options: Any
) -> POP3ProtocolHandler:
    options.setdefault("encryption", "none")
    return POP3ProtocolHandler(
        server.host,
        server.port,
        account.username,
        account.password,
        sleep=sleeps,
        **options,
    )


def test_messages_added_to_pop3_server_are_fetched(
    pop3_server: POP3TestServer, mail_account: MailAccount, sleeps: Sleeps
) -> None:
    pop3_server.add_message(raw_message("Your order"))
    [message] = pop3_handler(pop3_server, mail_account, sleeps).fetch_messages()
    assert message["subject"] == "Your order"
    assert message["from"] == "ada@example.test"


def test_pop3_server_tls_speaks_tls_from_the_first_byte(
    pop3_server_tls: POP3TestServer,
    mail_account: MailAccount,
    mail_client_ssl_context: Any,
    sleeps: Sleeps,
) -> None:
    pop3_server_tls.add_message(raw_message("Secret plans"))
    handler = pop3_handler(
        pop3_server_tls,
        mail_account,
        sleeps,
        encryption="ssl",
        ssl_context=mail_client_ssl_context,
    )
    with handler:
        [number] = handler.list_messages()[0]
        assert handler.delete_message(number)
    assert pop3_server_tls.messages() == []


def test_an_in_use_mailbox_raises_the_busy_error(
    pop3_server: POP3TestServer, mail_account: MailAccount, sleeps: Sleeps
) -> None:
    pop3_server.faults.in_use = True
    handler = pop3_handler(pop3_server, mail_account, sleeps)
    with pytest.raises(POP3MailboxBusyError) as caught:
        handler.list_messages()
    assert caught.value.enhanced_code == "IN-USE"


def test_a_slow_pop3_server_times_out(
    pop3_server: POP3TestServer, mail_account: MailAccount, sleeps: Sleeps
) -> None:
    pop3_server.faults.greeting_delay = 2.0
    handler = pop3_handler(
        pop3_server, mail_account, sleeps, timeout=0.2, retry=RetryPolicy.never()
    )
    with pytest.raises(POP3TimeoutError):
        handler.list_messages()


def test_mail_sent_over_smtp_can_be_fetched_over_pop3(
    make_smtp_server: Any,
    pop3_server: POP3TestServer,
    mail_account: MailAccount,
    smtp_pool: SMTPConnectionPool,
    sleeps: Sleeps,
) -> None:
    def deliver(message: ReceivedMessage) -> None:
        pop3_server.add_message(message.data)

    smtp = make_smtp_server(on_message=deliver)
    plain_sender(smtp, smtp_pool, sleeps).send_message(
        ["user@example.test"], "Round trip", text_body="there and back"
    )
    [fetched] = pop3_handler(pop3_server, mail_account, sleeps).fetch_messages()
    assert fetched["subject"] == "Round trip"
    assert fetched["textBody"] == "there and back"


# -- the plugin itself ----------------------------------------------------------------


def test_the_account_keeps_its_password_out_of_repr(mail_account: MailAccount) -> None:
    assert mail_account.password
    assert mail_account.password not in repr(mail_account)


def test_the_plugin_is_opt_in_so_installing_mailhandlers_loads_nothing() -> None:
    # An auto-loaded plugin would import ``src`` in every pytest run of every project
    # in the environment, and break the ones that have a ``src`` package of their own.
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert "pytest11" not in project.get("entry-points", {})
    testing = " ".join(project["optional-dependencies"]["testing"])
    assert "aiosmtpd" in testing and "trustme" in testing


def test_importing_the_plugin_loads_neither_servers_nor_their_dependencies() -> None:
    probe = textwrap.dedent(
        f"""
        import sys
        sys.modules["aiosmtpd"] = sys.modules["trustme"] = None  # as if not installed
        import {PLUGIN}
        heavy = [name for name, module in sys.modules.items() if module and name.startswith(
            ("aiosmtpd", "trustme", "src.testing.smtp_server", "src.testing.pop3_server",
             "src.testing.tls", "src.handlers"))]
        print(heavy)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


APP_TESTS = """
    from src.handlers import SMTPConnectionPool, SMTPProtocolHandler

    seen = []


    def test_signup_mail(smtp_server):
        pool = SMTPConnectionPool()
        handler = SMTPProtocolHandler(smtp_server.host, smtp_server.port,
                                      encryption="none", pool=pool)
        handler.send_message(["ada@example.test"], "Welcome", text_body="Hi",
                             from_address="app@example.test")
        pool.close_all()
        assert smtp_server.messages[0]["Subject"] == "Welcome"
        seen.append(smtp_server)


    def test_the_previous_server_was_stopped(smtp_server):
        assert not seen[0].running and smtp_server is not seen[0]


    def test_mailbox(pop3_server, mail_account):
        pop3_server.add_message(b"Subject: hi\\r\\n\\r\\nbody\\r\\n")
        assert pop3_server.users == {mail_account.username: mail_account.password}
        assert len(pop3_server.messages()) == 1
"""

STRICT_INI = """
    [pytest]
    addopts = --strict-markers
    filterwarnings = error
"""


@pytest.fixture
def app_suite(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    # An environment installed from 0.1.0 may still carry the auto-loaded entry point;
    # the suite under test must see only what it opts in to.
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
    pytester.makeini(STRICT_INI)
    pytester.makepyfile(test_app=APP_TESTS)
    return pytester


def test_a_suite_that_does_not_opt_in_has_no_mail_fixtures(app_suite: pytest.Pytester) -> None:
    result = app_suite.runpytest()
    result.assert_outcomes(errors=3)
    result.stdout.fnmatch_lines(["*fixture 'smtp_server' not found*"])


def test_opting_in_on_the_command_line_gives_the_fixtures(app_suite: pytest.Pytester) -> None:
    result = app_suite.runpytest("-p", PLUGIN)
    result.assert_outcomes(passed=3)


def test_opting_in_from_the_root_conftest_gives_the_fixtures(app_suite: pytest.Pytester) -> None:
    app_suite.makeconftest(f"pytest_plugins = [{PLUGIN!r}]")
    result = app_suite.runpytest()
    result.assert_outcomes(passed=3)


def test_without_aiosmtpd_only_the_smtp_fixtures_fail_and_say_what_to_install(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
    pytester.makeini(STRICT_INI)
    pytester.makeconftest(
        """
        import sys
        import pytest

        @pytest.fixture(autouse=True)
        def no_aiosmtpd(monkeypatch):
            for name in [n for n in sys.modules if n.split(".")[0] == "aiosmtpd"]:
                monkeypatch.setitem(sys.modules, name, None)
            monkeypatch.setitem(sys.modules, "aiosmtpd", None)
            monkeypatch.delitem(sys.modules, "src.testing.smtp_server", raising=False)
        """
    )
    pytester.makepyfile(
        """
        def test_sends(smtp_server):
            pass

        def test_fetches(pop3_server):
            assert pop3_server.messages() == []
        """
    )
    result = pytester.runpytest("-p", PLUGIN)
    result.assert_outcomes(passed=1, errors=1)
    expected = f"the smtp_server fixture needs aiosmtpd, which is not installed: {INSTALL_HINT}"
    assert expected in result.stdout.lines
