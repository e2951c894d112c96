"""Can a domain receive mail? A DNS check with a small thread-safe cache.

A domain accepts mail when it publishes MX records, or, lacking any, an A or AAAA
record that serves as the implicit MX (RFC 5321 section 5.1). A domain whose only
MX is the "null MX" (preference 0, exchange ``.``, RFC 7505) says explicitly that it
takes no mail, and a domain that does not exist (NXDOMAIN) cannot take any.

When DNS itself fails (the lookup times out, or every server answers SERVFAIL),
the check cannot tell, and it answers *deliverable, not verified*: a DNS hiccup
must never block sending. :class:`DeliverabilityResult` keeps that distinction in
its ``verified`` field; :func:`check_deliverability` returns the simple
``(deliverable, reason)`` pair, whose reason starts with ``"could not verify"`` in
that case.

Verified results are cached per domain for ``ttl`` seconds; unverified ones are not
cached, so the next call tries DNS again. Nothing touches the network at import
time: the default checker builds its system resolver on first use.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import dns.exception
import dns.name
import dns.rdatatype
import dns.resolver
from dns.rdtypes.ANY.MX import MX

from .._net.logs import get_logger
from . import resolver as _dns

log = get_logger("dns")

Clock = Callable[[], float]

#: Seconds one domain's verified answer is reused.
DEFAULT_TTL = 300.0
#: Most domains kept in one checker's cache; the oldest entry goes first.
DEFAULT_MAX_ENTRIES = 4096
#: Overall budget, in seconds, for the DNS queries of one check.
DEFAULT_TIMEOUT = 3.0


@dataclass(frozen=True)
class DeliverabilityResult:
    """The answer for one domain.

    ``deliverable`` is False only when DNS said so for certain (NXDOMAIN, null MX,
    no MX/A/AAAA at all). ``verified`` is False when DNS could not be asked or did
    not answer; ``deliverable`` is then True and ``reason`` starts with
    ``"could not verify"``. ``domain`` is the ASCII form that was looked up.
    """

    domain: str
    deliverable: bool
    reason: str | None = None
    verified: bool = True

    def as_tuple(self) -> tuple[bool, str | None]:
        """``(deliverable, reason)``, the shape :func:`check_deliverability` returns."""
        return self.deliverable, self.reason


class DeliverabilityChecker:
    """Checks domains against DNS and remembers the answers for a while.

    ``resolver`` defaults to one configured from the system, built on the first
    check. ``timeout`` bounds the total time of the (up to three) queries of one
    check. ``clock`` is only used for cache ages and may be replaced in tests.
    The checker may be shared between threads; two threads missing the cache for
    the same domain at once may both query DNS, and the later answer is kept.
    """

    def __init__(
        self,
        resolver: dns.resolver.Resolver | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        ttl: float = DEFAULT_TTL,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        clock: Clock = time.monotonic,
    ) -> None:
        if timeout <= 0:
            raise ValueError("timeout must be > 0")
        if ttl < 0:
            raise ValueError("ttl must be >= 0")
        if max_entries < 1:
            raise ValueError("max_entries must be >= 1")
        self._resolver = resolver
        self.timeout = timeout
        self.ttl = ttl
        self.max_entries = max_entries
        self._clock = clock
        self._lock = threading.Lock()
        self._cache: OrderedDict[str, tuple[float, DeliverabilityResult]] = OrderedDict()

    def __repr__(self) -> str:
        with self._lock:
            size = len(self._cache)
        return (
            f"<DeliverabilityChecker [cached: {size}, ttl: {self.ttl}s, timeout: {self.timeout}s]>"
        )

    @property
    def resolver(self) -> dns.resolver.Resolver:
        """The resolver in use, created from the system configuration on first access."""
        with self._lock:
            if self._resolver is None:
                self._resolver = _dns.new_resolver()
            return self._resolver

    def check(self, domain: str, *, timeout: float | None = None) -> DeliverabilityResult:
        """Return whether ``domain`` can receive mail, from the cache when fresh.

        ``timeout`` overrides the checker's budget for this call. Raises
        :class:`~src.handlers.errors.MailValidationError` when ``domain`` is not a
        host name (empty, address literal, bad IDN, over-long label); DNS failures
        never raise.
        """
        name = _dns.to_ascii_domain(domain)
        cached = self._cached(name)
        if cached is not None:
            log.debug("deliverability of %s from cache", name)
            return cached
        try:
            resolver = self.resolver
        except dns.exception.DNSException as error:  # e.g. no resolver configuration
            log.warning("no DNS resolver available: %s; %s not verified", error, name)
            return DeliverabilityResult(name, True, f"could not verify: {error}", False)
        result = lookup_deliverability(name, resolver, self.timeout if timeout is None else timeout)
        if result.verified:
            self._store(name, result)
        return result

    def clear(self) -> None:
        """Forget every cached answer."""
        with self._lock:
            self._cache.clear()

    def _cached(self, name: str) -> DeliverabilityResult | None:
        now = self._clock()
        with self._lock:
            entry = self._cache.get(name)
            if entry is None:
                return None
            expires, result = entry
            if now >= expires:
                del self._cache[name]
                return None
            return result

    def _store(self, name: str, result: DeliverabilityResult) -> None:
        expires = self._clock() + self.ttl
        with self._lock:
            self._cache[name] = (expires, result)
            self._cache.move_to_end(name)
            while len(self._cache) > self.max_entries:
                self._cache.popitem(last=False)


def lookup_deliverability(
    domain: str, resolver: dns.resolver.Resolver, timeout: float = DEFAULT_TIMEOUT
) -> DeliverabilityResult:
    """Ask DNS whether the ASCII ``domain`` can receive mail, without any cache.

    Queries MX, then A, then AAAA, all within ``timeout`` seconds in total.
    """
    deadline = _dns.Deadline(timeout)
    try:
        mx = _dns.resolve(resolver, domain, dns.rdatatype.MX, deadline)
        if mx is not None:
            return _judge_mx(domain, mx)
        for rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
            if _dns.resolve(resolver, domain, rdtype, deadline) is not None:
                log.debug("%s has no MX; %s record is the implicit MX", domain, rdtype.name)
                return DeliverabilityResult(domain, True)
    except dns.resolver.NXDOMAIN:
        return DeliverabilityResult(domain, False, f"domain {domain} does not exist")
    except dns.exception.Timeout:
        log.warning("DNS lookup for %s timed out after %.1fs; not verified", domain, timeout)
        return DeliverabilityResult(
            domain, True, f"could not verify: DNS lookup timed out after {timeout:g}s", False
        )
    except dns.resolver.NoNameservers:
        log.warning("no DNS server could answer for %s (SERVFAIL); not verified", domain)
        return DeliverabilityResult(
            domain, True, "could not verify: DNS servers failed to answer (SERVFAIL)", False
        )
    except dns.exception.DNSException as error:
        log.warning("DNS lookup for %s failed: %s; not verified", domain, error)
        return DeliverabilityResult(domain, True, f"could not verify: DNS error: {error}", False)
    return DeliverabilityResult(
        domain, False, f"domain {domain} has no MX, A or AAAA records to deliver to"
    )


def _judge_mx(domain: str, answer: dns.resolver.Answer) -> DeliverabilityResult:
    records = [rdata for rdata in answer if isinstance(rdata, MX)]
    usable = [rdata for rdata in records if rdata.exchange != dns.name.root]
    if not usable:
        return DeliverabilityResult(
            domain, False, f"domain {domain} accepts no mail (null MX, RFC 7505)"
        )
    if len(usable) != len(records):
        log.warning("%s mixes a null MX with other MX records; using the others", domain)
    return DeliverabilityResult(domain, True)


#: The checker used by :func:`check_deliverability` when no resolver is given.
default_checker = DeliverabilityChecker()


def check_deliverability(
    domain: str,
    *,
    resolver: dns.resolver.Resolver | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> tuple[bool, str | None]:
    """Return ``(deliverable, reason)`` for ``domain``; ``reason`` is None when fine.

    Without ``resolver`` the shared :data:`default_checker` (and its cache) is
    used. With one, the check runs uncached against that resolver. A DNS failure
    gives ``(True, "could not verify: ...")``; use
    :meth:`DeliverabilityChecker.check` to get the ``verified`` flag as a field.
    Raises :class:`~src.handlers.errors.MailValidationError` for a malformed domain.
    """
    if resolver is None:
        return default_checker.check(domain, timeout=timeout).as_tuple()
    return lookup_deliverability(_dns.to_ascii_domain(domain), resolver, timeout).as_tuple()
