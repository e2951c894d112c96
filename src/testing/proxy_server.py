"""A small SOCKS5 / SOCKS4(a) / HTTP ``CONNECT`` proxy on loopback, for tests.

It speaks just enough of each protocol for a client to open a tunnel, then relays
bytes both ways. It records what each client asked for, so a test can check that a
name went to the proxy unresolved (remote DNS), and it can misbehave on request::

    with ProxyTestServer(hosts={"mail.example.test": smtp.port}) as proxy:
        sock = open_connection("mail.example.test", 25, timeout=5,
                               proxy=f"socks5://127.0.0.1:{proxy.port}")

Names are never looked up: ``hosts`` maps the names the proxy knows to a port on
127.0.0.1 (``{name: port}``, or ``{name: (address, port)}`` for another loopback
address); an IP literal must be a loopback address. The requested port is ignored
for a mapped name, so a test can use a real-looking port like 25.

Settings a test may change while the server runs: ``users`` (user name to password;
when not empty, SOCKS5 and HTTP require them), ``refuse`` (answer every tunnel
request with a failure) and ``drop_after`` (close the connection right after reading
the client's first message: ``"greeting"`` or ``"request"``).
"""

from __future__ import annotations

import base64
import contextlib
import ipaddress
import select
import socket
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["ProxyRequest", "ProxyTestServer"]

_IO_TIMEOUT = 5.0
_IDLE_LIMIT = 30.0
_JOIN_TIMEOUT = 2.0
_CHUNK = 65536


@dataclass(frozen=True)
class ProxyRequest:
    """One tunnel request as the proxy received it.

    ``protocol`` is ``"socks5"``, ``"socks4"`` or ``"http"``; ``host`` is exactly what
    the client sent (a name when the client left resolving to the proxy, an address
    otherwise); ``address_type`` is SOCKS5's ``"domain"``, ``"ipv4"`` or ``"ipv6"``
    (``"domain"`` or ``"ipv4"`` for SOCKS4a/4, ``"authority"`` for HTTP);
    ``username`` is the user the client logged in as; ``granted`` says whether the
    tunnel was opened.
    """

    protocol: str
    host: str
    port: int
    address_type: str
    username: str | None
    granted: bool


class _Refused(Exception):
    pass


