"""Attachments: :class:`Attachment` and :func:`decode_attachments`, which checks and decodes
the attachment dicts a caller passes (names, content types, Content-IDs, base64 data, sizes).
"""

from __future__ import annotations

import base64
import binascii
import mimetypes
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .._net.control_chars import find_control_character
from ..errors import MailValidationError

MAX_ATTACHMENT_BYTES = 25 * 1024 * 1024
MAX_TOTAL_ATTACHMENT_BYTES = 100 * 1024 * 1024
MAX_FILENAME_LENGTH = 255
# RFC 6838 caps a media type's type and subtype names at 127 characters each.
MAX_MEDIA_TYPE_NAME_LENGTH = 127
# "Content-ID: <" id ">" must fit one header line of 998 octets.
MAX_CONTENT_ID_LENGTH = 998 - len("Content-ID: <>")

_MIME_TYPE = re.compile(r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+\-]*/[A-Za-z0-9][A-Za-z0-9!#$&^_.+\-]*")
_CONTENT_ID = re.compile(r"[\x21-\x3b\x3d\x3f-\x7e]+")  # printable ASCII except '<' and '>'
_WHITESPACE = re.compile(rb"\s+")


@dataclass(frozen=True, slots=True)
class Attachment:
    """An attachment after validation: decoded content and safe metadata."""

    filename: str
    content_type: str
    content: bytes
    content_id: str | None = None

    @property
    def inline(self) -> bool:
        """Inline parts (with a Content-ID) are referenced from the HTML body."""
        return self.content_id is not None


def _decode_base64(data: str) -> bytes:
    raw = _WHITESPACE.sub(b"", data.encode("ascii"))
    return base64.b64decode(raw, validate=True)


def _attachment_content(item: Mapping[str, Any], where: str) -> bytes:
    if "content" in item and item["content"] is not None:
        content = item["content"]
        if not isinstance(content, bytes | bytearray | memoryview):
            raise MailValidationError(f"{where}.content must be bytes", where)
        return bytes(content)
    data = item.get("data")
    if data is None:
        raise MailValidationError(f"{where} needs 'data' (base64 text) or 'content' (bytes)", where)
    # Raw bytes that happen to be valid base64 ("abcd", or a base64 file read in
    # binary) would decode quietly into something else, so bytes are never guessed at.
    if isinstance(data, bytes | bytearray | memoryview):
        raise MailValidationError(
            f"{where}.data must be base64 text (a str); for raw bytes use the 'content' field",
            where,
        )
    if not isinstance(data, str):
        raise MailValidationError(f"{where}.data must be base64 text (a str)", where)
    try:
        return _decode_base64(data)
    except (binascii.Error, ValueError, UnicodeEncodeError):
        raise MailValidationError(f"{where}.data is not valid base64", where) from None


def _attachment_filename(item: Mapping[str, Any], where: str) -> str:
    filename = item.get("filename")
    if not isinstance(filename, str) or not filename.strip():
        raise MailValidationError(f"{where}.filename must be a non-empty string", where)
    control = find_control_character(filename)
    if control is not None:
        raise MailValidationError(f"{where}.filename contains {control}", where)
    if len(filename) > MAX_FILENAME_LENGTH:
        raise MailValidationError(
            f"{where}.filename is longer than {MAX_FILENAME_LENGTH} characters", where
        )
    return filename


def _attachment_content_type(item: Mapping[str, Any], filename: str, where: str) -> str:
    content_type = item.get("contentType") or item.get("content_type")
    if content_type is None:
        return mimetypes.guess_type(filename, strict=False)[0] or "application/octet-stream"
    if not isinstance(content_type, str) or _MIME_TYPE.fullmatch(content_type) is None:
        raise MailValidationError(
            f"{where}.contentType must look like 'type/subtype' with no parameters", where
        )
    if any(len(name) > MAX_MEDIA_TYPE_NAME_LENGTH for name in content_type.split("/")):
        raise MailValidationError(
            f"{where}.contentType has a type or subtype longer than "
            f"{MAX_MEDIA_TYPE_NAME_LENGTH} characters",
            where,
        )
    return content_type.lower()


def _attachment_content_id(item: Mapping[str, Any], where: str) -> str | None:
    content_id = item.get("contentId") or item.get("content_id")
    if content_id is None:
        return None
    if not isinstance(content_id, str):
        raise MailValidationError(f"{where}.contentId must be a string", where)
    bare = content_id.strip().removeprefix("<").removesuffix(">")
    # strip() would quietly drop a CR or LF at either end; refuse them like elsewhere.
    if find_control_character(content_id) is not None or _CONTENT_ID.fullmatch(bare) is None:
        raise MailValidationError(f"{where}.contentId has characters not allowed there", where)
    if len(bare) > MAX_CONTENT_ID_LENGTH:
        raise MailValidationError(
            f"{where}.contentId is longer than {MAX_CONTENT_ID_LENGTH} characters", where
        )
    return bare


def decode_attachments(attachments: Sequence[Mapping[str, Any]] | None) -> list[Attachment]:
    """Validate attachment dicts and return them decoded; raise MailValidationError.

    Each dict has ``filename`` and either ``data`` (base64 text as a ``str``, line
    breaks allowed; ``bytes`` there are refused) or ``content`` (raw bytes);
    ``contentType`` is optional (guessed from the name) and ``contentId`` makes the
    part inline.
    """
    if attachments is None:
        return []
    if isinstance(attachments, Mapping | str | bytes) or not isinstance(attachments, Iterable):
        raise MailValidationError("attachments must be a list of dicts", "attachments")
    decoded: list[Attachment] = []
    total = 0
    for index, item in enumerate(attachments):
        where = f"attachments[{index}]"
        if not isinstance(item, Mapping):
            raise MailValidationError(f"{where} must be a dict", where)
        filename = _attachment_filename(item, where)
        content = _attachment_content(item, where)
        if len(content) > MAX_ATTACHMENT_BYTES:
            raise MailValidationError(
                f"{where} ({filename}) is {len(content)} bytes, over the "
                f"{MAX_ATTACHMENT_BYTES // (1024 * 1024)} MB limit per attachment",
                where,
            )
        total += len(content)
        if total > MAX_TOTAL_ATTACHMENT_BYTES:
            raise MailValidationError(
                f"attachments total more than the {MAX_TOTAL_ATTACHMENT_BYTES // (1024 * 1024)}"
                " MB limit",
                "attachments",
            )
        decoded.append(
            Attachment(
                filename=filename,
                content_type=_attachment_content_type(item, filename, where),
                content=content,
                content_id=_attachment_content_id(item, where),
            )
        )
    return decoded
