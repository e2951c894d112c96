"""Opening connections: Happy Eyeballs (RFC 8305) and SOCKS / HTTP CONNECT proxies.

Everything runs on loopback. The Happy Eyeballs tests resolve through an injected
resolver, so a "host" can have a refused IPv6 address and a working IPv4 one; a
"slow" attempt is a socket that never becomes writable (one end of a socket pair
whose send buffer is full), started by an injected attempt starter. The proxy tests
tunnel through :class:`ProxyTestServer` to an echo server and to the SMTP test server.
"""

from __future__ import annotations

import contextlib
import pickle
import select
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from src.handlers._net import connect
from src.handlers._net.connect import Address, Proxy, interleave, open_connection
from src.handlers.errors import (
    ConfigurationError,
    DNSLookupError,
    MailConnectionError,
    MailTimeoutError,
    ProxyAuthenticationError,
    ProxyError,
)
from src.handlers.retry import is_retryable
from src.testing.proxy_server import ProxyTestServer
from src.testing.smtp_server import SMTPTestServer

pytest.importorskip("python_socks")


def _has_ipv6_loopback() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


needs_ipv6 = pytest.mark.skipif(not _has_ipv6_loopback(), reason="no IPv6 loopback (::1)")


class EchoServer:
    """Accepts on loopback, counts connections, echoes what it reads."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.listener = socket.socket(family, socket.SOCK_STREAM)
        self.listener.bind((host, 0))
        self.listener.listen(8)
        self.listener.settimeout(0.05)
        self.port: int = self.listener.getsockname()[1]
        self.peers: list[tuple[str, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, peer = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.peers.append(peer[:2])
            threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    def _echo(self, conn: socket.socket) -> None:
        conn.settimeout(5)
        with conn, contextlib.suppress(OSError):
            while data := conn.recv(4096):
                conn.sendall(data)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.listener.close()


@pytest.fixture
def echo() -> Iterator[EchoServer]:
    server = EchoServer()
    yield server
    server.stop()


def _closed_port(family: socket.AddressFamily = socket.AF_INET) -> int:
    """A loopback port with nothing listening (connections to it are refused)."""
    host = "::1" if family == socket.AF_INET6 else "127.0.0.1"
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def v4(port: int) -> Address:
    return (socket.AF_INET, ("127.0.0.1", port))


def v6(port: int, host: str = "::1") -> Address:
    return (socket.AF_INET6, (host, port, 0, 0))


def resolver_for(*addresses: Address) -> connect.Resolver:
    return lambda host, port: list(addresses)


def roundtrip(sock: socket.socket, data: bytes = b"ping\r\n") -> bytes:
    with sock:
        sock.sendall(data)
        received = b""
        while len(received) < len(data):
            chunk = sock.recv(4096)
            if not chunk:
                break
            received += chunk
        return received


class Starter:
    """An attempt starter that makes chosen addresses hang and records start times."""

    def __init__(self, hang: set[str]) -> None:
        self.hang = hang
        self.started: list[tuple[str, float]] = []
        self.hanging: list[socket.socket] = []
        self._peers: list[socket.socket] = []

    def __call__(self, address: Address, source: tuple[str, int] | None) -> socket.socket:
        self.started.append((address[1][0], time.monotonic()))
        if address[1][0] not in self.hang:
            return connect._start_attempt(address, source)
        mine, peer = socket.socketpair()
        mine.setblocking(False)
        with contextlib.suppress(BlockingIOError):  # fill the buffer: never writable
            for _ in range(100_000):
                mine.send(b"x" * 65536)
        self.hanging.append(mine)
        self._peers.append(peer)
        return mine

    def close(self) -> None:
        for sock in self._peers:
            sock.close()


# -- ordering ------------------------------------------------------------------------


def test_interleave_puts_ipv6_first_and_alternates_families() -> None:
    addresses = [v4(1), v4(2), v4(3), v6(4), v6(5, "::2")]
    assert interleave(addresses) == [v6(4), v4(1), v6(5, "::2"), v4(2), v4(3)]
    assert interleave([v4(1), v4(2)]) == [v4(1), v4(2)]
    assert interleave([]) == []


# -- direct connections --------------------------------------------------------------


def test_connects_directly_and_sets_the_timeout(echo: EchoServer) -> None:
    sock = open_connection("mail.example.test", 25, timeout=3, resolver=resolver_for(v4(echo.port)))
    assert sock.gettimeout() == 3
    assert roundtrip(sock) == b"ping\r\n"


def test_source_address_is_bound(echo: EchoServer) -> None:
    sock = open_connection("127.0.0.1", echo.port, timeout=3, source_address=("127.0.0.1", 0))
    local = sock.getsockname()[:2]
    assert roundtrip(sock) == b"ping\r\n"
    assert local in echo.peers


@needs_ipv6
def test_a_refused_ipv6_address_falls_back_to_ipv4_at_once(echo: EchoServer) -> None:
    resolver = resolver_for(v6(_closed_port(socket.AF_INET6)), v4(echo.port))
    started = time.monotonic()
    # A long attempt delay: only an immediate fallback after the refusal is fast.
    sock = open_connection("dual.example.test", 25, timeout=5, resolver=resolver, attempt_delay=3)
    assert time.monotonic() - started < 2
    assert roundtrip(sock) == b"ping\r\n"


@needs_ipv6
def test_ipv6_wins_when_both_families_answer() -> None:
    server6, server4 = EchoServer("::1"), EchoServer("127.0.0.1")
    try:
        resolver = resolver_for(v4(server4.port), v6(server6.port))
        sock = open_connection("dual.example.test", 25, timeout=5, resolver=resolver)
        assert sock.family == socket.AF_INET6
        assert roundtrip(sock) == b"ping\r\n"
        assert len(server6.peers) == 1 and server4.peers == []
    finally:
        server6.stop()
        server4.stop()


def test_a_slow_first_attempt_starts_the_next_after_the_delay(echo: EchoServer) -> None:
    starter = Starter(hang={"::1"})
    try:
        sock = open_connection(
            "dual.example.test",
            25,
            timeout=5,
            resolver=resolver_for(v6(1), v4(echo.port)),
            attempt_delay=0.3,
            _start=starter,
        )
        assert [host for host, _ in starter.started] == ["::1", "127.0.0.1"]
        gap = starter.started[1][1] - starter.started[0][1]
        assert 0.25 <= gap < 1.5
        assert sock.family == socket.AF_INET
        assert roundtrip(sock) == b"ping\r\n"
        assert all(s.fileno() == -1 for s in starter.hanging)  # the loser was closed
    finally:
        starter.close()


def test_the_earlier_attempt_may_still_win_after_the_next_started(echo: EchoServer) -> None:
    # The first address is slow to connect but gets there; the second hangs for good.
    starter = Starter(hang={"127.0.0.2"})
    try:
        sock = open_connection(
            "dual.example.test",
            25,
            timeout=5,
            resolver=resolver_for(v4(echo.port), (socket.AF_INET, ("127.0.0.2", 9))),
            attempt_delay=0.0,
            _start=starter,
        )
        assert sock.getpeername()[1] == echo.port
        assert len(starter.started) == 2
        roundtrip(sock)
    finally:
        starter.close()


def test_without_happy_eyeballs_attempts_run_one_after_another(echo: EchoServer) -> None:
    starter = Starter(hang={"::1"})
    try:
        started = time.monotonic()
        with pytest.raises(MailTimeoutError, match=r"within 0\.5s") as caught:
            open_connection(
                "dual.example.test",
                25,
                timeout=0.5,
                resolver=resolver_for(v6(1), v4(echo.port)),
                happy_eyeballs=False,
                _start=starter,
            )
        assert time.monotonic() - started < 2
        assert [host for host, _ in starter.started] == ["::1"]
        assert "([::1]:1 no answer; 1 more address not tried)" in str(caught.value)
    finally:
        starter.close()


def test_every_attempt_hanging_is_a_timeout_within_the_limit() -> None:
    starter = Starter(hang={"::1", "127.0.0.1"})
    try:
        started = time.monotonic()
        with pytest.raises(MailTimeoutError) as caught:
            open_connection(
                "dual.example.test",
                25,
                timeout=0.4,
                resolver=resolver_for(v6(1), v4(2)),
                attempt_delay=0.1,
                _start=starter,
            )
        assert time.monotonic() - started < 2
        assert len(starter.started) == 2
        assert str(caught.value) == (
            "could not connect to dual.example.test:25 within 0.4s "
            "([::1]:1 no answer; 127.0.0.1:2 no answer)"
        )
        assert is_retryable(caught.value)
    finally:
        starter.close()


def test_when_every_address_fails_the_error_lists_each() -> None:
    addresses = [v4(_closed_port())]
    if _has_ipv6_loopback():
        addresses.insert(0, v6(_closed_port(socket.AF_INET6)))
    with pytest.raises(MailConnectionError) as caught:
        open_connection("dual.example.test", 25, timeout=3, resolver=resolver_for(*addresses))
    message = str(caught.value)
    assert message.startswith("could not connect to dual.example.test:25: ")
    assert f"127.0.0.1:{addresses[-1][1][1]} " in message
    assert "refused" in message.lower()
    if len(addresses) == 2:
        assert f"[::1]:{addresses[0][1][1]} " in message
    assert not isinstance(caught.value, MailTimeoutError)
    assert is_retryable(caught.value)


def test_name_resolution_failures_are_dns_errors() -> None:
    def broken(host: str, port: int) -> list[Address]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    with pytest.raises(DNSLookupError, match=r"could not resolve nowhere\.example\.test"):
        open_connection("nowhere.example.test", 25, timeout=1, resolver=broken)
    with pytest.raises(DNSLookupError, match="no IPv4 or IPv6 address"):
        open_connection("empty.example.test", 25, timeout=1, resolver=resolver_for())


def test_the_system_resolver_finds_loopback(echo: EchoServer) -> None:
    assert connect.system_resolver("127.0.0.1", 25) == [(socket.AF_INET, ("127.0.0.1", 25))]
    assert roundtrip(open_connection("127.0.0.1", echo.port, timeout=3)) == b"ping\r\n"


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"host": "bad host"}, "hostname"),
        ({"host": "a\r\nb"}, "hostname"),
        ({"port": 0}, "port"),
        ({"timeout": 0}, "timeout"),
        ({"attempt_delay": -1}, "attempt_delay"),
    ],
)
def test_bad_arguments_are_refused_before_any_io(kwargs: dict[str, object], field: str) -> None:
    arguments: dict[str, object] = {"host": "127.0.0.1", "port": 25, "timeout": 1}
    arguments.update(kwargs)
    host, port = arguments.pop("host"), arguments.pop("port")
    with pytest.raises(ConfigurationError) as caught:
        open_connection(host, port, **arguments)  # type: ignore[arg-type]
    assert caught.value.field == field


# -- the Proxy value -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "kind", "remote_dns"),
    [
        ("socks5://proxy.example.test:1080", "socks5", True),
        ("socks5h://proxy.example.test:1080", "socks5", True),
        ("SOCKS5H://proxy.example.test:1080", "socks5", True),
        ("socks4://proxy.example.test:1080", "socks4", False),
        ("socks4a://proxy.example.test:1080", "socks4", True),
        ("http://proxy.example.test:3128", "http", True),
    ],
)
def test_proxy_urls_parse(url: str, kind: str, remote_dns: bool) -> None:
    proxy = Proxy.from_url(url)
    assert (proxy.kind, proxy.host, proxy.remote_dns) == (kind, "proxy.example.test", remote_dns)
    assert proxy.username is None and proxy.password is None


def test_proxy_credentials_are_held_as_a_secret_and_never_shown() -> None:
    proxy = Proxy.from_url("socks5://ada:s3cr%40t@[::1]:1080")
    assert proxy.username == "ada"
    assert proxy.password is not None and proxy.password.reveal() == "s3cr@t"
    assert proxy.host == "::1" and proxy.port == 1080
    for text in (repr(proxy), str(proxy), proxy.address):
        assert "s3cr" not in text
    assert str(proxy) == "socks5://[::1]:1080"
    with pytest.raises(TypeError):
        pickle.dumps(proxy)
    assert proxy == Proxy.from_url("socks5://ada:s3cr%40t@[::1]:1080")
    assert proxy != Proxy.from_url("socks5://ada:other@[::1]:1080")
    assert hash(proxy) == hash(Proxy.from_url("socks5://ada:s3cr%40t@[::1]:1080"))


@pytest.mark.parametrize(
    "url",
    [
        "ftp://proxy.example.test:21",
        "socks5://proxy.example.test",
        "socks5://:1080",
        "socks5://proxy.example.test:99999",
        "socks5://proxy.example.test:1080/path",
        "http://user:hunter2@proxy.example.test:3128/x?y",
    ],
)
def test_bad_proxy_urls_are_configuration_errors(url: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        Proxy.from_url(url)
    assert "hunter2" not in str(caught.value)
    assert caught.value.field == "proxy"


# -- through a proxy -----------------------------------------------------------------


@pytest.fixture
def proxy(echo: EchoServer) -> Iterator[ProxyTestServer]:
    with ProxyTestServer(hosts={"mail.example.test": echo.port}) as server:
        yield server
    assert server.errors == []


@pytest.mark.parametrize("scheme", ["socks5", "socks5h", "socks4a", "http"])
def test_the_proxy_resolves_the_name(proxy: ProxyTestServer, scheme: str) -> None:
    def no_local_dns(host: str, port: int) -> list[Address]:
        raise AssertionError("resolved locally")

    sock = open_connection(
        "mail.example.test", 25, timeout=5, proxy=proxy.url(scheme), resolver=no_local_dns
    )
    assert sock.gettimeout() == 5
    assert roundtrip(sock) == b"ping\r\n"
    [request] = proxy.requests
    assert request.host == "mail.example.test" and request.port == 25 and request.granted
    assert request.address_type in ("domain", "authority")
    assert proxy.connections == 1


def test_socks4_sends_an_address(proxy: ProxyTestServer, echo: EchoServer) -> None:
    sock = open_connection("127.0.0.1", echo.port, timeout=5, proxy=proxy.url("socks4"))
    assert roundtrip(sock) == b"ping\r\n"
    assert proxy.requests[0].address_type == "ipv4"


def test_an_smtp_server_greets_through_the_tunnel() -> None:
    smtp = SMTPTestServer(server_name="mx.example.test")
    smtp.start()
    try:
        with ProxyTestServer(hosts={"mx.example.test": smtp.port}) as server:
            sock = open_connection("mx.example.test", 25, timeout=5, proxy=server.url())
            with sock, sock.makefile("rb") as replies:
                assert replies.readline().startswith(b"220 mx.example.test")
                sock.sendall(b"QUIT\r\n")
                assert replies.readline().startswith(b"221")
    finally:
        smtp.stop()


@pytest.mark.parametrize("scheme", ["socks5", "http"])
def test_proxy_login(proxy: ProxyTestServer, scheme: str) -> None:
    proxy.users["ada"] = "pr0xy-pass"
    sock = open_connection(
        "mail.example.test", 25, timeout=5, proxy=proxy.url(scheme, "ada", "pr0xy-pass")
    )
    assert roundtrip(sock) == b"ping\r\n"
    assert proxy.requests[0].username == "ada"


@pytest.mark.parametrize("scheme", ["socks5", "http"])
@pytest.mark.parametrize("password", ["wrong-pass", None])
def test_a_refused_proxy_login_is_an_authentication_error(
    proxy: ProxyTestServer, scheme: str, password: str | None
) -> None:
    proxy.users["ada"] = "pr0xy-pass"
    url = proxy.url(scheme, "ada", password) if password else proxy.url(scheme)
    with pytest.raises(ProxyAuthenticationError) as caught:
        open_connection("mail.example.test", 25, timeout=5, proxy=url)
    error = caught.value
    assert error.proxy == f"{scheme}://127.0.0.1:{proxy.port}"
    assert error.status == (407 if scheme == "http" else None)
    assert "wrong-pass" not in str(error) and "wrong-pass" not in repr(error.args)
    assert str(error).startswith(f"proxy {scheme}://127.0.0.1:{proxy.port} refused the login")
    assert not is_retryable(error)
    assert pickle.loads(pickle.dumps(error)).proxy == error.proxy


@pytest.mark.parametrize(("scheme", "code"), [("socks5", 5), ("http", 502), ("socks4a", 0x5B)])
def test_a_refused_tunnel_names_the_proxy(proxy: ProxyTestServer, scheme: str, code: int) -> None:
    proxy.refuse = True
    with pytest.raises(ProxyError) as caught:
        open_connection("mail.example.test", 25, timeout=5, proxy=proxy.url(scheme))
    error = caught.value
    assert error.proxy == f"{scheme.rstrip('a')}://127.0.0.1:{proxy.port}"
    assert str(error).startswith(
        f"proxy {error.proxy} did not open a tunnel to mail.example.test:25"
    )
    assert error.reply_code == code
    assert is_retryable(error)


def test_an_unknown_name_at_the_proxy(proxy: ProxyTestServer) -> None:
    with pytest.raises(ProxyError) as caught:
        open_connection("unknown.example.test", 25, timeout=5, proxy=proxy.url())
    assert caught.value.reply_code == 4  # SOCKS5 "host unreachable"


def test_an_unreachable_proxy_names_it_but_not_the_password() -> None:
    url = f"socks5://ada:hunter2@127.0.0.1:{_closed_port()}"
    with pytest.raises(ProxyError) as caught:
        open_connection("mail.example.test", 25, timeout=3, proxy=url)
    text = str(caught.value)
    assert text.startswith("could not reach proxy socks5://127.0.0.1:")
    assert "hunter2" not in text and "hunter2" not in repr(caught.value.args)
    assert caught.value.__cause__ is None and caught.value.__suppress_context__
    assert is_retryable(caught.value)


@pytest.mark.parametrize("stage", ["greeting", "request"])
@pytest.mark.parametrize("scheme", ["socks5", "http"])
def test_a_proxy_that_hangs_up_mid_handshake(
    proxy: ProxyTestServer, stage: str, scheme: str
) -> None:
    proxy.drop_after = stage
    with pytest.raises(ProxyError) as caught:
        open_connection("mail.example.test", 25, timeout=5, proxy=proxy.url(scheme))
    assert caught.value.proxy.endswith(f"127.0.0.1:{proxy.port}")


def test_a_proxy_that_never_answers_is_a_timeout() -> None:
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        url = f"socks5://127.0.0.1:{silent.getsockname()[1]}"
        started = time.monotonic()
        with pytest.raises(MailTimeoutError, match=r"did not connect to mail\.example\.test:25"):
            open_connection("mail.example.test", 25, timeout=0.3, proxy=url)
        assert time.monotonic() - started < 3


def test_without_python_socks_a_proxy_is_a_configuration_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "python_socks", None)
    with pytest.raises(ConfigurationError, match=r"mailhandlers\[proxy\]"):
        open_connection("mail.example.test", 25, timeout=1, proxy="socks5://127.0.0.1:1080")


@pytest.mark.parametrize(("scheme", "sent"), [("socks4", "127.0.0.1"), ("socks5", "::1")])
def test_a_proxy_that_does_not_resolve_gets_an_address_from_the_resolver(
    proxy: ProxyTestServer, echo: EchoServer, scheme: str, sent: str
) -> None:
    proxy.hosts[sent] = echo.port
    resolver = resolver_for(v6(25), v4(25))
    url = proxy.url(scheme)
    chosen = Proxy.from_url(url)
    if scheme == "socks5":
        chosen = Proxy("socks5", chosen.host, chosen.port, remote_dns=False)
    sock = open_connection("mail.example.test", 25, timeout=5, proxy=chosen, resolver=resolver)
    assert roundtrip(sock) == b"ping\r\n"
    assert proxy.requests[0].host == sent


def test_socks4_needs_an_ipv4_address(proxy: ProxyTestServer) -> None:
    with pytest.raises(DNSLookupError, match="SOCKS4"):
        open_connection(
            "v6only.example.test",
            25,
            timeout=5,
            proxy=proxy.url("socks4"),
            resolver=resolver_for(v6(25)),
        )
    assert proxy.connections == 0


@contextlib.contextmanager
def blackhole(host: str) -> Iterator[int]:
    """A listener that never accepts and whose queue is full, so a new connection to it
    hangs in the handshake (the kernel drops its SYNs); skips the test where the
    system does not behave so."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    fillers: list[socket.socket] = []
    try:
        listener.bind((host, 0))
        listener.listen(0)
        port = int(listener.getsockname()[1])
        for _ in range(16):  # until a connect no longer completes
            filler = socket.socket(family, socket.SOCK_STREAM)
            fillers.append(filler)
            filler.setblocking(False)
            filler.connect_ex((host, port))
            _, writable, _ = select.select([], [filler], [], 0.2)
            if not writable:
                break
        else:
            pytest.skip("this system accepts connections beyond a full listen queue")
        yield port
    finally:
        for filler in fillers:
            filler.close()
        listener.close()


