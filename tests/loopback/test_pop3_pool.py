"""Tests for POP3ConnectionPool against the in-process POP3 test server."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest

from src.handlers.errors import ConfigurationError, POP3AuthenticationError, POP3PoolClosedError
from src.handlers.pop3 import POP3ConnectionPool, POP3ProtocolHandler
from src.testing.pop3_server import POP3TestServer

MESSAGES = [
    b"From: a@example.com\r\nSubject: one\r\n\r\nbody one\r\n",
    b"From: b@example.com\r\nSubject: two\r\n\r\nbody two\r\n",
]


@pytest.fixture
def server() -> Iterator[POP3TestServer]:
    with POP3TestServer() as srv:
        for raw in MESSAGES:
            srv.add_message(raw)
        yield srv
    assert srv.errors == []


@pytest.fixture
def pool(server: POP3TestServer) -> Iterator[POP3ConnectionPool]:
    with make_pool(server) as made:
        yield made


def make_pool(srv: POP3TestServer, pool_size: int = 3, **options: Any) -> POP3ConnectionPool:
    options.setdefault("sleep", lambda seconds: None)
    return POP3ConnectionPool(
        srv.host, srv.port, "user", "password", pool_size, encryption="none", timeout=5, **options
    )


def test_acquire_returns_a_logged_in_handler(pool: POP3ConnectionPool) -> None:
    handler = pool.acquire()
    assert isinstance(handler, POP3ProtocolHandler)
    assert handler.is_connected and handler.is_authenticated
    assert handler.authenticate() is True  # as in the spec's example: harmless
    assert handler.list_messages()[0] == [1, 2]
    pool.release(handler)


def test_pool_exhausted_returns_none(server: POP3TestServer) -> None:
    with make_pool(server, pool_size=1) as pool:
        first = pool.acquire()
        assert first is not None
        assert pool.acquire() is None
        assert server.sessions_started == 1
        pool.release(first)


def test_release_resets_deletions_and_reuses_the_session(
    server: POP3TestServer, pool: POP3ConnectionPool
) -> None:
    handler = pool.acquire()
    assert handler is not None
    handler.delete_message(1)
    pool.release(handler)
    again = pool.acquire()
    assert again is handler
    assert again.list_messages()[0] == [1, 2]
    assert server.sessions_started == 1
    pool.release(again)
    pool.close_all()
    assert server.wait_idle()
    assert server.messages() == MESSAGES


def test_release_with_commit_deletes_and_reopens_lazily(
    server: POP3TestServer, pool: POP3ConnectionPool
) -> None:
    handler = pool.acquire()
    assert handler is not None
    handler.delete_message(1)
    pool.release(handler, commit=True)
    assert not handler.is_connected
    assert server.messages() == MESSAGES[1:]
    again = pool.acquire()
    assert again is handler and again.is_authenticated
    assert again.list_messages()[0] == [1]
    assert server.sessions_started == 2
    pool.release(again)


def test_release_is_idempotent_and_ignores_strangers(
    server: POP3TestServer, pool: POP3ConnectionPool
) -> None:
    handler = pool.acquire()
    assert handler is not None
    pool.release(handler)
    pool.release(handler)
    stranger = POP3ProtocolHandler(server.host, server.port, "user", "password", "none")
    pool.release(stranger)
    assert pool.idle_count == 1 and pool.in_use_count == 0


def test_second_session_on_the_same_mailbox_is_refused_in_use(
    server: POP3TestServer, pool: POP3ConnectionPool, caplog: pytest.LogCaptureFixture
) -> None:
    first = pool.acquire()
    assert first is not None
    assert pool.acquire() is None  # the server answered [IN-USE]
    assert "IN-USE" in caplog.text and "locked by another session" in caplog.text
    assert pool.in_use_count == 1
    pool.release(first)
    assert pool.acquire() is first
    pool.release(first)


def test_bad_password_is_raised_and_frees_the_slot(server: POP3TestServer) -> None:
    pool = POP3ConnectionPool(
        server.host, server.port, "user", "wrong", 1, encryption="none", timeout=5
    )
    with pytest.raises(POP3AuthenticationError):
        pool.acquire()
    assert pool.in_use_count == 0
    pool.close_all()


def test_close_all_quits_idle_sessions_and_refuses_new_ones(
    server: POP3TestServer,
) -> None:
    pool = make_pool(server)
    handler = pool.acquire()
    assert handler is not None
    pool.release(handler)
    pool.close_all()
    assert not handler.is_connected
    assert pool.closed
    with pytest.raises(POP3PoolClosedError):
        pool.acquire()
    assert server.wait_idle()


def test_handler_released_after_close_all_is_closed(server: POP3TestServer) -> None:
    pool = make_pool(server)
    handler = pool.acquire()
    assert handler is not None
    pool.close_all()
    assert handler.is_connected
    pool.release(handler)
    assert not handler.is_connected
    assert pool.idle_count == 0


def test_dead_idle_session_is_replaced_on_acquire(
    server: POP3TestServer, pool: POP3ConnectionPool
) -> None:
    handler = pool.acquire()
    assert handler is not None
    pool.release(handler)
    server.drop_connections()
    assert server.wait_idle()
    again = pool.acquire()
    assert again is not None and again.list_messages()[0] == [1, 2]
    assert server.sessions_started == 2
    pool.release(again)


def test_blocking_acquire_waits_for_a_release(server: POP3TestServer) -> None:
    with make_pool(server, pool_size=1) as pool:
        handler = pool.acquire()
        assert handler is not None
        got: list[POP3ProtocolHandler | None] = []
        waiter = threading.Thread(target=lambda: got.append(pool.acquire(block=True, timeout=10)))
        waiter.start()
        pool.release(handler)
        waiter.join(10)
        assert got == [handler]
        pool.release(handler)


def test_threads_share_one_mailbox_session(server: POP3TestServer) -> None:
    errors: list[BaseException] = []
    with make_pool(server, pool_size=1) as pool:

        def work() -> None:
            try:
                for _ in range(5):
                    handler = pool.acquire(block=True, timeout=10)
                    assert handler is not None
                    try:
                        assert handler.list_messages()[0] == [1, 2]
                    finally:
                        pool.release(handler)
            except BaseException as error:  # reported to the main thread
                errors.append(error)

        threads = [threading.Thread(target=work) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
    assert errors == []
    assert server.sessions_started == 1


def test_invalid_pool_settings_are_refused_at_construction() -> None:
    with pytest.raises(ValueError):
        POP3ConnectionPool("127.0.0.1", 995, "user", "pw", 0)
    with pytest.raises(ValueError):
        POP3ConnectionPool("127.0.0.1", 995, "user", "pw", 2, encryption="ssl3")
    with pytest.raises(ValueError):
        POP3ConnectionPool("bad\r\nhost", 995, "user", "pw")


def test_pool_repr_shows_counts_but_not_the_password(server: POP3TestServer) -> None:
    pool = POP3ConnectionPool(server.host, server.port, "user", "pa55-secret", 2, encryption="none")
    text = repr(pool)
    assert "idle: 0" in text and "in use: 0" in text and "size: 2" in text
    assert "pa55-secret" not in text and "pa55-secret" not in repr(vars(pool))
    pool.close_all()


@pytest.mark.parametrize("size", [0, -1, True, 2.5])
def test_a_bad_pool_size_is_a_configuration_error(size: object) -> None:
    with pytest.raises(ConfigurationError) as caught:
        POP3ConnectionPool("127.0.0.1", 995, "user", "password", size)  # type: ignore[arg-type]
    assert caught.value.field == "pool_size"
