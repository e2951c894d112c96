"""Channel-binding data for the SCRAM ``-PLUS`` mechanisms.

Python 3.11's :mod:`ssl` offers only ``tls-unique``, which TLS 1.3 does not define.
``tls-server-end-point`` (RFC 5929 section 4) works on every TLS version and needs only
the server's certificate: :func:`tls_server_end_point` computes it from
``ssl_socket.getpeercert(binary_form=True)``.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from ..errors import MailValidationError

_TYPE_NAME = re.compile(r"[A-Za-z0-9.-]{1,64}")


@dataclass(frozen=True, repr=False)
class ChannelBinding:
    """A channel-binding type name (``"tls-server-end-point"``, ``"tls-exporter"``, ...)
    and its data for the current connection, supplied by the protocol layer."""

    type: str
    data: bytes

    def __post_init__(self) -> None:
        if not _TYPE_NAME.fullmatch(self.type):
            raise MailValidationError("not a channel-binding type name", "channel_binding")
        if not self.data:
            raise MailValidationError("channel-binding data must not be empty", "channel_binding")

    def __repr__(self) -> str:
        return f"ChannelBinding({self.type!r}, <{len(self.data)} bytes>)"


def _oid(dotted: str) -> bytes:
    """The DER content octets of an object identifier."""
    first, second, *rest = (int(part) for part in dotted.split("."))
    out = bytearray([40 * first + second])
    for number in rest:
        chunk = [number & 0x7F]
        number >>= 7
        while number:
            chunk.append(0x80 | (number & 0x7F))
            number >>= 7
        out.extend(reversed(chunk))
    return bytes(out)


_PKCS1 = "1.2.840.113549.1.1."
_ECDSA = "1.2.840.10045.4."
_NIST_SIG = "2.16.840.1.101.3.4.3."
_NIST_HASH = "2.16.840.1.101.3.4.2."

# RFC 5929 section 4.1: the hash of the certificate's signature algorithm, except that
# MD5 and SHA-1 are replaced by SHA-256.
_SIGNATURE_HASHES = {
    _oid(_PKCS1 + "4"): "sha256",  # md5WithRSAEncryption
    _oid(_PKCS1 + "5"): "sha256",  # sha1WithRSAEncryption
    _oid(_PKCS1 + "14"): "sha224",
    _oid(_PKCS1 + "11"): "sha256",
    _oid(_PKCS1 + "12"): "sha384",
    _oid(_PKCS1 + "13"): "sha512",
    _oid(_ECDSA + "1"): "sha256",  # ecdsa-with-SHA1
    _oid(_ECDSA + "3.1"): "sha224",
    _oid(_ECDSA + "3.2"): "sha256",
    _oid(_ECDSA + "3.3"): "sha384",
    _oid(_ECDSA + "3.4"): "sha512",
    _oid("1.2.840.10040.4.3"): "sha256",  # dsa-with-sha1
    _oid(_NIST_SIG + "1"): "sha224",
    _oid(_NIST_SIG + "2"): "sha256",
}
_RSASSA_PSS = _oid(_PKCS1 + "10")
_HASHES = {
    _oid("1.3.14.3.2.26"): "sha256",  # SHA-1, replaced as above
    _oid(_NIST_HASH + "4"): "sha224",
    _oid(_NIST_HASH + "1"): "sha256",
    _oid(_NIST_HASH + "2"): "sha384",
    _oid(_NIST_HASH + "3"): "sha512",
}

_SEQUENCE = 0x30
_OID = 0x06
_CONTEXT_0 = 0xA0


class _DERError(Exception):
    pass


def _element(der: bytes, pos: int, end: int, tag: int) -> tuple[int, int]:
    """The (start, end) of the content of the element with ``tag`` at ``pos``."""
    if pos + 2 > end or der[pos] != tag:
        raise _DERError
    length = der[pos + 1]
    pos += 2
    if length & 0x80:
        count = length & 0x7F
        if not 1 <= count <= 4 or pos + count > end:
            raise _DERError
        length = int.from_bytes(der[pos : pos + count], "big")
        pos += count
    if pos + length > end:
        raise _DERError
    return pos, pos + length


def _skip(der: bytes, pos: int, end: int) -> int:
    """The position after the element (of any tag) at ``pos``."""
    if pos >= end:
        raise _DERError
    return _element(der, pos, end, der[pos])[1]


def _signature_hash(der: bytes) -> str | None:
    cert_start, cert_end = _element(der, 0, len(der), _SEQUENCE)
    algorithm_at = _skip(der, cert_start, cert_end)  # past tbsCertificate
    alg_start, alg_end = _element(der, algorithm_at, cert_end, _SEQUENCE)
    oid_start, oid_end = _element(der, alg_start, alg_end, _OID)
    oid = der[oid_start:oid_end]
    if oid != _RSASSA_PSS:
        return _SIGNATURE_HASHES.get(oid)
    # RSASSA-PSS names its hash in the parameters: SEQUENCE { [0] AlgorithmIdentifier
    # ... }, SHA-1 when absent (RFC 4055 section 3.1).
    params_start, params_end = _element(der, oid_end, alg_end, _SEQUENCE)
    if params_start == params_end or der[params_start] != _CONTEXT_0:
        return "sha256"
    inner_start, inner_end = _element(der, params_start, params_end, _CONTEXT_0)
    hash_start, hash_end = _element(der, inner_start, inner_end, _SEQUENCE)
    hash_oid_start, hash_oid_end = _element(der, hash_start, hash_end, _OID)
    return _HASHES.get(der[hash_oid_start:hash_oid_end])


def tls_server_end_point(certificate: bytes) -> ChannelBinding | None:
    """The ``tls-server-end-point`` channel binding for a server certificate (DER).

    The hash is the one of the certificate's signature algorithm (RSA, RSASSA-PSS,
    ECDSA, DSA), SHA-256 in place of MD5 or SHA-1. ``None`` when RFC 5929 defines no
    hash for the algorithm (Ed25519, Ed448) or the certificate cannot be read: the
    connection then has no channel binding, and SCRAM runs without ``-PLUS``.
    """
    try:
        algorithm = _signature_hash(certificate)
    except _DERError:
        return None
    if algorithm is None:
        return None
    return ChannelBinding("tls-server-end-point", hashlib.new(algorithm, certificate).digest())
