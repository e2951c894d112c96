"""Opening the TCP connection to a mail server: Happy Eyeballs, and proxies.

:func:`open_connection` is the one place a connection is opened. Directly, it resolves
the host and races its addresses the way RFC 8305 ("Happy Eyeballs v2") describes:
IPv6 and IPv4 addresses interleaved, IPv6 first; the next attempt starts when the one
before it fails or after the *connection attempt delay* (250 ms), while earlier
attempts carry on; the first connection made wins and the others are closed. A host
whose IPv6 route is broken then costs a quarter of a second, not a whole timeout.

Through a :class:`Proxy` (SOCKS5, SOCKS4 or HTTP ``CONNECT``) the proxy opens the
connection instead; this needs the optional ``python-socks`` package (the ``proxy``
extra), imported only when a proxy is used.

Either way the result is a connected, blocking ``socket.socket`` with ``timeout`` as
its per-operation timeout, like :func:`socket.create_connection` returns.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import ipaddress
import math
import os
import selectors
import socket
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import unquote, urlsplit

from ..errors import (
    ConfigurationError,
    DNSLookupError,
    MailConnectionError,
    MailTimeoutError,
    ProxyAuthenticationError,
    ProxyError,
)
from .config import check_host, check_port, check_seconds
from .logs import get_logger
from .secret import Secret, keyed_digest

__all__ = [
    "CONNECTION_ATTEMPT_DELAY",
    "Address",
    "Proxy",
    "Resolver",
    "interleave",
    "open_connection",
    "system_resolver",
]

log = get_logger("connect")

#: RFC 8305 section 5: how long an attempt has before the next one starts beside it.
CONNECTION_ATTEMPT_DELAY: Final = 0.25

#: One address to try: the family and the ``sockaddr`` tuple for ``socket.connect``.
Address = tuple[socket.AddressFamily, tuple[Any, ...]]

#: Turns ``(host, port)`` into the addresses to try, in the resolver's order.
Resolver = Callable[[str, int], Iterable[Address]]

#: Starts a non-blocking connect to one address and returns its socket (test hook).
AttemptStarter = Callable[[Address, "tuple[str, int] | None"], socket.socket]

_IN_PROGRESS = frozenset({errno.EINPROGRESS, errno.EWOULDBLOCK, errno.EAGAIN, errno.EALREADY})


def system_resolver(host: str, port: int) -> list[Address]:
    """The operating system's answer (``getaddrinfo``) for both families, TCP only."""
    infos = socket.getaddrinfo(host, port, socket.AF_UNSPEC, socket.SOCK_STREAM)
    found: list[Address] = []
    for family, _type, _proto, _name, sockaddr in infos:
        if family in (socket.AF_INET, socket.AF_INET6):
            address: Address = (socket.AddressFamily(family), tuple(sockaddr))
            if address not in found:
                found.append(address)
    return found


def interleave(addresses: Iterable[Address]) -> list[Address]:
    """The order RFC 8305 section 4 tries addresses in: IPv6 first, then alternate
    families, each family keeping the resolver's order."""
    v6 = [a for a in addresses if a[0] == socket.AF_INET6]
    v4 = [a for a in addresses if a[0] != socket.AF_INET6]
    ordered: list[Address] = []
    for index in range(max(len(v6), len(v4))):
        ordered.extend(family[index] for family in (v6, v4) if index < len(family))
    return ordered


# -- proxies -----------------------------------------------------------------------

_SCHEMES: Final = {
    "socks5": ("socks5", True),
    "socks5h": ("socks5", True),
    "socks4": ("socks4", False),
    "socks4a": ("socks4", True),
    "http": ("http", True),
}


