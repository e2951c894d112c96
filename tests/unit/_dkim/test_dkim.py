"""DKIM signing, checked by verifiers other than the signer.

Each signed message is verified twice, with the public key served by the project's
loopback DNS responder:

* by OpenDKIM: ``opendkim -t`` runs the milter's own verification on a file and prints
  its verdict; its resolver (libunbound) is pointed at the loopback responder;
* by dkimpy's ``verify``, asking the same responder.

Without the ``opendkim`` binary the OpenDKIM checks are skipped (with the command that
installs it), except under ``CI=true``, where that is a failure.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from ci import unavailable

pytest.importorskip("dkim", reason="needs the dkim extra: pip install 'mailhandlers[dkim]'")
pytest.importorskip("nacl", reason="needs the dkim extra: pip install 'mailhandlers[dkim]'")

import dkim
from cryptography.hazmat.primitives import serialization as ser
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from src.handlers._dkim.signer import DKIMSigner
from src.handlers._mime.builder import build_message
from src.handlers._net.secret import Secret
from src.handlers.errors import ConfigurationError, MailValidationError
from src.testing.dns_server import LoopbackDNSServer

DOMAIN = "example.test"
INSTALL = "bash .ci/install-dkim.sh (as root), or apt-get install opendkim opendkim-tools"
SBIN = os.pathsep.join([os.environ.get("PATH", ""), "/usr/local/sbin", "/usr/sbin", "/sbin"])

MESSAGE = (
    b"From: Alice <alice@example.test>\r\n"
    b"To: Bob <bob@example.test>\r\n"
    b"Subject: quarterly   numbers\r\n"
    b"Date: Fri, 04 Dec 2026 10:00:00 +0000\r\n"
    b"Message-ID: <dkim.1@example.test>\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"\r\n"
    b"Hello Bob,  \r\n"
    b"the numbers are in.\r\n"
    b"\r\n"
)


class Keys:
    def __init__(self) -> None:
        self.rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.ed = ed25519.Ed25519PrivateKey.generate()

    def rsa_pem(self, fmt: ser.PrivateFormat = ser.PrivateFormat.PKCS8) -> bytes:
        return self.rsa.private_bytes(ser.Encoding.PEM, fmt, ser.NoEncryption())

    def ed_pem(self) -> bytes:
        return self.ed.private_bytes(ser.Encoding.PEM, ser.PrivateFormat.PKCS8, ser.NoEncryption())

    def ed_seed_b64(self) -> bytes:
        raw = self.ed.private_bytes(ser.Encoding.Raw, ser.PrivateFormat.Raw, ser.NoEncryption())
        return base64.b64encode(raw)

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


def _txt(record: str) -> str:
    """A TXT record in zone-file syntax: strings of at most 255 characters."""
    return " ".join(f'"{record[i : i + 200]}"' for i in range(0, len(record), 200))


@pytest.fixture(scope="module")
def keys() -> Keys:
    return Keys()


@pytest.fixture(scope="module")
def dns_server(keys: Keys) -> Iterator[LoopbackDNSServer]:
    with LoopbackDNSServer(keys.zone()) as server:
        yield server


@pytest.fixture(scope="module")
def dkimpy_verify(dns_server: LoopbackDNSServer) -> Callable[[bytes], bool]:
    resolver = dns_server.resolver(lifetime=2.0)

    def txt(name: bytes, timeout: int = 5) -> bytes:
        answer = resolver.resolve(name.decode(), "TXT")
        return b"".join(b"".join(record.strings) for record in answer)

    def verify(message: bytes) -> bool:
        return bool(dkim.verify(message, dnsfunc=txt))

    return verify


@pytest.fixture(scope="module")
def opendkim_verify(
    dns_server: LoopbackDNSServer, tmp_path_factory: pytest.TempPathFactory
) -> Callable[[bytes], str]:
    """``opendkim -t``: the milter's verification of one message; returns its verdict line."""
    binary = shutil.which("opendkim", path=SBIN)
    if binary is None:
        unavailable(
            f"opendkim is not installed: {INSTALL}",
            in_ci_reason=f"opendkim is needed in CI: {INSTALL}",
        )
    directory = tmp_path_factory.mktemp("opendkim")
    unbound = directory / "unbound.conf"
    # libunbound answers names under test. itself (RFC 6761) unless told not to.
    unbound.write_text(
        "server:\n"
        "  do-not-query-localhost: no\n"
        '  local-zone: "test." nodefault\n'
        "forward-zone:\n"
        '  name: "."\n'
        f"  forward-addr: {dns_server.host}@{dns_server.port}\n"
    )
    conf = directory / "opendkim.conf"
    conf.write_text(f"Mode v\nSyslog no\nResolverConfiguration {unbound}\n")
    counter = iter(range(1_000_000))

    def verify(message: bytes) -> str:
        path = directory / f"message-{next(counter)}.eml"
        path.write_bytes(message)
        done = subprocess.run(
            [binary, "-x", str(conf), "-t", str(path)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        verdicts = [
            line for line in (done.stdout + done.stderr).splitlines() if "verification" in line
        ]
        assert len(verdicts) == 1, done.stdout + done.stderr
        return verdicts[0]

    return verify


def _signer(keys: Keys, algorithm: str, **options: Any) -> DKIMSigner:
    if algorithm == "rsa-sha256":
        return DKIMSigner(DOMAIN, "rsa", keys.rsa_pem(), algorithm="rsa-sha256", **options)
    return DKIMSigner(DOMAIN, "ed", keys.ed_pem(), algorithm="ed25519-sha256", **options)


ALGORITHMS = ["rsa-sha256", "ed25519-sha256"]
CANONICALIZATIONS = [("relaxed", "relaxed"), ("simple", "simple"), ("relaxed", "simple")]


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("canon", CANONICALIZATIONS, ids=lambda c: "/".join(c))
def test_opendkim_and_dkimpy_verify(
    keys: Keys,
    algorithm: str,
    canon: tuple[str, str],
    opendkim_verify: Callable[[bytes], str],
    dkimpy_verify: Callable[[bytes], bool],
) -> None:
    signer = _signer(
        keys, algorithm, header_canonicalization=canon[0], body_canonicalization=canon[1]
    )
    signed = signer.sign(MESSAGE)
    assert signed.endswith(MESSAGE) and signed.startswith(b"DKIM-Signature: ")
    header = signed[: -len(MESSAGE)].decode()
    assert f"a={algorithm};" in header and f"c={canon[0]}/{canon[1]};" in header
    verdict = opendkim_verify(signed)
    assert "succeeded" in verdict and f"s={signer.selector}," in verdict, verdict
    assert dkimpy_verify(signed)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_tampered_body_fails_both_verifiers(
    keys: Keys,
    algorithm: str,
    opendkim_verify: Callable[[bytes], str],
    dkimpy_verify: Callable[[bytes], bool],
) -> None:
    signed = _signer(keys, algorithm).sign(MESSAGE)
    tampered = signed.replace(b"the numbers are in.", b"the numbers are out.")
    verdict = opendkim_verify(tampered)
    assert "succeeded" not in verdict and "failed" in verdict, verdict
    assert not dkimpy_verify(tampered)


def test_tampered_subject_and_added_from_fail(
    keys: Keys, dkimpy_verify: Callable[[bytes], bool], opendkim_verify: Callable[[bytes], str]
) -> None:
    signed = _signer(keys, "rsa-sha256").sign(MESSAGE)
    assert not dkimpy_verify(signed.replace(b"quarterly", b"monthly"))
    # From is oversigned: a second From added by someone else breaks the signature.
    sig_end = signed.index(b"From: Alice")
    added = signed[:sig_end] + b"From: Mallory <m@example.test>\r\n" + signed[sig_end:]
    assert not dkimpy_verify(added)
    assert "succeeded" not in opendkim_verify(added)


def test_relaxed_survives_whitespace_changes_and_simple_does_not(
    keys: Keys, dkimpy_verify: Callable[[bytes], bool]
) -> None:
    def rewrap(message: bytes) -> bytes:
        # What relays may do: trailing spaces dropped, header whitespace squeezed.
        return message.replace(b"Bob,  \r\n", b"Bob,\r\n").replace(b"quarterly   ", b"quarterly ")

    relaxed = _signer(keys, "ed25519-sha256").sign(MESSAGE)
    simple = _signer(
        keys, "ed25519-sha256", header_canonicalization="simple", body_canonicalization="simple"
    ).sign(MESSAGE)
    assert dkimpy_verify(rewrap(relaxed))
    assert not dkimpy_verify(rewrap(simple))


def test_signs_what_the_builder_makes(
    keys: Keys, opendkim_verify: Callable[[bytes], str], dkimpy_verify: Callable[[bytes], bool]
) -> None:
    built = build_message(
        from_address="alice@example.test",
        to_addresses=["bob@example.test"],
        subject="Grüße",
        text_body="Hallo Bob, schöne Grüße\n",
        html_body="<p>Hallo</p>",
    )
    signed = _signer(keys, "rsa-sha256").sign(built.data)
    assert dkimpy_verify(signed)
    assert "succeeded" in opendkim_verify(signed)


def test_signed_header_list(keys: Keys) -> None:
    signer = _signer(keys, "ed25519-sha256")
    message = (
        b"From: a@example.test\r\nTo: b@example.test\r\nTo: c@example.test\r\nX-Other: 1\r\n\r\n"
    )
    assert signer.headers_to_sign(message) == [b"from", b"from", b"to", b"to"]
    custom = _signer(
        keys,
        "ed25519-sha256",
        signed_headers=["From", "X-Other"],
        oversigned_headers=["from", "reply-to"],
    )
    assert custom.headers_to_sign(message) == [b"from", b"from", b"x-other", b"reply-to"]


def test_lf_only_message_gets_lf_signature(
    keys: Keys, dkimpy_verify: Callable[[bytes], bool]
) -> None:
    message = MESSAGE.replace(b"\r\n", b"\n")
    signed = _signer(keys, "rsa-sha256").sign(message)
    header = signed[: -len(message)]
    assert b"\r" not in header and header.endswith(b"\n")
    assert dkimpy_verify(signed)


@pytest.mark.parametrize(
    "form",
    ["pkcs1", "pkcs8", "crlf", "secret", "file", "ed-seed", "ed-file"],
)
def test_key_forms(
    keys: Keys, form: str, tmp_path: Path, dkimpy_verify: Callable[[bytes], bool]
) -> None:
    if form == "pkcs1":
        signer = DKIMSigner(DOMAIN, "rsa", keys.rsa_pem(ser.PrivateFormat.TraditionalOpenSSL))
    elif form == "pkcs8":
        signer = DKIMSigner(DOMAIN, "rsa", keys.rsa_pem().decode())
    elif form == "crlf":
        signer = DKIMSigner(DOMAIN, "rsa", keys.rsa_pem().replace(b"\n", b"\r\n"))
    elif form == "secret":
        signer = DKIMSigner(DOMAIN, "rsa", Secret(keys.rsa_pem().decode()))
    elif form == "file":
        path = tmp_path / "rsa.key"
        path.write_bytes(keys.rsa_pem())
        signer = DKIMSigner.from_key_file(DOMAIN, "rsa", str(path))
    elif form == "ed-seed":
        signer = DKIMSigner(DOMAIN, "ed", keys.ed_seed_b64(), algorithm="ed25519-sha256")
    else:
        path = tmp_path / "ed.key"
        path.write_bytes(keys.ed_pem())
        signer = DKIMSigner(DOMAIN, "ed", path, algorithm="ed25519-sha256")
    assert dkimpy_verify(signer.sign(MESSAGE))


def test_key_never_shows(keys: Keys) -> None:
    signer = _signer(keys, "rsa-sha256")
    pem = keys.rsa_pem().decode()
    body_line = pem.splitlines()[1]
    assert body_line not in repr(signer) and body_line not in str(signer)
    assert "DKIMSigner(domain='example.test', selector='rsa'" in repr(signer)


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"algorithm": "ed25519-sha256"}, "algorithm"),  # an RSA key
        ({"algorithm": "rsa-sha1"}, "algorithm"),
        ({"domain": "exa mple.test"}, "domain"),
        ({"selector": "s1\r\nX: y"}, "selector"),
        ({"header_canonicalization": "loose"}, "header_canonicalization"),
        ({"signed_headers": ["to", "subject"]}, "signed_headers"),
        ({"signed_headers": ["from", "bcc"]}, "signed_headers"),
        ({"identity": "@other.example"}, "identity"),
        ({"private_key": b"not a key"}, "private_key"),
        (
            {
                "private_key": b"-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END "
                b"ENCRYPTED PRIVATE KEY-----\n"
            },
            "private_key",
        ),
    ],
)
def test_bad_settings_are_refused(keys: Keys, options: dict[str, Any], field: str) -> None:
    arguments: dict[str, Any] = {
        "domain": DOMAIN,
        "selector": "rsa",
        "private_key": keys.rsa_pem(),
        **options,
    }
    with pytest.raises(ConfigurationError) as caught:
        DKIMSigner(**arguments)
    assert caught.value.field == field
    assert "PRIVATE KEY" not in str(caught.value)


def test_signers_are_frozen_values(keys: Keys) -> None:
    one, two = _signer(keys, "rsa-sha256"), _signer(keys, "rsa-sha256")
    assert one == two and hash(one) == hash(two)
    assert one != _signer(keys, "ed25519-sha256")
    with pytest.raises(AttributeError):
        one.domain = "other.example"  # type: ignore[misc]


def test_message_without_from_cannot_be_signed(keys: Keys) -> None:
    with pytest.raises(MailValidationError) as caught:
        _signer(keys, "rsa-sha256").sign(b"To: b@example.test\r\n\r\nhi\r\n")
    assert caught.value.field == "dkim"


def test_identity_is_used(keys: Keys, dkimpy_verify: Callable[[bytes], bool]) -> None:
    signer = _signer(keys, "rsa-sha256", identity="alice@example.test")
    signed = signer.sign(MESSAGE)
    assert re.search(rb"i=alice@example.test;", signed)
    assert dkimpy_verify(signed)
