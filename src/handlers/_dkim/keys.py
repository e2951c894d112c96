"""Private keys for DKIM: read from PEM or dkimpy's base64 form into what dkimpy signs with.

dkimpy signs RSA with a PKCS#1 PEM key (``BEGIN RSA PRIVATE KEY``, LF line endings) and
Ed25519 with the base64 of the 32-byte seed. Keys usually come as PKCS#8 PEM
(``BEGIN PRIVATE KEY``, what ``openssl genpkey`` writes), so that wrapping is taken off
here with a small DER reader, at construction and never per message.
"""

from __future__ import annotations

import base64
import binascii
import re

__all__ = ["KeyFormatError", "normalise_key"]

_PEM = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----\s*(.*?)\s*-----END \1-----", re.S)
_RSA_OID = bytes.fromhex("2a864886f70d010101")  # 1.2.840.113549.1.1.1
_ED25519_OID = bytes.fromhex("2b6570")  # 1.3.101.112


class KeyFormatError(ValueError):
    """The key could not be read (the message says why, never showing the key)."""


def _der(data: bytes, offset: int) -> tuple[int, bytes, int]:
    """(tag, contents, offset after) of the DER element at ``offset``."""
    if offset + 2 > len(data):
        raise KeyFormatError("truncated key")
    tag, length = data[offset], data[offset + 1]
    offset += 2
    if length & 0x80:
        count = length & 0x7F
        if not 0 < count <= 4 or offset + count > len(data):
            raise KeyFormatError("bad key encoding")
        length = int.from_bytes(data[offset : offset + count], "big")
        offset += count
    end = offset + length
    if end > len(data):
        raise KeyFormatError("truncated key")
    return tag, data[offset:end], end


def _pkcs8(der: bytes) -> tuple[str, bytes]:
    """("rsa", PKCS#1 DER) or ("ed25519", seed) from a PKCS#8 PrivateKeyInfo."""
    tag, info, _ = _der(der, 0)
    if tag != 0x30:
        raise KeyFormatError("not a PKCS#8 private key")
    tag, _, offset = _der(info, 0)  # version
    tag, algorithm, offset = _der(info, offset)
    _, oid, _ = _der(algorithm, 0)
    tag, private, _ = _der(info, offset)
    if tag != 0x04:
        raise KeyFormatError("not a PKCS#8 private key")
    if oid == _RSA_OID:
        return "rsa", private
    if oid == _ED25519_OID:
        tag, seed, _ = _der(private, 0)
        if tag != 0x04 or len(seed) != 32:
            raise KeyFormatError("bad Ed25519 private key")
        return "ed25519", seed
    raise KeyFormatError("the key is neither RSA nor Ed25519")


def _pkcs1_pem(der: bytes) -> bytes:
    body = base64.encodebytes(der).replace(b"\r", b"")
    return b"-----BEGIN RSA PRIVATE KEY-----\n" + body + b"-----END RSA PRIVATE KEY-----\n"


def normalise_key(key: bytes) -> tuple[str, bytes]:
    """``("rsa", PKCS#1 PEM)`` or ``("ed25519", base64 seed)`` for dkimpy.

    Accepts PKCS#1 and PKCS#8 PEM (RSA or Ed25519) and dkimpy's base64 Ed25519 seed.
    """
    key = key.strip()
    match = _PEM.search(key)
    if match is None:
        try:
            seed = base64.b64decode(key, validate=True)
        except (binascii.Error, ValueError):
            raise KeyFormatError("neither a PEM key nor a base64 Ed25519 key") from None
        if len(seed) != 32:
            raise KeyFormatError("a base64 Ed25519 key is 32 bytes")
        return "ed25519", base64.b64encode(seed)
    label = match.group(1)
    try:
        der = base64.b64decode(re.sub(rb"\s+", b"", match.group(2)), validate=True)
    except (binascii.Error, ValueError):
        raise KeyFormatError("the PEM key is not valid base64") from None
    if label == b"RSA PRIVATE KEY":
        return "rsa", _pkcs1_pem(der)
    if label == b"PRIVATE KEY":
        kind, material = _pkcs8(der)
        if kind == "rsa":
            return "rsa", _pkcs1_pem(material)
        return "ed25519", base64.b64encode(material)
    if label == b"ENCRYPTED PRIVATE KEY":
        raise KeyFormatError("encrypted keys are not supported; decrypt it first")
    raise KeyFormatError(f"unsupported PEM block {label.decode('ascii', 'replace')!r}")