@dataclass(frozen=True, slots=True)
class Proxy:
    """A SOCKS or HTTP ``CONNECT`` proxy to reach mail servers through.

    ``kind`` is ``"socks5"``, ``"socks4"`` or ``"http"``. ``remote_dns`` means the
    proxy resolves the server's name (the client sends the name, not an address):
    always so for HTTP, the default for SOCKS5, and SOCKS4a's difference from SOCKS4.
    The password is a :class:`Secret`: no ``repr``, ``str`` or error message shows it.
    """

    kind: str
    host: str
    port: int
    username: str | None = None
    password: Secret | None = field(default=None, repr=False, compare=False)
    remote_dns: bool = True
    _password_key: bytes = field(init=False, repr=False, default=b"")

    def __post_init__(self) -> None:
        if self.kind not in ("socks5", "socks4", "http"):
            raise ConfigurationError(
                f"unknown proxy kind {self.kind!r}", "proxy", ("socks5", "socks4", "http")
            )
        object.__setattr__(self, "host", check_host(self.host))
        check_port(self.port)
        if isinstance(self.password, str):
            object.__setattr__(self, "password", Secret(self.password))
        if self.kind == "http" and not self.remote_dns:
            raise ConfigurationError("an HTTP proxy always resolves names itself", "proxy")
        if self.password is not None and self.username is None:
            raise ConfigurationError("a proxy password needs a user name", "proxy")
        # Equal proxies with different passwords must not compare equal (pools key on
        # them), and the password itself is not a field anything may show.
        if self.password is not None:
            object.__setattr__(
                self, "_password_key", keyed_digest("proxy-password", self.password.reveal())
            )

    @classmethod
    def from_url(cls, url: str) -> Proxy:
        """Parse ``socks5://user:pass@host:port`` and friends.

        Schemes: ``socks5`` and ``socks5h`` (SOCKS5; both let the proxy resolve names),
        ``socks4`` (the client resolves), ``socks4a`` (the proxy resolves) and
        ``http`` (``CONNECT``). The port is required. User name and password may be
        percent-encoded. Raises :class:`ConfigurationError`, never showing the password.
        """
        if not isinstance(url, str):
            raise ConfigurationError("a proxy URL must be a string", "proxy")
        parts = urlsplit(url.strip())
        scheme = parts.scheme.lower()
        if scheme not in _SCHEMES:
            raise ConfigurationError(
                f"unsupported proxy scheme {scheme!r}", "proxy", tuple(_SCHEMES)
            )
        kind, remote_dns = _SCHEMES[scheme]
        try:
            port = parts.port
        except ValueError:
            port = None
        if not parts.hostname or port is None:
            raise ConfigurationError(
                f"a proxy URL needs a host and a port, like {scheme}://proxy.example:1080",
                "proxy",
            )
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise ConfigurationError("a proxy URL has no path, query or fragment", "proxy")
        username = unquote(parts.username) if parts.username is not None else None
        password = unquote(parts.password) if parts.password is not None else None
        return cls(
            kind,
            parts.hostname,
            port,
            username or None,
            Secret(password) if password else None,
            remote_dns,
        )

    @property
    def address(self) -> str:
        """``kind://host:port``, safe to show: no credentials."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.kind}://{host}:{self.port}"

    def __str__(self) -> str:
        return self.address

    def __reduce__(self) -> str:
        raise TypeError("a Proxy holds a password and cannot be pickled")


def _connect_through(
    proxy: Proxy,
    host: str,
    port: int,
    timeout: float,
    source_address: tuple[str, int] | None,
) -> socket.socket:
    if proxy.kind == "http":
        return _http_tunnel(proxy, host, port, timeout, source_address)
    try:
        from python_socks import ProxyConnectionError as SocksConnectionError
        from python_socks import ProxyError as SocksError
        from python_socks import ProxyTimeoutError as SocksTimeoutError
        from python_socks import ProxyType
        from python_socks.sync import Proxy as SyncProxy
    except ImportError as error:
        raise ConfigurationError(
            "connecting through a proxy needs the python-socks package "
            "(install mailhandlers[proxy])",
            "proxy",
        ) from error

    kinds = {"socks5": ProxyType.SOCKS5, "socks4": ProxyType.SOCKS4, "http": ProxyType.HTTP}
    client = SyncProxy(
        kinds[proxy.kind],
        proxy.host,
        proxy.port,
        username=proxy.username,
        password=proxy.password.reveal() if proxy.password is not None else None,
        rdns=proxy.remote_dns,
    )
    target = f"{host}:{port}" if ":" not in host else f"[{host}]:{port}"
    log.debug("connecting to %s through proxy %s", target, proxy.address)
    extra: dict[str, Any] = {"local_addr": source_address} if source_address else {}
    try:
        sock = client.connect(host, port, timeout=timeout, **extra)
    except SocksTimeoutError:
        raise MailTimeoutError(
            f"proxy {proxy.address} did not connect to {target} within {timeout:g}s"
        ) from None
    except SocksConnectionError as error:
        reason = _reason(error.__cause__) or "unreachable"
        raise ProxyError(
            f"could not reach proxy {proxy.address}: {reason}", proxy.address
        ) from None
    except SocksError as error:
        code = error.error_code
        text = _safe_text(str(error), proxy)
        if code == 407 or "authentication" in text.lower():
            raise ProxyAuthenticationError(proxy.address, text, code) from None
        raise ProxyError(
            f"proxy {proxy.address} did not open a tunnel to {target}: {text}",
            proxy.address,
            code,
        ) from None
    except OSError as error:
        raise ProxyError(
            f"connection to proxy {proxy.address} failed: {_reason(error)}", proxy.address
        ) from None
    sock.settimeout(timeout)
    return sock


#: Longest CONNECT reply header read from an HTTP proxy.
_MAX_CONNECT_REPLY = 16 * 1024


def _http_tunnel(
    proxy: Proxy,
    host: str,
    port: int,
    timeout: float,
    source_address: tuple[str, int] | None,
) -> socket.socket:
    """An HTTP ``CONNECT`` tunnel to ``host:port``.

    Written here rather than taken from python-socks because the reply must be read
    exactly up to its blank line: SMTP and POP3 servers speak first, and their greeting
    may arrive in the same read as the proxy's ``200``. A reader that takes a whole
    buffer and keeps only the reply loses the greeting (python-socks reads 64 KiB).
    """
    target = f"{host}:{port}" if ":" not in host else f"[{host}]:{port}"
    log.debug("connecting to %s through proxy %s", target, proxy.address)
    try:
        sock = socket.create_connection((proxy.host, proxy.port), timeout, source_address)
    except TimeoutError:
        raise MailTimeoutError(
            f"proxy {proxy.address} did not connect to {target} within {timeout:g}s"
        ) from None
    except OSError as error:
        raise ProxyError(
            f"could not reach proxy {proxy.address}: {_reason(error) or 'unreachable'}",
            proxy.address,
        ) from None
    try:
        request = f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n"
        if proxy.username is not None:
            secret = proxy.password.reveal() if proxy.password is not None else ""
            login = base64.b64encode(f"{proxy.username}:{secret}".encode()).decode("ascii")
            request += f"Proxy-Authorization: Basic {login}\r\n"
        sock.sendall((request + "\r\n").encode("utf-8"))
        status = _read_connect_reply(sock, proxy)
    except TimeoutError:
        sock.close()
        raise MailTimeoutError(
            f"proxy {proxy.address} did not connect to {target} within {timeout:g}s"
        ) from None
    except OSError as error:
        sock.close()
        raise ProxyError(
            f"connection to proxy {proxy.address} failed: {_reason(error)}", proxy.address
        ) from None
    except BaseException:
        sock.close()
        raise
    parts = status.split(" ", 2)
    code = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else None
    if code is not None and 200 <= code < 300:
        sock.settimeout(timeout)
        return sock
    sock.close()
    text = _safe_text(status, proxy)
    if code == 407:
        raise ProxyAuthenticationError(proxy.address, text, code)
    raise ProxyError(
        f"proxy {proxy.address} did not open a tunnel to {target}: {text}", proxy.address, code
    )


def _read_connect_reply(sock: socket.socket, proxy: Proxy) -> str:
    """Consume the proxy's reply header, and nothing after it; return its status line."""
    header = b""
    while True:
        ahead = sock.recv(4096, socket.MSG_PEEK)
        if not ahead:
            raise ProxyError(f"proxy {proxy.address} closed the connection", proxy.address)
        seen = header + ahead
        end = seen.find(b"\r\n\r\n")
        take = len(ahead) if end < 0 else end + 4 - len(header)
        _recv_exactly(sock, take)
        header = seen[: len(header) + take]
        if end >= 0:
            return header.split(b"\r\n", 1)[0].decode("latin-1").strip()
        if len(header) > _MAX_CONNECT_REPLY:
            raise ProxyError(f"proxy {proxy.address} sent an endless reply", proxy.address)


