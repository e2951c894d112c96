"""Encrypted stored credentials: passwords and refresh tokens at rest, with key rotation.

Needs the ``crypto`` extra (``cryptography``), imported only when a cipher is made.

:class:`CredentialCipher` encrypts with Fernet (AES-128-CBC with HMAC-SHA256, so a
changed or truncated ciphertext is detected) and accepts several keys: the first
encrypts, all of them decrypt, so a new key is put first and :meth:`rotate` moves
stored values onto it before the old key is dropped. Each ciphertext is bound to its
account: the account id is sealed inside with the secret, and a value copied onto
another account's row does not decrypt there.

Every failure raises :class:`CredentialError`, which names the account and says what
went wrong, never the secret or the key.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from ..handlers.errors import MailHandlerError

__all__ = ["CredentialCipher", "CredentialError", "generate_key"]

_SEPARATOR = b"\x00"


class CredentialError(MailHandlerError):
    """A stored credential could not be decrypted (or encrypted) for ``account``.

    ``reason`` is ``"wrong-key"`` (no configured key opens it, or it was changed),
    ``"corrupt"`` (not a ciphertext at all), ``"other-account"`` (it belongs to another
    account) or ``"bad-key"`` (a configured key is not a valid key).
    """

    def __init__(self, message: str, account: str, reason: str) -> None:
        super().__init__(message)
        self.account = account
        self.reason = reason


def generate_key() -> str:
    """A new random key, as text to keep in the application's secret settings."""
    from cryptography.fernet import Fernet

    return Fernet.generate_key().decode("ascii")


class CredentialCipher:
    """Encrypts and decrypts stored credentials with one or more keys (newest first).

    ``keys`` are Fernet keys (32 bytes, URL-safe base64, as :func:`generate_key`
    makes). The cipher holds no secret of its own beyond them and never logs.
    """

    def __init__(self, keys: Sequence[str | bytes]) -> None:
        from cryptography.fernet import Fernet, MultiFernet

        if isinstance(keys, str | bytes) or not keys:
            raise CredentialError("give a non-empty list of keys", "-", "bad-key")
        fernets = []
        for index, key in enumerate(keys):
            try:
                fernets.append(Fernet(key))
            except (ValueError, TypeError):
                raise CredentialError(
                    f"key number {index + 1} is not a valid key", "-", "bad-key"
                ) from None
        self._primary = fernets[0]
        self._all = MultiFernet(fernets)
        self.key_count = len(fernets)

    def __repr__(self) -> str:
        return f"<CredentialCipher [{self.key_count} keys]>"

    def encrypt(self, secret: str, *, account: Any) -> str:
        """Encrypt ``secret`` for ``account`` with the newest key; return text to store."""
        name = str(account)
        plain = name.encode("utf-8") + _SEPARATOR + secret.encode("utf-8", "surrogatepass")
        return self._primary.encrypt(plain).decode("ascii")

    def decrypt(self, token: str | bytes, *, account: Any) -> str:
        """The secret stored for ``account``; :class:`CredentialError` if it cannot be had."""
        name = str(account)
        plain = self._open(token, name)
        owner, _, secret = plain.partition(_SEPARATOR)
        if owner != name.encode("utf-8"):
            raise CredentialError(
                f"the stored credential of account {name!r} belongs to another account",
                name,
                "other-account",
            )
        return secret.decode("utf-8", "surrogatepass")

    def rotate(self, token: str | bytes, *, account: Any) -> str:
        """``token`` re-encrypted with the newest key (checked to belong to ``account``)."""
        name = str(account)
        self.decrypt(token, account=name)
        data = token.encode("ascii") if isinstance(token, str) else token
        return self._all.rotate(data).decode("ascii")

    def rotate_all(self, rows: Iterable[tuple[Any, str]]) -> Iterator[tuple[Any, str]]:
        """``(account, token)`` pairs with every token re-encrypted with the newest key."""
        for account, token in rows:
            yield account, self.rotate(token, account=account)

    def _open(self, token: str | bytes, name: str) -> bytes:
        from cryptography.fernet import InvalidToken

        try:
            data = token.encode("ascii") if isinstance(token, str) else bytes(token)
            base64.urlsafe_b64decode(data)
        except (UnicodeEncodeError, ValueError, TypeError):
            raise CredentialError(
                f"the stored credential of account {name!r} is corrupt (not a ciphertext)",
                name,
                "corrupt",
            ) from None
        try:
            return self._all.decrypt(data)
        except InvalidToken:
            raise CredentialError(
                f"the stored credential of account {name!r} does not decrypt with any "
                "configured key (wrong key, or the value was changed)",
                name,
                "wrong-key",
            ) from None