@needs_ipv6
def test_an_ipv6_address_that_never_answers_costs_one_attempt_delay(echo: EchoServer) -> None:
    with blackhole("::1") as silent_port:
        resolver = resolver_for(v6(silent_port), v4(echo.port))
        started = time.monotonic()
        sock = open_connection("dual.example.test", 25, timeout=5, resolver=resolver)
        elapsed = time.monotonic() - started
    assert sock.family == socket.AF_INET
    assert roundtrip(sock) == b"ping\r\n"
    assert 0.2 <= elapsed < 2  # the 250 ms delay, not the 5 s timeout


@needs_ipv6
def test_without_happy_eyeballs_a_silent_ipv6_address_costs_the_whole_timeout(
    echo: EchoServer,
) -> None:
    with blackhole("::1") as silent_port:
        resolver = resolver_for(v6(silent_port), v4(echo.port))
        with pytest.raises(MailTimeoutError, match="no answer; 1 more address not tried"):
            open_connection(
                "dual.example.test", 25, timeout=0.5, resolver=resolver, happy_eyeballs=False
            )


@pytest.mark.parametrize("greeting_delay", [0.0, 0.05])
def test_a_greeting_in_the_same_read_as_the_connect_reply_is_kept(greeting_delay: float) -> None:
    """SMTP and POP3 servers speak first: a proxy may send its 200 and the server's
    greeting in one segment. The tunnel must consume the reply header and nothing after."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(5)
    request: list[bytes] = []

    def proxy_once() -> None:
        conn, _ = listener.accept()
        with conn:
            data = b""
            while b"\r\n\r\n" not in data:
                data += conn.recv(1024)
            request.append(data)
            reply = b"HTTP/1.1 200 Connection established\r\nVia: test\r\n\r\n"
            if greeting_delay:
                conn.sendall(reply)
                time.sleep(greeting_delay)
                conn.sendall(b"+OK ready\r\n")
            else:
                conn.sendall(reply + b"+OK ready\r\n")
            conn.recv(1)  # hold the tunnel open until the client is done

    thread = threading.Thread(target=proxy_once, daemon=True)
    thread.start()
    port = listener.getsockname()[1]
    sock = open_connection(
        "pop.example.test", 110, timeout=5, proxy=f"http://user:pw@127.0.0.1:{port}"
    )
    with sock:
        assert sock.recv(64) == b"+OK ready\r\n"
    thread.join(5)
    listener.close()
    assert request[0].startswith(b"CONNECT pop.example.test:110 HTTP/1.1\r\n")
    assert b"Proxy-Authorization: Basic dXNlcjpwdw==\r\n" in request[0]
