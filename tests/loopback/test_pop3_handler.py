"""Tests for POP3ProtocolHandler.

The first half drives the handler with poplib test doubles, in the style of the
specification (``patch('src.handlers.pop3.POP3_SSL')``). The second half runs it on
real sockets against the in-process :class:`POP3TestServer`, in plain text, with STLS
and with implicit TLS (trustme certificates; verification stays on).
"""

from __future__ import annotations

import logging
import poplib
import ssl
from collections.abc import Iterator
from typing import Any
from unittest.mock import Mock, patch

import pytest
from pytest_mock import MockerFixture

from src.handlers._net.config import Encryption
from src.handlers.errors import (
    ConfigurationError,
    MailValidationError,
    POP3AuthenticationError,
    POP3ConnectionError,
    POP3MailboxBusyError,
    POP3MessageTooLargeError,
    POP3ProtocolError,
    POP3ResponseError,
    POP3SecurityError,
    POP3TimeoutError,
    POP3UnsupportedError,
)
from src.handlers.pop3 import POP3ProtocolHandler
from src.handlers.retry import RetryPolicy, is_retryable
from src.testing.pop3_server import POP3TestServer
from src.testing.scripted_server import Conversation, ScriptedServer

SECRET = "s3cret-Pa55word"
SIMPLE = [b"From: sender@example.com", b"Subject: Test", b"", b"Body"]


# ==================================================================================
# With test doubles
# ==================================================================================


@patch("src.handlers.pop3.POP3_SSL")
def test_fetch_message(mock_pop3_ssl):  # type: ignore[no-untyped-def]
    # The specification's own example, kept as written (host swapped for loopback).
    mock_client = Mock()
    mock_client.retr.return_value = (
        "+OK",
        [b"From: sender@example.com", b"Subject: Test", b"", b"Body"],
        100,
    )

    mock_pop3_ssl.return_value = mock_client
    handler = POP3ProtocolHandler("127.0.0.1", 995, "user@example.com", "password")
    handler.connect()
    message = handler.fetch_message(1)
    assert message is not None

    assert message["from"] == "sender@example.com"


