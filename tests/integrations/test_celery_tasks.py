"""The Celery tasks, run by a real worker inside the test process.

The worker consumes from an in-memory broker and stores results in an in-memory
backend, both with the JSON serializer only; the tasks send to loopback test servers.
"""

from __future__ import annotations

import base64
import json
import logging
import os
from collections.abc import Iterator
from typing import Any

import celery
import pytest
from celery.contrib.testing.worker import start_worker
from celery.signals import before_task_publish, setup_logging
from celery.worker import state as worker_state

from src.handlers import SMTPConnectionPool
from src.integrations.celery_tasks import (
    ACCOUNT_SEND_TASK,
    SEND_TASK,
    SMTPAccount,
    cached_handler_count,
    configure,
)
from src.testing.pytest_plugin import MailAccount
from src.testing.scripted_server import Conversation, ScriptedServer
from src.testing.smtp_scripts import send_reply
from src.testing.smtp_server import SMTPTestServer

SENDER = "app@example.test"
QUICK_RETRIES = {"retry_delays": (0.01,), "max_retries": 1}
RESULT_WAIT = 15.0
WAKE_TASK = "tests.wake_worker"


def wake_worker() -> None:
    """A task that does nothing: its message only ends the worker's wait for mail."""


@pytest.fixture(scope="module")
def celery_app() -> Any:
    app = celery.Celery(
        "mailhandlers-tests",
        broker="memory://",
        backend="cache+memory://",
        set_as_current=False,
    )
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        task_annotations={SEND_TASK: QUICK_RETRIES, ACCOUNT_SEND_TASK: QUICK_RETRIES},
        broker_transport_options={"polling_interval": 0.01},
        worker_hijack_root_logger=False,
    )
    app.task(name=WAKE_TASK)(wake_worker)
    return app


def _leave_logging_alone(**kwargs: Any) -> None:
    """A setup_logging receiver: with one connected, Celery configures no logging."""


@pytest.fixture(scope="module")
def worker(celery_app: Any) -> Iterator[Any]:
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    setup_logging.connect(_leave_logging_alone, weak=False)
    try:
        with start_worker(celery_app, perform_ping_check=False, shutdown_timeout=30) as worker:
            yield worker
            # Leaving start_worker sets this flag, then waits for the consumer to see it,
            # which takes up to two 2 s polls of the memory transport; two no-op
            # messages end both polls at once.
            worker_state.should_terminate = 0
            for _ in range(2):
                celery_app.tasks[WAKE_TASK].delay()
    finally:
        setup_logging.disconnect(_leave_logging_alone)
    assert (root.level, root.handlers) == (level, handlers)


@pytest.fixture
def pool() -> Iterator[SMTPConnectionPool]:
    pool = SMTPConnectionPool(max_connections=4)
    configure(handler_options={"pool": pool})
    yield pool
    configure()
    pool.close_all()


def run(app: Any, name: str, *args: Any, **kwargs: Any) -> dict[str, Any]:
    """Queue a task, wait for its result, and return it."""
    result = app.tasks[name].apply_async(args, kwargs)
    outcome: dict[str, Any] = result.get(timeout=RESULT_WAIT, interval=0.01)
    return outcome


def spec_args(server: SMTPTestServer, *recipients: str) -> tuple[Any, ...]:
    """The spec example's positional arguments, for a plain server with no login."""
    return (server.host, server.port, None, None, "none", list(recipients), "Hello", "Body")


# -- sending through the worker -------------------------------------------------------


def test_a_send_through_the_worker_returns_the_result_dict_over_json(
    celery_app: Any, worker: Any, pool: SMTPConnectionPool, smtp_server: SMTPTestServer
) -> None:
    outcome = run(
        celery_app,
        SEND_TASK,
        *spec_args(smtp_server, "ada@example.test"),
        from_address=SENDER,
        html_body="<p>Body</p>",
    )
    assert outcome["status"] == "success"
    assert outcome["retry_count"] == 0
    assert isinstance(outcome["sent_at"], str)
    assert json.loads(json.dumps(outcome)) == outcome
    [received] = smtp_server.messages
    assert received["Subject"] == "Hello"
    assert received["Message-ID"] == outcome["message_id"]
    assert celery_app.conf.result_serializer == "json"


