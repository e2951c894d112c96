"""SCRAM-SHA-1 and SCRAM-SHA-256 (RFC 5802, RFC 7677), with and without ``-PLUS``.

The client proves it knows the password without sending it, and the server proves the
same in its final message, which this client verifies: a server that cannot is refused
with :class:`SASLServerVerificationError` even if it reports success.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from collections.abc import Callable
from typing import ClassVar, Final

from ..errors import MailValidationError
from .base import Hidden, Mechanism
from .channel_binding import ChannelBinding
from .errors import (
    SASLAuthenticationError,
    SASLFailure,
    SASLPrepError,
    SASLProtocolError,
    SASLSecurityError,
    SASLServerVerificationError,
    safe_field,
)
from .saslprep import saslprep

#: SCRAM mechanism names and their hash functions.
SCRAM_HASHES: Final = {
    "SCRAM-SHA-256-PLUS": "sha256",
    "SCRAM-SHA-1-PLUS": "sha1",
    "SCRAM-SHA-256": "sha256",
    "SCRAM-SHA-1": "sha1",
}
#: RFC 7677 section 4: the iteration count SHOULD be at least 4096.
MIN_ITERATIONS: Final = 4096
#: Above this a server could make every login cost the client seconds of CPU (10
#: million PBKDF2 rounds take several seconds); no deployment needs so many.
MAX_ITERATIONS: Final = 10_000_000


def default_nonce() -> str:
    """A fresh client nonce: 24 random bytes from :mod:`secrets`, base64-encoded."""
    return base64.b64encode(secrets.token_bytes(24)).decode("ascii")


def _saslname(value: str) -> str:
    return value.replace("=", "=3D").replace(",", "=2C")


def _printable_nonce(nonce: str) -> bool:
    # RFC 5802 "printable": %x21-2B / %x2D-7E, i.e. visible ASCII except ",".
    return bool(nonce) and all("!" <= char <= "~" and char != "," for char in nonce)


def _attributes(message: bytes, what: str) -> list[tuple[str, str]]:
    try:
        text = message.decode("utf-8")
    except UnicodeDecodeError:
        raise SASLProtocolError(f"SCRAM: the {what} is not UTF-8") from None
    pairs = []
    for part in text.split(","):
        if len(part) < 2 or part[1] != "=" or not ("a" <= part[0] <= "z" or "A" <= part[0] <= "Z"):
            raise SASLProtocolError(f"SCRAM: the {what} is malformed")
        pairs.append((part[0], part[2:]))
    return pairs


def _b64decode(value: str, what: str) -> bytes:
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise SASLProtocolError(f"SCRAM: the {what} is not valid base64") from None


class Scram(Mechanism):
    """One SCRAM exchange; ``name`` is a key of :data:`SCRAM_HASHES`.

    A ``-PLUS`` name needs ``channel_binding`` and binds the login to that TLS
    connection (gs2 header ``p=<type>``). Without ``-PLUS``, giving ``channel_binding``
    says the client could bind but the server did not offer it (``y``), which lets a
    server that does support it detect the downgrade; otherwise the header is ``n``.

    Username and password go through SASLprep. ``nonce_source`` returns the client
    nonce (visible ASCII without ","), fresh random by default. Iteration counts below
    ``min_iterations`` or above ``max_iterations`` are refused with
    :class:`SASLSecurityError`; lower ``min_iterations`` only for a known legacy server.
    """

    # The server-first message, then the server-final one when the protocol sends it
    # as a challenge (SMTP, POP3) rather than with its success reply.
    max_challenges: ClassVar[int] = 2

    def __init__(
        self,
        name: str,
        username: str,
        password: str,
        *,
        authzid: str | None = None,
        channel_binding: ChannelBinding | None = None,
        nonce_source: Callable[[], str] = default_nonce,
        min_iterations: int = MIN_ITERATIONS,
        max_iterations: int = MAX_ITERATIONS,
    ) -> None:
        if name not in SCRAM_HASHES:
            raise MailValidationError(f"not a SCRAM mechanism: {safe_field(name)}", "mechanism")
        super().__init__(name)
        self._hash = SCRAM_HASHES[name]
        plus = name.endswith("-PLUS")
        if plus and channel_binding is None:
            raise MailValidationError(f"{name} needs channel-binding data", "channel_binding")
        self._binding = channel_binding.data if plus and channel_binding else b""
        if plus and channel_binding:
            flag = f"p={channel_binding.type}"
        else:
            flag = "y" if channel_binding is not None else "n"
        authz = f"a={_saslname(saslprep(authzid, field='authzid'))}" if authzid else ""
        self._gs2_header = f"{flag},{authz},"
        prepared_user = saslprep(username, field="username")
        if not prepared_user:
            raise SASLPrepError("the username must not be empty", "username")
        self._username = _saslname(prepared_user)
        self._raw_password = Hidden(password)
        self._password = Hidden(saslprep(password, field="password"))
        self._nonce_source = nonce_source
        self._min_iterations = min_iterations
        self._max_iterations = max_iterations
        self._client_first_bare = b""
        self._nonce = ""
        self._server_signature = b""
        self._verified = False

    # -- client-first ------------------------------------------------------------------

    def _first(self) -> bytes:
        nonce = self._nonce_source()
        if not _printable_nonce(nonce):
            raise MailValidationError("the SCRAM nonce must be visible ASCII without ','")
        self._nonce = nonce
        self._client_first_bare = f"n={self._username},r={nonce}".encode()
        return self._gs2_header.encode("utf-8") + self._client_first_bare

    def _step(self, challenge: bytes) -> bytes:
        if self._challenges == 1:
            return self._client_final(challenge)
        self._server_final(challenge)
        return b""

    # -- server-first -> client-final --------------------------------------------------

    def _client_final(self, server_first: bytes) -> bytes:
        attributes = _attributes(server_first, "server-first message")
        self._raise_server_error(attributes)
        if [key for key, _ in attributes[:3]] != ["r", "s", "i"]:
            raise SASLProtocolError("SCRAM: the server-first message lacks r, s and i")
        if any(key == "m" for key, _ in attributes):
            raise SASLProtocolError("SCRAM: the server requires an extension this client lacks")
        nonce, salt_text, count_text = (value for _, value in attributes[:3])
        if not (
            _printable_nonce(nonce)
            and nonce.startswith(self._nonce)
            and len(nonce) > len(self._nonce)
        ):
            raise SASLProtocolError("SCRAM: the server's nonce does not extend the client's")
        salt = _b64decode(salt_text, "salt")
        if not salt:
            raise SASLProtocolError("SCRAM: the salt is empty")
        iterations = self._iterations(count_text)

        password = self._password.reveal().encode("utf-8")
        salted = hashlib.pbkdf2_hmac(self._hash, password, salt, iterations)
        client_key = self._hmac(salted, b"Client Key")
        stored_key = hashlib.new(self._hash, client_key).digest()
        server_key = self._hmac(salted, b"Server Key")
        channel = base64.b64encode(self._gs2_header.encode("utf-8") + self._binding).decode()
        without_proof = f"c={channel},r={nonce}".encode("ascii")
        auth_message = b",".join((self._client_first_bare, server_first, without_proof))
        signature = self._hmac(stored_key, auth_message)
        proof = base64.b64encode(bytes(a ^ b for a, b in zip(client_key, signature, strict=True)))
        self._server_signature = self._hmac(server_key, auth_message)
        response = without_proof + b",p=" + proof
        self._remember(
            self._raw_password.reveal(), self._password.reveal(), proof.decode("ascii"), response
        )
        return response

    def _iterations(self, text: str) -> int:
        if not (text.isascii() and text.isdigit()) or text.startswith("0") or len(text) > 10:
            raise SASLProtocolError("SCRAM: the iteration count is not a positive number")
        count = int(text)
        if count < self._min_iterations:
            raise SASLSecurityError(
                f"SCRAM: the server's iteration count {count} is below the minimum of "
                f"{self._min_iterations}"
            )
        if count > self._max_iterations:
            raise SASLSecurityError(
                f"SCRAM: the server's iteration count {count} is above the limit of "
                f"{self._max_iterations}"
            )
        return count

    # -- server-final ------------------------------------------------------------------

    def _server_final(self, server_final: bytes) -> None:
        attributes = _attributes(server_final, "server-final message")
        self._raise_server_error(attributes)
        if attributes[0][0] != "v":
            raise SASLProtocolError("SCRAM: the server-final message has no verifier")
        signature = _b64decode(attributes[0][1], "server signature")
        if not hmac.compare_digest(signature, self._server_signature):
            raise SASLServerVerificationError(
                f"{self.name}: the server's signature is wrong; it does not know the password "
                "and may be an impostor"
            )
        self._verified = True

    def _raise_server_error(self, attributes: list[tuple[str, str]]) -> None:
        if attributes and attributes[0][0] == "e":
            self.failure = SASLFailure(self.name, server_error=safe_field(attributes[0][1]))
            raise SASLAuthenticationError(
                None, f"the server refused the login ({self.failure.describe()})", self.failure
            )

    def _finish(self, data: bytes | None) -> None:
        if data:
            if self._verified or not self._server_signature:
                raise SASLProtocolError(f"{self.name}: unexpected data with the server's success")
            self._server_final(data)
        if not self._verified:
            raise SASLServerVerificationError(
                f"{self.name}: the server reported success without proving that it knows the "
                "password; it may be an impostor"
            )

    def _hmac(self, key: bytes, message: bytes) -> bytes:
        return hmac.new(key, message, self._hash).digest()