class ProxyTestServer:
    """A threaded loopback proxy; ``start()`` / ``stop()`` or use it as a context manager.

    ``connections`` counts the TCP connections accepted and ``requests`` lists each
    tunnel request (see :class:`ProxyRequest`).
    """

    def __init__(
        self,
        hosts: Mapping[str, int | tuple[str, int]] | None = None,
        *,
        users: Mapping[str, str] | None = None,
        host: str = "127.0.0.1",
    ) -> None:
        self.hosts: dict[str, int | tuple[str, int]] = dict(hosts or {})
        self.users: dict[str, str] = dict(users or {})
        self.refuse = False
        self.drop_after: str | None = None
        self.host = host
        self.port = 0
        self.connections = 0
        self.requests: list[ProxyRequest] = []
        self.errors: list[BaseException] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._listener: socket.socket | None = None
        self._threads: list[threading.Thread] = []

    def __repr__(self) -> str:
        return (
            f"<ProxyTestServer {self.host}:{self.port} connections={self.connections} "
            f"requests={len(self.requests)}>"
        )

    @property
    def url_host(self) -> str:
        """The host as written in a URL (an IPv6 address in brackets)."""
        return f"[{self.host}]" if ":" in self.host else self.host

    def url(
        self, scheme: str = "socks5", user: str | None = None, password: str | None = None
    ) -> str:
        """A proxy URL for this server, e.g. ``socks5://user:pw@127.0.0.1:40123``."""
        login = f"{user}:{password}@" if user is not None and password is not None else ""
        return f"{scheme}://{login}{self.url_host}:{self.port}"

    def start(self) -> ProxyTestServer:
        """Listen on an ephemeral port and serve in background threads."""
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        listener = socket.socket(family, socket.SOCK_STREAM)
        listener.bind((self.host, 0))
        listener.listen(16)
        listener.settimeout(0.05)
        self._listener = listener
        self.port = listener.getsockname()[1]
        thread = threading.Thread(target=self._accept_loop, name="proxy-accept", daemon=True)
        self._threads.append(thread)
        thread.start()
        return self

    def stop(self) -> None:
        """Stop accepting, end every tunnel and wait (bounded) for the threads."""
        self._stopping.set()
        if self._listener is not None:
            self._listener.close()
        for thread in list(self._threads):
            thread.join(_JOIN_TIMEOUT)

    def __enter__(self) -> ProxyTestServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- serving ------------------------------------------------------------------

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stopping.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self.connections += 1
            thread = threading.Thread(target=self._serve, args=(client,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _serve(self, client: socket.socket) -> None:
        client.settimeout(_IO_TIMEOUT)
        upstream: socket.socket | None = None
        try:
            first = _read_exactly(client, 1)
            if first == b"\x05":
                upstream = self._socks5(client)
            elif first == b"\x04":
                upstream = self._socks4(client)
            else:
                upstream = self._http(client, first)
            if upstream is not None:
                self._relay(client, upstream)
        except (_Refused, ConnectionError, TimeoutError, EOFError):
            pass
        except Exception as error:  # a bug in the test server: keep it for the test
            self.errors.append(error)
        finally:
            with contextlib.suppress(OSError):
                client.close()
            if upstream is not None:
                with contextlib.suppress(OSError):
                    upstream.close()

    def _record(self, request: ProxyRequest) -> None:
        with self._lock:
            self.requests.append(request)

    def _drop(self, stage: str) -> None:
        if self.drop_after == stage:
            raise _Refused(stage)

    def _target(self, host: str, port: int) -> tuple[str, int] | None:
        mapped = self.hosts.get(host.lower())
        if mapped is not None:
            return ("127.0.0.1", mapped) if isinstance(mapped, int) else mapped
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return None  # an unknown name: never looked up
        return (str(address), port) if address.is_loopback else None

    def _open(self, target: tuple[str, int] | None) -> socket.socket | None:
        if target is None or self.refuse:
            return None
        try:
            return socket.create_connection(target, timeout=_IO_TIMEOUT)
        except OSError:
            return None

    def _socks5(self, client: socket.socket) -> socket.socket | None:
        count = _read_exactly(client, 1)[0]
        methods = _read_exactly(client, count)
        self._drop("greeting")
        username: str | None = None
        if self.users:
            if 2 not in methods:
                client.sendall(b"\x05\xff")
                raise _Refused("no acceptable method")
            client.sendall(b"\x05\x02")
            _read_exactly(client, 1)
            user = _read_exactly(client, _read_exactly(client, 1)[0]).decode("utf-8", "replace")
            password = _read_exactly(client, _read_exactly(client, 1)[0]).decode("utf-8", "replace")
            if self.users.get(user) != password:
                client.sendall(b"\x01\x01")
                raise _Refused("bad login")
            client.sendall(b"\x01\x00")
            username = user
        else:
            client.sendall(b"\x05\x00")
        _version, command, _reserved, kind = _read_exactly(client, 4)
        if kind == 1:
            host, address_type = socket.inet_ntop(socket.AF_INET, _read_exactly(client, 4)), "ipv4"
        elif kind == 4:
            host = socket.inet_ntop(socket.AF_INET6, _read_exactly(client, 16))
            address_type = "ipv6"
        elif kind == 3:
            host = _read_exactly(client, _read_exactly(client, 1)[0]).decode("idna")
            address_type = "domain"
        else:
            raise _Refused("bad address type")
        port = int.from_bytes(_read_exactly(client, 2), "big")
        self._drop("request")
        upstream = self._open(self._target(host, port)) if command == 1 else None
        self._record(
            ProxyRequest("socks5", host, port, address_type, username, upstream is not None)
        )
        if upstream is None:
            # 0x05 "connection refused" when refusing, 0x04 "host unreachable" otherwise.
            code = 5 if self.refuse else 4
            client.sendall(bytes([5, code, 0, 1, 0, 0, 0, 0, 0, 0]))
            return None
        bound_host, bound_port = upstream.getsockname()[:2]
        packed = socket.inet_pton(socket.AF_INET, bound_host) if "." in bound_host else None
        if packed is None:
            reply = bytes([5, 0, 0, 4]) + socket.inet_pton(socket.AF_INET6, bound_host)
        else:
            reply = bytes([5, 0, 0, 1]) + packed
        client.sendall(reply + bound_port.to_bytes(2, "big"))
        return upstream

    def _socks4(self, client: socket.socket) -> socket.socket | None:
        command = _read_exactly(client, 1)[0]
        port = int.from_bytes(_read_exactly(client, 2), "big")
        raw_ip = _read_exactly(client, 4)
        user = _read_until_nul(client).decode("utf-8", "replace")
        if raw_ip[:3] == b"\x00\x00\x00" and raw_ip[3] != 0:  # SOCKS4a: a name follows
            host, address_type = _read_until_nul(client).decode("idna"), "domain"
        else:
            host, address_type = socket.inet_ntop(socket.AF_INET, raw_ip), "ipv4"
        self._drop("greeting")
        self._drop("request")
        upstream = self._open(self._target(host, port)) if command == 1 else None
        self._record(
            ProxyRequest("socks4", host, port, address_type, user or None, upstream is not None)
        )
        status = 0x5A if upstream is not None else 0x5B
        client.sendall(bytes([0, status]) + b"\x00" * 6)
        return upstream

    def _http(self, client: socket.socket, first: bytes) -> socket.socket | None:
        head = first + _read_until(client, b"\r\n\r\n", 16384)
        self._drop("greeting")
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split()
        if len(parts) != 3 or parts[0] != "CONNECT":
            client.sendall(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n")
            raise _Refused("not CONNECT")
        authority = parts[1]
        host, _, port_text = authority.rpartition(":")
        host = host.strip("[]")
        port = int(port_text)
        username: str | None = None
        if self.users:
            headers = {
                name.strip().lower(): value.strip()
                for name, _, value in (line.partition(":") for line in lines[1:] if line)
            }
            username = self._basic_login(headers.get("proxy-authorization", ""))
            if username is None:
                self._record(ProxyRequest("http", host, port, "authority", None, False))
                client.sendall(
                    b"HTTP/1.1 407 Proxy Authentication Required\r\n"
                    b'Proxy-Authenticate: Basic realm="test"\r\nContent-Length: 0\r\n\r\n'
                )
                return None
        self._drop("request")
        upstream = self._open(self._target(host, port))
        self._record(ProxyRequest("http", host, port, "authority", username, upstream is not None))
        if upstream is None:
            client.sendall(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
            return None
        client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
        return upstream

    def _basic_login(self, header: str) -> str | None:
        scheme, _, encoded = header.partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            user, _, password = base64.b64decode(encoded, validate=True).decode().partition(":")
        except ValueError:
            return None
        return user if self.users.get(user) == password else None

    def _relay(self, client: socket.socket, upstream: socket.socket) -> None:
        last = time.monotonic()
        peers = {client: upstream, upstream: client}
        while not self._stopping.is_set() and time.monotonic() - last < _IDLE_LIMIT:
            readable, _, _ = select.select(list(peers), [], [], 0.05)
            for sock in readable:
                data = sock.recv(_CHUNK)
                if not data:
                    return
                peers[sock].sendall(data)
                last = time.monotonic()


def _read_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise EOFError("the client closed the connection")
        data += chunk
    return data


def _read_until_nul(sock: socket.socket, limit: int = 1024) -> bytes:
    return _read_until(sock, b"\x00", limit)[:-1]


def _read_until(sock: socket.socket, terminator: bytes, limit: int) -> bytes:
    data = b""
    while not data.endswith(terminator):
        if len(data) >= limit:
            raise _Refused("request too long")
        data += _read_exactly(sock, 1)
    return data
