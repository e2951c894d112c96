"""Writing a file so that it survives a crash: all of it or none of it, on the disk.

Used wherever losing a write would lose or duplicate mail: the seen-UID store of the
POP3 sync, and saved messages that are deleted from the server afterwards.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def write_durably(path: Path, data: bytes, temp_prefix: str = ".incoming-") -> None:
    """Replace ``path`` with ``data`` atomically and flush both file and directory.

    The new file (mode 0600) appears complete or not at all; when this returns its
    content and its directory entry have been ``fsync``-ed.
    """
    directory = path.parent
    fd, temp_name = tempfile.mkstemp(dir=directory, prefix=temp_prefix, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as temp:
            temp.write(data)
            temp.flush()
            os.fsync(temp.fileno())
        os.replace(temp_name, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp_name)
        raise
    fsync_directory(directory)


def fsync_directory(directory: Path) -> None:
    """Make renames in ``directory`` durable (POSIX; a no-op elsewhere)."""
    if os.name != "posix":
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
