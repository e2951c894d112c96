"""SMTP logins through a real Postfix whose SASL is Dovecot's, one per mechanism.

Each test logs in and sends through Postfix, and reads from Postfix's own log line
(``sasl_method=...``) which mechanism the server saw; the default choice must be
SCRAM-SHA-256, the strongest this Dovecot offers (it has no ``-PLUS`` variants).
"""

from __future__ import annotations

import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from ci import unavailable

from src.handlers._smtp.pool import SMTPConnectionPool
from src.handlers.smtp import SMTPDeliveryStatus, SMTPProtocolHandler
from src.testing.tls import TestCertificates

from .mailstack import servers_available
from .sasl_servers import SASLMailStack


@pytest.fixture(scope="module")
def sasl_stack(certs: TestCertificates) -> Iterator[SASLMailStack]:
    available, reason = servers_available()
    if not available:
        unavailable(reason, in_ci_reason=f"interop tests must run in CI, but: {reason}")
    directory = Path(tempfile.mkdtemp(prefix="saslstack-"))
    try:
        stack = SASLMailStack(directory, certs)
        with stack:
            yield stack
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _send(stack: SASLMailStack, **options: Any) -> Any:
    handler = SMTPProtocolHandler(
        stack.host,
        stack.smtp_submission_port,
        options.pop("username", "alice"),
        options.pop("password", None),
        "tls",
        stack.address("alice"),
        ssl_context=stack.client_ssl_context(),
        pool=SMTPConnectionPool(),
        timeout=10.0,
        **options,
    )
    with handler:
        return handler.send_message([stack.address("bob")], "SASL", text_body="hello")


def _methods(log: str) -> list[str]:
    return re.findall(r"sasl_method=([A-Z0-9-]+)", log)


def test_postfix_offers_what_dovecot_has(sasl_stack: SASLMailStack) -> None:
    handler = SMTPProtocolHandler(
        sasl_stack.host,
        sasl_stack.smtp_submission_port,
        encryption="tls",
        ssl_context=sasl_stack.client_ssl_context(),
        pool=SMTPConnectionPool(),
    )
    offered = handler.capabilities().extensions["AUTH"].split()
    assert set(offered) >= {"PLAIN", "LOGIN", "SCRAM-SHA-256", "SCRAM-SHA-1", "CRAM-MD5"}


def test_default_login_is_scram_sha_256(sasl_stack: SASLMailStack) -> None:
    mark = sasl_stack.log_mark()
    result = _send(sasl_stack, password=sasl_stack.users["alice"])
    assert result.status is SMTPDeliveryStatus.SUCCESS, result.smtp_error
    assert _methods(sasl_stack.log_since(mark)) == ["SCRAM-SHA-256"]


@pytest.mark.parametrize(
    "mechanism", ["SCRAM-SHA-256", "SCRAM-SHA-1", "CRAM-MD5", "PLAIN", "LOGIN"]
)
def test_each_password_mechanism(sasl_stack: SASLMailStack, mechanism: str) -> None:
    mark = sasl_stack.log_mark()
    result = _send(sasl_stack, password=sasl_stack.users["alice"], auth_mechanism=mechanism)
    assert result.status is SMTPDeliveryStatus.SUCCESS, result.smtp_error
    assert _methods(sasl_stack.log_since(mark)) == [mechanism]


def test_wrong_password_is_one_scram_attempt(sasl_stack: SASLMailStack) -> None:
    mark = sasl_stack.log_mark()
    result = _send(sasl_stack, password="not-" + "the-password")
    assert result.status is SMTPDeliveryStatus.FAILED and result.smtp_code == 535
    log = sasl_stack.log_since(mark)
    assert re.findall(r"SASL (\S+) authentication failed", log) == ["SCRAM-SHA-256"]


@pytest.mark.parametrize("mechanism", ["OAUTHBEARER", "XOAUTH2"])
def test_token_mechanisms(sasl_stack: SASLMailStack, mechanism: str) -> None:
    mark = sasl_stack.log_mark()
    result = _send(sasl_stack, oauth2_token=sasl_stack.token("alice"), auth_mechanism=mechanism)
    assert result.status is SMTPDeliveryStatus.SUCCESS, result.smtp_error
    assert _methods(sasl_stack.log_since(mark)) == [mechanism]


def test_default_token_login_is_oauthbearer(sasl_stack: SASLMailStack) -> None:
    mark = sasl_stack.log_mark()
    result = _send(sasl_stack, oauth2_token=sasl_stack.token("alice"))
    assert result.status is SMTPDeliveryStatus.SUCCESS, result.smtp_error
    assert _methods(sasl_stack.log_since(mark)) == ["OAUTHBEARER"]


def test_expired_token_is_refreshed_once(sasl_stack: SASLMailStack) -> None:
    tokens = iter([sasl_stack.token("alice", lifetime=-60), sasl_stack.token("alice")])
    refused: list[str] = []

    class Provider:
        def __call__(self) -> str:
            return next(tokens)

        def invalidate(self, token: str) -> None:
            refused.append(token)

    mark = sasl_stack.log_mark()
    result = _send(sasl_stack, oauth2_token=Provider())
    assert result.status is SMTPDeliveryStatus.SUCCESS, result.smtp_error
    log = sasl_stack.log_since(mark)
    assert len(refused) == 1
    assert re.findall(r"SASL (\S+) authentication failed", log) == ["OAUTHBEARER"]
    assert _methods(log) == ["OAUTHBEARER"]
