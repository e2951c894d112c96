"""Client certificates (mutual TLS): a trustme-issued certificate presented to a local
TLS server that requires one, with verification of the server kept on."""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme

from src.handlers._net.secret import Secret
from src.handlers._net.tls import client_certificate_context, default_context
from src.handlers.errors import ConfigurationError
from src.testing.tls import TestCertificates


class MutualTLSServer:
    """Accepts TLS connections that present a certificate from ``client_ca``; records
    each client's certificate subject (or the handshake error)."""

    def __init__(self, certs: TestCertificates, client_ca: trustme.CA) -> None:
        context = certs.server_context()
        context.verify_mode = ssl.CERT_REQUIRED
        client_ca.configure_trust(context)
        self.context = context
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.05)
        self.port: int = self.listener.getsockname()[1]
        self.subjects: list[Any] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(5)
            try:
                with self.context.wrap_socket(conn, server_side=True) as tls:
                    self.subjects.append(tls.getpeercert()["subject"])  # type: ignore[index]
                    tls.sendall(b"hello\r\n")
            except (ssl.SSLError, OSError) as error:
                self.failures.append(type(error).__name__)
                conn.close()

    def talk(self, context: ssl.SSLContext) -> bytes:
        with (
            socket.create_connection(("127.0.0.1", self.port), timeout=5) as raw,
            context.wrap_socket(raw, server_hostname="localhost") as tls,
        ):
            return tls.recv(100)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.listener.close()


@pytest.fixture(scope="module")
def client_ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def client_cert(client_ca: trustme.CA) -> Any:
    return client_ca.issue_cert("ada@example.org", common_name="ada-client")


@pytest.fixture
def server(certs: TestCertificates, client_ca: trustme.CA) -> Iterator[MutualTLSServer]:
    running = MutualTLSServer(certs, client_ca)
    yield running
    running.stop()


def _trusting(certs: TestCertificates) -> ssl.SSLContext:
    return certs.client_context()


def _subject_cn(subject: Any) -> str:
    names: dict[str, str] = dict(pair[0] for pair in subject)
    return names["commonName"]


def _cert_pem(cert: Any) -> bytes:
    return b"".join(blob.bytes() for blob in cert.cert_chain_pems)


def test_pem_bytes_into_a_context_that_trusts_a_private_ca(
    server: MutualTLSServer, certs: TestCertificates, client_cert: Any
) -> None:
    context = client_certificate_context(
        _cert_pem(client_cert),
        client_cert.private_key_pem.bytes(),
        context=_trusting(certs),
    )
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert server.talk(context) == b"hello\r\n"
    assert _subject_cn(server.subjects[-1]) == "ada-client"


def test_files_and_an_encrypted_key(
    server: MutualTLSServer, certs: TestCertificates, client_cert: Any, tmp_path: Path
) -> None:
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(client_cert.private_key_pem.bytes(), None)
    encrypted = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"key-pass-42"),
    )
    (tmp_path / "cert.pem").write_bytes(_cert_pem(client_cert))
    (tmp_path / "key.pem").write_bytes(encrypted)
    context = client_certificate_context(
        tmp_path / "cert.pem",
        str(tmp_path / "key.pem"),
        password=Secret("key-pass-42"),
        context=_trusting(certs),
    )
    assert server.talk(context) == b"hello\r\n"

    with pytest.raises(ConfigurationError) as caught:
        client_certificate_context(
            tmp_path / "cert.pem", tmp_path / "key.pem", password="wrong-pass-1"
        )
    assert "wrong-pass-1" not in str(caught.value) and caught.value.field == "client_cert"


def test_cert_and_key_in_one_pem(
    server: MutualTLSServer, certs: TestCertificates, client_cert: Any
) -> None:
    both = client_cert.private_key_pem.bytes() + _cert_pem(client_cert)
    assert server.talk(client_certificate_context(both, context=_trusting(certs))) == (b"hello\r\n")


def test_a_new_context_still_verifies_the_server(server: MutualTLSServer, client_cert: Any) -> None:
    # Built without a context: the system CAs do not know the test CA, so the
    # handshake fails on the client's side before any certificate is shown.
    context = client_certificate_context(
        _cert_pem(client_cert), client_cert.private_key_pem.bytes()
    )
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    with pytest.raises(ssl.SSLCertVerificationError):
        server.talk(context)


def test_without_a_certificate_the_server_refuses(
    server: MutualTLSServer, certs: TestCertificates
) -> None:
    with contextlib.suppress(ssl.SSLError, OSError):
        server.talk(_trusting(certs))  # TLS 1.3 may only notice on the first read
    assert server.subjects == []


def test_a_certificate_from_another_ca_is_refused(
    server: MutualTLSServer, certs: TestCertificates
) -> None:
    stranger = trustme.CA().issue_cert("eve@example.org")
    context = client_certificate_context(
        _cert_pem(stranger), stranger.private_key_pem.bytes(), context=_trusting(certs)
    )
    with contextlib.suppress(ssl.SSLError, OSError):
        server.talk(context)
    assert server.subjects == []


def test_a_key_that_does_not_match(client_cert: Any, client_ca: trustme.CA) -> None:
    other = client_ca.issue_cert("bob@example.org")
    with pytest.raises(ConfigurationError, match="could not be loaded") as caught:
        client_certificate_context(_cert_pem(client_cert), other.private_key_pem.bytes())
    assert caught.value.__cause__ is None


def test_missing_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="not found"):
        client_certificate_context(tmp_path / "nope.pem")


def test_unsafe_contexts_are_refused(client_cert: Any) -> None:
    pem, key = _cert_pem(client_cert), client_cert.private_key_pem.bytes()
    with pytest.raises(ConfigurationError, match="shared default"):
        client_certificate_context(pem, key, context=default_context())
    lax = ssl.create_default_context()
    lax.check_hostname = False
    lax.verify_mode = ssl.CERT_NONE
    with pytest.raises(ConfigurationError, match="verifies the server"):
        client_certificate_context(pem, key, context=lax)


def test_pem_bytes_leave_no_files_behind(
    client_cert: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    client_certificate_context(_cert_pem(client_cert), client_cert.private_key_pem.bytes())
    assert list(tmp_path.iterdir()) == []
