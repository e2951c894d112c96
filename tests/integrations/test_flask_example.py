"""examples/flask_app.py, driven through Flask's test client against loopback servers."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import pytest
from flask.testing import FlaskClient
from paths import EXAMPLES

from src.handlers import SMTPConnectionPool
from src.handlers.retry import RetryPolicy
from src.testing.pop3_server import POP3TestServer
from src.testing.pytest_plugin import MailAccount
from src.testing.smtp_server import SMTPTestServer

EXAMPLE = EXAMPLES / "flask_app.py"
SENDER = "app@example.test"


def load_example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("flask_app_example", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


flask_app = load_example()


@pytest.fixture
def smtp_pool() -> Iterator[SMTPConnectionPool]:
    pool = SMTPConnectionPool(max_connections=2)
    yield pool
    pool.close_all()


@pytest.fixture
def pop3_accounts(
    pop3_server_tls: POP3TestServer, mail_account: MailAccount
) -> dict[str, dict[str, Any]]:
    return {
        "acme": {
            "hostname": pop3_server_tls.host,
            "port": pop3_server_tls.port,
            "username": mail_account.username,
            "password": mail_account.password,
            "encryption": "ssl",
        }
    }


@pytest.fixture
def app(
    smtp_server_tls: SMTPTestServer,
    mail_account: MailAccount,
    mail_client_ssl_context: Any,
    smtp_pool: SMTPConnectionPool,
    pop3_accounts: dict[str, dict[str, Any]],
) -> Any:
    return flask_app.create_app(
        {
            "TESTING": True,
            "MAIL_SMTP": {
                "hostname": smtp_server_tls.host,
                "port": smtp_server_tls.port,
                "username": mail_account.username,
                "password": mail_account.password,
                "encryption": "tls",
                "from_address": SENDER,
            },
            "MAIL_SMTP_OPTIONS": {"ssl_context": mail_client_ssl_context, "pool": smtp_pool},
            "MAIL_POP3_ACCOUNTS": pop3_accounts.get,
            "MAIL_POP3_OPTIONS": {
                "ssl_context": mail_client_ssl_context,
                "retry": RetryPolicy.never(),
            },
        }
    )


@pytest.fixture
def client(app: Any) -> FlaskClient:
    test_client: FlaskClient = app.test_client()
    return test_client


# -- POST /api/send -------------------------------------------------------------------


def test_a_valid_request_is_sent_and_answered_with_the_result(
    client: FlaskClient, smtp_server_tls: SMTPTestServer
) -> None:
    response = client.post(
        "/api/send",
        json={
            "to": ["ada@example.test"],
            "subject": "Invoice 42",
            "text_body": "Attached.",
            "attachments": [{"filename": "a.txt", "contentType": "text/plain", "data": "aGVsbG8="}],
        },
    )
    assert response.status_code == 200
    assert response.json is not None
    assert response.json["status"] == "success"
    [received] = smtp_server_tls.messages
    assert received["Subject"] == "Invoice 42"
    assert received["Message-ID"] == response.json["message_id"]
    assert received.secure


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ("not json", "JSON object"),
        ([1, 2], "JSON object"),
        ({"subject": "no recipients"}, "'to' is required"),
        ({"to": "ada@example.test", "subject": 7}, "'subject' must be a string"),
        ({"to": [3], "subject": "x"}, "'to' must be"),
        ({"to": "ada@example.test", "subject": "x", "attachments": "a.txt"}, "'attachments'"),
        ({"to": "ada@example.test", "subject": "x", "password": "p"}, "unknown field(s): password"),
        ({"to": "not an address", "subject": "x", "text_body": "y"}, ""),
    ],
)
def test_an_unusable_body_gets_400_and_nothing_is_sent(
    client: FlaskClient, smtp_server_tls: SMTPTestServer, body: Any, reason: str
) -> None:
    if isinstance(body, str):
        response = client.post("/api/send", data=body, content_type="text/plain")
    else:
        response = client.post("/api/send", json=body)
    assert response.status_code == 400
    assert response.json is not None
    assert response.json["status"] == "invalid"
    assert reason in response.json["smtp_error"]
    assert smtp_server_tls.sessions == 0


def test_a_transient_failure_gets_503_with_retry_after(
    client: FlaskClient, smtp_server_tls: SMTPTestServer
) -> None:
    smtp_server_tls.faults.mail_replies[1] = (451, "4.3.0 Try again later")
    response = client.post(
        "/api/send", json={"to": "ada@example.test", "subject": "x", "text_body": "y"}
    )
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "60"
    assert response.json is not None
    assert (response.json["smtp_code"], response.json["is_retryable"]) == (451, True)
    assert len(smtp_server_tls.auth_attempts) == 1  # answered at once, no retry


def test_a_refused_recipient_gets_502(client: FlaskClient, smtp_server_tls: SMTPTestServer) -> None:
    smtp_server_tls.faults.reject_recipients["bob@example.test"] = (550, "5.1.1 No such user")
    response = client.post(
        "/api/send", json={"to": "bob@example.test", "subject": "x", "text_body": "y"}
    )
    assert response.status_code == 502
    assert response.json is not None
    assert response.json["status"] == "rejected"
    assert list(response.json["recipient_failures"]) == ["bob@example.test"]


# -- POST /api/pop3/sync --------------------------------------------------------------


def raw(subject: str) -> bytes:
    return f"From: ada@example.test\r\nSubject: {subject}\r\n\r\nHello\r\n".encode()


def test_a_sync_saves_new_messages_once(
    app: Any, client: FlaskClient, pop3_server_tls: POP3TestServer
) -> None:
    pop3_server_tls.add_message(raw("first"))
    pop3_server_tls.add_message(raw("second"))
    first = client.post("/api/pop3/sync", json={"accountId": "acme"})
    pop3_server_tls.add_message(raw("third"))
    second = client.post("/api/pop3/sync", json={"accountId": "acme"})
    assert (first.status_code, first.json) == (200, {"synced": 2, "skipped": 0, "failed": 0})
    assert (second.status_code, second.json) == (200, {"synced": 1, "skipped": 2, "failed": 0})
    inbox = app.extensions["mail_inbox"]["acme"]
    assert [m["subject"] for m in inbox] == ["first", "second", "third"]
    assert len(pop3_server_tls.messages()) == 3  # synced, not deleted


def test_a_configured_save_function_gets_the_account_and_message(
    app: Any, client: FlaskClient, pop3_server_tls: POP3TestServer
) -> None:
    saved: list[tuple[Any, str]] = []
    app.config["MAIL_SAVE_MESSAGE"] = lambda account, message: saved.append(
        (account, message["subject"])
    )
    pop3_server_tls.add_message(raw("hello"))
    assert client.post("/api/pop3/sync", json={"accountId": "acme"}).status_code == 200
    assert saved == [("acme", "hello")]


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (None, 400),
        ({"accountId": True}, 400),
        ({"accountId": [1]}, 400),
        ({"accountId": "nobody"}, 404),
    ],
)
def test_a_bad_or_unknown_account_is_refused(
    client: FlaskClient, pop3_server_tls: POP3TestServer, body: Any, status: int
) -> None:
    response = client.post("/api/pop3/sync", json=body)
    assert response.status_code == status
    assert pop3_server_tls.sessions_started == 0


def test_a_busy_mailbox_gets_503_with_retry_after(
    client: FlaskClient, pop3_server_tls: POP3TestServer
) -> None:
    pop3_server_tls.faults.in_use = True
    response = client.post("/api/pop3/sync", json={"accountId": "acme"})
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "60"
    assert response.json is not None
    assert response.json["type"] == "POP3MailboxBusyError"


def test_refused_credentials_get_502_without_the_password(
    client: FlaskClient,
    pop3_server_tls: POP3TestServer,
    pop3_accounts: dict[str, dict[str, Any]],
) -> None:
    pop3_accounts["acme"]["password"] = "wrong-password-value"
    response = client.post("/api/pop3/sync", json={"accountId": "acme"})
    assert response.status_code == 502
    assert "wrong-password-value" not in response.get_data(as_text=True)
    assert response.json is not None
    assert response.json["type"] == "POP3AuthenticationError"


def test_an_unreachable_server_gets_503(
    client: FlaskClient,
    pop3_server_tls: POP3TestServer,
    pop3_accounts: dict[str, dict[str, Any]],
) -> None:
    pop3_server_tls.stop()  # nothing listens on its port any more
    response = client.post("/api/pop3/sync", json={"accountId": "acme"})
    assert response.status_code == 503
