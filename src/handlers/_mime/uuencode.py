"""uuencoded data: whole parts (``Content-Transfer-Encoding: x-uuencode``) and the
``begin``/``end`` blocks old mailers put inside a plain-text body. Never raises; work is
linear in the input.
"""

from __future__ import annotations

import binascii
import re

__all__ = ["split_blocks", "uudecode"]

_BEGIN = re.compile(rb"^begin[ \t]+[0-7]{3,4}[ \t]+([^\r\n]*?)[ \t]*\r?$", re.M)
_END = re.compile(rb"^end[ \t]*\r?(?:\n|$)", re.M)
# A block inside text is only taken out when it decodes to at least this much.
_MIN_BLOCK = 1


def _decode_lines(lines: list[bytes]) -> bytes:
    out = bytearray()
    for line in lines:
        line = line.rstrip(b"\r\n")
        if not line.strip() or line == b"`":
            continue
        try:
            out += binascii.a2b_uu(line)
        except (binascii.Error, ValueError):
            # Some encoders pad lines or add a checksum character: keep what the
            # length byte announces.
            count = (line[0] - 32) & 0x3F
            try:
                out += binascii.a2b_uu(line[: (count * 4 + 5) // 3])
            except (binascii.Error, ValueError):
                continue
    return bytes(out)


def uudecode(data: bytes) -> tuple[bytes, str]:
    """Decode a uuencoded part; also return the file name its ``begin`` line gives.

    Without a ``begin`` line every line is read as encoded data.
    """
    begin = _BEGIN.search(data)
    if begin is None:
        return _decode_lines(data.splitlines()), ""
    end = _END.search(data, begin.end())
    body = data[begin.end() : len(data) if end is None else end.start()]
    name = begin.group(1).decode("utf-8", "replace")
    return _decode_lines(body.splitlines()), name


def split_blocks(text: bytes) -> tuple[bytes, list[tuple[str, bytes]]]:
    """Take complete ``begin``..``end`` blocks out of a plain-text body.

    Returns the text without them and each block's file name and decoded bytes. A
    ``begin`` line without a matching ``end`` line is left in the text.
    """
    if text.find(b"begin") < 0:  # cheaper than ``in``, which first tries an integer
        return text, []
    kept: list[bytes] = []
    blocks: list[tuple[str, bytes]] = []
    pos = 0
    while True:
        begin = _BEGIN.search(text, pos)
        if begin is None:
            break
        end = _END.search(text, begin.end())
        if end is None:
            break
        decoded = _decode_lines(text[begin.end() : end.start()].splitlines())
        if len(decoded) < _MIN_BLOCK:
            kept.append(text[pos : end.end()])
        else:
            kept.append(text[pos : begin.start()])
            blocks.append((begin.group(1).decode("utf-8", "replace"), decoded))
        pos = end.end()
    if not blocks:
        return text, []
    kept.append(text[pos:])
    return b"".join(kept), blocks