def _recv_exactly(sock: socket.socket, count: int) -> None:
    while count > 0:
        got = sock.recv(count)
        if not got:
            raise ProxyError("the proxy closed the connection", "")
        count -= len(got)


def _safe_text(text: str, proxy: Proxy) -> str:
    if proxy.password is not None and proxy.password.reveal():
        text = text.replace(proxy.password.reveal(), "***")
    return text[:300]


def _reason(error: BaseException | None) -> str:
    if error is None:
        return ""
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return str(error) or type(error).__name__


# -- direct connections --------------------------------------------------------------


def _start_attempt(address: Address, source_address: tuple[str, int] | None) -> socket.socket:
    family, sockaddr = address
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        if source_address is not None:
            sock.bind(source_address)
        code = sock.connect_ex(sockaddr)
        if code and code not in _IN_PROGRESS:
            raise OSError(code, os.strerror(code))
    except BaseException:
        sock.close()
        raise
    return sock


def _show(address: Address) -> str:
    host, port = address[1][0], address[1][1]
    return f"[{host}]:{port}" if address[0] == socket.AF_INET6 else f"{host}:{port}"


def _error_text(error: OSError) -> str:
    if error.errno is not None:
        with contextlib.suppress(ValueError):
            return error.strerror or errno.errorcode[error.errno]
    return str(error) or type(error).__name__


