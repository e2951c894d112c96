"""Fixtures shared by the whole suite."""

from __future__ import annotations

import ssl

import pytest
from fake_sleep import Sleeps

from src.testing.tls import TestCertificates


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
