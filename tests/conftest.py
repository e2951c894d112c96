"""Fixtures shared by the whole suite."""

from __future__ import annotations

import os
import ssl
from importlib.metadata import entry_points

import pytest
from fake_sleep import Sleeps

from src.testing.tls import TestCertificates

PLUGIN = "src.testing.pytest_plugin"
# The plugin is opt-in: this suite loads it the way an application's suite does. An
# environment installed from 0.1.0 still has the old auto-loaded entry point until it
# is reinstalled, and pytest refuses to register the same module under a second name.
_STALE_ENTRY_POINT = not os.environ.get("PYTEST_DISABLE_PLUGIN_AUTOLOAD") and any(
    ep.value == PLUGIN for ep in entry_points(group="pytest11")
)
pytest_plugins = ["pytester", *([] if _STALE_ENTRY_POINT else [PLUGIN])]


@pytest.fixture(scope="session")
def certs() -> TestCertificates:
    """One private CA and a loopback server certificate for the whole run."""
    return TestCertificates()


@pytest.fixture(scope="session")
def server_ssl_context(certs: TestCertificates) -> ssl.SSLContext:
    return certs.server_context()


@pytest.fixture(scope="session")
def client_ssl_context(certs: TestCertificates) -> ssl.SSLContext:
    """A verifying client context that trusts the test CA (verification stays on)."""
    return certs.client_context()


@pytest.fixture
def sleeps() -> Sleeps:
    """A fake sleep that records the delays it was asked to wait (retry tests never wait)."""
    return Sleeps()
