"""A MIME type for a file name, the same on every machine. Never raises."""

from __future__ import annotations

import mimetypes
from functools import lru_cache

__all__ = ["type_for_filename"]


@lru_cache(maxsize=1)
def _table() -> mimetypes.MimeTypes:
    # Python's built-in table only: the module-level functions also read the host's
    # mime.types files, which would make results depend on the machine.
    return mimetypes.MimeTypes()


def type_for_filename(name: str) -> str:
    """The MIME type a file name's extension suggests, else ``application/octet-stream``."""
    try:
        guessed = _table().guess_type(name, strict=False)[0]
    except Exception:
        guessed = None
    return guessed or "application/octet-stream"
