"""DKIM signatures checked by the OpenDKIM milter on a real Postfix, read back over POP3.

A private ``opendkim`` (verify mode, its resolver pointed at the loopback DNS responder
that serves the public keys) filters a private Postfix. A message signed with
:class:`DKIMSigner` is sent to bob through the MX-like plain listener; the
Authentication-Results header OpenDKIM adds is then fetched with the POP3 handler. A
message whose body was changed after signing must fail.

The SMTP handler signs with its ``dkim=`` option, both what it builds (send_message)
and pre-built bytes (send_raw); the tampered message goes out through smtplib, since
the handler never changes what it signed.
"""

from __future__ import annotations

import base64
import os
import shutil
import smtplib
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from ci import unavailable

pytest.importorskip("dkim", reason="needs the dkim extra: pip install 'mailhandlers[dkim]'")

from cryptography.hazmat.primitives import serialization as ser
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from src.handlers._dkim.signer import DKIMSigner
from src.handlers._mime.builder import build_message
from src.handlers._sync.uid_store import MemoryUIDStore
from src.handlers.smtp import SMTPDeliveryStatus
from src.testing.dns_server import LoopbackDNSServer
from src.testing.tls import TestCertificates

from .mailstack import MailStack, servers_available
from .processes import Server, free_ports, terminate
from .support import TIMEOUT, pop3_handler, smtp_handler

DOMAIN = "example.test"
INSTALL = "bash .ci/install-dkim.sh (as root), or apt-get install opendkim opendkim-tools"
SBIN = os.pathsep.join([os.environ.get("PATH", ""), "/usr/local/sbin", "/usr/sbin", "/sbin"])


def _txt(record: str) -> str:
    return " ".join(f'"{record[i : i + 200]}"' for i in range(0, len(record), 200))


class _Keys:
    def __init__(self) -> None:
        self.rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.ed = ed25519.Ed25519PrivateKey.generate()

    def signers(self) -> dict[str, DKIMSigner]:
        rsa_pem = self.rsa.private_bytes(
            ser.Encoding.PEM, ser.PrivateFormat.PKCS8, ser.NoEncryption()
        )
        ed_pem = self.ed.private_bytes(
            ser.Encoding.PEM, ser.PrivateFormat.PKCS8, ser.NoEncryption()
        )
        return {
            "rsa-sha256": DKIMSigner(DOMAIN, "rsa", rsa_pem),
            "ed25519-sha256": DKIMSigner(DOMAIN, "ed", ed_pem, algorithm="ed25519-sha256"),
        }

    def zone(self) -> dict[tuple[str, str], list[str]]:
        rsa_public = self.rsa.public_key().public_bytes(
            ser.Encoding.DER, ser.PublicFormat.SubjectPublicKeyInfo
        )
        ed_public = self.ed.public_key().public_bytes(ser.Encoding.Raw, ser.PublicFormat.Raw)
        return {
            (f"rsa._domainkey.{DOMAIN}.", "TXT"): [
                _txt("v=DKIM1; k=rsa; p=" + base64.b64encode(rsa_public).decode())
            ],
            (f"ed._domainkey.{DOMAIN}.", "TXT"): [
                _txt("v=DKIM1; k=ed25519; p=" + base64.b64encode(ed_public).decode())
            ],
        }


