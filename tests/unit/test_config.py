"""Connection settings as frozen values: Encryption, Endpoint, Timeouts, Credentials."""

from __future__ import annotations

import copy
import dataclasses
import pickle

import pytest

from src.handlers._auth.credentials import Credentials
from src.handlers._auth.oauth2 import TokenSource
from src.handlers._net.config import Encryption, Endpoint, Timeouts
from src.handlers.errors import ConfigurationError


@pytest.mark.parametrize(
    ("spelling", "mode"),
    [
        ("none", Encryption.NONE),
        ("PLAIN", Encryption.NONE),
        (" tls ", Encryption.STARTTLS),
        ("StartTLS", Encryption.STARTTLS),
        ("stls", Encryption.STARTTLS),
        ("ssl", Encryption.IMPLICIT_SSL),
        ("implicit", Encryption.IMPLICIT_SSL),
        ("IMPLICIT_SSL", Encryption.IMPLICIT_SSL),
        (Encryption.STARTTLS, Encryption.STARTTLS),
    ],
)
def test_encryption_spellings(spelling: str | Encryption, mode: Encryption) -> None:
    assert Encryption.parse(spelling) is mode


@pytest.mark.parametrize("bad", ["tsl", "", "starttls2", 3, None])
def test_unknown_encryption_is_a_configuration_error_listing_the_choices(bad: object) -> None:
    with pytest.raises(ConfigurationError) as caught:
        Encryption.parse(bad)  # type: ignore[arg-type]
    assert caught.value.field == "encryption"
    assert {"none", "tls", "ssl"} <= set(caught.value.choices)
    assert "'tls'" in str(caught.value)


def test_endpoint_is_validated_once_and_frozen() -> None:
    endpoint = Endpoint(" mail.example.org ", 587, "starttls")  # type: ignore[arg-type]
    assert endpoint == Endpoint("mail.example.org", 587, Encryption.STARTTLS)
    assert str(endpoint) == "mail.example.org:587 (tls)"
    assert str(Endpoint("::1", 465, Encryption.IMPLICIT_SSL)) == "[::1]:465 (ssl)"
    with pytest.raises(dataclasses.FrozenInstanceError):
        endpoint.port = 25  # type: ignore[misc]
    assert hash(endpoint) == hash(Endpoint("mail.example.org", 587))


@pytest.mark.parametrize(
    ("host", "port", "field"),
    [
        ("", 25, "hostname"),
        ("mail.example.org\r\nQUIT", 25, "hostname"),
        ("two words", 25, "hostname"),
        ("mail.example.org", 0, "port"),
        ("mail.example.org", 70000, "port"),
        ("mail.example.org", True, "port"),
        ("mail.example.org", "25", "port"),
    ],
)
def test_bad_endpoints(host: str, port: int, field: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        Endpoint(host, port)
    assert caught.value.field == field


def test_timeouts() -> None:
    assert Timeouts() == Timeouts(30.0, None, 30.0)
    assert Timeouts(5, 50, 1).operation == 50.0
    for bad in ({"socket": 0}, {"operation": -1}, {"pool_wait": float("nan")}, {"socket": True}):
        with pytest.raises(ConfigurationError):
            Timeouts(**bad)


def test_credentials_hide_the_secret_everywhere() -> None:
    creds = Credentials.of("ada", "hunter2-secret")
    for text in (repr(creds), str(creds), repr(dataclasses.asdict(creds))):
        assert "hunter2" not in text
    assert "hunter2" not in repr(copy.deepcopy(creds))
    with pytest.raises(TypeError):
        pickle.dumps(creds)


def test_credential_identity_tells_logins_apart_without_exposing_a_digest() -> None:
    a = Credentials.of("ada", "one")
    assert a.identity == Credentials.of("ada", "one").identity
    assert a.identity != Credentials.of("ada", "two").identity
    assert a.identity != Credentials.of("bob", "one").identity
    assert Credentials.of("ada").identity != a.identity
    assert repr(a.identity) == "CredentialIdentity(...)"
    token = Credentials.of("ada", oauth2_token="tok123")
    assert token.identity == Credentials.of("ada", oauth2_token="tok123").identity
    assert token.identity != Credentials.of("ada", oauth2_token="tok124").identity

    def provider() -> str:
        return "fresh-token"

    source = TokenSource(provider)
    assert Credentials.of("ada", oauth2_token=source).identity == (
        Credentials.of("ada", oauth2_token=source).identity
    )


@pytest.mark.parametrize(
    ("username", "password", "token", "field"),
    [
        ("ada\r\n", "x", None, "username"),
        ("ada", "pw\x00", None, "password"),
        ("ada", "pw", "token", "password"),
        ("", None, "token", "username"),
    ],
)
def test_bad_credentials(
    username: str, password: str | None, token: str | None, field: str
) -> None:
    with pytest.raises(ConfigurationError) as caught:
        Credentials.of(username, password, token)
    assert caught.value.field == field
    if password:
        assert password not in str(caught.value)