def test_a_worker_process_reuses_one_handler_and_its_connection(
    celery_app: Any, worker: Any, pool: SMTPConnectionPool, smtp_server: SMTPTestServer
) -> None:
    for _ in range(3):
        outcome = run(
            celery_app,
            SEND_TASK,
            *spec_args(smtp_server, "ada@example.test"),
            from_address=SENDER,
        )
        assert outcome["status"] == "success"
    assert cached_handler_count() == 1
    assert smtp_server.sessions == 1
    assert len(smtp_server.messages) == 3


def test_a_transient_failure_is_retried_by_celery(
    celery_app: Any, worker: Any, pool: SMTPConnectionPool, smtp_server: SMTPTestServer
) -> None:
    smtp_server.faults.mail_replies[1] = (451, "4.3.0 Try again later")
    outcome = run(
        celery_app,
        SEND_TASK,
        *spec_args(smtp_server, "ada@example.test"),
        from_address=SENDER,
    )
    assert outcome["status"] == "success"
    assert outcome["retry_count"] == 1
    assert [m["Subject"] for m in smtp_server.messages] == ["Hello"]


def test_a_failure_that_outlasts_the_retries_comes_back_as_temp_failed(
    celery_app: Any, worker: Any, pool: SMTPConnectionPool, smtp_server: SMTPTestServer
) -> None:
    smtp_server.faults.mail_replies.update({1: (451, "4.3.0 busy"), 2: (451, "4.3.0 busy")})
    outcome = run(
        celery_app,
        SEND_TASK,
        *spec_args(smtp_server, "ada@example.test"),
        from_address=SENDER,
    )
    assert outcome["status"] == "temp_failed"
    assert (outcome["smtp_code"], outcome["retry_count"]) == (451, 1)
    assert outcome["is_retryable"] is True
    assert smtp_server.messages == []


def test_a_permanent_failure_is_returned_without_retry(
    celery_app: Any, worker: Any, pool: SMTPConnectionPool, smtp_server: SMTPTestServer
) -> None:
    smtp_server.faults.reject_recipients["bob@example.test"] = (550, "5.1.1 No such user")
    outcome = run(
        celery_app,
        SEND_TASK,
        *spec_args(smtp_server, "bob@example.test"),
        from_address=SENDER,
    )
    assert outcome["status"] == "rejected"
    assert outcome["retry_count"] == 0 and outcome["is_retryable"] is False
    assert list(outcome["recipient_failures"]) == ["bob@example.test"]


def test_bad_input_is_returned_as_invalid(
    celery_app: Any, worker: Any, pool: SMTPConnectionPool, smtp_server: SMTPTestServer
) -> None:
    bad_address = run(
        celery_app, SEND_TASK, *spec_args(smtp_server, "not an address"), from_address=SENDER
    )
    unknown_option = run(
        celery_app, SEND_TASK, *spec_args(smtp_server, "ada@example.test"), colour="red"
    )
    bad_settings = run(
        celery_app,
        SEND_TASK,
        "smtp.example.test\r\nRSET",
        25,
        None,
        None,
        "none",
        ["ada@example.test"],
        "Hello",
    )
    assert [bad_address["status"], unknown_option["status"], bad_settings["status"]] == [
        "invalid"
    ] * 3
    assert "colour" in unknown_option["smtp_error"]
    assert smtp_server.sessions == 0


# -- credentials by account id ---------------------------------------------------------