class Recorder:
    """An injectable sleep that records the delays instead of waiting."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


@pytest.fixture
def sleeps() -> Recorder:
    return Recorder()


@pytest.fixture
def client(mocker: MockerFixture) -> Mock:
    """A poplib double with a two-message mailbox, returned by the patched POP3_SSL."""
    double: Mock = mocker.Mock(name="poplib-client")
    double.stat.return_value = (2, 90)

    def scan(which: int | None = None) -> object:
        if which is None:
            return (b"+OK", [b"1 40", b"2 50"], 10)
        if which not in (1, 2):
            raise poplib.error_proto(b"-ERR no such message")
        return f"+OK {which} 40".encode()

    double.list.side_effect = scan
    double.retr.return_value = (b"+OK", SIMPLE, 40)
    double.uidl.return_value = (b"+OK", [b"1 uid-a", b"2 uid-b"], 16)
    double.top.return_value = (b"+OK", SIMPLE[:2], 20)
    double.capa.return_value = {"TOP": [], "UIDL": [], "SASL": ["PLAIN"]}
    mocker.patch("src.handlers.pop3.POP3_SSL", return_value=double)
    return double


@pytest.fixture
def factory(client: Mock) -> Mock:
    import src.handlers.pop3 as module

    patched: Mock = module.POP3_SSL  # type: ignore[assignment]
    return patched


def make(sleeps: Recorder | None = None, **options: Any) -> POP3ProtocolHandler:
    options.setdefault("sleep", sleeps if sleeps is not None else Recorder())
    return POP3ProtocolHandler("127.0.0.1", 995, "user@example.com", SECRET, **options)


# -- construction ------------------------------------------------------------------


def test_constructor_does_no_network_io(mocker: MockerFixture) -> None:
    plain = mocker.patch("src.handlers.pop3.POP3")
    tls = mocker.patch("src.handlers.pop3.POP3_SSL")
    handler = POP3ProtocolHandler("127.0.0.1", 110, "user", "pw", encryption="none")
    assert handler.state == "disconnected"
    plain.assert_not_called()
    tls.assert_not_called()


@pytest.mark.parametrize("encryption", ["bogus", "", None, 995])
def test_unknown_encryption_is_refused_listing_the_choices(encryption: Any) -> None:
    with pytest.raises(ConfigurationError, match="encryption") as caught:
        POP3ProtocolHandler("127.0.0.1", 995, "user", "pw", encryption=encryption)
    assert caught.value.field == "encryption" and "'ssl'" in str(caught.value)
    assert {"none", "tls", "ssl"} <= set(caught.value.choices)


@pytest.mark.parametrize(
    "spelling, mode",
    [("SSL", "ssl"), ("starttls", "tls"), ("plain", "none"), (Encryption.STARTTLS, "tls")],
)
def test_encryption_takes_the_spellings_smtp_takes(spelling: Any, mode: str) -> None:
    handler = POP3ProtocolHandler("127.0.0.1", 995, "user", "pw", encryption=spelling)
    assert handler.encryption == mode


@pytest.mark.parametrize("hostname", ["mail.example.com\r\nUSER x", "host\n", ""])
def test_hostnames_with_line_breaks_or_empty_are_refused(hostname: str) -> None:
    with pytest.raises(ValueError):
        POP3ProtocolHandler(hostname, 995, "user", "pw")


@pytest.mark.parametrize(
    ("field", "options"),
    [
        ("port", {"port": 0}),
        ("port", {"port": 70000}),
        ("timeout", {"timeout": 0}),
        ("username", {"username": "bob\r\nDELE 1"}),
        ("password", {"password": "pw\nQUIT"}),
        ("max_message_size", {"max_message_size": 0}),
    ],
)
def test_bad_settings_are_refused_naming_the_field(field: str, options: dict[str, Any]) -> None:
    arguments: dict[str, Any] = {
        "hostname": "127.0.0.1",
        "port": 995,
        "username": "user",
        "password": "pw",
    }
    arguments.update(options)
    with pytest.raises(MailValidationError) as caught:
        POP3ProtocolHandler(**arguments)
    assert caught.value.field == field
    assert "QUIT" not in str(caught.value) and "DELE" not in str(caught.value)


def test_repr_shows_host_port_user_state_and_never_the_password() -> None:
    handler = make()
    text = repr(handler)
    assert "127.0.0.1:995" in text and "user@example.com" in text and "disconnected" in text
    assert SECRET not in text
    assert SECRET not in repr(vars(handler))


# -- connect and retry -------------------------------------------------------------


def test_connect_uses_verifying_tls_by_default(factory: Mock) -> None:
    assert make().connect() is True
    context = factory.call_args.kwargs["context"]
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname


def test_connect_passes_a_given_ssl_context(factory: Mock) -> None:
    mine = ssl.create_default_context()
    make(ssl_context=mine).connect()
    assert factory.call_args.kwargs["context"] is mine


def test_connect_retries_with_exponential_backoff(factory: Mock, client: Mock) -> None:
    factory.side_effect = [ConnectionRefusedError(), OSError("unreachable"), client]
    sleeps = Recorder()
    handler = make(sleeps)
    assert handler.connect() is True
    assert factory.call_count == 3
    assert sleeps.delays == [1.0, 2.0]
    assert handler.is_connected


def test_patching_time_sleep_skips_the_connect_back_off(
    factory: Mock, client: Mock, mocker: MockerFixture
) -> None:
    # What a user's own test does, without the handler's sleep= option.
    waits = mocker.patch("time.sleep")
    factory.side_effect = [ConnectionRefusedError(), OSError("unreachable"), client]
    handler = POP3ProtocolHandler("pop.example.com", 995, "user", "secret")
    assert handler.connect() is True
    assert [c.args for c in waits.call_args_list] == [(1.0,), (2.0,)]


def test_connect_gives_up_after_three_attempts(factory: Mock) -> None:
    factory.side_effect = ConnectionRefusedError("refused")
    sleeps = Recorder()
    with pytest.raises(POP3ConnectionError):
        make(sleeps).connect()
    assert factory.call_count == 3
    assert sleeps.delays == [1.0, 2.0]


def test_connect_timeout_is_a_timeout_error(factory: Mock) -> None:
    factory.side_effect = TimeoutError("timed out")
    with pytest.raises(POP3TimeoutError) as caught:
        make(retry=RetryPolicy.never()).connect()
    assert isinstance(caught.value, TimeoutError)


def test_certificate_failure_is_a_security_error_and_not_retried(factory: Mock) -> None:
    failure = ssl.SSLCertVerificationError("certificate verify failed")
    failure.verify_message = "self-signed certificate"  # set by ssl on real failures
    failure.reason = "CERTIFICATE_VERIFY_FAILED"
    factory.side_effect = failure
    sleeps = Recorder()
    with pytest.raises(POP3SecurityError):
        make(sleeps).connect()
    assert factory.call_count == 1 and sleeps.delays == []


def test_deadline_stops_retrying_early(factory: Mock) -> None:
    factory.side_effect = ConnectionRefusedError()
    now = [100.0]

    def sleep(seconds: float) -> None:
        now[0] += seconds

    handler = make(
        sleep=sleep,
        clock=lambda: now[0],
        deadline=2.5,
        retry=RetryPolicy(max_retries=5, delays=(1.0, 2.0)),
    )
    with pytest.raises(POP3TimeoutError, match="deadline"):
        handler.connect()
    assert factory.call_count == 2  # a third attempt would start after the deadline


def test_connect_when_already_connected_does_not_reconnect(factory: Mock) -> None:
    handler = make()
    handler.connect()
    handler.connect()
    assert factory.call_count == 1


# -- authentication ----------------------------------------------------------------


def test_authenticate_sends_user_and_pass_once(client: Mock) -> None:
    handler = make()
    handler.connect()
    assert handler.authenticate() is True
    assert handler.authenticate() is True
    client.user.assert_called_once_with("user@example.com")
    client.pass_.assert_called_once_with(SECRET)
    assert handler.state == "authenticated"


def test_authenticate_with_other_credentials_replaces_them(client: Mock) -> None:
    handler = make()
    handler.connect()
    handler.authenticate("other@example.com", "other-pw")
    client.user.assert_called_once_with("other@example.com")
    client.pass_.assert_called_once_with("other-pw")
    assert handler.username == "other@example.com"


def test_bad_credentials_raise_without_retry_or_leak(factory: Mock, client: Mock) -> None:
    client.pass_.side_effect = poplib.error_proto(f"-ERR [AUTH] wrong {SECRET}".encode())
    sleeps = Recorder()
    handler = make(sleeps)
    with pytest.raises(POP3AuthenticationError) as caught:
        handler.authenticate()
    assert SECRET not in str(caught.value)
    assert caught.value.__cause__ is None and caught.value.__context__ is None
    assert factory.call_count == 1 and sleeps.delays == []
    client.close.assert_called()


def test_in_use_is_a_busy_error_not_an_authentication_failure(client: Mock) -> None:
    client.pass_.side_effect = poplib.error_proto(b"-ERR [IN-USE] mailbox locked")
    handler = make()
    handler.connect()
    with pytest.raises(POP3MailboxBusyError) as caught:
        handler.authenticate()
    assert not isinstance(caught.value, POP3AuthenticationError)
    assert caught.value.enhanced_code == "IN-USE"


def test_stateless_call_retries_a_busy_mailbox(factory: Mock, client: Mock) -> None:
    busy = poplib.error_proto(b"-ERR [LOGIN-DELAY] wait")
    client.pass_.side_effect = [busy, busy, b"+OK"]
    sleeps = Recorder()
    assert make(sleeps).list_messages() == ([1, 2], 90)
    assert factory.call_count == 3 and sleeps.delays == [1.0, 2.0]


def test_plaintext_password_logs_a_warning(
    mocker: MockerFixture, caplog: pytest.LogCaptureFixture
) -> None:
    double = mocker.Mock()
    mocker.patch("src.handlers.pop3.POP3", return_value=double)
    handler = make(encryption="none")
    handler.connect()
    with caplog.at_level(logging.WARNING, logger="src.handlers.pop3"):
        handler.authenticate()
    assert any("without encryption" in record.getMessage() for record in caplog.records)
    assert all(SECRET not in record.getMessage() for record in caplog.records)


# -- STLS --------------------------------------------------------------------------


def test_stls_not_offered_is_refused_before_login(mocker: MockerFixture) -> None:
    double = mocker.Mock()
    double.capa.return_value = {"USER": [], "TOP": []}
    mocker.patch("src.handlers.pop3.POP3", return_value=double)
    with pytest.raises(POP3SecurityError, match="STLS"):
        make(encryption="tls").authenticate()
    double.stls.assert_not_called()
    double.user.assert_not_called()
    double.pass_.assert_not_called()
    double.close.assert_called()


def test_stls_offered_upgrades_with_the_context(mocker: MockerFixture) -> None:
    double = mocker.Mock()
    double.capa.return_value = {"STLS": [], "USER": []}
    mocker.patch("src.handlers.pop3.POP3", return_value=double)
    mine = ssl.create_default_context()
    make(encryption="tls", ssl_context=mine).connect()
    double.stls.assert_called_once_with(context=mine)


# -- operations --------------------------------------------------------------------


def test_list_messages_returns_ids_and_total(client: Mock) -> None:
    assert make().list_messages() == ([1, 2], 90)


def test_get_mailbox_stat(client: Mock) -> None:
    assert make().get_mailbox_stat() == (2, 90)


def test_get_message_size_and_minus_one_on_error(client: Mock) -> None:
    handler = make()
    assert handler.get_message_size(1) == 40
    client.list.side_effect = poplib.error_proto(b"-ERR no such message")
    assert handler.get_message_size(9) == -1


def test_fetch_message_returns_the_spec_dict(client: Mock) -> None:
    message = make().fetch_message(1)
    assert message is not None
    assert message["messageId"] == 1 and message["popId"] == 1
    assert message["subject"] == "Test" and message["textBody"].strip() == "Body"
    assert message["size"] == 40
    for flag in ("isRead", "isStarred", "isDeleted", "isSpam", "isDraft", "isSent"):
        assert message[flag] is False
    assert "raw" not in message


def test_fetch_message_returns_none_when_refused(client: Mock) -> None:
    client.retr.side_effect = poplib.error_proto(b"-ERR no such message")
    assert make().fetch_message(1) is None


def test_fetch_message_refuses_a_large_message_without_downloading(client: Mock) -> None:
    client.list.side_effect = lambda which=None: b"+OK 1 5000000"
    with pytest.raises(POP3MessageTooLargeError) as caught:
        make(max_message_size=1_000_000).fetch_message(1)
    assert caught.value.size == 5_000_000 and caught.value.limit == 1_000_000
    client.retr.assert_not_called()


@pytest.mark.parametrize("bad", [0, -1, True, "1", 1.0])
def test_message_numbers_are_validated(client: Mock, bad: Any) -> None:
    with pytest.raises(ValueError):
        make().fetch_message(bad)


def test_fetch_messages_continues_past_a_failing_message(
    client: Mock, caplog: pytest.LogCaptureFixture
) -> None:
    client.list.side_effect = lambda which=None: (b"+OK", [b"1 40", b"2 40", b"3 40"], 15)
    client.retr.side_effect = [
        (b"+OK", SIMPLE, 40),
        poplib.error_proto(b"-ERR message vanished"),
        (b"+OK", SIMPLE, 40),
    ]
    with caplog.at_level(logging.WARNING):
        messages = make().fetch_messages()
    assert [m["messageId"] for m in messages] == [1, 3]
    assert any("message 2" in record.getMessage() for record in caplog.records)
    assert all("Body" not in record.getMessage() for record in caplog.records)


def test_fetch_messages_with_ids_skips_unknown_numbers(client: Mock) -> None:
    messages = make().fetch_messages([2, 7])
    assert [m["messageId"] for m in messages] == [2]


def test_stateless_delete_commits_with_quit(factory: Mock, client: Mock) -> None:
    assert make().delete_message(2) is True
    client.dele.assert_called_once_with(2)
    client.quit.assert_called_once()


def test_delete_messages_counts_refusals(client: Mock) -> None:
    client.dele.side_effect = [b"+OK", poplib.error_proto(b"-ERR no such message"), b"+OK"]
    assert make().delete_messages([1, 5, 2]) == (2, 1)


def test_stateless_delete_raises_when_quit_is_refused(client: Mock) -> None:
    client.quit.side_effect = poplib.error_proto(b"-ERR some deleted messages not removed")
    with pytest.raises(POP3ResponseError, match="not removed"):
        make().delete_message(1)
    client.close.assert_called()


def test_reset_undoes_pending_deletions(client: Mock) -> None:
    handler = make()
    with handler:
        handler.delete_message(1)
        assert handler.pending_deletions == 1
        assert handler.reset() is True
        assert handler.pending_deletions == 0
    client.rset.assert_called_once()


def test_reset_without_a_session_does_nothing(factory: Mock) -> None:
    assert make().reset() is True
    factory.assert_not_called()


def test_get_capabilities_as_strings_without_login(client: Mock) -> None:
    assert make().get_capabilities() == ["TOP", "UIDL", "SASL PLAIN"]
    client.user.assert_not_called()


def test_test_connection_true_and_false(client: Mock) -> None:
    handler = make()
    assert handler.test_connection() is True
    client.noop.side_effect = OSError("reset by peer")
    assert handler.test_connection() is False


def test_list_uids_and_headers(client: Mock) -> None:
    handler = make()
    assert handler.list_uids() == {1: "uid-a", 2: "uid-b"}
    headers = handler.list_headers()
    assert [h["subject"] for h in headers] == ["Test", "Test"]
    assert [h["size"] for h in headers] == [40, 50]


def test_uidl_refused_is_unsupported(client: Mock) -> None:
    client.uidl.side_effect = poplib.error_proto(b"-ERR unknown command")
    with pytest.raises(POP3UnsupportedError, match="UIDL"):
        make().list_uids()


# -- session lifecycle -------------------------------------------------------------


def test_context_manager_connects_and_quits(factory: Mock, client: Mock) -> None:
    with make() as handler:
        assert handler.is_connected
        handler.list_messages()
    assert not handler.is_connected
    client.quit.assert_called_once()
    assert factory.call_count == 1


def test_disconnect_is_idempotent(client: Mock) -> None:
    handler = make()
    handler.connect()
    assert handler.disconnect() is True
    assert handler.disconnect() is True
    client.quit.assert_called_once()


def test_disconnect_falls_back_to_closing_the_socket(client: Mock) -> None:
    client.quit.side_effect = OSError("broken pipe")
    handler = make()
    handler.connect()
    assert handler.disconnect() is False
    client.close.assert_called()
    assert handler.state == "disconnected"


def test_session_lazily_logs_in_and_reuses_one_connection(factory: Mock, client: Mock) -> None:
    handler = make()
    handler.connect()
    handler.list_messages()
    handler.fetch_message(1)
    handler.delete_message(1)
    assert factory.call_count == 1
    client.user.assert_called_once()
    client.quit.assert_not_called()
    handler.disconnect()


def test_garbage_reply_breaks_the_session(client: Mock) -> None:
    client.stat.side_effect = poplib.error_proto(b"HELLO?")
    handler = make()
    handler.connect()
    with pytest.raises(POP3ProtocolError):
        handler.get_mailbox_stat()
    assert handler.state == "broken"
    with pytest.raises(POP3ConnectionError, match="lost"):
        handler.list_messages()
    assert handler.disconnect() is False
    assert handler.state == "disconnected"


# ==================================================================================
# On real sockets, against POP3TestServer
# ==================================================================================

MESSAGES = [
    b"From: a@example.com\r\nTo: me@example.com\r\nSubject: one\r\n\r\nfirst body\r\n",
    b"From: b@example.com\r\nSubject: two\r\n\r\n.a line starting with a dot\r\nmore\r\n",
    b"From: c@example.com\r\nSubject: three\r\n\r\nthird\r\n",
]


@pytest.fixture
def server() -> Iterator[POP3TestServer]:
    with POP3TestServer(users={"user": SECRET}) as srv:
        for raw in MESSAGES:
            srv.add_message(raw)
        yield srv
    assert srv.errors == []


def local(srv: POP3TestServer, **options: Any) -> POP3ProtocolHandler:
    options.setdefault("encryption", "none")
    options.setdefault("timeout", 5)
    options.setdefault("sleep", Recorder())
    return POP3ProtocolHandler(srv.host, srv.port, "user", SECRET, **options)


def verbs(srv: POP3TestServer) -> list[str]:
    return [line.split(" ", 1)[0] for line in srv.commands]


def test_loopback_session_lists_and_fetches(server: POP3TestServer) -> None:
    handler = local(server)
    handler.connect()
    try:
        handler.authenticate()
        ids, total = handler.list_messages()
        message = handler.fetch_message(2)
    finally:
        handler.disconnect()
    assert ids == [1, 2, 3] and total == sum(len(m) for m in MESSAGES)
    assert message is not None and message["subject"] == "two"
    assert ".a line starting with a dot" in message["textBody"]
    assert server.sessions_started == 1


def test_loopback_raw_bytes_survive_dot_stuffing(server: POP3TestServer) -> None:
    message = local(server, include_raw=True).fetch_message(2)
    assert message is not None and message["raw"] == MESSAGES[1]


def test_loopback_stateless_calls_open_one_session_each(server: POP3TestServer) -> None:
    handler = local(server)
    handler.list_messages()
    handler.get_mailbox_stat()
    assert server.sessions_started == 2
    assert verbs(server).count("QUIT") == 2
    assert handler.state == "disconnected"


def test_loopback_implicit_tls(
    server_ssl_context: ssl.SSLContext, client_ssl_context: ssl.SSLContext
) -> None:
    with POP3TestServer(tls="implicit", ssl_context=server_ssl_context) as srv:
        srv.add_message(MESSAGES[0])
        handler = POP3ProtocolHandler(
            srv.host, srv.port, "user", "password", timeout=5, ssl_context=client_ssl_context
        )
        with handler:
            message = handler.fetch_message(1)
    assert message is not None and message["subject"] == "one"
    assert client_ssl_context.verify_mode == ssl.CERT_REQUIRED


def test_loopback_implicit_tls_with_the_default_context_fails_verification(
    server_ssl_context: ssl.SSLContext,
) -> None:
    with POP3TestServer(tls="implicit", ssl_context=server_ssl_context) as srv:
        handler = POP3ProtocolHandler(srv.host, srv.port, "user", "password", timeout=5)
        with pytest.raises(POP3SecurityError, match="certificate"):
            handler.connect()
        assert "USER" not in [c.split(" ")[0] for c in srv.commands]


def test_loopback_stls(
    server_ssl_context: ssl.SSLContext, client_ssl_context: ssl.SSLContext
) -> None:
    with POP3TestServer(tls="starttls", ssl_context=server_ssl_context) as srv:
        srv.add_message(MESSAGES[0])
        handler = POP3ProtocolHandler(
            srv.host, srv.port, "user", "password", "tls", 5, ssl_context=client_ssl_context
        )
        assert handler.list_messages() == ([1], len(MESSAGES[0]))
        seen = verbs(srv)
    assert seen.index("STLS") < seen.index("AUTH")


def test_loopback_stls_not_offered_sends_no_credentials(
    server_ssl_context: ssl.SSLContext, client_ssl_context: ssl.SSLContext
) -> None:
    with POP3TestServer(tls="starttls", ssl_context=server_ssl_context) as srv:
        srv.faults.advertise_stls = False
        handler = POP3ProtocolHandler(
            srv.host, srv.port, "user", "password", "tls", 5, ssl_context=client_ssl_context
        )
        with pytest.raises(POP3SecurityError, match="STLS"):
            handler.list_messages()
        seen = verbs(srv)
    assert "USER" not in seen and "PASS" not in seen and "STLS" not in seen


def test_loopback_stls_refused_by_server(
    server_ssl_context: ssl.SSLContext, client_ssl_context: ssl.SSLContext
) -> None:
    with POP3TestServer(tls="starttls", ssl_context=server_ssl_context) as srv:
        srv.faults.stls_error = True
        handler = POP3ProtocolHandler(
            srv.host, srv.port, "user", "password", "tls", 5, ssl_context=client_ssl_context
        )
        with pytest.raises(POP3SecurityError, match="refused STLS"):
            handler.connect()
        assert "USER" not in verbs(srv)


def test_loopback_bad_password(server: POP3TestServer) -> None:
    handler = POP3ProtocolHandler(
        server.host, server.port, "user", "wrong-password", "none", 5, sleep=Recorder()
    )
    with pytest.raises(POP3AuthenticationError) as caught:
        handler.authenticate()
    assert "wrong-password" not in str(caught.value)
    # One attempt: PLAIN was refused for the credentials, so USER/PASS is not tried.
    assert verbs(server) == ["CAPA", "AUTH"]


def test_loopback_in_use_while_another_session_holds_the_mailbox(
    server: POP3TestServer,
) -> None:
    holder = local(server)
    sleeps = Recorder()
    with holder:
        holder.authenticate()
        with pytest.raises(POP3MailboxBusyError):
            local(server, sleep=sleeps).list_messages()
    assert sleeps.delays == [1.0, 2.0]  # the busy login was retried, then reported


def test_loopback_error_reply_keeps_the_session_usable(server: POP3TestServer) -> None:
    server.faults.error_replies = {"RETR": "-ERR [SYS/TEMP] storage hiccup"}
    with local(server) as handler:
        assert handler.fetch_message(1) is None
        assert handler.state == "authenticated"
        server.faults.error_replies = {}
        assert handler.fetch_message(1) is not None


def test_loopback_drop_mid_retr_loses_the_session_and_its_deletions(
    server: POP3TestServer,
) -> None:
    handler = local(server)
    handler.connect()
    assert handler.delete_message(3)
    server.faults.drop_mid_retr_after_bytes = 30
    with pytest.raises(POP3ConnectionError):
        handler.fetch_message(1)
    assert handler.state == "broken"
    with pytest.raises(POP3ConnectionError, match="lost"):
        handler.list_messages()
    assert handler.disconnect() is False
    assert server.wait_idle()
    assert server.messages() == MESSAGES


def test_loopback_no_greeting_times_out(server: POP3TestServer) -> None:
    server.faults.no_greeting = True
    handler = local(server, timeout=0.3, retry=RetryPolicy.never())
    with pytest.raises(POP3TimeoutError):
        handler.connect()
    assert handler.state == "disconnected"


def test_loopback_slow_reply_times_out_mid_session(server: POP3TestServer) -> None:
    with local(server, timeout=0.3) as handler:
        handler.authenticate()
        server.faults.reply_delay = 2.0
        with pytest.raises(POP3TimeoutError):
            handler.get_mailbox_stat()
        server.faults.reply_delay = 0.0


def test_loopback_dripped_replies_are_read(server: POP3TestServer) -> None:
    server.faults.drip_interval = 0.0005
    assert local(server).get_message_size(3) == len(MESSAGES[2])


def test_loopback_garbage_reply_is_a_protocol_error(server: POP3TestServer) -> None:
    server.faults.garbage_reply = b"WHAT IS THIS\r\n"
    server.faults.garbage_on = "STAT"
    with pytest.raises(POP3ProtocolError):
        local(server).get_mailbox_stat()


def test_loopback_drop_after_a_command(server: POP3TestServer) -> None:
    server.faults.drop_after = "LIST"
    with pytest.raises(POP3ConnectionError):
        local(server).list_messages()


def test_loopback_very_long_lines(server: POP3TestServer) -> None:
    long_header = b"X-Long: " + b"h" * 10_000
    long_body = b"b" * 250_000
    raw = b"".join(
        [b"From: l@example.com\r\n", long_header, b"\r\nSubject: long\r\n\r\n", long_body, b"\r\n"]
    )
    server.add_message(raw)
    handler = local(server, include_raw=True)
    message = handler.fetch_message(4)
    headers = handler.list_headers([4])
    assert message is not None and message["raw"] == raw
    assert message["textBody"].strip() == long_body.decode()
    assert headers[0]["subject"] == "long"
    assert poplib._MAXLINE == 2048  # type: ignore[attr-defined]


def test_loopback_large_message_is_refused_before_retr(server: POP3TestServer) -> None:
    server.add_message(b"Subject: big\r\n\r\n" + b"x" * 5000 + b"\r\n")
    handler = local(server, max_message_size=1000)
    with pytest.raises(POP3MessageTooLargeError):
        handler.fetch_message(4)
    assert "RETR" not in verbs(server)
    assert [m["subject"] for m in handler.fetch_messages()] == ["one", "two", "three"]


def test_loopback_deletions_commit_at_quit(server: POP3TestServer) -> None:
    with local(server) as handler:
        assert handler.delete_messages([1, 3]) == (2, 0)
        assert handler.list_messages()[0] == [2]
        assert server.messages() == MESSAGES  # nothing committed before QUIT
    assert server.messages() == [MESSAGES[1]]


def test_loopback_reset_keeps_the_messages(server: POP3TestServer) -> None:
    with local(server) as handler:
        handler.delete_message(1)
        assert handler.reset() is True
    assert server.messages() == MESSAGES


def test_loopback_abort_commits_nothing(server: POP3TestServer) -> None:
    handler = local(server)
    handler.connect()
    handler.delete_message(1)
    handler.abort()
    assert server.wait_idle()
    assert server.messages() == MESSAGES


def test_loopback_server_crash_before_quit_commits_nothing(server: POP3TestServer) -> None:
    handler = local(server)
    handler.connect()
    handler.delete_message(2)
    server.drop_connections()
    assert handler.disconnect() is False
    assert server.wait_idle()
    assert server.messages() == MESSAGES


def test_loopback_stateless_delete_commits_at_once(server: POP3TestServer) -> None:
    assert local(server).delete_message(1) is True
    assert server.messages() == MESSAGES[1:]


def test_loopback_refused_quit_reports_failure(server: POP3TestServer) -> None:
    handler = local(server)
    handler.connect()
    handler.delete_message(1)
    server.faults.error_replies = {"QUIT": "-ERR some deleted messages not removed"}
    assert handler.disconnect() is False
    assert handler.state == "disconnected"


def test_loopback_session_context_groups_calls(server: POP3TestServer) -> None:
    handler = local(server)
    with handler.session():
        handler.delete_message(1)
        handler.fetch_messages()
    assert server.sessions_started == 1
    assert server.messages() == MESSAGES[1:]


def test_loopback_capabilities_and_health(server: POP3TestServer) -> None:
    handler = local(server)
    capabilities = handler.get_capabilities()
    assert "UIDL" in capabilities and "SASL PLAIN" in capabilities
    assert handler.test_connection() is True
    server.faults.reject_login = True
    assert handler.test_connection() is False


def test_loopback_unreachable_server_fails_after_retries() -> None:
    with POP3TestServer() as srv:
        host, port = srv.host, srv.port
    sleeps = Recorder()
    handler = POP3ProtocolHandler(host, port, "user", "password", "none", 5, sleep=sleeps)
    with pytest.raises(POP3ConnectionError):
        handler.connect()
    assert sleeps.delays == [1.0, 2.0]
    assert handler.test_connection() is False


def test_loopback_uids_and_headers(server: POP3TestServer) -> None:
    handler = local(server)
    assert list(handler.list_uids().values()) == server.uids()
    subjects = [summary["subject"] for summary in handler.list_headers()]
    assert subjects == ["one", "two", "three"]
    assert all(summary["textBody"] == "" for summary in handler.list_headers([1]))
    assert "RETR" not in verbs(server)


def test_loopback_server_without_uidl_or_top() -> None:
    with POP3TestServer(uidl=False, top=False) as srv:
        srv.add_message(MESSAGES[0])
        handler = POP3ProtocolHandler(srv.host, srv.port, "user", "password", "none", 5)
        with pytest.raises(POP3UnsupportedError, match="UIDL"):
            handler.list_uids()
        with pytest.raises(POP3UnsupportedError, match="TOP"):
            handler.list_headers()


def test_loopback_password_never_logged(
    server: POP3TestServer, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG):
        handler = local(server)
        with handler:
            handler.fetch_messages()
            handler.delete_message(1)
        server.faults.drop_after = "STAT"
        with pytest.raises(POP3ConnectionError):
            handler.get_mailbox_stat()
        bad = POP3ProtocolHandler(server.host, server.port, "user", "nope" + SECRET, "none", 5)
        with pytest.raises(POP3AuthenticationError):
            bad.authenticate()
    assert caplog.records
    for record in caplog.records:
        assert SECRET not in record.getMessage()
        assert "first body" not in record.getMessage()


def _lying_server(conv: Conversation) -> None:
    conv.send("+OK ready")
    for reply in ("-ERR no CAPA", "+OK", "+OK logged in", "+OK 1 10"):
        conv.recv_line()
        conv.send(reply)
    conv.recv_line()  # RETR 1
    conv.send(b"+OK\r\n" + b"x" * 4000 + b"\r\n")
    conv.wait_closed(5)


def test_message_bigger_than_its_listed_size_is_cut_off_mid_read() -> None:
    with ScriptedServer(_lying_server) as srv:
        handler = POP3ProtocolHandler(
            srv.host, srv.port, "user", "pw", "none", 5, max_message_size=1000
        )
        handler.connect()
        with pytest.raises(POP3MessageTooLargeError):
            handler.fetch_message(1)
        assert handler.state == "broken"
        handler.disconnect()
    assert srv.errors == []


def test_loopback_interrupted_block_commits_nothing(server: POP3TestServer) -> None:
    with pytest.raises(KeyboardInterrupt), local(server) as handler:
        handler.delete_message(1)
        raise KeyboardInterrupt
    assert handler.state == "disconnected"
    assert server.wait_idle()
    assert server.messages() == MESSAGES


def test_loopback_error_in_block_still_commits_marked_deletions(server: POP3TestServer) -> None:
    with pytest.raises(RuntimeError), local(server) as handler:
        handler.delete_message(1)
        raise RuntimeError("saving failed after the deletion was asked for")
    assert server.messages() == MESSAGES[1:]


# -- a sloppy CAPA listing ------------------------------------------------------------


@pytest.mark.parametrize("line", [b"X-CAF\xc3\xa9 yes", b""], ids=["non-ascii", "empty"])
def test_a_sloppy_capa_line_is_ignored(
    line: bytes, server_ssl_context: ssl.SSLContext, client_ssl_context: ssl.SSLContext
) -> None:
    with POP3TestServer(tls="starttls", ssl_context=server_ssl_context) as server:
        server.extra_capabilities = [line]
        server.add_message(b"Subject: hi\r\n\r\nbody\r\n")
        handler = POP3ProtocolHandler(
            server.host, server.port, "user", "password", "tls", 5,
            ssl_context=client_ssl_context,
        )  # fmt: skip
        assert handler.test_connection() is True  # STLS is found past the sloppy line
        assert handler.connect() is True and handler.authenticate() is True
        assert "STLS" not in handler.get_capabilities()  # asked after STLS
        assert "TOP" in handler.get_capabilities()
        assert handler.fetch_message(1) is not None
        handler.disconnect()


@pytest.mark.parametrize(
    "failure",
    [UnicodeDecodeError("ascii", b"\xc3", 0, 1, "ordinal not in range"), IndexError("empty")],
    ids=["non-ascii", "empty"],
)
def test_a_client_whose_capa_breaks_gives_a_typed_error(failure: Exception) -> None:
    client = Mock()
    client.capa.side_effect = failure
    with patch("src.handlers.pop3.POP3", return_value=client):
        handler = POP3ProtocolHandler("pop.example.com", 110, "user", "password", "tls", 5)
        assert handler.test_connection() is False
        with pytest.raises(POP3ProtocolError, match="CAPA"):
            handler.connect()


# -- the wrong encryption mode for the port -----------------------------------------


@pytest.mark.parametrize("mode", ["tls", "none"])
def test_plain_start_on_an_implicit_tls_port_fails_at_once(
    mode: str, server_ssl_context: ssl.SSLContext, client_ssl_context: ssl.SSLContext
) -> None:
    waits: list[float] = []
    with POP3TestServer(tls="implicit", ssl_context=server_ssl_context) as server:
        handler = POP3ProtocolHandler(
            server.host, server.port, "user", "password", mode, 0.5,
            ssl_context=client_ssl_context, sleep=waits.append,
        )  # fmt: skip
        with pytest.raises(POP3ConnectionError) as caught:
            handler.connect()
        assert handler.test_connection() is False
    error = caught.value
    assert isinstance(error, POP3SecurityError) and not is_retryable(error)
    assert "encryption='ssl'" in str(error)
    assert waits == []  # never retried
