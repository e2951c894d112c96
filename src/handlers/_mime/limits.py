"""Bounds on the work of parsing one fetched message."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ParseLimits"]


@dataclass(frozen=True)
class ParseLimits:
    """Bounds that keep a hostile or broken message cheap to parse.

    Attributes:
        max_depth: multipart nesting levels that are followed (the walk is
            iterative, so depth costs no stack); a multipart nested deeper is skipped
            with a WARNING.
        max_parts: MIME parts examined per message, multipart containers included;
            the parts after that are skipped with a WARNING.
        max_header_bytes: bytes of one header section (the message's own or a part's)
            that are read; the rest of that section is ignored.
    """

    max_depth: int = 100
    max_parts: int = 500
    max_header_bytes: int = 256 * 1024
