"""The I/O-free SASL layer, checked against RFC vectors and an independent SCRAM server.

scramp plays the SCRAM server, so the client is proven against code that shares
nothing with it; the RFC 5802, 7677, 2195, 1939, 4013 and 7628 examples pin the exact
bytes.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import json
import pickle
import ssl
from collections.abc import Callable

import pytest
import scramp  # type: ignore[import-untyped]
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from src.handlers._sasl import (
    CLEARTEXT,
    SUPPORTED,
    ChannelBinding,
    CleartextRefusedError,
    CramMD5,
    CredentialKind,
    External,
    Login,
    Mechanism,
    NoMechanismError,
    OAuthBearer,
    Plain,
    Refusal,
    SASLAuthenticationError,
    SASLPrepError,
    SASLProtocolError,
    SASLSecurityError,
    SASLServerVerificationError,
    SASLStateError,
    Scram,
    XOAuth2,
    apop_digest,
    apop_timestamp,
    choose_mechanisms,
    create_mechanism,
    mask_secrets,
    saslprep,
    tls_server_end_point,
)
from src.handlers.errors import (
    MailAuthenticationError,
    MailProtocolError,
    MailSecurityError,
    MailValidationError,
)
from src.testing.tls import TestCertificates

Digest = hashes.SHA256 | hashes.SHA384 | hashes.SHA512
SCRAM_NAMES = ["SCRAM-SHA-1", "SCRAM-SHA-256"]

# -- SCRAM: the RFC examples ----------------------------------------------------------


RFC5802_NONCE = "fyko+d2lbbFgONRv9qkxdawL"
RFC5802_SERVER_FIRST = b"r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,s=QSXCR+Q6sek8bf92,i=4096"


def test_scram_sha1_rfc5802_example() -> None:
    client = Scram("SCRAM-SHA-1", "user", "pencil", nonce_source=lambda: RFC5802_NONCE)
    assert client.initial_response() == b"n,,n=user,r=fyko+d2lbbFgONRv9qkxdawL"
    assert client.respond(RFC5802_SERVER_FIRST) == (
        b"c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,p=v0X8v3Bz2T0CJGbJQyF0X+HI4Ts="
    )
    assert client.respond(b"v=rmF9pqV8S7suAoZWja4dJRkFsKQ=") == b""
    client.verify_final()
    assert client.complete


def test_scram_sha256_rfc7677_example() -> None:
    client = Scram("SCRAM-SHA-256", "user", "pencil", nonce_source=lambda: "rOprNGfwEbeRWgbNEkqO")
    assert client.initial_response() == b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO"
    server_first = (
        b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
    )
    assert client.respond(server_first) == (
        b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
        b"p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
    )
    # The server-final may also arrive as the additional data of the success reply.
    client.verify_final(b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=")
    assert client.complete


# -- SCRAM against scramp ---------------------------------------------------------------


class ScrampServer:
    """A scramp server for one exchange, with the user database it checks against."""

    def __init__(
        self,
        name: str,
        password: str = "pencil",
        channel_binding: tuple[str, bytes | str] | None = None,
        iterations: int = 4096,
    ) -> None:
        self.mechanism = scramp.ScramMechanism(name)
        self.auth_info = self.mechanism.make_auth_info(password, iteration_count=iterations)
        self.users: list[str] = []
        self.server = self.mechanism.make_server(self._auth, channel_binding=channel_binding)

    def _auth(self, username: str) -> tuple[bytes, bytes, bytes, int]:
        self.users.append(username)
        return self.auth_info  # type: ignore[no-any-return]

    def run(self, client: Mechanism, first: bytes | None = None) -> None:
        """Drive ``client`` through the whole exchange, as a protocol layer would;
        ``first`` is its initial response when the test already asked for it."""
        first = first or client.initial_response()
        assert first is not None
        self.server.set_client_first(first.decode())
        final = client.respond(self.server.get_server_first().encode())
        # On a refusal the server's final message carries e=.
        with contextlib.suppress(scramp.ScramException):
            self.server.set_client_final(final.decode())
        assert client.respond(self.server.get_server_final().encode()) == b""
        client.verify_final()


CB_DATA = bytes(range(32))


@pytest.mark.parametrize("name", SCRAM_NAMES)
def test_scram_logs_in_to_scramp(name: str) -> None:
    server = ScrampServer(name)
    client = Scram(name, "user", "pencil")
    server.run(client)
    assert client.complete
    assert server.users == ["user"]


@pytest.mark.parametrize("name", SCRAM_NAMES)
def test_scram_plus_binds_to_the_channel(name: str) -> None:
    binding = ChannelBinding("tls-server-end-point", CB_DATA)
    server = ScrampServer(f"{name}-PLUS", channel_binding=("tls-server-end-point", CB_DATA))
    client = Scram(f"{name}-PLUS", "user", "pencil", channel_binding=binding)
    first = client.initial_response()
    assert first is not None and first.startswith(b"p=tls-server-end-point,,")
    server.run(client, first)
    assert client.complete


@pytest.mark.parametrize("name", SCRAM_NAMES)
def test_scram_plus_with_other_channel_data_is_refused(name: str) -> None:
    other = ChannelBinding("tls-server-end-point", bytes(32))
    server = ScrampServer(f"{name}-PLUS", channel_binding=("tls-server-end-point", CB_DATA))
    client = Scram(f"{name}-PLUS", "user", "pencil", channel_binding=other)
    with pytest.raises(SASLAuthenticationError) as caught:
        server.run(client)
    assert caught.value.failure is not None
    assert caught.value.failure.server_error == "channel-bindings-dont-match"


@pytest.mark.parametrize("name", SCRAM_NAMES)
def test_scram_y_flag_when_the_server_did_not_offer_plus(name: str) -> None:
    binding = ChannelBinding("tls-server-end-point", CB_DATA)
    client = Scram(name, "user", "pencil", channel_binding=binding)
    ScrampServer(name).run(client)
    assert client.complete


def test_scram_y_flag_lets_a_binding_server_detect_the_downgrade() -> None:
    binding = ChannelBinding("tls-server-end-point", CB_DATA)
    client = Scram("SCRAM-SHA-256", "user", "pencil", channel_binding=binding)
    server = ScrampServer("SCRAM-SHA-256", channel_binding=("tls-server-end-point", CB_DATA))
    first = client.initial_response()
    assert first is not None and first.startswith(b"y,,")
    with pytest.raises(scramp.ScramException, match="server-does-support-channel-binding"):
        server.server.set_client_first(first.decode())


def test_create_mechanism_sends_n_when_the_server_lists_plus() -> None:
    binding = ChannelBinding("tls-server-end-point", CB_DATA)
    offered = ["SCRAM-SHA-256", "SCRAM-SHA-256-PLUS"]
    client = create_mechanism(
        "SCRAM-SHA-256", username="u", password="p", channel_binding=binding, offered=offered
    )
    first = client.initial_response()
    assert first is not None and first.startswith(b"n,,")
    lone = create_mechanism(
        "scram-sha-256", username="u", password="p", channel_binding=binding, offered=["PLAIN"]
    )
    lone_first = lone.initial_response()
    assert lone_first is not None and lone_first.startswith(b"y,,")


@pytest.mark.parametrize("name", SCRAM_NAMES)
def test_scram_wrong_password_is_refused_by_the_server(name: str) -> None:
    server = ScrampServer(name, password="pencil")
    client = Scram(name, "user", "crayon")
    with pytest.raises(SASLAuthenticationError) as caught:
        server.run(client)
    assert isinstance(caught.value, MailAuthenticationError)
    assert caught.value.failure is not None
    assert caught.value.failure.server_error == "invalid-proof"
    assert "invalid-proof" in str(caught.value)
    assert "crayon" not in str(caught.value)
    assert not client.complete


@pytest.mark.parametrize("name", SCRAM_NAMES)
def test_scram_refuses_a_tampered_server_signature(name: str) -> None:
    server = ScrampServer(name)
    client = Scram(name, "user", "pencil")
    first = client.initial_response()
    assert first is not None
    server.server.set_client_first(first.decode())
    server.server.set_client_final(
        client.respond(server.server.get_server_first().encode()).decode()
    )
    verifier = base64.b64decode(server.server.get_server_final()[2:])
    forged = bytes([verifier[0] ^ 1]) + verifier[1:]
    with pytest.raises(SASLServerVerificationError) as caught:
        client.respond(b"v=" + base64.b64encode(forged))
    assert isinstance(caught.value, MailSecurityError)
    with pytest.raises(SASLStateError):
        client.verify_final()  # a later success reply cannot revive the exchange


def test_scram_refuses_success_without_a_server_signature() -> None:
    server = ScrampServer("SCRAM-SHA-256")
    client = Scram("SCRAM-SHA-256", "user", "pencil")
    first = client.initial_response()
    assert first is not None
    server.server.set_client_first(first.decode())
    client.respond(server.server.get_server_first().encode())
    with pytest.raises(SASLServerVerificationError, match="without proving"):
        client.verify_final()


@pytest.mark.parametrize(
    ("username", "password", "stored_password"),
    [
        ("user", "I\u00adX", "IX"),  # RFC 4013 example 1: SOFT HYPHEN maps to nothing
        ("user", "\u2168", "IX"),  # example 5: ROMAN NUMERAL NINE becomes "IX"
        ("user", "\u00aa", "a"),  # example 4: FEMININE ORDINAL INDICATOR becomes "a"
        ("user", "pass\u00a0word", "pass word"),  # non-ASCII space maps to SPACE
        ("j\u00fcrgen", "p\u00e4ssw\u00f6rd", "p\u00e4ssw\u00f6rd"),
        ("us,er=1", "pencil", "pencil"),  # escaped as =2C and =3D
    ],
)
def test_scram_saslprep_agrees_with_scramp(
    username: str, password: str, stored_password: str
) -> None:
    server = ScrampServer("SCRAM-SHA-256", password=stored_password)
    client = Scram("SCRAM-SHA-256", username, password)
    server.run(client)
    assert client.complete
    assert server.users == [username]


def test_scram_escapes_the_username() -> None:
    client = Scram("SCRAM-SHA-1", "a,b=c", "x", nonce_source=lambda: "abc")
    assert client.initial_response() == b"n,,n=a=2Cb=3Dc,r=abc"
    with_authzid = Scram("SCRAM-SHA-1", "u", "x", authzid="ad,min", nonce_source=lambda: "abc")
    assert with_authzid.initial_response() == b"n,a=ad=2Cmin,n=u,r=abc"


def _started(
    name: str = "SCRAM-SHA-256", min_iterations: int = 4096, max_iterations: int = 10_000_000
) -> Scram:
    client = Scram(
        name,
        "user",
        "pencil",
        nonce_source=lambda: "cnonce",
        min_iterations=min_iterations,
        max_iterations=max_iterations,
    )
    client.initial_response()
    return client


SALT = base64.b64encode(b"0123456789ab").decode()


@pytest.mark.parametrize(
    ("server_first", "error"),
    [
        (f"r=xnonce1,s={SALT},i=4096", SASLProtocolError),  # does not extend ours
        (f"r=cnonce,s={SALT},i=4096", SASLProtocolError),  # adds nothing
        ("r=cnonce1,s=%%%,i=4096", SASLProtocolError),  # salt not base64
        ("r=cnonce1,s=,i=4096", SASLProtocolError),
        (f"r=cnonce1,s={SALT},i=04096", SASLProtocolError),
        (f"r=cnonce1,s={SALT},i=-1", SASLProtocolError),
        (f"r=cnonce1,s={SALT}", SASLProtocolError),
        (f"m=ext,r=cnonce1,s={SALT},i=4096", SASLProtocolError),
        (f"r=cnonce1,s={SALT},i=4096,m=ext", SASLProtocolError),
        ("garbage", SASLProtocolError),
        (f"r=cnonce1,s={SALT},i=4095", SASLSecurityError),
        (f"r=cnonce1,s={SALT},i=10000001", SASLSecurityError),
        ("e=unknown-user", SASLAuthenticationError),
    ],
)
def test_scram_refuses_bad_server_first(server_first: str, error: type[Exception]) -> None:
    with pytest.raises(error):
        _started().respond(server_first.encode())


def test_scram_server_first_with_extensions_after_i_is_accepted() -> None:
    response = _started().respond(f"r=cnonce1,s={SALT},i=4096,x=ext".encode())
    assert response.startswith(b"c=biws,r=cnonce1,p=")


def test_scram_iteration_floor_can_be_lowered_explicitly() -> None:
    client = _started(min_iterations=1024)
    assert client.respond(f"r=cnonce1,s={SALT},i=1024".encode()).startswith(b"c=biws")
    low = _started(max_iterations=5000)
    with pytest.raises(SASLSecurityError, match="above the limit"):
        low.respond(f"r=cnonce1,s={SALT},i=5001".encode())


def test_scram_server_error_in_final_and_extra_challenges() -> None:
    client = _started()
    client.respond(f"r=cnonce1,s={SALT},i=4096".encode())
    with pytest.raises(SASLAuthenticationError) as caught:
        client.respond(b"e=other-error\x07")
    assert caught.value.failure is not None
    assert caught.value.failure.server_error == "other-error?"
    looping = Scram("SCRAM-SHA-1", "user", "pencil", nonce_source=lambda: RFC5802_NONCE)
    looping.initial_response()
    looping.respond(RFC5802_SERVER_FIRST)
    looping.respond(b"v=rmF9pqV8S7suAoZWja4dJRkFsKQ=")
    with pytest.raises(SASLProtocolError, match="more than 2"):
        looping.respond(b"v=rmF9pqV8S7suAoZWja4dJRkFsKQ=")


def test_scram_plus_needs_channel_binding_and_names_are_checked() -> None:
    with pytest.raises(MailValidationError):
        Scram("SCRAM-SHA-256-PLUS", "u", "p")
    with pytest.raises(MailValidationError):
        Scram("SCRAM-MD5", "u", "p")
    with pytest.raises(MailValidationError):
        ChannelBinding("tls server", b"x")
    with pytest.raises(MailValidationError):
        ChannelBinding("tls-exporter", b"")
    with pytest.raises(MailValidationError):
        Scram("SCRAM-SHA-1", "u", "p", nonce_source=lambda: "a,b").initial_response()
    assert "\\x00" not in repr(ChannelBinding("tls-exporter", b"\0" * 32))


def test_scram_default_nonces_differ() -> None:
    first = Scram("SCRAM-SHA-256", "u", "p").initial_response()
    second = Scram("SCRAM-SHA-256", "u", "p").initial_response()
    assert first != second


# -- SASLprep (RFC 4013 section 3) -------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "prepared"),
    [
        ("I\u00adX", "IX"),
        ("user", "user"),
        ("USER", "USER"),
        ("\u00aa", "a"),
        ("\u2168", "IX"),
        ("a\u2003b", "a b"),  # EM SPACE
        ("\u05d0\u05d1", "\u05d0\u05d1"),  # right-to-left only is fine
        ("\U0001f600", "\U0001f600"),  # unassigned in Unicode 3.2: allowed in queries
    ],
)
def test_saslprep_rfc4013_examples(text: str, prepared: str) -> None:
    assert saslprep(text) == prepared


@pytest.mark.parametrize("text", ["\u0007", "\u0627\u0031", "a\u0627", "\ue000", "a\u200eb"])
def test_saslprep_rfc4013_errors(text: str) -> None:
    with pytest.raises(SASLPrepError) as caught:
        saslprep(text)
    assert caught.value.field == "password"
    assert text not in str(caught.value)


def test_saslprep_stored_strings_refuse_unassigned() -> None:
    with pytest.raises(SASLPrepError, match="unassigned"):
        saslprep("\U0001f600", allow_unassigned=False)


def test_scram_refuses_a_prohibited_password_before_sending() -> None:
    with pytest.raises(SASLPrepError) as caught:
        Scram("SCRAM-SHA-256", "user", "bell\u0007")
    assert caught.value.field == "password"
    assert "bell" not in str(caught.value)


# -- tls-server-end-point -----------------------------------------------------------------


def _certificate(key_kind: str, algorithm: Digest | None) -> bytes:
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
    if key_kind == "ec":
        key = ec.generate_private_key(ec.SECP256R1())
    elif key_kind == "ed25519":
        key = ed25519.Ed25519PrivateKey.generate()
    else:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mail.example.org")])
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
    )
    if key_kind == "rsa-pss":
        assert isinstance(key, rsa.RSAPrivateKey) and algorithm is not None
        pss = padding.PSS(mgf=padding.MGF1(algorithm), salt_length=padding.PSS.DIGEST_LENGTH)
        cert = builder.sign(key, algorithm, rsa_padding=pss)
    else:
        cert = builder.sign(key, algorithm)
    return cert.public_bytes(serialization.Encoding.DER)


@pytest.mark.parametrize(
    ("key_kind", "algorithm", "expected"),
    [
        ("rsa", hashes.SHA256(), "sha256"),
        ("rsa", hashes.SHA384(), "sha384"),
        ("rsa", hashes.SHA512(), "sha512"),
        ("ec", hashes.SHA256(), "sha256"),
        ("ec", hashes.SHA384(), "sha384"),
        ("rsa-pss", hashes.SHA256(), "sha256"),
        ("rsa-pss", hashes.SHA512(), "sha512"),
    ],
)
def test_tls_server_end_point_hashes_with_the_signature_hash(
    key_kind: str, algorithm: Digest, expected: str
) -> None:
    der = _certificate(key_kind, algorithm)
    binding = tls_server_end_point(der)
    assert binding is not None
    assert binding.type == "tls-server-end-point"
    assert binding.data == __import__("hashlib").new(expected, der).digest()
    if key_kind != "rsa-pss":
        # An independent reading of the certificate (asn1crypto, inside scramp).
        assert binding.data == bytes(scramp.core.CBindData.from_der(der))


SHA256_WITH_RSA = bytes.fromhex("06092a864886f70d01010b")


@pytest.mark.parametrize(
    "oid",
    [
        "06092a864886f70d010105",  # sha1WithRSAEncryption
        "06092a864886f70d010104",  # md5WithRSAEncryption
    ],
)
def test_tls_server_end_point_replaces_md5_and_sha1_by_sha256(oid: str) -> None:
    # cryptography no longer signs with MD5 or SHA-1; relabelling a SHA-256 certificate
    # gives the same DER shape, and only the label matters here.
    der = _certificate("rsa", hashes.SHA256()).replace(SHA256_WITH_RSA, bytes.fromhex(oid))
    binding = tls_server_end_point(der)
    assert binding is not None
    assert binding.data == __import__("hashlib").sha256(der).digest()
    assert binding.data == bytes(scramp.core.CBindData.from_der(der))


def test_tls_server_end_point_is_none_without_a_defined_hash() -> None:
    assert tls_server_end_point(_certificate("ed25519", None)) is None
    assert tls_server_end_point(b"\x30\x82\xff") is None
    assert tls_server_end_point(b"") is None


def test_tls_server_end_point_feeds_scramp_plus() -> None:
    der = _certificate("ec", hashes.SHA256())
    binding = tls_server_end_point(der)
    assert binding is not None
    server = ScrampServer(
        "SCRAM-SHA-256-PLUS", channel_binding=("tls-server-end-point", binding.data)
    )
    client = Scram("SCRAM-SHA-256-PLUS", "user", "pencil", channel_binding=binding)
    server.run(client)
    assert client.complete


def _tls13_handshake(
    client_context: ssl.SSLContext, server_context: ssl.SSLContext
) -> ssl.SSLObject:
    """The client end of a TLS handshake run in memory; no sockets, no threads."""
    to_server, to_client = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = client_context.wrap_bio(to_client, to_server, server_hostname="localhost")
    server_in, server_out = ssl.MemoryBIO(), ssl.MemoryBIO()
    server = server_context.wrap_bio(server_in, server_out, server_side=True)
    done: set[str] = set()
    for _ in range(10):
        for name, end in (("client", client), ("server", server)):
            with contextlib.suppress(ssl.SSLWantReadError):
                end.do_handshake()
                done.add(name)
        server_in.write(to_server.read())
        to_client.write(server_out.read())
        if done == {"client", "server"}:
            return client
    raise AssertionError("the in-memory TLS handshake did not finish")


def test_scram_plus_over_a_real_tls13_handshake(
    certs: TestCertificates,
    client_ssl_context: ssl.SSLContext,
    server_ssl_context: ssl.SSLContext,
) -> None:
    client_tls = _tls13_handshake(client_ssl_context, server_ssl_context)
    assert client_tls.version() == "TLSv1.3"
    der = client_tls.getpeercert(binary_form=True)
    assert der is not None
    binding = tls_server_end_point(der)
    assert binding is not None
    # scramp computes the server's side from the certificate's PEM, on its own.
    pem = certs.server_cert.cert_chain_pems[0].bytes().decode()
    server = ScrampServer("SCRAM-SHA-256-PLUS", channel_binding=("tls-server-end-point", pem))
    client = Scram("SCRAM-SHA-256-PLUS", "user", "pencil", channel_binding=binding)
    server.run(client)
    assert client.complete


# -- the other mechanisms -------------------------------------------------------------------


def test_cram_md5_rfc2195_example() -> None:
    client = CramMD5("tim", "tanstaaftanstaaf")
    assert client.initial_response() is None
    response = client.respond(b"<1896.697170952@postoffice.reston.mci.net>")
    assert response == b"tim b913a602c7eda7a495b4e6e7334d3890"
    client.verify_final()
    with pytest.raises(SASLProtocolError):
        CramMD5("tim", "x").respond(b"")


def test_apop_rfc1939_example() -> None:
    greeting = "+OK POP3 server ready <1896.697170952@dbc.mtview.ca.us>"
    timestamp = apop_timestamp(greeting)
    assert timestamp == "<1896.697170952@dbc.mtview.ca.us>"
    assert apop_digest(timestamp, "tanstaaf") == "c4c9334bac560ecc979e58001b3e22fb"


@pytest.mark.parametrize(
    "greeting",
    [
        "+OK ready",
        "+OK <no-at-sign>",
        "+OK <a@b",
        "+OK <a b@c>",
        "+OK <@>",
        "+OK <" + "a" * 300 + "@b>",
    ],
)
def test_apop_needs_a_well_formed_timestamp(greeting: str) -> None:
    assert apop_timestamp(greeting) is None
    with pytest.raises(SASLProtocolError):
        apop_digest(greeting[4:], "secret")


def test_plain_encoding() -> None:
    assert Plain("tim", "tanstaaf").initial_response() == b"\0tim\0tanstaaf"
    assert Plain("tim", "tanstaaf", authzid="boss").initial_response() == b"boss\0tim\0tanstaaf"
    assert (
        Plain("j\u00fcrgen", "p\u00e4ss").initial_response() == "\0j\u00fcrgen\0p\u00e4ss".encode()
    )
    # Answering the server's empty first challenge instead of sending it inline.
    late = Plain("tim", "tanstaaf")
    assert late.respond(b"") == b"\0tim\0tanstaaf"
    with pytest.raises(SASLProtocolError):
        late.respond(b"")
    with pytest.raises(SASLProtocolError):
        Plain("tim", "x").respond(b"unexpected")
    with pytest.raises(SASLPrepError):
        Plain("tim", "a\0b")
    with pytest.raises(SASLPrepError):
        Plain("", "x")
    with pytest.raises(SASLPrepError) as caught:
        Plain("u\udc80", "x")
    assert caught.value.field == "username"


def test_login_answers_two_prompts_then_stops() -> None:
    client = Login("tim", "tanstaaf")
    assert client.initial_response() is None
    assert client.respond(b"Username:") == b"tim"
    assert client.respond(b"Password:") == b"tanstaaf"
    with pytest.raises(SASLProtocolError, match="more than 2"):
        client.respond(b"Password:")


def test_external() -> None:
    assert External().initial_response() == b""
    assert External(authzid="admin").initial_response() == b"admin"
    assert External().sensitive() == ()


def test_oauthbearer_rfc7628_example() -> None:
    token = "vF9dft4qmTc2Nvb3RlckBhbHRhdmlzdGEuY29tCg=="
    client = OAuthBearer("user@example.com", token, host="server.example.com", port=143)
    assert client.initial_response() == (
        b"n,a=user@example.com,\x01host=server.example.com\x01port=143\x01"
        b"auth=Bearer vF9dft4qmTc2Nvb3RlckBhbHRhdmlzdGEuY29tCg==\x01\x01"
    )
    assert OAuthBearer(None, "t").initial_response() == b"n,,\x01auth=Bearer t\x01\x01"
    assert (
        OAuthBearer("a,b=c", "t").initial_response() == b"n,a=a=2Cb=3Dc,\x01auth=Bearer t\x01\x01"
    )


def test_oauthbearer_error_challenge_gets_x01_and_a_failure_without_the_token() -> None:
    token = "ya29.secret-token"
    client = OAuthBearer("user@example.com", token)
    sent = client.initial_response()
    assert sent is not None
    error = {
        "status": "invalid_token",
        "scope": "https://mail.google.com/",
        "openid-configuration": "https://example.com/.well-known/openid-configuration",
    }
    assert client.respond(json.dumps(error).encode()) == b"\x01"
    assert client.failure is not None
    assert client.failure.status == "invalid_token"
    assert client.failure.scope == "https://mail.google.com/"
    echo = base64.b64encode(sent).decode()
    refusal = client.refusal(535, f"5.7.8 bad token {token} {echo}")
    assert isinstance(refusal, MailAuthenticationError)
    assert refusal.code == 535 and refusal.enhanced_code == "5.7.8"
    assert "status invalid_token" in str(refusal)
    assert "scope https://mail.google.com/" in str(refusal)
    assert token not in str(refusal) and echo not in str(refusal)
    with pytest.raises(SASLProtocolError):
        client.respond(b"{}")


def test_xoauth2_encoding_and_error_challenge() -> None:
    client = XOAuth2("someuser@example.com", "ya29.vF9dft4qmTc2Nvb3RlckBhbHRhdmlzdGEuY29tCg")
    assert client.initial_response() == (
        b"user=someuser@example.com\x01auth=Bearer "
        b"ya29.vF9dft4qmTc2Nvb3RlckBhbHRhdmlzdGEuY29tCg\x01\x01"
    )
    assert (
        client.respond(b'{"status":"401","schemes":"bearer","scope":"https://mail.google.com/"}')
        == b""
    )
    assert client.failure is not None
    assert client.failure.status == "401" and client.failure.schemes == "bearer"
    garbled = XOAuth2("u", "t")
    garbled.initial_response()
    assert garbled.respond(b"\xff not json") == b""
    assert garbled.failure is not None and garbled.failure.status is None
    assert "no reason" in garbled.refusal(None, "refused").text


@pytest.mark.parametrize("token", ["", "a b", "a\x01b", "a\nb", "a\udc80"])
def test_bearer_tokens_that_cannot_be_framed_are_refused(token: str) -> None:
    with pytest.raises(SASLPrepError):
        OAuthBearer("u", token)
    with pytest.raises(SASLPrepError):
        XOAuth2("u", token)


def test_a_failed_step_ends_the_exchange() -> None:
    client = Login("tim", "x")
    client.respond(b"Username:")
    client.respond(b"Password:")
    with pytest.raises(SASLProtocolError):
        client.respond(b"again")
    assert repr(client) == "<Login LOGIN failed>"
    with pytest.raises(SASLStateError, match="already failed"):
        client.respond(b"")
    with pytest.raises(SASLStateError):
        client.verify_final()


def test_state_machine_misuse_is_a_state_error() -> None:
    client = Plain("u", "p")
    client.initial_response()
    with pytest.raises(SASLStateError):
        client.initial_response()
    client.verify_final()
    with pytest.raises(SASLStateError):
        client.respond(b"")
    with pytest.raises(SASLStateError):
        client.verify_final()
    with pytest.raises(SASLProtocolError):
        Plain("u", "p").verify_final(b"unexpected data")


# -- selection ----------------------------------------------------------------------------------

ALL_PASSWORD = [
    "SCRAM-SHA-256-PLUS",
    "SCRAM-SHA-1-PLUS",
    "SCRAM-SHA-256",
    "SCRAM-SHA-1",
    "CRAM-MD5",
    "PLAIN",
    "LOGIN",
]
PASSWORD = CredentialKind.PASSWORD
TOKEN = CredentialKind.TOKEN
CERT = CredentialKind.CLIENT_CERT


@pytest.mark.parametrize(
    ("offered", "kind", "options", "expected"),
    [
        (ALL_PASSWORD, PASSWORD, {"tls": True, "channel_binding": True}, ALL_PASSWORD),
        (ALL_PASSWORD, PASSWORD, {"tls": True}, ALL_PASSWORD[2:]),
        (ALL_PASSWORD, PASSWORD, {"tls": False}, ALL_PASSWORD[2:5]),
        (ALL_PASSWORD, PASSWORD, {"tls": False, "allow_cleartext": True}, ALL_PASSWORD[2:]),
        (["login", "plain"], PASSWORD, {"tls": True}, ["PLAIN", "LOGIN"]),
        (["PLAIN", "XOAUTH2", "OAUTHBEARER"], TOKEN, {"tls": True}, ["OAUTHBEARER", "XOAUTH2"]),
        (["XOAUTH2"], TOKEN, {"tls": True}, ["XOAUTH2"]),
        (["EXTERNAL", "PLAIN"], CERT, {"tls": True}, ["EXTERNAL"]),
        (ALL_PASSWORD, PASSWORD, {"tls": True, "pinned": "plain"}, ["PLAIN"]),
        (None, PASSWORD, {"tls": True}, ALL_PASSWORD[2:]),
        (None, PASSWORD, {"tls": True, "pinned": "SCRAM-SHA-1"}, ["SCRAM-SHA-1"]),
        (
            ["SCRAM-SHA-1-PLUS", "PLAIN"],
            PASSWORD,
            {"tls": True, "channel_binding": True},
            ["SCRAM-SHA-1-PLUS", "PLAIN"],
        ),
    ],
)
def test_choose_mechanisms(
    offered: list[str] | None, kind: CredentialKind, options: dict[str, object], expected: list[str]
) -> None:
    assert choose_mechanisms(offered, kind, **options) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("offered", "kind", "options", "error"),
    [
        (["PLAIN", "LOGIN"], PASSWORD, {"tls": False}, CleartextRefusedError),
        (["XOAUTH2"], TOKEN, {"tls": False}, CleartextRefusedError),
        (ALL_PASSWORD, PASSWORD, {"tls": False, "pinned": "PLAIN"}, CleartextRefusedError),
        (["GSSAPI"], PASSWORD, {"tls": True}, NoMechanismError),
        ([], PASSWORD, {"tls": True}, NoMechanismError),
        (["PLAIN"], TOKEN, {"tls": True}, NoMechanismError),
        (["EXTERNAL"], CERT, {"tls": False}, NoMechanismError),
        (["SCRAM-SHA-256-PLUS"], PASSWORD, {"tls": True}, NoMechanismError),
        (["CRAM-MD5"], PASSWORD, {"tls": True, "pinned": "PLAIN"}, NoMechanismError),
        (["PLAIN"], PASSWORD, {"tls": True, "pinned": "GSSAPI"}, MailValidationError),
        (["PLAIN"], PASSWORD, {"tls": True, "pinned": "XOAUTH2"}, MailValidationError),
    ],
)
def test_choose_mechanisms_refusals(
    offered: list[str], kind: CredentialKind, options: dict[str, object], error: type[Exception]
) -> None:
    with pytest.raises(error):
        choose_mechanisms(offered, kind, **options)  # type: ignore[arg-type]


def test_no_mechanism_error_is_an_authentication_error_and_keeps_the_offer() -> None:
    with pytest.raises(NoMechanismError) as caught:
        choose_mechanisms(["gssapi"], PASSWORD, tls=True)
    assert isinstance(caught.value, MailAuthenticationError)
    assert caught.value.offered == ("GSSAPI",)
    with pytest.raises(CleartextRefusedError) as cleartext:
        choose_mechanisms(["PLAIN"], PASSWORD, tls=False)
    assert isinstance(cleartext.value, MailSecurityError)


def test_only_an_unsupported_mechanism_allows_fallback() -> None:
    assert [r for r in Refusal if r.allows_fallback()] == [Refusal.MECHANISM_UNSUPPORTED]


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("SCRAM-SHA-256", Scram),
        ("SCRAM-SHA-1", Scram),
        ("CRAM-MD5", CramMD5),
        ("PLAIN", Plain),
        ("LOGIN", Login),
        ("OAUTHBEARER", OAuthBearer),
        ("XOAUTH2", XOAuth2),
        ("EXTERNAL", External),
    ],
)
def test_create_mechanism(name: str, kind: type[Mechanism]) -> None:
    mechanism = create_mechanism(name, username="u", password="p", token="t")
    assert isinstance(mechanism, kind) and mechanism.name == name


@pytest.mark.parametrize("name", sorted(SUPPORTED))
def test_cleartext_flag_agrees_with_the_selection(name: str) -> None:
    binding = ChannelBinding("tls-server-end-point", CB_DATA)
    mechanism = create_mechanism(
        name, username="u", password="p", token="t", channel_binding=binding
    )
    assert mechanism.cleartext == (name in CLEARTEXT)
    assert mechanism.name == name


def test_create_mechanism_needs_the_right_credential() -> None:
    with pytest.raises(MailValidationError):
        create_mechanism("PLAIN", username="u", token="t")
    with pytest.raises(MailValidationError):
        create_mechanism("XOAUTH2", username="u", password="p")
    with pytest.raises(MailValidationError):
        create_mechanism("GSSAPI", username="u", password="p")
    with pytest.raises(MailValidationError):
        create_mechanism("SCRAM-SHA-1-PLUS", username="u", password="p")


# -- secrets: masking, reprs, messages ---------------------------------------------------------


def _exchanges(password: str) -> list[tuple[Mechanism, str]]:
    """One exchange of each password or token mechanism, run with ``password`` (or a
    token made from it), and the secret it used."""
    plain = Plain("user", password)
    plain.initial_response()
    login = Login("user", password)
    login.respond(b"Username:")
    login.respond(b"Password:")
    cram = CramMD5("user", password)
    cram.respond(b"<1.2@host>")
    token = "tok" + "".join(char for char in password if " " < char != "\x7f")
    bearer = OAuthBearer("user", token)
    bearer.initial_response()
    xoauth = XOAuth2("user", token)
    xoauth.initial_response()
    return [
        (plain, password),
        (login, password),
        (cram, password),
        (bearer, token),
        (xoauth, token),
    ]


def _parts(masked: str) -> list[str]:
    return masked.split("***")


secrets_text = st.text(
    alphabet=st.characters(blacklist_categories=["Cs"], blacklist_characters="\0"),
    min_size=1,
    max_size=40,
)


@settings(max_examples=150, deadline=None)
@given(secret=secrets_text, before=st.binary(max_size=5), after=st.binary(max_size=5))
def test_mask_secrets_hides_every_wire_form(secret: str, before: bytes, after: bytes) -> None:
    raw = secret.encode()
    # (what the server echoes, the part of it that must not survive)
    echoes = [(secret, secret)]
    for payload in (raw, before + raw + after, b"\0user\0" + raw):
        encoded = base64.b64encode(payload).decode()
        echoes.append((encoded, encoded))
    for offset in range(3):
        encoded = base64.b64encode(b"x" * offset + raw + b"yz").decode()
        # Only the characters the secret alone determines, glued to other text.
        start, end = -(-8 * offset // 6), 8 * (offset + len(raw)) // 6
        if end - start >= 4:
            echoes.append((f"ab{encoded[start:end]}!", encoded[start:end]))
    text = " | ".join(f"server said {echo} here" for echo, _ in echoes)
    masked = mask_secrets(text, [secret])
    for part in _parts(masked):
        for _, revealing in echoes:
            assert revealing not in part


@settings(max_examples=60, deadline=None)
@given(password=secrets_text)
def test_mechanisms_list_what_must_be_masked(password: str) -> None:
    for mechanism, secret in _exchanges(password):
        echoes = [
            base64.b64encode(item if isinstance(item, bytes) else item.encode()).decode()
            for item in mechanism.sensitive()
        ]
        text = "refused: " + " ".join(echoes) + " " + secret
        masked = mechanism.mask(text)
        for part in _parts(masked):
            assert secret not in part
            for echo in echoes:
                assert echo not in part


def test_scram_exposes_its_client_proof_for_masking() -> None:
    client = Scram("SCRAM-SHA-1", "user", "pencil", nonce_source=lambda: "fyko+d2lbbFgONRv9qkxdawL")
    client.initial_response()
    final = client.respond(
        b"r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,s=QSXCR+Q6sek8bf92,i=4096"
    )
    proof = "v0X8v3Bz2T0CJGbJQyF0X+HI4Ts="
    assert proof in client.sensitive()
    echo = f"535 no: {final.decode()} / {base64.b64encode(final).decode()} / {proof}"
    masked = client.mask(echo)
    assert proof not in masked and base64.b64encode(final).decode() not in masked
    assert "fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j" not in masked  # inside the masked line


def test_mask_secrets_leaves_text_without_secrets_alone() -> None:
    assert mask_secrets("535 5.7.8 Authentication failed", ["hunter2"]) == (
        "535 5.7.8 Authentication failed"
    )
    assert mask_secrets("anything", []) == "anything"


@pytest.mark.parametrize(
    "factory",
    [
        lambda: Plain("user", "hunter2-secret"),
        lambda: Login("user", "hunter2-secret"),
        lambda: CramMD5("user", "hunter2-secret"),
        lambda: Scram("SCRAM-SHA-256", "user", "hunter2-secret"),
        lambda: OAuthBearer("user", "hunter2-secret"),
        lambda: XOAuth2("user", "hunter2-secret"),
    ],
)
def test_no_secret_in_repr_vars_or_pickle(factory: Callable[[], Mechanism]) -> None:
    mechanism = factory()
    mechanism.initial_response()
    assert "hunter2" not in repr(mechanism)
    assert "hunter2" not in repr(vars(mechanism))
    with pytest.raises(TypeError):
        pickle.dumps(mechanism)


def test_errors_never_carry_the_secret() -> None:
    errors: list[Exception] = []
    for attempt in (
        lambda: Scram("SCRAM-SHA-256", "user", "hunter2\u0007"),
        lambda: Plain("user", "hunter2\0"),
        lambda: XOAuth2("user", "hunter2 token"),
        lambda: apop_digest("<hunter2>", "hunter2"),
    ):
        with pytest.raises(Exception) as caught:
            attempt()
        errors.append(caught.value)
    client = Scram("SCRAM-SHA-256", "user", "hunter2", nonce_source=lambda: "n")
    client.initial_response()
    with pytest.raises(MailProtocolError) as protocol:
        client.respond(b"r=hunter2,s=x,i=1")
    errors.append(protocol.value)
    for error in errors:
        assert "hunter2" not in str(error) and "hunter2" not in repr(error)
