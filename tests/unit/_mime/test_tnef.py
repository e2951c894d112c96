"""Tests for the TNEF reader: attachments Outlook wraps in winmail.dat."""

from __future__ import annotations

import base64
import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from src.handlers._mime.parser import parse_message
from src.handlers._mime.tnef import tnef_files


def attribute(level: int, ident: int, value: bytes) -> bytes:
    checksum = sum(value) & 0xFFFF
    return struct.pack("<BII", level, ident, len(value)) + value + struct.pack("<H", checksum)


def mapi_string(pid: int, text: str) -> bytes:
    raw = text.encode("utf-16-le") + b"\x00\x00"
    return struct.pack("<HHII", 0x001F, pid, 1, len(raw)) + raw + b"\x00" * (-len(raw) % 4)


def tnef(*attributes: bytes) -> bytes:
    return struct.pack("<IH", 0x223E9F78, 1) + b"".join(attributes)


def one_file(title: bytes, data: bytes, *properties: bytes) -> list[bytes]:
    found = [
        attribute(2, 0x00069002, b"\x01\x00" + b"\x00" * 12),
        attribute(2, 0x00018010, title + b"\x00"),
        attribute(2, 0x0006800F, data),
    ]
    if properties:
        found.append(
            attribute(2, 0x00069005, struct.pack("<I", len(properties)) + b"".join(properties))
        )
    return found


def test_files_with_titles_long_names_and_types() -> None:
    stream = tnef(
        attribute(1, 0x00069007, struct.pack("<II", 1252, 0)),
        *one_file(b"REPORT~1.PDF", b"%PDF-1.4", mapi_string(0x3707, "Quarterly report.pdf")),
        *one_file(b"caf\xe9.txt", b"hello"),
        *one_file(b"x.bin", b"", mapi_string(0x370E, "Application/X-Thing")),
    )
    files = tnef_files(stream)
    assert [(f.filename, f.content_type, f.data) for f in files] == [
        ("Quarterly report.pdf", "application/pdf", b"%PDF-1.4"),
        ("café.txt", "text/plain", b"hello"),
        ("x.bin", "application/x-thing", b""),
    ]


def test_damage_keeps_what_was_read() -> None:
    stream = tnef(*one_file(b"a.txt", b"first"), *one_file(b"b.txt", b"second"))
    assert [f.filename for f in tnef_files(stream[:-10])] == ["a.txt", "b.txt"]
    assert [f.filename for f in tnef_files(stream[:30])] == []
    assert tnef_files(b"not tnef at all") == []


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400), st.integers(min_value=0, max_value=400))
def test_never_raises(noise: bytes, cut: int) -> None:
    stream = tnef(*one_file(b"a.txt", b"data", mapi_string(0x3707, "long name.txt")))
    tnef_files(stream[:cut] + noise)
    tnef_files(struct.pack("<IH", 0x223E9F78, 1) + noise)


def test_winmail_dat_lists_the_files_inside() -> None:
    stream = tnef(*one_file(b"PHOTO~1.JPG", b"\xff\xd8\xff", mapi_string(0x3707, "photo.jpg")))
    raw = (
        b"From: a@example.com\nContent-Type: multipart/mixed; boundary=b\n\n"
        b"--b\nContent-Type: text/plain\n\nSee attached\n"
        b"--b\nContent-Type: application/ms-tnef; name=winmail.dat\n"
        b"Content-Transfer-Encoding: base64\n\n" + base64.encodebytes(stream) + b"--b--\n"
    )
    result = parse_message(raw, 1)
    assert result["attachments"] == [
        {"filename": "winmail.dat", "contentType": "application/ms-tnef", "size": len(stream)},
        {"filename": "photo.jpg", "contentType": "image/jpeg", "size": 3},
    ]