def _start_opendkim(directory: Path, dns: LoopbackDNSServer) -> tuple[Server, int]:
    binary = shutil.which("opendkim", path=SBIN)
    if binary is None:
        unavailable(
            f"opendkim is not installed: {INSTALL}",
            in_ci_reason=f"opendkim is needed in CI: {INSTALL}",
        )
    [port] = free_ports(1)
    (directory / "unbound.conf").write_text(
        "server:\n"
        "  do-not-query-localhost: no\n"
        '  local-zone: "test." nodefault\n'
        "forward-zone:\n"
        '  name: "."\n'
        f"  forward-addr: {dns.host}@{dns.port}\n"
    )
    # Mail from 127.0.0.1 would count as internal (to be signed, not verified).
    (directory / "internal-hosts").write_text("192.0.2.1\n")
    (directory / "opendkim.conf").write_text(
        "Mode v\n"
        "Background no\n"
        "Syslog no\n"
        f"Socket inet:{port}@127.0.0.1\n"
        f"PidFile {directory / 'opendkim.pid'}\n"
        f"ResolverConfiguration {directory / 'unbound.conf'}\n"
        f"InternalHosts {directory / 'internal-hosts'}\n"
        f"AuthservID mx.{DOMAIN}\n"
        "AlwaysAddARHeader yes\n"
    )
    output = (directory / "opendkim.log").open("ab")
    try:
        process = subprocess.Popen(
            [binary, "-f", "-x", str(directory / "opendkim.conf")],
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    except BaseException:
        output.close()
        raise
    server = Server("opendkim", process, output, pid=process.pid, pgid=process.pid)
    deadline = time.monotonic() + 15
    while True:  # bounded by the deadline
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return server, port
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                terminate(server)
                log = (directory / "opendkim.log").read_text(errors="replace")
                raise RuntimeError(f"opendkim did not listen on {port}:\n{log}") from None
            time.sleep(0.05)


@pytest.fixture(scope="module")
def keys() -> _Keys:
    return _Keys()


@pytest.fixture(scope="module")
def filtered_stack(keys: _Keys, certs: TestCertificates) -> Iterator[MailStack]:
    """A second MailStack whose Postfix passes mail through a private OpenDKIM."""
    available, reason = servers_available()
    if not available:
        unavailable(reason, in_ci_reason=f"interop tests must run in CI, but: {reason}")
    # Two directories from mkdtemp: the stack's must be reachable by the servers' users.
    directory = Path(tempfile.mkdtemp(prefix="mailstack-dkim-"))
    milter_dir = Path(tempfile.mkdtemp(prefix="opendkim-"))
    try:
        with LoopbackDNSServer(keys.zone()) as dns:
            milter, port = _start_opendkim(milter_dir, dns)
            try:
                with MailStack(directory, certs, milters=f"inet:127.0.0.1:{port}") as stack:
                    yield stack
            finally:
                terminate(milter)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
        shutil.rmtree(milter_dir, ignore_errors=True)


def _authentication_results(stack: MailStack, marker: str) -> str:
    """The Authentication-Results header of bob's message whose subject has ``marker``."""
    store = MemoryUIDStore()
    found: list[str] = []

    def collect(message: dict[str, Any]) -> None:
        if marker in (message.get("subject") or ""):
            raw: bytes = message["raw"]
            head = raw.split(b"\r\n\r\n", 1)[0].replace(b"\r\n\t", b" ").replace(b"\r\n ", b" ")
            found.extend(
                line.decode(errors="replace")
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"authentication-results:")
            )

    deadline = time.monotonic() + TIMEOUT
    while not found:
        pop3_handler(stack, "ssl", "bob", include_raw=True).sync(store, collect)
        if found or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert len(found) == 1, f"{found}\n{stack.log_tail()}"
    return found[0]


def _send(stack: MailStack, data: bytes) -> None:
    with smtplib.SMTP(stack.host, stack.smtp_plain_port, timeout=TIMEOUT) as smtp:
        refused = smtp.sendmail(stack.address("alice"), [stack.address("bob")], data)
    assert refused == {}


@pytest.mark.parametrize("method", ["send_message", "send_raw"])
@pytest.mark.parametrize("algorithm", ["rsa-sha256", "ed25519-sha256"])
def test_opendkim_milter_passes_what_the_handler_signed(
    filtered_stack: MailStack, keys: _Keys, algorithm: str, method: str
) -> None:
    marker = f"dkim-{algorithm}-{method}-{time.monotonic_ns()}"
    alice, bob = filtered_stack.address("alice"), filtered_stack.address("bob")
    handler = smtp_handler(
        filtered_stack, "none", None, from_address=alice, dkim=keys.signers()[algorithm]
    )
    try:
        if method == "send_message":
            result = handler.send_message([bob], marker, "Signed on the way out.\n")
        else:
            raw = (
                f"From: Alice <{alice}>\nTo: {bob}\nBcc: hidden@{DOMAIN}\n"
                f"Subject: {marker}\n\nPre-built, signed on the way out.\n"
            ).encode()
            result = handler.send_raw(alice, [bob], raw)
    finally:
        handler.close()
    assert result.status is SMTPDeliveryStatus.SUCCESS, result
    results = _authentication_results(filtered_stack, marker)
    assert f"mx.{DOMAIN}" in results
    assert "dkim=pass" in results and f"header.d={DOMAIN}" in results, results
    assert f"header.a={algorithm}" in results, results


def test_opendkim_milter_fails_a_changed_body(filtered_stack: MailStack, keys: _Keys) -> None:
    marker = f"dkim-tampered-{time.monotonic_ns()}"
    outgoing = build_message(
        from_address=filtered_stack.address("alice"),
        to_addresses=[filtered_stack.address("bob")],
        subject=marker,
        text_body="Pay 10 EUR.\n",
    )
    signed = keys.signers()["rsa-sha256"].sign(outgoing.data)
    _send(filtered_stack, signed.replace(b"Pay 10 EUR.", b"Pay 99 EUR."))
    results = _authentication_results(filtered_stack, marker)
    assert "dkim=fail" in results and "dkim=pass" not in results, results
