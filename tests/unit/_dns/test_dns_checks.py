"""Deliverability checks and server discovery, against a loopback DNS server only."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator

import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.IN.SRV
import dns.resolver
import pytest

from src.handlers._dns import deliverability
from src.handlers._dns import resolver as _dns
from src.handlers._dns.deliverability import (
    DeliverabilityChecker,
    DeliverabilityResult,
    check_deliverability,
)
from src.handlers._dns.discovery import (
    MailServerSettings,
    discover_servers,
    order_srv_records,
)
from src.handlers.errors import (
    DNSLookupError,
    DNSTimeoutError,
    MailConnectionError,
    MailTimeoutError,
    MailValidationError,
)
from src.handlers.retry import is_retryable
from src.testing.dns_server import LoopbackDNSServer, Zone

ZONE: Zone = {
    # deliverability
    ("mx.test.", "MX"): ["10 mail.mx.test."],
    ("mail.mx.test.", "A"): ["192.0.2.25"],
    ("a-only.test.", "A"): ["192.0.2.1"],
    ("aaaa-only.test.", "AAAA"): ["2001:db8::1"],
    ("nullmx.test.", "MX"): ["0 ."],
    ("mixed-null.test.", "MX"): ["0 .", "10 mail.mx.test."],
    ("no-address.test.", "TXT"): ['"v=spf1 -all"'],
    ("xn--bcher-kva.test.", "MX"): ["10 mail.mx.test."],
    # discovery: SRV
    ("srv.test.", "MX"): ["10 mail.mx.test."],
    ("_submissions._tcp.srv.test.", "SRV"): [
        "20 0 465 backup.srv.test.",
        "10 0 465 primary.srv.test.",
    ],
    ("_submission._tcp.srv.test.", "SRV"): ["0 0 587 starttls.srv.test."],
    ("_pop3s._tcp.srv.test.", "SRV"): ["10 0 995 pop.srv.test."],
    ("_pop3._tcp.srv.test.", "SRV"): ["0 0 110 plainpop.srv.test."],
    ("dot.test.", "MX"): ["10 mail.mx.test."],
    ("_submissions._tcp.dot.test.", "SRV"): ["0 0 0 ."],
    ("_submission._tcp.dot.test.", "SRV"): ["0 1 587 smtp.dot.test."],
    ("_pop3s._tcp.dot.test.", "SRV"): ["0 0 0 ."],
    ("_pop3._tcp.dot.test.", "SRV"): ["0 1 110 pop.dot.test."],
    ("nopop.test.", "MX"): ["10 mail.mx.test."],
    ("_submission._tcp.nopop.test.", "SRV"): ["0 1 587 smtp.nopop.test."],
    ("_pop3s._tcp.nopop.test.", "SRV"): ["0 0 0 ."],
    ("_pop3._tcp.nopop.test.", "SRV"): ["0 0 0 ."],
    # discovery: providers and guesses
    ("gmail.com.", "MX"): ["5 gmail-smtp-in.l.google.com."],
    ("icloud.com.", "MX"): ["10 mx01.mail.icloud.com."],
    ("hosted-by-google.test.", "MX"): ["1 ASPMX.L.GOOGLE.COM.", "5 alt1.aspmx.l.google.com."],
    ("hosted-by-microsoft.test.", "MX"): ["0 tenant.mail.protection.outlook.com."],
    ("plain.test.", "MX"): ["10 mx.plain.test."],
    ("no-mx.test.", "A"): ["192.0.2.7"],
}

BROKEN = "broken.test."
SILENT = "silent.test."
SHORT_TIMEOUT = 0.3


@pytest.fixture
def server() -> Iterator[LoopbackDNSServer]:
    """A loopback DNS server for one test, stopped when the test ends."""
    with LoopbackDNSServer(ZONE, servfail=[BROKEN], drop=[SILENT]) as dns_server:
        yield dns_server


@pytest.fixture
def resolver(server: LoopbackDNSServer) -> dns.resolver.Resolver:
    return server.resolver(lifetime=2.0)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# --- the test server itself ------------------------------------------------------------


def test_server_answers_counts_and_distinguishes_nodata_from_nxdomain(
    server: LoopbackDNSServer, resolver: dns.resolver.Resolver
) -> None:
    answer = resolver.resolve("mx.test.", "MX")
    assert [r.to_text() for r in answer] == ["10 mail.mx.test."]
    nodata = resolver.resolve("mx.test.", "AAAA", raise_on_no_answer=False)
    assert nodata.rrset is None
    with pytest.raises(dns.resolver.NXDOMAIN):
        resolver.resolve("missing.test.", "A")
    # _tcp.srv.test. is an empty non-terminal: it exists without records.
    assert resolver.resolve("_tcp.srv.test.", "A", raise_on_no_answer=False).rrset is None
    assert server.query_count == 4
    assert server.queries[0] == ("mx.test.", "MX")


def test_server_can_answer_unknown_names_with_nodata() -> None:
    with LoopbackDNSServer(ZONE, nxdomain_for_unknown=False) as dns_server:
        answer = dns_server.resolver().resolve("missing.test.", "MX", raise_on_no_answer=False)
        assert answer.rrset is None
        assert dns_server.query_count == 1
        dns_server.reset_counter()
        assert dns_server.query_count == 0


def test_server_stop_closes_socket_and_is_idempotent() -> None:
    dns_server = LoopbackDNSServer(ZONE)
    dns_server.start()
    assert dns_server.port != 0
    sock = dns_server._sock
    dns_server.stop()
    dns_server.stop()
    assert sock is not None and sock.fileno() == -1


# --- deliverability ----------------------------------------------------------------------


def test_domain_with_mx_is_deliverable(resolver: dns.resolver.Resolver) -> None:
    assert check_deliverability("mx.test", resolver=resolver) == (True, None)


@pytest.mark.parametrize("domain", ["a-only.test", "aaaa-only.test"])
def test_address_record_is_the_implicit_mx(resolver: dns.resolver.Resolver, domain: str) -> None:
    assert check_deliverability(domain, resolver=resolver) == (True, None)


def test_a_record_found_before_aaaa_is_asked(
    server: LoopbackDNSServer, resolver: dns.resolver.Resolver
) -> None:
    check_deliverability("a-only.test", resolver=resolver)
    assert [qtype for _, qtype in server.queries] == ["MX", "A"]


def test_null_mx_is_not_deliverable(resolver: dns.resolver.Resolver) -> None:
    deliverable, reason = check_deliverability("nullmx.test", resolver=resolver)
    assert deliverable is False
    assert reason is not None and "null MX" in reason


def test_null_mx_beside_real_mx_is_ignored(resolver: dns.resolver.Resolver) -> None:
    assert check_deliverability("mixed-null.test", resolver=resolver) == (True, None)


def test_nxdomain_is_not_deliverable(resolver: dns.resolver.Resolver) -> None:
    deliverable, reason = check_deliverability("missing.test", resolver=resolver)
    assert deliverable is False
    assert reason == "domain missing.test does not exist"


def test_domain_without_mx_or_address_is_not_deliverable(
    resolver: dns.resolver.Resolver,
) -> None:
    deliverable, reason = check_deliverability("no-address.test", resolver=resolver)
    assert deliverable is False
    assert reason is not None and "no MX, A or AAAA" in reason


def test_servfail_is_deliverable_but_not_verified(resolver: dns.resolver.Resolver) -> None:
    result = DeliverabilityChecker(resolver).check("broken.test")
    assert result.deliverable is True
    assert result.verified is False
    assert result.reason is not None and result.reason.startswith("could not verify")
    assert "SERVFAIL" in result.reason


def test_timeout_is_bounded_and_not_verified(resolver: dns.resolver.Resolver) -> None:
    started = time.monotonic()
    result = DeliverabilityChecker(resolver, timeout=SHORT_TIMEOUT).check("silent.test")
    elapsed = time.monotonic() - started
    assert elapsed < SHORT_TIMEOUT + 1.0
    assert result == DeliverabilityResult(
        "silent.test", True, "could not verify: DNS lookup timed out after 0.3s", False
    )


def test_convenience_function_reports_timeout_as_could_not_verify(
    resolver: dns.resolver.Resolver,
) -> None:
    deliverable, reason = check_deliverability(
        "silent.test", resolver=resolver, timeout=SHORT_TIMEOUT
    )
    assert deliverable is True
    assert reason is not None and reason.startswith("could not verify")


def test_cache_hit_sends_no_query(
    server: LoopbackDNSServer, resolver: dns.resolver.Resolver
) -> None:
    checker = DeliverabilityChecker(resolver, clock=FakeClock())
    first = checker.check("mx.test")
    count = server.query_count
    # A different spelling of the same domain shares the entry.
    assert checker.check("MX.Test.") is first
    assert server.query_count == count == 1


def test_cache_entry_expires_after_ttl(
    server: LoopbackDNSServer, resolver: dns.resolver.Resolver
) -> None:
    clock = FakeClock()
    checker = DeliverabilityChecker(resolver, ttl=60, clock=clock)
    checker.check("nullmx.test")
    clock.now += 59.9
    checker.check("nullmx.test")
    assert server.query_count == 1
    clock.now += 0.1
    assert checker.check("nullmx.test").deliverable is False
    assert server.query_count == 2


def test_unverified_answers_are_not_cached(
    server: LoopbackDNSServer, resolver: dns.resolver.Resolver
) -> None:
    checker = DeliverabilityChecker(resolver, clock=FakeClock())
    checker.check("broken.test")
    checker.check("broken.test")
    assert server.query_count == 2
    assert "cached: 0" in repr(checker)


def test_cache_keeps_at_most_max_entries(resolver: dns.resolver.Resolver) -> None:
    checker = DeliverabilityChecker(resolver, max_entries=2, clock=FakeClock())
    for domain in ("mx.test", "a-only.test", "nullmx.test"):
        checker.check(domain)
    assert list(checker._cache) == ["a-only.test", "nullmx.test"]
    checker.clear()
    assert "cached: 0" in repr(checker)


def test_checker_is_safe_to_share_between_threads(
    server: LoopbackDNSServer, resolver: dns.resolver.Resolver
) -> None:
    checker = DeliverabilityChecker(resolver)
    domains = ["mx.test", "a-only.test", "nullmx.test", "missing.test"] * 5
    results: dict[int, DeliverabilityResult] = {}
    errors: list[BaseException] = []

    def work(index: int, domain: str) -> None:
        try:
            results[index] = checker.check(domain)
        except BaseException as error:  # pragma: no cover - reported below
            errors.append(error)

    threads = [threading.Thread(target=work, args=item) for item in enumerate(domains)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert not errors
    assert [results[i].deliverable for i in range(len(domains))] == [True, True, False, False] * 5
    query_count = server.query_count
    checker.check("mx.test")
    assert server.query_count == query_count


def test_idn_domain_is_looked_up_as_a_labels(
    server: LoopbackDNSServer, resolver: dns.resolver.Resolver
) -> None:
    result = DeliverabilityChecker(resolver).check("Bücher.test")
    assert result == DeliverabilityResult("xn--bcher-kva.test", True)
    assert server.queries == [("xn--bcher-kva.test.", "MX")]


@pytest.mark.parametrize(
    "domain",
    [
        "",
        ".",
        "a..test",
        "[192.0.2.1]",
        "bad domain.test",
        "x" * 64 + ".test",
        "line\r\nbreak.test",
        ("a" * 60 + ".") * 5 + "test",
        "user@mx.test",
    ],
)
def test_malformed_domain_raises_validation_error(
    server: LoopbackDNSServer, resolver: dns.resolver.Resolver, domain: str
) -> None:
    with pytest.raises(MailValidationError) as info:
        check_deliverability(domain, resolver=resolver)
    assert info.value.field == "domain"
    assert server.query_count == 0


def test_no_resolver_is_built_until_the_first_check(monkeypatch: pytest.MonkeyPatch) -> None:
    built: list[int] = []

    def fake_resolver() -> dns.resolver.Resolver:
        built.append(1)
        return dns.resolver.Resolver(configure=False)

    monkeypatch.setattr(_dns, "new_resolver", fake_resolver)
    checker = DeliverabilityChecker()
    assert built == []
    assert checker.resolver is checker.resolver
    assert built == [1]
    assert isinstance(deliverability.default_checker, DeliverabilityChecker)


def test_missing_resolver_configuration_is_not_verified_or_lookup_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_configuration() -> dns.resolver.Resolver:
        raise dns.resolver.NoResolverConfiguration("no nameservers")  # type: ignore[no-untyped-call]

    monkeypatch.setattr(_dns, "new_resolver", no_configuration)
    result = DeliverabilityChecker().check("mx.test")
    assert (result.deliverable, result.verified) == (True, False)
    with pytest.raises(DNSLookupError):
        discover_servers("plain.test")


def test_checker_refuses_bad_options() -> None:
    with pytest.raises(ValueError):
        DeliverabilityChecker(timeout=0)
    with pytest.raises(ValueError):
        DeliverabilityChecker(ttl=-1)
    with pytest.raises(ValueError):
        DeliverabilityChecker(max_entries=0)


# --- discovery: SRV ------------------------------------------------------------------------


def test_srv_submissions_preferred_and_lowest_priority_chosen(
    resolver: dns.resolver.Resolver,
) -> None:
    settings = discover_servers("srv.test", resolver=resolver)
    assert settings == MailServerSettings(
        "primary.srv.test", 465, "ssl", "pop.srv.test", 995, "ssl", "srv"
    )


def test_dot_target_means_not_offered_and_falls_to_starttls(
    resolver: dns.resolver.Resolver,
) -> None:
    settings = discover_servers("dot.test", resolver=resolver)
    assert settings == MailServerSettings(
        "smtp.dot.test", 587, "tls", "pop.dot.test", 110, "tls", "srv"
    )


def test_protocol_with_only_dot_targets_is_none(resolver: dns.resolver.Resolver) -> None:
    settings = discover_servers("nopop.test", resolver=resolver)
    assert settings == MailServerSettings("smtp.nopop.test", 587, "tls", None, None, None, "srv")


def _srv(priority: int, weight: int, target: str) -> dns.rdtypes.IN.SRV.SRV:
    rdata = dns.rdata.from_text(
        dns.rdataclass.IN, dns.rdatatype.SRV, f"{priority} {weight} 25 {target}"
    )
    assert isinstance(rdata, dns.rdtypes.IN.SRV.SRV)
    return rdata


def test_srv_weights_share_load_within_a_priority() -> None:
    records = [_srv(10, 1, "light.test."), _srv(10, 9, "heavy.test."), _srv(20, 100, "far.test.")]
    rng = random.Random(1234)
    firsts = [order_srv_records(records, rng)[0].target.to_text() for _ in range(2000)]
    heavy_share = firsts.count("heavy.test.") / len(firsts)
    assert 0.85 < heavy_share < 0.95
    assert "far.test." not in firsts
    assert order_srv_records(records, rng)[-1].target.to_text() == "far.test."


def test_zero_weight_srv_records_come_after_weighted_ones() -> None:
    records = [_srv(0, 0, "zero.test."), _srv(0, 0, "nought.test."), _srv(0, 5, "five.test.")]
    rng = random.Random(7)
    orders = {tuple(r.target.to_text() for r in order_srv_records(records, rng)) for _ in range(50)}
    assert orders == {
        ("five.test.", "zero.test.", "nought.test."),
        ("five.test.", "nought.test.", "zero.test."),
    }


def test_srv_choice_is_repeatable_with_a_seeded_rng(server: LoopbackDNSServer) -> None:
    zone: Zone = {
        ("weighted.test.", "MX"): ["10 mail.mx.test."],
        ("_submissions._tcp.weighted.test.", "SRV"): [
            "0 1 465 a.weighted.test.",
            "0 1 465 b.weighted.test.",
            "0 1 465 c.weighted.test.",
        ],
    }
    with LoopbackDNSServer(zone) as weighted:
        resolver = weighted.resolver()
        hosts = {
            discover_servers("weighted.test", resolver=resolver, rng=random.Random(seed)).smtp_host
            for seed in range(30)
        }
        again = discover_servers("weighted.test", resolver=resolver, rng=random.Random(3))
        assert again == discover_servers("weighted.test", resolver=resolver, rng=random.Random(3))
    assert hosts == {"a.weighted.test", "b.weighted.test", "c.weighted.test"}


# --- discovery: providers and guesses ------------------------------------------------------


def test_known_provider_by_domain_name(resolver: dns.resolver.Resolver) -> None:
    settings = discover_servers("GMail.com", resolver=resolver)
    assert settings == MailServerSettings(
        "smtp.gmail.com", 465, "ssl", "pop.gmail.com", 995, "ssl", "provider-defaults"
    )


def test_provider_without_pop3(resolver: dns.resolver.Resolver) -> None:
    settings = discover_servers("icloud.com", resolver=resolver)
    assert (settings.smtp_host, settings.smtp_port, settings.smtp_encryption) == (
        "smtp.mail.me.com",
        587,
        "tls",
    )
    assert (settings.pop3_host, settings.pop3_port, settings.pop3_encryption) == (None, None, None)


@pytest.mark.parametrize(
    ("domain", "smtp_host", "pop3_host"),
    [
        ("hosted-by-google.test", "smtp.gmail.com", "pop.gmail.com"),
        ("hosted-by-microsoft.test", "smtp.office365.com", "outlook.office365.com"),
    ],
)
def test_provider_detected_from_mx_hosts(
    resolver: dns.resolver.Resolver, domain: str, smtp_host: str, pop3_host: str
) -> None:
    settings = discover_servers(domain, resolver=resolver)
    assert (settings.smtp_host, settings.pop3_host, settings.source) == (
        smtp_host,
        pop3_host,
        "provider-defaults",
    )


@pytest.mark.parametrize("domain", ["plain.test", "no-mx.test"])
def test_guess_when_nothing_is_known(resolver: dns.resolver.Resolver, domain: str) -> None:
    settings = discover_servers(domain, resolver=resolver)
    assert settings == MailServerSettings(
        f"smtp.{domain}", 587, "tls", f"pop.{domain}", 995, "ssl", "guess"
    )


def test_guess_for_idn_domain_uses_a_labels(resolver: dns.resolver.Resolver) -> None:
    settings = discover_servers("bücher.test", resolver=resolver)
    assert settings.smtp_host == "smtp.xn--bcher-kva.test"
    assert settings.source == "guess"


# --- discovery: failures -------------------------------------------------------------------


def test_discovery_of_missing_domain_raises_validation_error(
    resolver: dns.resolver.Resolver,
) -> None:
    with pytest.raises(MailValidationError, match="does not exist") as info:
        discover_servers("missing.test", resolver=resolver)
    assert info.value.field == "domain"


def test_discovery_servfail_raises_retryable_lookup_error(
    resolver: dns.resolver.Resolver,
) -> None:
    with pytest.raises(DNSLookupError) as info:
        discover_servers("broken.test", resolver=resolver)
    assert isinstance(info.value, MailConnectionError)
    assert not isinstance(info.value, TimeoutError)
    assert is_retryable(info.value)


def test_discovery_timeout_is_bounded_and_typed(resolver: dns.resolver.Resolver) -> None:
    started = time.monotonic()
    with pytest.raises(DNSTimeoutError) as info:
        discover_servers("silent.test", resolver=resolver, timeout=SHORT_TIMEOUT)
    assert time.monotonic() - started < SHORT_TIMEOUT + 1.0
    assert isinstance(info.value, MailTimeoutError)
    assert isinstance(info.value, TimeoutError)
    assert is_retryable(info.value)


def test_discovery_refuses_malformed_domain(server: LoopbackDNSServer) -> None:
    with pytest.raises(MailValidationError):
        discover_servers("[192.0.2.1]", resolver=server.resolver())
    assert server.query_count == 0
