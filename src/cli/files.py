"""Saving fetched messages so that they survive a crash before the server forgets them.

``fetch --delete`` sends ``DELE`` for a message only after :func:`save_durably`
returned for it: the bytes are in a file that was ``fsync``-ed, renamed into place,
and the directory entry ``fsync``-ed too. The deletions are committed by ``QUIT``
after every message was saved; a run that dies earlier deletes nothing.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from urllib.parse import quote

from ..handlers._sync.durable import write_durably
from .common import CLIError, ExitCode


def prepare_directory(path: str) -> Path:
    """Create the output directory (private to the user) if needed; return it."""
    directory = Path(path)
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    except FileExistsError:
        raise CLIError(f"{path} exists and is not a directory", ExitCode.CANT_CREATE) from None
    except OSError as error:
        raise CLIError(
            f"cannot create directory {path}: {error.strerror}", ExitCode.CANT_CREATE
        ) from None
    if not os.access(directory, os.W_OK | os.X_OK):
        raise CLIError(f"cannot write to directory {path}", ExitCode.CANT_CREATE)
    return directory


def eml_name(uid: str | None, number: int, raw: bytes) -> str:
    """The file name for a message: its unique ID when the server gives one.

    A unique ID may hold any printable ASCII character, ``/`` included, so it is
    percent-encoded. Without one, the message number (which changes between sessions)
    is made unique by a digest of the content.
    """
    if uid:
        return quote(uid, safe="") + ".eml"
    return f"message-{number}-{hashlib.sha256(raw).hexdigest()[:16]}.eml"


def save_durably(directory: Path, name: str, data: bytes) -> Path:
    """Write ``data`` to ``directory/name`` atomically and flush it to the disk.

    The file (mode 0600) appears complete or not at all; when this returns, both its
    content and its directory entry have been ``fsync``-ed.
    """
    target = directory / name
    write_durably(target, data)
    return target
