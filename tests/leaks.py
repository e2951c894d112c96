"""Checks that no secret leaked: every spelling of a credential, searched for in what a
user could see (exception texts, the library's log records)."""

from __future__ import annotations

import base64
import traceback

import pytest

LIBRARY_LOGGER = "src.handlers"


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode("ascii")


def secret_forms(username: str, *passwords: str) -> list[str]:
    """Every spelling of a credential that must never leave the library."""
    forms: list[str] = []
    for password in passwords:
        forms += [
            password,
            b64(f"\0{username}\0{password}"),  # AUTH PLAIN
            b64(f"{username}\0{username}\0{password}"),
            b64(password),  # AUTH LOGIN, second line
        ]
    return [*forms, b64(username)]  # AUTH LOGIN, first line


def library_log_text(caplog: pytest.LogCaptureFixture) -> str:
    """Everything the library logged (messages and tracebacks), any level."""
    parts = []
    for record in caplog.records:
        if record.name.startswith(LIBRARY_LOGGER):
            parts.append(record.getMessage())
            if record.exc_info:
                parts.append("".join(traceback.format_exception(*record.exc_info)))
    return "\n".join(parts)


def exception_texts(error: BaseException) -> list[str]:
    """What logging or a crash report would show of ``error``."""
    return [str(error), repr(error), "".join(traceback.format_exception(error))]


def assert_no_secret(texts: list[str], forms: list[str]) -> None:
    for text in texts:
        for form in forms:
            assert form not in text, f"{form!r} leaked into {text[:300]!r}"


def xoauth2_response(username: str, token: str) -> str:
    """The base64 XOAUTH2 client response, as Google's and Microsoft's documentation
    spell it: how a token travels, so how it could leak."""
    raw = f"user={username}\x01auth=Bearer {token}\x01\x01"
    return base64.b64encode(raw.encode("ascii")).decode("ascii")
