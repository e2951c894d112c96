"""The files inside a TNEF attachment (``application/ms-tnef``, ``winmail.dat``), which
Outlook sends in place of MIME attachments. Never raises; stops at the first damaged
attribute and returns what it read until then. Work is linear in the input.

Only what lists attachments is read: per attachment, ``attAttachRendData`` (a new
attachment starts), ``attAttachTitle`` (its 8-bit name), ``attAttachData`` (its bytes)
and, in ``attAttachment``'s MAPI properties, the long file name, the MIME type and the
binary data. The message body (RTF) and other properties are skipped.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from .charsets import decode_text
from .filetypes import type_for_filename

__all__ = ["TnefFile", "tnef_files"]

_SIGNATURE = 0x223E9F78
_LEVEL_MESSAGE = 1
_LEVEL_ATTACHMENT = 2
# Attribute ids without their type word.
_ATT_OEM_CODEPAGE = 0x9007
_ATT_ATTACH_REND_DATA = 0x9002
_ATT_ATTACH_TITLE = 0x8010
_ATT_ATTACH_DATA = 0x800F
_ATT_ATTACHMENT = 0x9005
# MAPI property ids.
_PR_ATTACH_DATA_BIN = 0x3701
_PR_ATTACH_FILENAME = 0x3704
_PR_ATTACH_LONG_FILENAME = 0x3707
_PR_ATTACH_MIME_TAG = 0x370E
_PR_DISPLAY_NAME = 0x3001
_PT_STRING8 = 0x001E
_PT_UNICODE = 0x001F
_PT_OBJECT = 0x000D
_VARIABLE = frozenset({_PT_STRING8, _PT_UNICODE, 0x0102, _PT_OBJECT})
# Object values are kept under their property id with this bit set.
_OBJECT = 0x10000
# The interface id that starts an object value.
_IID_SIZE = 16
_FIXED = {0x2: 4, 0x3: 4, 0x4: 4, 0x5: 8, 0x6: 8, 0x7: 8, 0xA: 4, 0xB: 4, 0x14: 8, 0x40: 8}
_FIXED[0x48] = 16
_MULTI = 0x1000
_MAX_FILES = 500
_MAX_VALUES = 100_000


@dataclass
class TnefFile:
    """One attachment found in a TNEF stream."""

    filename: str = ""
    content_type: str = ""
    data: bytes = b""


class _Damaged(Exception):
    pass


class _Reader:
    def __init__(self, data: bytes, pos: int = 0, end: int | None = None) -> None:
        self.data = data
        self.pos = pos
        self.end = len(data) if end is None else end

    def take(self, size: int) -> bytes:
        if size < 0 or self.pos + size > self.end:
            raise _Damaged
        chunk = self.data[self.pos : self.pos + size]
        self.pos += size
        return chunk

    def u16(self) -> int:
        value: int = struct.unpack("<H", self.take(2))[0]
        return value

    def u32(self) -> int:
        value: int = struct.unpack("<I", self.take(4))[0]
        return value

    def padded(self, size: int) -> bytes:
        chunk = self.take(size)
        self.take(-size % 4)
        return chunk


def _strip_nul(raw: bytes) -> bytes:
    return raw.split(b"\x00", 1)[0]


def _mapi_properties(raw: bytes, codepage: str) -> dict[int, object]:
    """The string and binary properties of an ``attAttachment`` block, by property id."""
    found: dict[int, object] = {}
    reader = _Reader(raw)
    try:
        count = reader.u32()
        for _ in range(min(count, _MAX_VALUES)):
            ptype, pid = reader.u16(), reader.u16()
            if pid >= 0x8000:  # a named property: GUID, then a number or a name
                reader.take(16)
                if reader.u32() == 0:
                    reader.take(4)
                else:
                    reader.padded(reader.u32())
            base = ptype & ~_MULTI
            if base in _VARIABLE:
                values = [reader.padded(reader.u32()) for _ in range(min(reader.u32(), 1024))]
                if ptype & _MULTI or not values:
                    continue
                value = values[0]
                if base == _PT_UNICODE:
                    found[pid] = value.decode("utf-16-le", "replace").split("\x00", 1)[0]
                elif base == _PT_STRING8:
                    found[pid] = decode_text(_strip_nul(value), codepage)
                elif base == _PT_OBJECT:
                    found[pid | _OBJECT] = value
                else:
                    found[pid] = value
            elif base in _FIXED:
                size = _FIXED[base]
                repeat = min(reader.u32(), _MAX_VALUES) if ptype & _MULTI else 1
                for _ in range(repeat):
                    reader.padded(size)
            else:
                break  # an unknown type: its size is unknown, so nothing after it is safe
    except (_Damaged, struct.error):
        pass
    return found


def tnef_files(data: bytes) -> list[TnefFile]:
    """The attachments inside the TNEF stream ``data`` (empty if it is none)."""
    files: list[TnefFile] = []
    reader = _Reader(data)
    codepage = "cp1252"
    try:
        if reader.u32() != _SIGNATURE:
            return []
        reader.take(2)  # legacy key
        while reader.pos < reader.end and len(files) <= _MAX_FILES:
            level = reader.take(1)[0]
            attribute = reader.u32() & 0xFFFF
            value = reader.take(reader.u32())
            reader.take(2)  # checksum
            if level == _LEVEL_MESSAGE and attribute == _ATT_OEM_CODEPAGE and len(value) >= 4:
                codepage = f"cp{struct.unpack('<I', value[:4])[0]}"
            if level != _LEVEL_ATTACHMENT:
                continue
            if attribute == _ATT_ATTACH_REND_DATA or not files:
                files.append(TnefFile())
            current = files[-1]
            if attribute == _ATT_ATTACH_TITLE:
                current.filename = decode_text(_strip_nul(value), codepage)
            elif attribute == _ATT_ATTACH_DATA:
                current.data = value
            elif attribute == _ATT_ATTACHMENT:
                _apply_properties(current, _mapi_properties(value, codepage))
    except (_Damaged, struct.error, IndexError):
        pass
    found = [file for file in files[:_MAX_FILES] if file.filename or file.data]
    for file in found:
        if not file.content_type:
            file.content_type = type_for_filename(file.filename)
    return found


def _apply_properties(file: TnefFile, properties: dict[int, object]) -> None:
    embedded = properties.get(_PR_ATTACH_DATA_BIN | _OBJECT)
    if isinstance(embedded, bytes) and len(embedded) > _IID_SIZE:
        # An attached Outlook item: its own TNEF stream, named by its subject; the
        # attAttachData of such an attachment is only a placeholder sentence.
        name = properties.get(_PR_DISPLAY_NAME)
        if isinstance(name, str) and name.strip():
            file.filename = name
        file.content_type = "application/vnd.ms-tnef"
        file.data = embedded[_IID_SIZE:]
        return
    for pid in (_PR_ATTACH_LONG_FILENAME, _PR_DISPLAY_NAME, _PR_ATTACH_FILENAME):
        name = properties.get(pid)
        if isinstance(name, str) and name.strip():
            # The long name wins over the 8.3 title; the display name only fills a gap.
            if pid == _PR_ATTACH_LONG_FILENAME or not file.filename:
                file.filename = name
            break
    mime = properties.get(_PR_ATTACH_MIME_TAG)
    if isinstance(mime, str) and "/" in mime:
        file.content_type = mime.strip().lower()
    data = properties.get(_PR_ATTACH_DATA_BIN)
    if isinstance(data, bytes) and not file.data:
        file.data = data
