"""Fork safety with a real ``os.fork()``: what a parent used, its child never shares.

A forked child inherits the parent's sockets. If it spoke on one, both processes
would read each other's replies, and a POP3 ``QUIT`` from the child would commit the
parent's deletions. Each test below uses a handler or pool in the parent, forks, lets
the child use the same object, and checks on the server's side that the child opened
a connection of its own, and that the parent's connection still works afterwards.

The child reports through a pipe and leaves with ``os._exit``, so pytest's teardown
never runs twice. (The SMTP handler with a pool of its own is covered in
``tests/loopback/test_smtp_handler.py``.)
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from src.handlers.errors import POP3MailboxBusyError
from src.handlers.pop3 import POP3ConnectionPool, POP3ProtocolHandler
from src.handlers.retry import RetryPolicy
from src.handlers.smtp import SMTPDeliveryStatus, SMTPProtocolHandler, shared_pool
from src.testing.pop3_server import POP3TestServer
from src.testing.smtp_server import SMTPTestServer

PASSWORD = "fork-safety-secret"
CHILD_TIME_LIMIT = 10  # seconds: a child that hangs is killed by SIGALRM and reported

# Python 3.12+ warns about fork() while threads run (the test servers' threads); the
# child only uses sockets of its own, which is what these tests check.
pytestmark = pytest.mark.filterwarnings(
    "ignore:This process .* is multi-threaded:DeprecationWarning"
)


def in_child(work: Callable[[], str]) -> str:
    """Run ``work`` in a forked child; return what it reported (or why it failed)."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report, then leave without any of the parent's cleanup
        code = 1
        try:
            os.close(read_end)
            signal.alarm(CHILD_TIME_LIMIT)
            try:
                report = work()
            except BaseException as error:  # reported to the parent, which fails the test
                report = f"raised {type(error).__name__}: {error}"
            os.write(write_end, report.encode("utf-8", "replace"))
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        report = pipe.read().decode("utf-8", "replace")
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status), f"child ended by signal {os.WTERMSIG(status)}"
    assert os.WEXITSTATUS(status) == 0
    return report


@contextlib.contextmanager
def held_by_another_thread(
    take: Callable[[], object], give_back: Callable[[], object]
) -> Iterator[None]:
    """Within the block, another thread has run ``take`` and waits to run ``give_back``:
    what a fork in the middle of that thread's call leaves the child."""
    inside, leave = threading.Event(), threading.Event()
    taken: list[object] = []

    def holder() -> None:
        taken.append(take())
        inside.set()
        leave.wait(CHILD_TIME_LIMIT)
        give_back()

    thread = threading.Thread(target=holder)
    thread.start()
    try:
        assert inside.wait(5.0) and taken == [True]
        yield
    finally:
        leave.set()
        thread.join()


@pytest.fixture
def pop3_server() -> Iterator[POP3TestServer]:
    with POP3TestServer(users={"user": PASSWORD}) as server:
        server.add_message(b"Subject: one\r\n\r\nfirst\r\n")
        server.add_message(b"Subject: two\r\n\r\nsecond\r\n")
        yield server


def pop3_options() -> dict[str, Any]:
    # A busy mailbox is retried once, without waiting.
    return {
        "encryption": "none",
        "timeout": 5.0,
        "retry": RetryPolicy(max_retries=1, delays=(0.0,)),
        "sleep": lambda seconds: None,
    }


def test_pop3_handler_session_is_not_shared_with_a_child(pop3_server: POP3TestServer) -> None:
    handler = POP3ProtocolHandler(
        pop3_server.host, pop3_server.port, "user", PASSWORD, **pop3_options()
    )
    handler.connect()
    handler.authenticate()
    assert handler.delete_message(1)  # pending in the parent's session

    def child() -> str:
        # The parent's session holds the mailbox lock: a session of the child's own
        # is refused with [IN-USE], which riding on the parent's socket would not be.
        try:
            handler.list_messages()
        except POP3MailboxBusyError:
            return f"busy; connected={handler.is_connected}"
        return "listed the mailbox over the parent's session"

    assert in_child(child) == "busy; connected=False"
    assert pop3_server.sessions_started == 3  # the parent's, then two attempts of the child's
    # The parent's session is untouched: its pending deletion still commits.
    assert handler.list_messages() == ([2], len(b"Subject: two\r\n\r\nsecond\r\n"))
    assert handler.disconnect() is True
    assert len(pop3_server.messages()) == 1