def _race(
    addresses: Sequence[Address],
    *,
    timeout: float,
    delay: float,
    source_address: tuple[str, int] | None,
    start: AttemptStarter,
    clock: Callable[[], float],
) -> tuple[socket.socket | None, list[str]]:
    """Race the addresses; return the winning socket (or None) and what failed."""
    failures: list[str] = []
    waiting = list(addresses)
    pending: dict[socket.socket, Address] = {}
    deadline = clock() + timeout
    next_start = clock()
    winner: socket.socket | None = None
    with selectors.DefaultSelector() as selector:
        try:
            # Every pass starts an attempt or waits at most until the next start or
            # the deadline, and each address starts once, so the loop ends in time.
            while winner is None and (waiting or pending):
                now = clock()
                if now >= deadline:
                    break
                if waiting and (now >= next_start or not pending):
                    address = waiting.pop(0)
                    try:
                        sock = start(address, source_address)
                    except OSError as error:
                        failures.append(f"{_show(address)} {_error_text(error)}")
                        next_start = now
                        continue
                    log.debug("connection attempt to %s started", _show(address))
                    pending[sock] = address
                    selector.register(sock, selectors.EVENT_WRITE)
                    next_start = now + delay
                    continue
                wait_until = min(deadline, next_start) if waiting else deadline
                for key, _ in selector.select(max(0.0, wait_until - now)):
                    sock = key.fileobj  # type: ignore[assignment]
                    address = pending.pop(sock)
                    selector.unregister(sock)
                    code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    if code == 0 and winner is None:
                        winner = sock
                        log.debug("connected to %s", _show(address))
                        continue
                    if code:
                        failures.append(f"{_show(address)} {os.strerror(code)}")
                    sock.close()
                    # RFC 8305 section 5: a failure starts the next attempt at once.
                    next_start = clock()
        finally:
            for sock, address in pending.items():
                failures.append(f"{_show(address)} no answer")
                sock.close()
    return winner, failures


