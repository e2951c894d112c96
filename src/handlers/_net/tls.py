"""TLS context creation, shared across every connection.

Building a default ``ssl.SSLContext`` costs tens of milliseconds of CPU and most of a
megabyte, so the library builds one verifying context per process and reuses it.
Certificates and host names are always verified unless the caller passes their own
context.
"""

from __future__ import annotations

import ssl
import threading

from ..errors import MailSecurityError

#: OpenSSL's reasons when the first bytes from the server are not a TLS record, as
#: when implicit TLS ('ssl') meets a server that greets in plain text.
PLAINTEXT_REPLY = frozenset({"WRONG_VERSION_NUMBER", "PACKET_LENGTH_TOO_LONG", "UNKNOWN_PROTOCOL"})

_lock = threading.Lock()
_default_context: ssl.SSLContext | None = None


def default_context() -> ssl.SSLContext:
    """The process-wide verifying client context (TLS 1.2 or newer), built on first use."""
    global _default_context
    context = _default_context
    if context is None:
        with _lock:
            if _default_context is None:
                created = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
                created.minimum_version = ssl.TLSVersion.TLSv1_2
                _default_context = created
            context = _default_context
    return context


def resolve_context(context: ssl.SSLContext | None) -> ssl.SSLContext:
    """Return the caller's context if given, else the shared verifying default."""
    return context if context is not None else default_context()


def describe_tls_failure(error: BaseException, hostname: str) -> str:
    """A one-line explanation of why a TLS handshake with ``hostname`` failed."""
    if isinstance(error, ssl.SSLCertVerificationError):
        reason = (
            getattr(error, "verify_message", None)
            or getattr(error, "reason", None)
            or "verification failed"
        )
        return f"certificate of {hostname} could not be verified: {reason}"
    if isinstance(error, ssl.SSLError):
        reason = getattr(error, "reason", None)
        text = f"TLS handshake with {hostname} failed: {reason or error}"
        if reason in PLAINTEXT_REPLY:
            text += (
                " (the server answered in plain text: for a port that starts without TLS, "
                "such as 587, 25 or 110, use encryption='tls')"
            )
        return text
    return f"TLS with {hostname} failed: {error}"


def tls_error(error: BaseException, hostname: str) -> MailSecurityError:
    """Wrap a handshake failure in the library's security error."""
    return MailSecurityError(describe_tls_failure(error, hostname))