def test_pop3_pool_does_not_hand_a_child_the_parents_session(
    pop3_server: POP3TestServer,
) -> None:
    with POP3ConnectionPool(
        pop3_server.host, pop3_server.port, "user", PASSWORD, pool_size=2, **pop3_options()
    ) as pool:
        handler = pool.acquire()
        assert handler is not None
        assert handler.list_messages()[0] == [1, 2]
        pool.release(handler)
        assert pool.idle_count == 1

        def child() -> str:
            taken = pool.acquire()  # the idle session is the parent's: not for us
            return f"acquired={taken is not None} idle={pool.idle_count}"

        assert in_child(child) == "acquired=False idle=0"
        assert pop3_server.sessions_started == 2  # the child's own session, refused
        again = pool.acquire()
        assert again is handler  # the parent's idle session survived the child
        assert again.list_messages()[0] == [1, 2]
        pool.release(again)
    assert pop3_server.sessions_started == 2


def test_pop3_pool_is_usable_in_a_child_forked_while_another_thread_holds_it(
    pop3_server: POP3TestServer,
) -> None:
    pool = POP3ConnectionPool(
        pop3_server.host, pop3_server.port, "user", PASSWORD, pool_size=2, **pop3_options()
    )
    # Another thread is in the middle of a pool call at fork time.
    try:
        with held_by_another_thread(pool._lock.acquire, pool._lock.release):

            def child() -> str:
                handler = pool.acquire()
                assert handler is not None
                numbers = handler.list_messages()[0]
                pool.release(handler, commit=True)
                return f"listed {numbers}"

            assert in_child(child) == "listed [1, 2]"
    finally:
        pool.close_all()


def test_smtp_shared_pool_is_not_shared_with_a_child() -> None:
    with SMTPTestServer() as server:
        handler = SMTPProtocolHandler(
            server.host, server.port, encryption="none", from_address="a@example.com"
        )
        try:
            assert handler.pool is shared_pool()
            first = handler.send_message(["b@example.org"], "from the parent", "hi")
            assert first.status is SMTPDeliveryStatus.SUCCESS

            def child() -> str:
                result = handler.send_message(["b@example.org"], "from the child", "hi")
                stats = shared_pool().get_stats()
                return f"{result.status.value} created={stats['created']} reused={stats['reused']}"

            assert in_child(child) == "success created=1 reused=0"
            again = handler.send_message(["b@example.org"], "the parent again", "hi")
            assert again.status is SMTPDeliveryStatus.SUCCESS
            subjects = sorted(str(m["Subject"]) for m in server.wait_for_messages(3))
            assert subjects == ["from the child", "from the parent", "the parent again"]
            assert server.sessions == 2  # the parent's connection was reused, not broken
        finally:
            shared_pool().close_all()


def test_smtp_handler_is_usable_in_a_child_forked_while_another_thread_sends() -> None:
    with SMTPTestServer() as server:
        handler = SMTPProtocolHandler(
            server.host,
            server.port,
            encryption="none",
            from_address="a@example.com",
            pool_size=1,
            pool_wait_timeout=1.0,
            retry=RetryPolicy.never(),
        )
        # Another thread holds the handler's one slot at fork time, as a send does.
        try:
            with held_by_another_thread(
                lambda: handler._slots.acquire(timeout=5.0), handler._slots.release
            ):

                def child() -> str:
                    result = handler.send_message(["b@example.org"], "from the child", "hi")
                    return f"{result.status.value} {result.smtp_error}"

                assert in_child(child) == "success None"
        finally:
            handler.close()
        assert handler.send_message(["b@example.org"], "the parent", "hi").success
