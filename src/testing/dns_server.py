"""A loopback UDP DNS responder for tests, answering from a dictionary.

The zone maps ``(name, type)`` to record texts in zone-file syntax::

    zone = {
        ("example.test.", "MX"): ["10 mx.example.test."],
        ("mx.example.test.", "A"): ["192.0.2.25"],
        ("_submissions._tcp.example.test.", "SRV"): ["0 1 465 smtp.example.test."],
    }
    with LoopbackDNSServer(zone) as server:
        resolver = server.resolver(lifetime=1.0)
        resolver.resolve("example.test.", "MX")

A name present in the zone with other types gets an empty NOERROR answer (as does
an empty non-terminal such as ``_tcp.example.test.``); any other name gets NXDOMAIN,
or an empty NOERROR when ``nxdomain_for_unknown`` is False. Queries for a name
listed in ``servfail``, or any name under it, are answered with SERVFAIL; those for
a name in ``drop`` (or under it) are read and ignored, so the client times out.
Only UDP is served; answers are small enough never to be truncated. The server
binds 127.0.0.1 on a free port and counts the queries it receives, which lets
tests observe caching.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Iterable, Mapping, Sequence
from types import TracebackType

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.resolver
import dns.rrset

log = logging.getLogger(__name__)

Zone = Mapping[tuple[str, str], Sequence[str]]

_POLL_INTERVAL = 0.05
_MAX_DATAGRAM = 65535


class LoopbackDNSServer:
    """A threaded UDP DNS server on 127.0.0.1 answering from a fixed zone.

    Use it as a context manager, or call :meth:`start` and :meth:`stop`. ``port``
    is known once started. ``query_count`` and ``queries`` record what arrived,
    including dropped and SERVFAIL queries.
    """

    def __init__(
        self,
        zone: Zone,
        *,
        ttl: int = 300,
        nxdomain_for_unknown: bool = True,
        servfail: Iterable[str] = (),
        drop: Iterable[str] = (),
    ) -> None:
        self.ttl = ttl
        self.nxdomain_for_unknown = nxdomain_for_unknown
        self._rrsets: dict[tuple[dns.name.Name, dns.rdatatype.RdataType], dns.rrset.RRset] = {}
        self._names: set[dns.name.Name] = set()
        for (owner, rdtype_text), texts in zone.items():
            name = dns.name.from_text(owner)
            rdtype = dns.rdatatype.from_text(rdtype_text)
            self._rrsets[(name, rdtype)] = dns.rrset.from_text_list(
                name, ttl, dns.rdataclass.IN, rdtype, list(texts)
            )
            # The owner and every ancestor exist (ancestors as empty non-terminals).
            while name != dns.name.root and name not in self._names:
                self._names.add(name)
                name = name.parent()
        self._servfail = {dns.name.from_text(n) for n in servfail}
        self._drop = {dns.name.from_text(n) for n in drop}
        self._lock = threading.Lock()
        self._queries: list[tuple[str, str]] = []
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.host = "127.0.0.1"
        self.port = 0

    def __repr__(self) -> str:
        state = "running" if self._thread is not None else "stopped"
        return f"<LoopbackDNSServer {self.host}:{self.port} [{state}, queries: {self.query_count}]>"

    @property
    def query_count(self) -> int:
        """How many queries have arrived so far."""
        with self._lock:
            return len(self._queries)

    @property
    def queries(self) -> list[tuple[str, str]]:
        """A copy of the ``(name, type)`` of each query received, in order."""
        with self._lock:
            return list(self._queries)

    def reset_counter(self) -> None:
        """Forget the queries received so far."""
        with self._lock:
            self._queries.clear()

    def start(self) -> None:
        """Bind a free loopback port and start answering in a background thread."""
        if self._thread is not None:
            raise RuntimeError("server already started")
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.bind((self.host, 0))
            sock.settimeout(_POLL_INTERVAL)
        except OSError:
            sock.close()
            raise
        self._sock = sock
        self.port = sock.getsockname()[1]
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._serve, name=f"dns-server-{self.port}", daemon=True
        )
        self._thread.start()
        log.debug("loopback DNS server listening on %s:%d", self.host, self.port)

    def stop(self) -> None:
        """Stop the thread and close the socket; safe to call twice."""
        thread, sock = self._thread, self._sock
        self._thread = self._sock = None
        self._stop.set()
        if thread is not None:
            thread.join(timeout=5)
        if sock is not None:
            sock.close()

    def __enter__(self) -> LoopbackDNSServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def resolver(self, *, lifetime: float = 2.0) -> dns.resolver.Resolver:
        """A resolver that asks only this server, with no system configuration."""
        if self._thread is None:
            raise RuntimeError("start the server first")
        resolver = dns.resolver.Resolver(configure=False)
        resolver.port = self.port
        resolver.nameservers = [self.host]
        resolver.lifetime = lifetime
        resolver.timeout = lifetime
        return resolver

    def _serve(self) -> None:
        sock = self._sock
        assert sock is not None
        while not self._stop.is_set():
            try:
                data, peer = sock.recvfrom(_MAX_DATAGRAM)
            except TimeoutError:
                continue
            except OSError:
                break
            reply = self._answer(data)
            if reply is None:
                continue
            try:
                sock.sendto(reply, peer)
            except OSError as error:  # the client went away; keep serving
                log.debug("loopback DNS server could not reply to %s: %s", peer, error)

    def _answer(self, data: bytes) -> bytes | None:
        try:
            query = dns.message.from_wire(data)
        except dns.exception.DNSException:
            return None
        if not query.question:
            return None
        question = query.question[0]
        name, rdtype = question.name, question.rdtype
        with self._lock:
            self._queries.append((name.to_text(), dns.rdatatype.to_text(rdtype)))
        if _under_any(name, self._drop):
            return None
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        if _under_any(name, self._servfail):
            response.set_rcode(dns.rcode.SERVFAIL)
        elif (name, rdtype) in self._rrsets:
            response.answer.append(self._rrsets[(name, rdtype)])
        elif name not in self._names and self.nxdomain_for_unknown:
            response.set_rcode(dns.rcode.NXDOMAIN)
        return response.to_wire()


def _under_any(name: dns.name.Name, parents: set[dns.name.Name]) -> bool:
    return any(name.is_subdomain(parent) for parent in parents)
