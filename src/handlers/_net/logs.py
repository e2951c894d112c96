"""The library's named loggers.

Records go to a small, documented set of loggers whose names do not follow the internal
module layout, so logging configuration keeps working when internals move. Every name
sits under the package's own logger (``src.handlers`` when the folder lives at
``src/handlers``), which carries a ``NullHandler``.
"""

from __future__ import annotations

import logging

__all__ = ["LOGGER_NAMES", "get_logger"]

_ROOT = __name__.partition("._net")[0]

LOGGER_NAMES = (
    "smtp",
    "smtp.pool",
    "pop3",
    "pop3.pool",
    "sync",
    "parser",
    "oauth2",
    "dns",
    "connect",
    "deadline",
    "trace",
    "ratelimit",
    "dkim",
)


def get_logger(name: str) -> logging.Logger:
    """Return the library logger ``<package>.<name>``; *name* is one of LOGGER_NAMES."""
    if name not in LOGGER_NAMES:
        raise ValueError(f"unknown library logger {name!r}")
    return logging.getLogger(f"{_ROOT}.{name}")
