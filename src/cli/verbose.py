"""``--verbose``: the library's debug log on stderr, with every secret masked.

The log includes the protocol dialogue (the ``src.handlers.trace`` logger), which masks
credentials itself. As a second line of defence, the text of each record passes
through a :class:`Redactor` before it is written: the password the command line
read, and its base64 forms as AUTH PLAIN and AUTH LOGIN send it, become ``***``.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import sys
from collections.abc import Iterator

MASK = "***"
_LOGGERS = ("src",)
_FORMAT = "%(relativeCreated)6.0fms %(name)s %(levelname)s: %(message)s"


def _b64(text: str) -> str:
    return base64.b64encode(text.encode("utf-8")).decode("ascii")


class Redactor:
    """Masks known secrets in text."""

    def __init__(self) -> None:
        self._secrets: set[str] = set()

    def add(self, secret: str, username: str | None = None) -> None:
        """Mask ``secret`` from now on, plain and as the AUTH mechanisms encode it."""
        if not secret:
            return
        forms = {secret, _b64(secret)}
        if username:
            forms.add(_b64(f"\0{username}\0{secret}"))
            forms.add(_b64(f"{username}\0{username}\0{secret}"))
        self._secrets |= forms

    def redact(self, text: str) -> str:
        """``text`` with every known secret replaced by ``***``."""
        for secret in sorted(self._secrets, key=len, reverse=True):
            text = text.replace(secret, MASK)
        return text


class RedactingFormatter(logging.Formatter):
    """A formatter whose output, traceback included, has been through a redactor."""

    def __init__(self, redactor: Redactor) -> None:
        super().__init__(_FORMAT)
        self._redactor = redactor

    def format(self, record: logging.LogRecord) -> str:
        return self._redactor.redact(super().format(record))


@contextlib.contextmanager
def verbose_logging(enabled: bool, redactor: Redactor) -> Iterator[None]:
    """While active, log the library's DEBUG records to stderr through ``redactor``.

    Levels and handlers are restored afterwards, so an in-process caller (a test) is
    left as it was.
    """
    if not enabled:
        yield
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(RedactingFormatter(redactor))
    loggers = [logging.getLogger(name) for name in _LOGGERS]
    saved = [logger.level for logger in loggers]
    for logger in loggers:
        logger.addHandler(handler)
        logger.setLevel(logging.DEBUG)
    try:
        yield
    finally:
        for logger, level in zip(loggers, saved, strict=True):
            logger.removeHandler(handler)
            logger.setLevel(level)
        handler.flush()
