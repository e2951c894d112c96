"""Find the submission (SMTP) and POP3 servers for a mail domain.

The search goes from most to least authoritative and stops at the first step that
answers; :attr:`MailServerSettings.source` says which one did:

1. ``"srv"``: the domain's own SRV records (RFC 6186, RFC 8314). For SMTP
   ``_submissions._tcp`` (implicit TLS) is preferred over ``_submission._tcp``
   (STARTTLS); for POP3 ``_pop3s._tcp`` over ``_pop3._tcp``. Within one service,
   records are ordered by priority and weight (RFC 2782). A lone target of ``.``
   means the service is not offered. A protocol with no SRV record at all while the
   other has one is reported as ``None``.
2. ``"provider-defaults"``: a small table of large providers, matched by the
   domain itself (``gmail.com``) or by the host names of its MX records (a domain
   whose MX is under ``google.com`` is hosted by Gmail). The table reflects the
   providers' published settings and may go stale.
3. ``"guess"``: ``smtp.<domain>`` port 587 with STARTTLS and ``pop.<domain>`` port
   995 with implicit TLS, which nobody has confirmed.

All queries of one call share a single time budget. A domain that does not exist
raises :class:`~src.handlers.errors.MailValidationError`; a DNS failure raises
:class:`DNSLookupError` (or :class:`DNSTimeoutError`), both retryable, rather than
returning a guess that a working DNS might have contradicted.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import dns.exception
import dns.rdatatype
import dns.resolver
from dns.rdtypes.ANY.MX import MX
from dns.rdtypes.IN.SRV import SRV

from .._net.logs import get_logger
from ..errors import (
    DNSLookupError,
    DNSTimeoutError,
    MailValidationError,
)
from . import resolver as _dns

log = get_logger("dns")

Encryption = Literal["ssl", "tls"]
"""``"ssl"``: TLS from the first byte (implicit TLS); ``"tls"``: STARTTLS/STLS upgrade."""
Source = Literal["srv", "provider-defaults", "guess"]

DEFAULT_TIMEOUT = 3.0


@dataclass(frozen=True)
class MailServerSettings:
    """Where to send (SMTP submission) and fetch (POP3) mail for one domain.

    Host names are ASCII (IDNA A-labels) without a trailing dot. A protocol the
    domain does not offer has its host, port and encryption set to ``None``.
    """

    smtp_host: str | None
    smtp_port: int | None
    smtp_encryption: Encryption | None
    pop3_host: str | None
    pop3_port: int | None
    pop3_encryption: Encryption | None
    source: Source


@dataclass(frozen=True)
class _Provider:
    name: str
    smtp: tuple[str, int, Encryption]
    pop3: tuple[str, int, Encryption] | None
    domains: frozenset[str]
    mx_suffixes: tuple[str, ...] = ()

    def settings(self) -> MailServerSettings:
        pop3_host, pop3_port, pop3_enc = self.pop3 if self.pop3 else (None, None, None)
        return MailServerSettings(*self.smtp, pop3_host, pop3_port, pop3_enc, "provider-defaults")


_PROVIDERS: tuple[_Provider, ...] = (
    _Provider(
        "Gmail",
        ("smtp.gmail.com", 465, "ssl"),
        ("pop.gmail.com", 995, "ssl"),
        frozenset({"gmail.com", "googlemail.com"}),
        ("google.com", "googlemail.com"),
    ),
    _Provider(
        "Microsoft",
        ("smtp.office365.com", 587, "tls"),
        ("outlook.office365.com", 995, "ssl"),
        frozenset({"outlook.com", "hotmail.com", "live.com", "msn.com", "office365.com"}),
        ("protection.outlook.com",),
    ),
    _Provider(
        "Yahoo",
        ("smtp.mail.yahoo.com", 465, "ssl"),
        ("pop.mail.yahoo.com", 995, "ssl"),
        frozenset({"yahoo.com", "ymail.com", "rocketmail.com"}),
        ("yahoodns.net",),
    ),
    _Provider(
        "iCloud",
        ("smtp.mail.me.com", 587, "tls"),
        None,
        frozenset({"icloud.com", "me.com", "mac.com"}),
        ("mail.icloud.com",),
    ),
    _Provider(
        "Fastmail",
        ("smtp.fastmail.com", 465, "ssl"),
        ("pop.fastmail.com", 995, "ssl"),
        frozenset({"fastmail.com", "fastmail.fm"}),
        ("messagingengine.com",),
    ),
    _Provider(
        "GMX",
        ("mail.gmx.net", 465, "ssl"),
        ("pop.gmx.net", 995, "ssl"),
        frozenset({"gmx.net", "gmx.de", "gmx.at", "gmx.ch"}),
    ),
    _Provider(
        "GMX.com",
        ("mail.gmx.com", 465, "ssl"),
        ("pop.gmx.com", 995, "ssl"),
        frozenset({"gmx.com", "gmx.us", "gmx.co.uk"}),
    ),
    _Provider(
        "Zoho",
        ("smtp.zoho.com", 465, "ssl"),
        ("pop.zoho.com", 995, "ssl"),
        frozenset({"zoho.com", "zohomail.com"}),
    ),
)

# (SRV owner prefix, encryption), most preferred first.
_SMTP_SERVICES: tuple[tuple[str, Encryption], ...] = (
    ("_submissions._tcp", "ssl"),
    ("_submission._tcp", "tls"),
)
_POP3_SERVICES: tuple[tuple[str, Encryption], ...] = (
    ("_pop3s._tcp", "ssl"),
    ("_pop3._tcp", "tls"),
)


def _has_suffix(host: str, suffix: str) -> bool:
    return host == suffix or host.endswith("." + suffix)


def _provider_for_domain(domain: str) -> _Provider | None:
    """The known provider serving the ASCII ``domain`` by name, if any."""
    for provider in _PROVIDERS:
        if domain in provider.domains:
            return provider
    return None


def _provider_for_mx(hosts: Iterable[str]) -> _Provider | None:
    """The known provider operating the first of ``hosts`` (MX exchanges) it recognises."""
    for host in hosts:
        for provider in _PROVIDERS:
            if any(_has_suffix(host, suffix) for suffix in provider.mx_suffixes):
                return provider
    return None


def order_srv_records(records: Sequence[SRV], rng: random.Random | None = None) -> list[SRV]:
    """Order SRV records the way RFC 2782 asks clients to try them.

    Lower priority first. Among equal priorities each next record is drawn at
    random with a chance proportional to its weight; records of weight 0 follow
    the weighted ones, in random order. (RFC 2782's own recipe draws from
    ``0..sum`` inclusive, which slightly favours the first record; this draw is
    exactly proportional.)
    """
    rng = rng if rng is not None else random.Random()
    ordered: list[SRV] = []
    for priority in sorted({record.priority for record in records}):
        # Answers arrive in any order; a canonical order makes a seeded rng repeatable.
        group = sorted(
            (record for record in records if record.priority == priority),
            key=lambda record: (record.target, record.port, record.weight),
        )
        while group:
            total = sum(record.weight for record in group)
            if total == 0:
                ordered.append(group.pop(rng.randrange(len(group))))
                continue
            pick = rng.randrange(total)
            running = 0
            for index, record in enumerate(group):
                running += record.weight
                if running > pick:
                    ordered.append(group.pop(index))
                    break
    return ordered


def discover_servers(
    domain: str,
    *,
    resolver: dns.resolver.Resolver | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    rng: random.Random | None = None,
) -> MailServerSettings:
    """Find the SMTP submission and POP3 servers for ``domain`` (see the module notes).

    ``resolver`` defaults to one configured from the system; ``timeout`` bounds the
    total time of every DNS query made; ``rng`` chooses among SRV records of equal
    priority (pass a seeded one for repeatable results).

    Raises :class:`~src.handlers.errors.MailValidationError` (``field="domain"``)
    when ``domain`` is malformed or does not exist, and :class:`DNSLookupError` /
    :class:`DNSTimeoutError` when DNS fails.
    """
    name = _dns.to_ascii_domain(domain)
    deadline = _dns.Deadline(timeout)
    try:
        resolver = resolver if resolver is not None else _dns.new_resolver()
        return _discover(name, resolver, deadline, rng)
    except dns.resolver.NXDOMAIN:
        raise MailValidationError(f"domain {name} does not exist", field="domain") from None
    except dns.exception.Timeout:
        raise DNSTimeoutError(f"DNS lookups for {name} timed out after {timeout:g}s") from None
    except dns.resolver.NoNameservers:
        raise DNSLookupError(f"DNS servers failed to answer for {name} (SERVFAIL)") from None
    except dns.exception.DNSException as error:
        raise DNSLookupError(f"DNS lookup for {name} failed: {error}") from None


def _discover(
    name: str,
    resolver: dns.resolver.Resolver,
    deadline: _dns.Deadline,
    rng: random.Random | None,
) -> MailServerSettings:
    smtp, smtp_found = _lookup_service(name, _SMTP_SERVICES, resolver, deadline, rng)
    pop3, pop3_found = _lookup_service(name, _POP3_SERVICES, resolver, deadline, rng)
    if smtp_found or pop3_found:
        log.debug("servers for %s from SRV: smtp=%s pop3=%s", name, smtp, pop3)
        return MailServerSettings(*_unpack(smtp), *_unpack(pop3), "srv")

    provider = _provider_for_domain(name)
    if provider is None:
        # Also the existence test: NXDOMAIN here means the domain is not there.
        mx = _dns.resolve(resolver, name, dns.rdatatype.MX, deadline)
        if mx is not None:
            records = sorted((r for r in mx if isinstance(r, MX)), key=lambda r: r.preference)
            provider = _provider_for_mx(_dns.host_text(r.exchange) for r in records)
    if provider is not None:
        log.debug("servers for %s from the %s defaults", name, provider.name)
        return provider.settings()

    log.debug("no SRV records or known provider for %s; guessing", name)
    return MailServerSettings(f"smtp.{name}", 587, "tls", f"pop.{name}", 995, "ssl", "guess")


_Endpoint = tuple[str, int, Encryption]


def _unpack(endpoint: _Endpoint | None) -> tuple[str | None, int | None, Encryption | None]:
    return endpoint if endpoint is not None else (None, None, None)


def _lookup_service(
    name: str,
    services: Sequence[tuple[str, Encryption]],
    resolver: dns.resolver.Resolver,
    deadline: _dns.Deadline,
    rng: random.Random | None,
) -> tuple[_Endpoint | None, bool]:
    """The best endpoint among ``services``, and whether any SRV record was seen."""
    found = False
    for prefix, encryption in services:
        try:
            answer = _dns.resolve(resolver, f"{prefix}.{name}", dns.rdatatype.SRV, deadline)
        except dns.resolver.NXDOMAIN:
            continue
        if answer is None:
            continue
        records = [record for record in answer if isinstance(record, SRV)]
        if not records:
            continue
        found = True
        usable = [r for r in records if _dns.host_text(r.target) and r.port != 0]
        if not usable:
            log.debug("%s.%s: service not offered", prefix, name)
            continue
        best = order_srv_records(usable, rng)[0]
        return (_dns.host_text(best.target), best.port, encryption), True
    return None, found
