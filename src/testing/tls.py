"""Throw-away certificates for loopback test servers, made with ``trustme``.

A :class:`TestCertificates` holds one private CA and a server certificate valid for
``localhost``, ``127.0.0.1`` and ``::1``. Servers use :meth:`server_context`; clients
trust the CA through :meth:`client_context`, so verification stays on in tests.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trustme

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


@dataclass
class TestCertificates:
    """A private CA and one loopback server certificate."""

    __test__ = False  # not a pytest test class, despite the name

    ca: Any = field(default_factory=trustme.CA)
    server_cert: Any = None

    def __post_init__(self) -> None:
        if self.server_cert is None:
            self.server_cert = self.ca.issue_cert(*LOOPBACK_NAMES)

    def server_context(self) -> ssl.SSLContext:
        """A TLS server context presenting the loopback certificate."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.server_cert.configure_cert(context)
        return context

    def server_certificate_der(self) -> bytes:
        """The server certificate in DER, as a channel binding hashes it."""
        return ssl.PEM_cert_to_DER_cert(self.server_cert.cert_chain_pems[0].bytes().decode())

    def client_context(self) -> ssl.SSLContext:
        """A verifying client context that trusts only this CA."""
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
        self.ca.configure_trust(context)
        return context

    def write_files(self, directory: Path) -> dict[str, Path]:
        """Write the CA, certificate chain and key as PEM files; return their paths."""
        directory.mkdir(parents=True, exist_ok=True)
        paths = {
            "ca": directory / "ca.pem",
            "cert": directory / "server-chain.pem",
            "key": directory / "server-key.pem",
        }
        self.ca.cert_pem.write_to_path(str(paths["ca"]))
        self.server_cert.private_key_pem.write_to_path(str(paths["key"]))
        with paths["cert"].open("wb") as out:
            for blob in self.server_cert.cert_chain_pems:
                out.write(blob.bytes())
        paths["key"].chmod(0o600)
        return paths
