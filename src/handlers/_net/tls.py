"""TLS context creation, shared across every connection.

Building a default ``ssl.SSLContext`` costs tens of milliseconds of CPU and most of a
megabyte, so the library builds one verifying context per process and reuses it.
Certificates and host names are always verified unless the caller passes their own
context.

A server that wants to know who the client is (mutual TLS) asks for a client
certificate; :func:`client_certificate_context` builds a verifying context that
presents one.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import ssl
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

from ..errors import ConfigurationError, MailSecurityError
from .secret import Secret

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


#: A PEM file's path, or the PEM text itself as bytes.
PEMSource = str | os.PathLike[str] | bytes


def client_certificate_context(
    cert: PEMSource,
    key: PEMSource | None = None,
    *,
    password: Secret | str | None = None,
    context: ssl.SSLContext | None = None,
) -> ssl.SSLContext:
    """A verifying client context that presents a client certificate.

    ``cert`` is the certificate (followed by any intermediate certificates) and
    ``key`` its private key, each as a file path or as PEM bytes; without ``key`` the
    key is read from ``cert``. ``password`` decrypts an encrypted key; give it as a
    :class:`Secret` to keep it out of reprs.

    Without ``context`` a new context is built like the shared default (system CAs,
    TLS 1.2 or newer, certificates and host names verified). A ``context`` of your
    own (trusting a private CA, say) gets the certificate loaded into it and is
    returned; it must verify the server, and it cannot be the process-wide default
    context, which every other connection uses too.

    Raises :class:`ConfigurationError` when a file is missing, the key does not match
    the certificate or cannot be decrypted; the message never holds the password.
    """
    if context is None:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
    elif context is _default_context:
        raise ConfigurationError(
            "the shared default context cannot carry a client certificate: pass "
            "context=None for a new one",
            "ssl_context",
        )
    elif context.verify_mode != ssl.CERT_REQUIRED or not context.check_hostname:
        raise ConfigurationError(
            "a client certificate is only loaded into a context that verifies the server "
            "(verify_mode CERT_REQUIRED and check_hostname on)",
            "ssl_context",
        )
    secret = Secret(password) if isinstance(password, str) else password
    with _pem_paths(cert, key) as (cert_path, key_path):
        try:
            context.load_cert_chain(
                cert_path,
                key_path,
                password=(lambda: secret.reveal()) if secret is not None else None,
            )
        except FileNotFoundError as error:
            raise ConfigurationError(
                f"client certificate file not found: {error.filename}", "client_cert"
            ) from None
        except ssl.SSLError as error:
            reason = getattr(error, "reason", None) or "not a usable certificate and key"
            raise ConfigurationError(
                f"the client certificate and key could not be loaded: {reason}", "client_cert"
            ) from None
        except (OSError, ValueError, TypeError) as error:
            raise ConfigurationError(
                f"the client certificate and key could not be loaded: {type(error).__name__}",
                "client_cert",
            ) from None
    return context


@contextlib.contextmanager
def _pem_paths(cert: PEMSource, key: PEMSource | None) -> Iterator[tuple[str, str | None]]:
    """File paths for ``load_cert_chain``; PEM bytes go to private temporary files,
    removed as soon as they are loaded (OpenSSL reads only from files)."""
    directory: str | None = None
    try:

        def path_of(source: PEMSource, name: str) -> str:
            nonlocal directory
            if not isinstance(source, bytes):
                return os.fspath(source)
            if directory is None:
                directory = tempfile.mkdtemp(prefix="mailhandlers-")
            target = Path(directory, name)
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as out:
                out.write(source)
            return str(target)

        yield path_of(cert, "cert.pem"), (path_of(key, "key.pem") if key is not None else None)
    finally:
        if directory is not None:
            shutil.rmtree(directory, ignore_errors=True)


#: TLS record types a server may open its answer to a ClientHello with: handshake
#: (ServerHello) or alert.
_TLS_RECORD_TYPES = frozenset({0x15, 0x16})


def answers_tls(sock: socket.socket, hostname: str, wait: float) -> bool:
    """Whether the server on ``sock``, which sent nothing yet, answers a TLS ClientHello.

    Used when a server that should greet in plain text stays silent: a port that
    expects TLS from the first byte waits for the client's handshake. The hello is
    built by an in-memory TLS object and written to the socket; the first byte of the
    answer (a handshake or alert record) tells. No answer within ``wait`` seconds, or
    any socket error, means no.
    """
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    try:
        probe = default_context().wrap_bio(incoming, outgoing, server_hostname=hostname)
        probe.do_handshake()
    except ssl.SSLWantReadError:
        pass  # the hello is written; the answer is read from the socket below
    except (ssl.SSLError, ValueError):
        return False
    try:
        sock.settimeout(wait)
        sock.sendall(outgoing.read())
        first = sock.recv(1)
    except OSError:
        return False
    return bool(first) and first[0] in _TLS_RECORD_TYPES
