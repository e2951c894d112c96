"""DKIM signing: a frozen :class:`DKIMSigner` that prepends a DKIM-Signature header.

The signature itself is computed by dkimpy (the ``dkim`` extra: ``pip install
'mailhandlers[dkim]'``, which also brings PyNaCl for Ed25519); dkimpy is imported when a
signer is made, never when this module is imported. What this module adds is the part
around it: a key read once from a file, PEM (PKCS#1 or PKCS#8) or a :class:`Secret`; the
settings checked together when the signer is made; and a header list that signs what the
message has and oversigns From, so no second From can be added without breaking the
signature.

RSA-SHA256 and Ed25519-SHA256 (RFC 8463) are supported; relaxed/relaxed canonicalization
is the default, as it survives the header refolding relays do.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from .._net.control_chars import find_control_character
from .._net.logs import get_logger
from .._net.secret import Secret
from ..errors import ConfigurationError, MailValidationError
from .keys import KeyFormatError, normalise_key

__all__ = ["DEFAULT_SIGNED_HEADERS", "DKIMSigner"]

log = get_logger("dkim")

Algorithm = Literal["rsa-sha256", "ed25519-sha256"]
Canonicalization = Literal["relaxed", "simple"]

DEFAULT_SIGNED_HEADERS: tuple[str, ...] = (
    "from",
    "reply-to",
    "sender",
    "subject",
    "date",
    "message-id",
    "to",
    "cc",
    "mime-version",
    "content-type",
    "content-transfer-encoding",
    "content-disposition",
    "in-reply-to",
    "references",
    "list-id",
    "list-unsubscribe",
    "list-unsubscribe-post",
)
"""Signed when the message has them (RFC 6376 section 5.4.1's list, plus the list headers)."""

_ALGORITHMS = ("rsa-sha256", "ed25519-sha256")
_CANONICALIZATIONS = ("relaxed", "simple")
_NEVER_SIGN = {
    "return-path",
    "received",
    "comments",
    "keywords",
    "bcc",
    "resent-bcc",
    "dkim-signature",
}
_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_FIELD_NAME = re.compile(r"[!-9;-~]+")
_HEADER_NAME = re.compile(rb"^([!-9;-~]+)[ \t]*:", re.M)


def _domain_ok(value: str) -> bool:
    labels = value.split(".")
    return len(value) <= 253 and all(_LABEL.fullmatch(label) for label in labels)


def _read_key(key: bytes | str | Secret | os.PathLike[str]) -> bytes:
    if isinstance(key, Secret):
        return key.reveal().encode("ascii", "replace")
    if isinstance(key, os.PathLike):
        with open(key, "rb") as handle:
            return handle.read()
    if isinstance(key, str):
        return key.encode("ascii", "replace")
    return bytes(key)


@dataclass(frozen=True)
class DKIMSigner:
    """Signs outgoing messages for one domain and selector; share one per process.

    Make it with :meth:`from_key_file` or directly with the key's text (PEM, or dkimpy's
    base64 Ed25519 seed) as bytes, str or :class:`Secret`. The key is read and checked
    once, here; it never shows in ``repr``.

    Args:
        domain: The signing domain (``d=``); normally the From address's domain.
        selector: The selector (``s=``): the public key is the TXT record at
            ``<selector>._domainkey.<domain>``.
        private_key: The private key.
        algorithm: ``"rsa-sha256"`` or ``"ed25519-sha256"``; must match the key.
        header_canonicalization: ``"relaxed"`` (default) or ``"simple"``.
        body_canonicalization: ``"relaxed"`` (default) or ``"simple"``.
        signed_headers: Header names signed when the message has them; From must be one.
        oversigned_headers: Names signed once more than they occur, so that another
            instance cannot be added later (From by default).
        identity: The ``i=`` tag (an address or ``@`` subdomain of ``domain``), if any.
    """

    domain: str
    selector: str
    private_key: Secret = field(repr=False, compare=False)
    algorithm: Algorithm = "rsa-sha256"
    header_canonicalization: Canonicalization = "relaxed"
    body_canonicalization: Canonicalization = "relaxed"
    signed_headers: tuple[str, ...] = DEFAULT_SIGNED_HEADERS
    oversigned_headers: tuple[str, ...] = ("from",)
    identity: str | None = None
    _key: bytes = field(init=False, repr=False)  # equal keys make equal signers
    _canonicalize: tuple[bytes, bytes] = field(init=False, repr=False, compare=False)
    _dkim: Any = field(init=False, repr=False, compare=False)
    _plan: tuple[tuple[bytes, int], ...] = field(init=False, repr=False, compare=False)

    def __init__(
        self,
        domain: str,
        selector: str,
        private_key: bytes | str | Secret | os.PathLike[str],
        *,
        algorithm: Algorithm = "rsa-sha256",
        header_canonicalization: Canonicalization = "relaxed",
        body_canonicalization: Canonicalization = "relaxed",
        signed_headers: Iterable[str] = DEFAULT_SIGNED_HEADERS,
        oversigned_headers: Iterable[str] = ("from",),
        identity: str | None = None,
    ) -> None:
        setattr_ = object.__setattr__
        raw = _read_key(private_key)
        setattr_(self, "domain", domain.lower().rstrip("."))
        setattr_(self, "selector", selector.lower())
        setattr_(self, "private_key", Secret(raw.decode("ascii", "replace")))
        setattr_(self, "algorithm", algorithm)
        setattr_(self, "header_canonicalization", header_canonicalization)
        setattr_(self, "body_canonicalization", body_canonicalization)
        setattr_(self, "signed_headers", tuple(h.lower() for h in signed_headers))
        setattr_(self, "oversigned_headers", tuple(h.lower() for h in oversigned_headers))
        setattr_(self, "identity", identity)
        self._check()
        try:
            kind, key = normalise_key(raw)
        except KeyFormatError as exc:
            raise ConfigurationError(f"DKIM private key: {exc}", "private_key") from None
        expected = "rsa" if algorithm == "rsa-sha256" else "ed25519"
        if kind != expected:
            raise ConfigurationError(
                f"DKIM private key is {kind} but the algorithm is {algorithm}", "algorithm"
            )
        setattr_(self, "_key", key)
        setattr_(
            self,
            "_canonicalize",
            (header_canonicalization.encode(), body_canonicalization.encode()),
        )
        setattr_(self, "_dkim", _load_dkimpy(algorithm))
        # (name, signed how many times more than it occurs), worked out once.
        plan = [(h.encode(), int(h in self.oversigned_headers)) for h in self.signed_headers]
        plan += [(h.encode(), 1) for h in self.oversigned_headers if h not in self.signed_headers]
        setattr_(self, "_plan", tuple(plan))
        # Sign a tiny message now, so a key dkimpy cannot use fails here, not per send.
        try:
            self.signature(b"From: a@" + self.domain.encode() + b"\r\n\r\n")
        except MailValidationError as exc:
            raise ConfigurationError(f"DKIM private key unusable: {exc}", "private_key") from None

    @classmethod
    def from_key_file(
        cls, domain: str, selector: str, path: str | os.PathLike[str], **options: Any
    ) -> DKIMSigner:
        """A signer whose key is read from the PEM (or base64 Ed25519) file at ``path``."""
        return cls(domain, selector, _PathKey(path), **options)

    def _check(self) -> None:
        for name in ("domain", "selector"):
            value = getattr(self, name)
            bad = find_control_character(value)
            if bad is not None:
                raise ConfigurationError(f"DKIM {name} contains {bad}", name)
        if not _domain_ok(self.domain):
            raise ConfigurationError(f"not a domain name: {self.domain!r}", "domain")
        if not all(_LABEL.fullmatch(label) for label in self.selector.split(".")):
            raise ConfigurationError(f"not a DKIM selector: {self.selector!r}", "selector")
        if self.algorithm not in _ALGORITHMS:
            raise ConfigurationError("unknown DKIM algorithm", "algorithm", _ALGORITHMS)
        for name in ("header_canonicalization", "body_canonicalization"):
            if getattr(self, name) not in _CANONICALIZATIONS:
                raise ConfigurationError(f"unknown {name}", name, _CANONICALIZATIONS)
        names = (*self.signed_headers, *self.oversigned_headers)
        for header in names:
            if not _FIELD_NAME.fullmatch(header):
                raise ConfigurationError(f"not a header name: {header!r}", "signed_headers")
            if header in _NEVER_SIGN:
                raise ConfigurationError(f"{header} must not be signed", "signed_headers")
        if "from" not in self.signed_headers:
            raise ConfigurationError("From must be signed (RFC 6376)", "signed_headers")
        if self.identity is not None:
            bad = find_control_character(self.identity)
            at_domain = self.identity.rpartition("@")[2].lower()
            if bad is not None or not (
                at_domain == self.domain or at_domain.endswith("." + self.domain)
            ):
                raise ConfigurationError(
                    "the DKIM identity must be in the signing domain", "identity"
                )

    def headers_to_sign(self, message: bytes) -> list[bytes]:
        """The ``h=`` list for ``message``: the signed headers it has, each as often as
        it occurs, and the oversigned ones once more."""
        return self._include(_header_counts(message))

    def _include(self, counts: dict[bytes, int]) -> list[bytes]:
        names: list[bytes] = []
        for name, extra in self._plan:
            times = counts.get(name, 0) + extra
            if times:
                names.extend([name] * times)
        return names

    def signature(self, message: bytes) -> bytes:
        """The ``DKIM-Signature`` header field for ``message``, ending in a line break.

        The line breaks match the message's (CRLF unless it uses bare LF). Raises
        :class:`MailValidationError` when the message cannot be signed (no From).
        """
        first_break = message.find(b"\n")
        linesep = b"\n" if first_break > 0 and message[first_break - 1] != 13 else b"\r\n"
        dkim = self._dkim
        try:
            signer = dkim.DKIM(
                message, signature_algorithm=self.algorithm.encode(), linesep=linesep
            )
            # dkimpy has split the header block already; count names from its list.
            counts: dict[bytes, int] = {}
            for name, _ in signer.headers:
                key = name.lower()
                counts[key] = counts.get(key, 0) + 1
            if not counts.get(b"from"):
                raise MailValidationError(
                    "the message cannot be DKIM-signed: it has no From", "dkim"
                )
            return bytes(
                signer.sign(
                    self.selector.encode(),
                    self.domain.encode(),
                    self._key,
                    identity=self.identity.encode() if self.identity else None,
                    canonicalize=self._canonicalize,
                    include_headers=self._include(counts),
                )
            )
        except dkim.DKIMException as exc:
            raise MailValidationError(f"the message cannot be DKIM-signed: {exc}", "dkim") from None

    def sign(self, message: bytes) -> bytes:
        """``message`` with its ``DKIM-Signature`` header prepended."""
        return self.signature(message) + message


def _header_counts(message: bytes) -> dict[bytes, int]:
    """How often each header name (lower-cased) occurs in the message's header block."""
    ends = [i for i in (message.find(b"\n\r\n"), message.find(b"\n\n")) if i >= 0]
    head = message[: min(ends) + 1] if ends else message
    counts: dict[bytes, int] = {}
    for name in _HEADER_NAME.findall(head.lower()):
        counts[name] = counts.get(name, 0) + 1
    return counts


class _PathKey(os.PathLike[str]):
    """Marks a key argument as a path to read (a plain ``str`` is the key's text)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._path = os.fspath(path)

    def __fspath__(self) -> str:
        return self._path


def _load_dkimpy(algorithm: str) -> Any:
    try:
        import dkim
    except ImportError:
        raise ConfigurationError(
            "DKIM signing needs dkimpy: pip install 'mailhandlers[dkim]'", "dkim"
        ) from None
    if algorithm == "ed25519-sha256":
        try:
            import nacl.signing  # noqa: F401
        except ImportError:
            raise ConfigurationError(
                "Ed25519 DKIM signing needs PyNaCl: pip install 'mailhandlers[dkim]'", "algorithm"
            ) from None
    return dkim
