"""What a test does when something it needs is missing: it skips on a developer's
machine and fails in CI, where everything must run."""

from __future__ import annotations

import os
from typing import NoReturn

import pytest


def in_ci() -> bool:
    """Whether this run is CI (``CI=true``)."""
    return os.environ.get("CI", "").strip().lower() == "true"


def unavailable(
    reason: str, *, in_ci_reason: str | None = None, module_level: bool = False
) -> NoReturn:
    """Skip with ``reason``; under CI fail instead, with ``in_ci_reason`` if given.
    ``module_level`` allows the call at a test module's top level."""
    if in_ci():
        pytest.fail(in_ci_reason or reason, pytrace=False)
    pytest.skip(reason, allow_module_level=module_level)
