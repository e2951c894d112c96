"""POP3 logins by every mechanism against a real Dovecot 2.3, proven from its own log.

The second Dovecot (:class:`.sasl_dovecot.SASLDovecot`) offers PLAIN, LOGIN,
SCRAM-SHA-256, SCRAM-SHA-1, CRAM-MD5, APOP (the timestamp in its greeting),
OAUTHBEARER and XOAUTH2, with bearer tokens checked by its oauth2 passdb as locally
validated JWTs. Each login is matched to Dovecot's ``Login: user=<...>, method=...``
line, so the mechanism is the one Dovecot saw, not the one the client meant to use.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from src.handlers.errors import POP3AuthenticationError
from src.handlers.pop3 import POP3ProtocolHandler

from .sasl_dovecot import SASLDovecot

TIMEOUT = 10


def handler(server: SASLDovecot, encryption: str = "tls", **options: Any) -> POP3ProtocolHandler:
    if "oauth2_token" not in options:
        options.setdefault("password", server.users["alice"])
    port = server.ports["pop3s" if encryption == "ssl" else "pop3"]
    return POP3ProtocolHandler(
        server.host,
        port,
        "alice",
        encryption=encryption,
        timeout=TIMEOUT,
        ssl_context=server.client_ssl_context(),
        sleep=lambda seconds: None,
        **options,
    )


def login_method(server: SASLDovecot, mark: dict[Any, int]) -> str:
    line = server.wait_for_log(mark, r"pop3-login: Info: Login: user=<alice>, method=[A-Z0-9-]+")
    match = re.search(r"method=([A-Z0-9-]+)", line)
    assert match is not None
    return match.group(1)


@pytest.mark.parametrize("encryption", ["tls", "ssl"])
def test_the_default_login_is_scram_sha_256(sasl_dovecot: SASLDovecot, encryption: str) -> None:
    mark = sasl_dovecot.log_mark()
    assert handler(sasl_dovecot, encryption).get_mailbox_stat() == (0, 0)
    assert login_method(sasl_dovecot, mark) == "SCRAM-SHA-256"


@pytest.mark.parametrize(
    ("pinned", "logged"),
    [
        ("SCRAM-SHA-256", "SCRAM-SHA-256"),
        ("SCRAM-SHA-1", "SCRAM-SHA-1"),
        ("CRAM-MD5", "CRAM-MD5"),
        ("PLAIN", "PLAIN"),
        ("LOGIN", "LOGIN"),
        ("APOP", "APOP"),
        # Dovecot runs USER/PASS through its PLAIN mechanism and logs it so.
        ("USER", "PLAIN"),
    ],
)
def test_each_password_mechanism(sasl_dovecot: SASLDovecot, pinned: str, logged: str) -> None:
    mark = sasl_dovecot.log_mark()
    pop3 = handler(sasl_dovecot, auth_mechanism=pinned)
    assert pop3.get_mailbox_stat() == (0, 0)
    assert login_method(sasl_dovecot, mark) == logged


@pytest.mark.parametrize("pinned", [None, "OAUTHBEARER", "XOAUTH2"])
def test_bearer_tokens_validated_locally(sasl_dovecot: SASLDovecot, pinned: str | None) -> None:
    mark = sasl_dovecot.log_mark()
    token = sasl_dovecot.issue_token("alice")
    pop3 = handler(sasl_dovecot, oauth2_token=token, auth_mechanism=pinned)
    assert pop3.get_mailbox_stat() == (0, 0)
    assert login_method(sasl_dovecot, mark) == (pinned or "OAUTHBEARER")


def test_an_expired_token_is_refreshed_once(sasl_dovecot: SASLDovecot) -> None:
    expired = sasl_dovecot.issue_token("alice", lifetime=-600)
    fresh = sasl_dovecot.issue_token("alice")
    handed_out: list[str] = []

    class Provider:
        def __call__(self) -> str:
            token = expired if not handed_out else fresh
            handed_out.append(token)
            return token

        def invalidate(self, token: str) -> None:
            assert token == expired

    mark = sasl_dovecot.log_mark()
    assert handler(sasl_dovecot, oauth2_token=Provider()).get_mailbox_stat() == (0, 0)
    assert handed_out == [expired, fresh]
    assert "Token has expired" in sasl_dovecot.log_since(mark)
    assert login_method(sasl_dovecot, mark) == "OAUTHBEARER"


@pytest.mark.parametrize("pinned", [None, "CRAM-MD5"])
def test_a_wrong_password_is_refused_without_falling_back(
    sasl_dovecot: SASLDovecot, pinned: str | None
) -> None:
    mark = sasl_dovecot.log_mark()
    pop3 = handler(sasl_dovecot, password="not-the-password", auth_mechanism=pinned)
    with pytest.raises(POP3AuthenticationError) as caught:
        pop3.get_mailbox_stat()
    assert "not-the-password" not in str(caught.value)
    # One attempt, with the strongest mechanism, and nothing weaker after it.
    line = sasl_dovecot.wait_for_log(mark, r"pop3-login: Info: Disconnected: .*auth failed.*")
    assert "auth failed, 1 attempts" in line
    assert f"method={pinned or 'SCRAM-SHA-256'}," in line
    assert "Login: user=<alice>" not in sasl_dovecot.log_since(mark)
