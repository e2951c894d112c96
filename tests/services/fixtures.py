"""Fixtures for the private PostgreSQL and Redis servers; import the ones a module needs.

Without the binaries the tests skip with the install command, except under ``CI=true``:
there a missing server is a failure, never a silent skip.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from ci import in_ci

from .datastores import PostgresServer, RedisServer, availability


def require_servers() -> None:
    """Skip (or, in CI, fail) when the data servers are not installed."""
    available, reason = availability()
    if not available:
        if in_ci():
            pytest.fail(f"the data-server tests must run in CI, but: {reason}", pytrace=False)
        pytest.skip(reason)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A private PostgreSQL for the whole session."""
    require_servers()
    with PostgresServer() as server:
        yield server


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A private Redis for the whole session."""
    require_servers()
    with RedisServer() as server:
        yield server


Connect = Callable[[], Any]


@pytest.fixture(params=["sqlite", "postgres"])
def connect(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Connect]:
    """Opens DB-API connections to one fresh database: an SQLite file or a PostgreSQL schema.

    Every connection made is closed at the end of the test.
    """
    opened: list[Any] = []
    if request.param == "sqlite":
        path = tmp_path / "app.db"

        def open_sqlite() -> Any:
            connection = sqlite3.connect(path, timeout=30)
            opened.append(connection)
            return connection

        yield open_sqlite
    else:
        server: PostgresServer = request.getfixturevalue("postgres_server")
        schema = f"t_{os.urandom(4).hex()}"
        with server.connect(autocommit=True) as admin:
            admin.execute(f"CREATE SCHEMA {schema}")

        def open_postgres() -> Any:
            connection = server.connect(options=f"-c search_path={schema}")
            opened.append(connection)
            return connection

        yield open_postgres
    for connection in opened:
        connection.close()