def test_an_account_id_keeps_the_password_out_of_the_broker(
    celery_app: Any,
    worker: Any,
    pool: SMTPConnectionPool,
    smtp_server_tls: SMTPTestServer,
    mail_account: MailAccount,
    mail_client_ssl_context: Any,
) -> None:
    accounts = {
        "acme": SMTPAccount(
            smtp_server_tls.host,
            smtp_server_tls.port,
            mail_account.username,
            mail_account.password,
            "tls",
            SENDER,
        )
    }
    configure(
        credentials_provider=accounts.__getitem__,
        handler_options={"pool": pool, "ssl_context": mail_client_ssl_context},
    )
    published: list[str] = []

    def record(body: Any, headers: Any, **kwargs: Any) -> None:
        published.append(json.dumps([body, headers], default=str))

    before_task_publish.connect(record, weak=False)
    try:
        by_account = run(celery_app, ACCOUNT_SEND_TASK, "acme", ["ada@example.test"], "Hi", "Body")
        by_password = run(
            celery_app,
            SEND_TASK,
            smtp_server_tls.host,
            smtp_server_tls.port,
            mail_account.username,
            mail_account.password,
            "tls",
            ["ada@example.test"],
            "Hi",
            "Body",
            from_address=SENDER,
        )
    finally:
        before_task_publish.disconnect(record)
    assert by_account["status"] == by_password["status"] == "success"
    assert len(published) == 2
    assert mail_account.password not in published[0]
    assert mail_account.password in published[1]  # what the docs warn about
    assert all(m.username == mail_account.username for m in smtp_server_tls.messages)


def test_an_account_task_without_a_provider_fails_loudly(celery_app: Any) -> None:
    configure()
    task = celery_app.tasks[ACCOUNT_SEND_TASK]
    with pytest.raises(RuntimeError, match="credentials provider"):
        task.apply(("acme", ["ada@example.test"], "Hi")).get()


def test_the_account_keeps_its_password_out_of_repr() -> None:
    account = SMTPAccount("smtp.example.test", 587, "user", "s3cret-value")
    assert "s3cret-value" not in repr(account)


# -- fork safety ----------------------------------------------------------------------


# Python 3.12+ warns about fork() with threads running; the child touches nothing of
# the parent's but the handler cache, which is what is tested.
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_a_forked_child_builds_its_own_handler(
    celery_app: Any, pool: SMTPConnectionPool, smtp_server: SMTPTestServer
) -> None:
    task = celery_app.tasks[SEND_TASK]
    args = spec_args(smtp_server, "ada@example.test")
    assert task.apply(args, {"from_address": SENDER}).get()["status"] == "success"
    assert cached_handler_count() == 1
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: report and leave without running pytest's teardown
        code = 1
        try:
            os.close(read_end)
            inherited = cached_handler_count()
            outcome = task.apply(args, {"from_address": SENDER}).get()
            child_report = (inherited, outcome["status"], cached_handler_count())
            os.write(write_end, repr(child_report).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        report = pipe.read()
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 0
    assert report == repr((0, "success", 1)).encode()
    # The parent kept its handler and its warm connection; the child opened its own.
    assert task.apply(args, {"from_address": SENDER}).get()["status"] == "success"
    assert cached_handler_count() == 1
    assert len(smtp_server.wait_for_messages(3)) == 3
    assert smtp_server.sessions == 2


def _auth_echo_loop(conv: Conversation) -> None:
    """Answers every line after AUTH with ``334 <that line>``, forever."""
    send_reply(conv, 220, "localhost ESMTP")
    while (line := conv.recv_line()) is not None:
        text = line.rstrip(b"\r\n").decode()
        verb = text.split(" ", 1)[0].upper()
        if verb == "EHLO":
            send_reply(conv, 250, "localhost\nAUTH PLAIN")
        elif verb == "QUIT":
            send_reply(conv, 221, "bye")
            return
        else:
            send_reply(conv, 334, text)


def test_a_server_looping_on_auth_fails_once_with_the_password_masked(
    celery_app: Any, worker: Any, pool: SMTPConnectionPool, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    password = "celery-loop-secret"
    plain = base64.b64encode(f"\0ada\0{password}".encode()).decode()
    with ScriptedServer(_auth_echo_loop) as server:
        outcome = run(
            celery_app,
            SEND_TASK,
            server.host,
            server.port,
            "ada",
            password,
            "none",
            ["bob@example.test"],
            "Hello",
            "Body",
            from_address=SENDER,
        )
    assert outcome["status"] == "failed" and outcome["is_retryable"] is False
    assert outcome["retry_count"] == 0 and server.connections == 1
    for secret in (password, plain, base64.b64encode(password.encode()).decode()):
        assert secret not in json.dumps(outcome)
        assert secret not in caplog.text
