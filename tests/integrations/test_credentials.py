"""Encrypted stored credentials, and the Flask example keeping its accounts with them."""

from __future__ import annotations

import importlib.util
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from paths import EXAMPLES

from src.integrations.credentials import CredentialCipher, CredentialError, generate_key
from src.testing.pop3_server import POP3TestServer

SECRET = "app-password-0123456789"


def test_a_secret_round_trips_and_is_not_in_the_ciphertext() -> None:
    cipher = CredentialCipher([generate_key()])
    token = cipher.encrypt(SECRET, account=7)
    assert SECRET not in token
    assert cipher.decrypt(token, account=7) == SECRET
    assert cipher.encrypt(SECRET, account=7) != token  # random IV each time


def test_rotation_moves_tokens_to_the_new_key() -> None:
    old, new = generate_key(), generate_key()
    token = CredentialCipher([old]).encrypt(SECRET, account="a")
    both = CredentialCipher([new, old])
    assert both.decrypt(token, account="a") == SECRET
    [(account, rotated)] = list(both.rotate_all([("a", token)]))
    assert account == "a"
    assert CredentialCipher([new]).decrypt(rotated, account="a") == SECRET
    with pytest.raises(CredentialError):
        CredentialCipher([old]).decrypt(rotated, account="a")


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        ("not base64 at all!!", "corrupt"),
        ("Z0FBQUFBQm5vdC1hLXRva2Vu", "wrong-key"),
    ],
)
def test_a_bad_token_names_the_account_and_never_the_secret(token: str, reason: str) -> None:
    with pytest.raises(CredentialError) as caught:
        CredentialCipher([generate_key()]).decrypt(token, account="acct-42")
    assert caught.value.account == "acct-42" and caught.value.reason == reason
    assert "acct-42" in str(caught.value)


def test_a_wrong_key_or_a_tampered_token_is_refused_without_leaking() -> None:
    key = generate_key()
    token = CredentialCipher([key]).encrypt(SECRET, account="acct")
    for cipher, value in [
        (CredentialCipher([generate_key()]), token),
        (CredentialCipher([key]), token[:-6] + ("A" if token[-6] != "A" else "B") + token[-5:]),
    ]:
        with pytest.raises(CredentialError) as caught:
            cipher.decrypt(value, account="acct")
        assert caught.value.reason == "wrong-key"
        assert SECRET not in str(caught.value) and key not in str(caught.value)


def test_a_token_copied_to_another_account_does_not_decrypt() -> None:
    cipher = CredentialCipher([generate_key()])
    token = cipher.encrypt(SECRET, account="alice")
    with pytest.raises(CredentialError) as caught:
        cipher.decrypt(token, account="mallory")
    assert caught.value.reason == "other-account" and caught.value.account == "mallory"


def test_bad_keys_are_refused() -> None:
    with pytest.raises(CredentialError):
        CredentialCipher(["short"])
    with pytest.raises(CredentialError):
        CredentialCipher([])


# -- the Flask example stores accounts encrypted --------------------------------------


def _example() -> Any:
    path = EXAMPLES / "flask_app.py"
    spec = importlib.util.spec_from_file_location("flask_app_credentials", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_flask_example_keeps_accounts_encrypted_in_sqlite(tmp_path: Path) -> None:
    flask_app = _example()
    database = tmp_path / "mail.db"
    old, new = generate_key(), generate_key()
    config = {
        "TESTING": True,
        "MAIL_SMTP": {"hostname": "127.0.0.1", "port": 25, "encryption": "none"},
        "MAIL_DATABASE": str(database),
        "MAIL_CREDENTIAL_KEYS": [old],
    }
    with POP3TestServer(users={"u": SECRET}) as server:
        server.add_message(b"Subject: one\r\n\r\nx\r\n", user="u")
        app = flask_app.create_app(config)
        flask_app.add_account(
            app,
            5,
            hostname=server.host,
            port=server.port,
            username="u",
            password=SECRET,
            encryption="none",
        )
        assert SECRET.encode() not in database.read_bytes()
        client = app.test_client()
        first = client.post("/api/pop3/sync", json={"accountId": 5})
        assert (first.status_code, first.json) == (200, {"synced": 1, "skipped": 0, "failed": 0})
        assert [m["subject"] for m in app.extensions["mail_inbox"][5]] == ["one"]
        # Rotate: the new key first, the old one still accepted, every row re-encrypted.
        rotated = flask_app.create_app({**config, "MAIL_CREDENTIAL_KEYS": [new, old]})
        assert flask_app.rotate_credentials(rotated) == 1
        only_new = flask_app.create_app({**config, "MAIL_CREDENTIAL_KEYS": [new]})
        server.add_message(b"Subject: two\r\n\r\nx\r\n", user="u")
        second = only_new.test_client().post("/api/pop3/sync", json={"accountId": 5})
        assert second.json == {"synced": 1, "skipped": 1, "failed": 0}
        # A key that opens nothing: a clear error naming the account, not the secret.
        wrong = flask_app.create_app({**config, "MAIL_CREDENTIAL_KEYS": [generate_key()]})
        failed = wrong.test_client().post("/api/pop3/sync", json={"accountId": 5})
        assert failed.status_code == 502
        assert "'5'" in failed.json["error"] and SECRET not in failed.get_data(as_text=True)
    with sqlite3.connect(database) as connection:
        (count,) = connection.execute("SELECT COUNT(*) FROM messages").fetchone()
    assert count == 2
