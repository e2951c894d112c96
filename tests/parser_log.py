"""Collecting the message parser's log records inside hypothesis tests (where the
function-scoped ``caplog`` fixture cannot be used). Not a test module itself."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

PARSER_LOGGER = logging.getLogger("src.handlers.parser")


class _Recorder(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextmanager
def parser_log() -> Iterator[list[logging.LogRecord]]:
    """The parser's log records; it logs 'parsing failed' when it caught an error."""
    recorder = _Recorder()
    previous = PARSER_LOGGER.level
    PARSER_LOGGER.addHandler(recorder)
    PARSER_LOGGER.setLevel(logging.DEBUG)
    try:
        yield recorder.records
    finally:
        PARSER_LOGGER.removeHandler(recorder)
        PARSER_LOGGER.setLevel(previous)