def open_connection(
    host: str,
    port: int,
    *,
    timeout: float,
    source_address: tuple[str, int] | None = None,
    proxy: Proxy | str | None = None,
    happy_eyeballs: bool = True,
    resolver: Resolver = system_resolver,
    attempt_delay: float = CONNECTION_ATTEMPT_DELAY,
    clock: Callable[[], float] = time.monotonic,
    _start: AttemptStarter = _start_attempt,
) -> socket.socket:
    """Open a TCP connection to ``host:port`` and return the connected socket.

    Directly, ``timeout`` bounds the whole connect (name resolution aside), every
    attempt included; through a proxy it bounds connecting to the proxy and each read
    and write of its handshake. It becomes the returned socket's timeout.
    ``source_address`` is bound before connecting, as in
    :func:`socket.create_connection`. ``proxy`` is a :class:`Proxy` or a proxy URL;
    a proxy that does not resolve names itself (SOCKS4, or ``remote_dns=False``) is
    given the first address ``resolver`` returns.

    Directly, every address of ``host`` is tried as RFC 8305 describes (see the
    module); with ``happy_eyeballs=False`` the addresses are tried one after another,
    each starting only when the one before has failed. ``resolver`` and
    ``attempt_delay`` can be replaced, chiefly by tests.

    Raises :class:`DNSLookupError` when the name does not resolve,
    :class:`MailTimeoutError` when no attempt succeeded in time,
    :class:`MailConnectionError` listing each address and why it failed,
    :class:`ProxyError` or :class:`ProxyAuthenticationError` for a proxy's failures,
    and :class:`ConfigurationError` for bad arguments (before any I/O).
    """
    host = check_host(host)
    port = check_port(port)
    seconds = check_seconds(timeout, "timeout")
    assert seconds is not None
    if isinstance(proxy, str):
        proxy = Proxy.from_url(proxy)
    if not (math.isfinite(attempt_delay) and attempt_delay >= 0):
        raise ConfigurationError("attempt_delay must be a number of seconds >= 0", "attempt_delay")
    if proxy is not None:
        if not proxy.remote_dns and not _is_ip(host):
            host = _resolve_for_proxy(proxy, host, port, resolver)
        return _connect_through(proxy, host, port, seconds, source_address)

    addresses = _resolve(host, port, resolver)
    ordered = interleave(addresses) if happy_eyeballs else list(addresses)
    sock, failures = _race(
        ordered,
        timeout=seconds,
        delay=attempt_delay if happy_eyeballs else math.inf,
        source_address=source_address,
        start=_start,
        clock=clock,
    )
    if sock is not None:
        sock.setblocking(True)
        sock.settimeout(seconds)
        return sock
    target = f"[{host}]:{port}" if _is_ipv6(host) else f"{host}:{port}"
    tried = "; ".join(failures)
    untried = len(ordered) - len(failures)
    if untried:
        tried += f"; {untried} more address{'es' if untried > 1 else ''} not tried"
    if untried or any(failure.endswith(" no answer") for failure in failures):
        raise MailTimeoutError(f"could not connect to {target} within {seconds:g}s ({tried})")
    raise MailConnectionError(f"could not connect to {target}: {tried}")


def _resolve(host: str, port: int, resolver: Resolver) -> list[Address]:
    try:
        addresses = list(resolver(host, port))
    except OSError as error:  # socket.gaierror included
        raise DNSLookupError(f"could not resolve {host}: {_error_text(error)}") from None
    if not addresses:
        raise DNSLookupError(f"{host} has no IPv4 or IPv6 address")
    return addresses


def _resolve_for_proxy(proxy: Proxy, host: str, port: int, resolver: Resolver) -> str:
    """The address to hand a proxy that does not resolve names (SOCKS4, or SOCKS5 with
    ``remote_dns=False``): the first the resolver gives, IPv4 only for SOCKS4."""
    addresses = _resolve(host, port, resolver)
    if proxy.kind == "socks4":
        addresses = [a for a in addresses if a[0] == socket.AF_INET]
        if not addresses:
            raise DNSLookupError(f"{host} has no IPv4 address, which SOCKS4 needs")
    return str(addresses[0][1][0])


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _is_ipv6(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).version == 6
    except ValueError:
        return False
