"""Measure mailhandlers against smtplib, aiosmtplib, Django and poplib in one run.

Usage (from the project root)::

    python -m bench.run                   # everything; rewrites docs/performance.md
    python -m bench.run --smoke           # tiny counts, one repetition, nothing written
    python -m bench.run --only smtp,pop3  # some groups (see GROUPS)

It installs what it needs first (the ``bench`` extra with pip; Postfix and Dovecot
with ``.ci/install-mail-servers.sh`` when run as root), starts private loopback
servers, runs every case of a group interleaved with the others, takes the median of
several repetitions and prints each figure as a ratio to its baseline.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib.util
import json
import logging
import os
import platform
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "performance.md"
START, END = "<!-- bench:results:start -->", "<!-- bench:results:end -->"
#: The celery group's figures have a block of their own, so either can be rerun alone.
CELERY_START, CELERY_END = "<!-- bench:celery:start -->", "<!-- bench:celery:end -->"
#: Groups that need the private Postfix and Dovecot (root, the Debian packages).
STACK_GROUPS = ("tls", "chunking", "pop3", "pop3-delay", "pop3-rss", "sync", "celery")
#: The ``bench`` extra of pyproject.toml (used as is if the extra is not declared yet).
BENCH_REQUIREMENTS = (
    "aiosmtplib>=3.0",
    "Django>=4.2",
    "trustme>=1.1",
    "dkimpy>=1.1",
    "pynacl>=1.4",
)
GROUPS = (
    "smtp",
    "build",
    "tls",
    "delay",
    "chunking",
    "raw",
    "pop3",
    "pop3-delay",
    "pop3-rss",
    "sync",
    "dkim",
    "parse",
    "celery",
)


@dataclass(frozen=True)
class Plan:
    """How much work each measurement does."""

    repetitions: int
    smtp_messages: int
    tls_ours: int
    tls_django: int
    delay_messages: int
    delay_messages_many: int
    raw_messages: int
    builds: int
    pooled_connections: int
    own_context_connections: int
    small_messages: int
    hundred: int
    big_messages: int
    big_size: int
    huge_size: int
    sync_mailbox: int
    sync_new: int
    dkim_signatures: int
    corpus_rounds: int


FULL = Plan(
    repetitions=5,
    smtp_messages=2000,
    tls_ours=400,
    tls_django=40,
    delay_messages=30,
    delay_messages_many=8,
    raw_messages=2000,
    builds=300,
    pooled_connections=100,
    own_context_connections=20,
    small_messages=1000,
    hundred=100,
    big_messages=4,
    big_size=5 * 1024 * 1024,
    huge_size=25 * 1024 * 1024,
    sync_mailbox=10_000,
    sync_new=10,
    dkim_signatures=200,
    corpus_rounds=5,
)
SMOKE = Plan(
    repetitions=1,
    smtp_messages=50,
    tls_ours=10,
    tls_django=3,
    delay_messages=3,
    delay_messages_many=2,
    raw_messages=50,
    builds=5,
    pooled_connections=5,
    own_context_connections=2,
    small_messages=40,
    hundred=20,
    big_messages=1,
    big_size=512 * 1024,
    huge_size=2 * 1024 * 1024,
    sync_mailbox=200,
    sync_new=10,
    dkim_signatures=5,
    corpus_rounds=1,
)


# --------------------------------------------------------------------------- setup


def ensure_installed() -> None:
    """Install the bench extra and the mail servers if they are missing."""
    modules = ("aiosmtplib", "django", "trustme", "dkim", "nacl")
    missing = [name for name in modules if importlib.util.find_spec(name) is None]
    if missing:
        print(f"installing the bench extra (missing: {', '.join(missing)})", flush=True)
        declared = re.search(r"(?m)^bench\s*=", (ROOT / "pyproject.toml").read_text())
        targets = [f"{ROOT}[bench]"] if declared else list(BENCH_REQUIREMENTS)
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", *(["-e"] if declared else []), *targets],
            check=True,
        )
    have_servers = os.access("/usr/sbin/smtp-sink", os.X_OK) and os.access(
        "/usr/lib/dovecot/pop3", os.X_OK
    )
    if not have_servers:
        if os.geteuid() != 0:
            raise SystemExit("Postfix/Dovecot missing: run `sudo bash .ci/install-mail-servers.sh`")
        subprocess.run(["bash", str(ROOT / ".ci" / "install-mail-servers.sh")], check=True)


def machine_note() -> str:
    cpu = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    from tests.interop.mailstack import MailStackError, server_versions

    try:
        versions = server_versions()
    except (MailStackError, OSError):
        versions = {"postfix": "(not installed)", "dovecot": "(not installed)"}
    import aiosmtplib
    import django

    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    return (
        f"{os.cpu_count()} cores ({cpu}), Linux {platform.release()}, "
        f"Python {platform.python_version()}, Postfix {versions['postfix']} (smtp-sink, smtpd), "
        f"Dovecot {versions['dovecot']}, Django {django.get_version()}, "
        f"aiosmtplib {aiosmtplib.__version__}; load average at start {load}"
    )


# --------------------------------------------------------------------------- reporting


class Report:
    def __init__(self, *, smoke: bool = False) -> None:
        from bench.measure import Row

        self.smoke = smoke  # tiny counts: the figures prove the code runs, nothing more
        self.rows: list[Row] = []
        self.notes: list[str] = []

    def add(self, row: Any) -> None:
        from bench.measure import fmt

        self.rows.append(row)
        direction = "" if row.higher_is_better else " (lower is better)"
        print(
            f"  [{row.target:>4}] {row.what}: {fmt(row.ours)} vs {fmt(row.baseline)} {row.unit}"
            f"{direction} -> ratio {row.ratio:.2f} "
            f"({row.requirement}: {'not judged in a smoke run' if self.smoke else row.verdict})",
            flush=True,
        )

    def note(self, text: str) -> None:
        self.notes.append(text)
        print(f"  note: {text}", flush=True)

    def markdown(self, plan: Plan, command: str, machine: str, seconds: float) -> str:
        from bench.measure import fmt

        lines = [
            START,
            f"Run on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC with `{command}` "
            f"({seconds:.0f} s; {plan.repetitions} interleaved repetitions, medians).",
            "",
            f"Machine: {machine}.",
            "",
            "| target | measurement | ours | baseline | unit | ratio | required | verdict |",
            "|---|---|---:|---:|---|---:|---:|---|",
        ]

        def order(row: Any) -> tuple[int, str]:
            digits = re.match(r"\d+", row.target)
            return (int(digits.group()) if digits else 99, row.target)

        for row in sorted(self.rows, key=order):
            unit = row.unit + ("" if row.higher_is_better else " (lower is better)")
            lines.append(
                f"| {row.target} | {row.what} | {fmt(row.ours)} | {fmt(row.baseline)} | {unit} "
                f"| {row.ratio:.2f} | {row.requirement} | {row.verdict} |"
            )
        if self.notes:
            lines += ["", "Notes from this run:", ""]
            lines += [f"- {note}" for note in self.notes]
        lines.append(END)
        return "\n".join(lines)


def write_doc(block: str, start: str = START, end: str = END) -> None:
    text = DOC.read_text() if DOC.exists() else f"# Performance\n\n{start}\n{end}\n"
    if start not in text or end not in text:
        text = text.rstrip() + f"\n\n## Results\n\n{start}\n{end}\n"
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    DOC.write_text(head + block + tail)
    print(f"wrote {DOC.relative_to(ROOT)}")


# --------------------------------------------------------------------------- helpers


def _timed_rate(count: int, work: Callable[[], object]) -> float:
    started = time.perf_counter()
    work()
    return count / (time.perf_counter() - started)


def _row(
    target: str,
    what: str,
    samples: dict[str, list[float]],
    ours: str,
    base: str,
    unit: str,
    required: float | None,
    *,
    higher: bool = True,
    note: str = "",
) -> Any:
    from bench.measure import Row, median

    return Row(
        target,
        what,
        median(samples[ours]),
        median(samples[base]),
        unit,
        higher_is_better=higher,
        required=required,
        note=note,
        samples=samples,
    )


def _quiet_library_logs() -> None:
    # Plain-text POP3 logins on loopback log a warning per session; not news here.
    logging.getLogger("src.handlers").setLevel(logging.ERROR)


# --------------------------------------------------------------------------- SMTP groups


def group_smtp(plan: Plan, report: Report) -> None:
    """Targets 1 and 2: one warm connection to smtp-sink, 2 KB text, one recipient,
    under each CPU placement of :mod:`bench.placement`."""
    from bench import peers
    from bench.measure import interleaved, rate
    from bench.placement import placed, placements
    from bench.servers import HOST, SmtpSink
    from src.handlers._mime.builder import build_message
    from src.handlers._smtp.pool import SMTPConnectionPool
    from src.handlers.smtp import SMTPProtocolHandler

    to = peers.recipients(1)
    n = plan.smtp_messages
    with SmtpSink() as sink:

        def handler(size: int) -> SMTPProtocolHandler:
            return SMTPProtocolHandler(
                HOST,
                sink.port,
                encryption="none",
                from_address=peers.SENDER,
                pool_size=size,
                pool=SMTPConnectionPool(max_connections=size),
            )

        one, four = handler(1), handler(4)
        data = build_message(
            from_address=peers.SENDER,
            to_addresses=to,
            subject=peers.SUBJECT,
            text_body=peers.TEXT_2KB,
        ).data
        smtp = peers.SmtplibSender(HOST, sink.port, data)
        django = peers.django_backend(HOST, sink.port)
        django.open()
        aio = peers.AiosmtplibSender(HOST, sink.port, data)

        def send_one() -> None:
            result = one.send_message(to, peers.SUBJECT, peers.TEXT_2KB)
            assert result.success, result

        def threads() -> float:
            def work() -> None:
                for _ in range(n // 4):
                    result = four.send_message(to, peers.SUBJECT, peers.TEXT_2KB)
                    assert result.success, result

            workers = [threading.Thread(target=work) for _ in range(4)]
            started = time.perf_counter()
            for worker in workers:
                worker.start()
            for worker in workers:
                worker.join()
            return (n // 4) * 4 / (time.perf_counter() - started)

        for warm in (send_one, lambda: smtp.send(to), lambda: peers.django_send_on(django, to)):
            for _ in range(20):
                warm()
        threads()
        for placement in placements():
            with placed(placement, sink.pid):
                samples = interleaved(
                    {
                        "ours": lambda: rate(send_one, n),
                        "ours x4 threads": threads,
                        "smtplib": lambda: rate(lambda: smtp.send(to), n),
                        "django": lambda: rate(lambda: peers.django_send_on(django, to), n),
                        "aiosmtplib": lambda: _timed_rate(n, lambda: aio.send_many(to, n)),
                    },
                    plan.repetitions,
                )
                cpu = _smtp_cpu_breakdown(plan, one, smtp, django, sink.port, to)
            _smtp_rows(report, placement.name, samples, cpu)
        smtp.close()
        django.close()
        aio.close()
        one.close()
        four.close()


def _smtp_rows(
    report: Report, where: str, samples: dict[str, list[float]], cpu: dict[str, float]
) -> None:
    from bench.measure import Row, median

    unit = "msg/s"
    report.add(
        _row(
            "1",
            f"send_message (validate+build+send) vs Django EmailBackend, one open connection; "
            f"{where}",
            samples,
            "ours",
            "django",
            unit,
            3.0,
        )
    )
    report.add(
        _row(
            "1",
            f"send_message vs smtplib.sendmail of pre-built bytes, persistent; {where}",
            samples,
            "ours",
            "smtplib",
            unit,
            1.5,
        )
    )
    report.add(
        _row(
            "1",
            f"send_message vs aiosmtplib.sendmail of pre-built bytes, persistent; {where}",
            samples,
            "ours",
            "aiosmtplib",
            unit,
            None,
        )
    )
    x, z, r = cpu["ours"], cpu["smtplib"], cpu["rtt"]
    report.add(
        Row(
            "1c",
            "CPU per pooled send_message of 2 KB (validation and building included) "
            f"vs the 150 us budget; {where}",
            x,
            150.0,
            "us",
            higher_is_better=False,
            required=1.0,
        )
    )
    one_thread = median(samples["ours"])
    report.note(
        f"targets 1-2, {where}: CPU per message (process time): send_message {x:.0f} us, of "
        f"which validation and building {cpu['ours validate+build']:.0f} us; smtplib with "
        f"pre-built bytes {z:.0f} us; Django {cpu['django']:.0f} us. One NOOP round trip to "
        f"smtp-sink: {r:.0f} us. Pipelining saves smtplib's 2 extra round trips per message "
        f"(about {2 * r:.0f} us of waiting); send_message's CPU differs from smtplib's by "
        f"{x - z:+.0f} us. One thread's message takes {1e6 / one_thread:.0f} us of wall time, "
        f"{100 * x * one_thread / 1e6:.0f}% of it on the CPU; four threads share one GIL, "
        f"so they gain only on the rest, the time a message waits for its replies."
    )
    report.add(
        _row(
            "2",
            f"4 threads, one handler, pool_size=4 vs target 1 (one thread); {where}",
            samples,
            "ours x4 threads",
            "ours",
            unit,
            1.5,
        )
    )


def _smtp_cpu_breakdown(
    plan: Plan, one: Any, smtp: Any, django: Any, port: int, to: list[str]
) -> dict[str, float]:
    """CPU microseconds per message of each sender, and the loopback round trip.

    Wall time per message is about CPU + round trips x RTT; these figures let the
    document show which targets the protocol allows on this machine.
    """
    import socket

    from bench import peers
    from bench.measure import cpu_seconds_per_call, interleaved, median, seconds_per_call
    from bench.servers import HOST

    def prepare() -> object:
        # What send_message validates and builds (the building runs during the
        # envelope's round trip on the wire; here both run back to back).
        return one._prepare(
            to, peers.SUBJECT, peers.TEXT_2KB, None, None, None, None, None, None, None
        ).built()

    probe = socket.create_connection((HOST, port), timeout=10)
    reader = probe.makefile("rb")
    reader.readline()

    def noop() -> None:
        probe.sendall(b"NOOP\r\n")
        reader.readline()

    n = max(plan.smtp_messages // 2, 10)
    samples = interleaved(
        {
            "ours": lambda: (
                cpu_seconds_per_call(lambda: one.send_message(to, peers.SUBJECT, peers.TEXT_2KB), n)
                * 1e6
            ),
            "ours validate+build": lambda: cpu_seconds_per_call(prepare, n) * 1e6,
            "smtplib": lambda: cpu_seconds_per_call(lambda: smtp.send(to), n) * 1e6,
            "django": lambda: (
                cpu_seconds_per_call(lambda: peers.django_send_on(django, to), n) * 1e6
            ),
            "rtt": lambda: seconds_per_call(noop, n) * 1e6,
        },
        plan.repetitions,
    )
    reader.close()
    probe.close()
    return {name: median(values) for name, values in samples.items()}


def group_build(plan: Plan, report: Report) -> None:
    """Target 5: text + HTML + 100 KB attachment, CPU per message."""
    from bench import peers
    from bench.measure import cpu_seconds_per_call, interleaved
    from src.handlers._mime.builder import build_message
    from src.handlers.validation import SMTPMessageValidator

    text, html, blob = peers.TEXT_2KB, peers.HTML_2KB, peers.ATTACHMENT_100KB
    to = peers.recipients(1)
    attachments = [{"filename": "report.pdf", "content": blob, "contentType": "application/pdf"}]

    def ours() -> bytes:
        decoded = SMTPMessageValidator.check_message(
            to, peers.SUBJECT, text, html, None, None, attachments, peers.SENDER, None, None
        )
        return build_message(
            from_address=peers.SENDER,
            to_addresses=to,
            subject=peers.SUBJECT,
            text_body=text,
            html_body=html,
            attachments=decoded,
        ).data

    builders: dict[str, Callable[[], object]] = {
        "ours": ours,
        "django": lambda: peers.django_build(text, html, blob),
        "stdlib EmailMessage": lambda: peers.stdlib_build(text, html, blob),
        "email.mime": lambda: peers.legacy_mime_build(text, html, blob),
        "hand-assembled": lambda: peers.hand_build(text, html, blob),
    }
    for build in builders.values():
        build()
    samples = interleaved(
        {
            name: (lambda b=build: cpu_seconds_per_call(b, plan.builds) * 1000)
            for name, build in builders.items()
        },
        plan.repetitions,
    )
    # Ratios of speed: baseline time / our time, so "2x faster" reads as 2.
    for base, required in (
        ("django", 2.0),
        ("stdlib EmailMessage", None),
        ("email.mime", None),
        ("hand-assembled", None),
    ):
        row = _row(
            "5",
            f"build text+HTML+100 KB attachment (validation included) vs {base}",
            {"ours": [1 / v for v in samples["ours"]], base: [1 / v for v in samples[base]]},
            "ours",
            base,
            "messages/CPU-ms",
            required,
        )
        report.add(row)
    from bench.measure import median

    report.note(
        "target 5 CPU per message (ms): "
        + ", ".join(f"{name} {median(values):.3f}" for name, values in samples.items())
    )


def group_tls(plan: Plan, report: Report) -> None:
    """Targets 3 and 6, against Postfix smtpd with STARTTLS and AUTH (MailStack)."""
    from bench import peers
    from bench.measure import interleaved, rate, rss_kib
    from bench.servers import BenchStack
    from src.handlers._net import tls
    from src.handlers._smtp.pool import SMTPConnectionPool
    from src.handlers.smtp import SMTPProtocolHandler, shared_pool

    with BenchStack(users=()) as bench:
        stack = bench.stack
        # Both sides verify the server with the system bundle plus the test CA.
        os.environ["SSL_CERT_FILE"] = str(bench.ca_bundle())
        host, port = stack.host, stack.smtp_submission_port
        user, password = "sender", bench.password("sender")
        to = [stack.address("sender")]

        def per_request() -> None:
            handler = SMTPProtocolHandler(
                host, port, user, password, encryption="tls", from_address=peers.SENDER
            )
            result = handler.send_message(to, peers.SUBJECT, peers.TEXT_2KB)
            handler.close()
            assert result.success, result

        def django() -> None:
            peers.django_send_mail(host, port, user, password, to)

        for _ in range(3):
            per_request()
            django()
        created = shared_pool().get_stats()["created"]
        context = tls.default_context()
        samples = interleaved(
            {
                "ours": lambda: rate(per_request, plan.tls_ours),
                "django": lambda: rate(django, plan.tls_django),
            },
            plan.repetitions,
        )
        new_connections = shared_pool().get_stats()["created"] - created
        same_context = tls.default_context() is context
        report.add(
            _row(
                "3",
                "per request: new handler, send, close() with STARTTLS+AUTH vs Django send_mail()",
                samples,
                "ours",
                "django",
                "msg/s",
                10,
            )
        )
        report.note(
            f"target 3 steady state: {new_connections} new TCP connection(s) during "
            f"{plan.tls_ours * plan.repetitions} per-request sends; TLS context "
            f"{'reused (none built)' if same_context else 'REBUILT'}"
        )
        shared_pool().close_all()

        # Target 6: RSS of pooled STARTTLS connections.
        pool = SMTPConnectionPool(max_connections=plan.pooled_connections + 1)

        def checkout() -> Any:
            return pool.get_connection(host, port, user, password, "tls", timeout=30)

        first = checkout()
        pool.release_connection(host, port, first)
        gc.collect()
        before = rss_kib()
        held = [checkout() for _ in range(plan.pooled_connections)]
        for connection in held:
            pool.release_connection(host, port, connection)
        gc.collect()
        ours_kib = (rss_kib() - before) * plan.pooled_connections / (plan.pooled_connections - 1)
        pool.close_all()
        del held
        gc.collect()

        import smtplib
        import ssl

        before = rss_kib()
        own = []
        for _ in range(plan.own_context_connections):
            client = smtplib.SMTP(host, port, timeout=30)
            client.starttls(context=ssl.create_default_context())
            client.login(user, password)
            own.append(client)
        gc.collect()
        own_kib = (rss_kib() - before) / plan.own_context_connections
        for client in own:
            client.quit()
        limit_kib = 6 * 1024
        from bench.measure import Row

        report.add(
            Row(
                "6",
                f"RSS added by {plan.pooled_connections} pooled STARTTLS connections "
                "vs the 6 MB budget",
                ours_kib / 1024,
                limit_kib / 1024 * plan.pooled_connections / 100,
                "MB",
                higher_is_better=False,
                required=1.0,
            )
        )
        report.note(
            f"target 6: {ours_kib / plan.pooled_connections:.0f} KiB per pooled connection; "
            f"smtplib with its own create_default_context() per connection: {own_kib:.0f} KiB "
            "per connection"
        )


def group_delay(plan: Plan, report: Report) -> None:
    """Target 4: warm connection through a 5 ms-each-way proxy to smtp-sink."""
    from bench import peers
    from bench.measure import interleaved, seconds_per_call
    from bench.servers import HOST, DelayProxy, SmtpSink
    from src.handlers._mime.builder import build_message
    from src.handlers._smtp.pool import SMTPConnectionPool
    from src.handlers.smtp import SMTPProtocolHandler

    for pipelining in (True, False):
        with SmtpSink(pipelining=pipelining) as sink, DelayProxy(sink.port, 0.005) as proxy:
            handler = SMTPProtocolHandler(
                HOST,
                proxy.port,
                encryption="none",
                from_address=peers.SENDER,
                pool_size=1,
                pool=SMTPConnectionPool(max_connections=1),
            )
            cases: dict[str, Callable[[], float]] = {}
            senders = []
            for count, n in ((1, plan.delay_messages), (20, plan.delay_messages_many)):
                to = peers.recipients(count)
                data = build_message(
                    from_address=peers.SENDER,
                    to_addresses=to,
                    subject=peers.SUBJECT,
                    text_body=peers.TEXT_2KB,
                ).data
                smtp = peers.SmtplibSender(HOST, proxy.port, data)
                senders.append(smtp)

                def ours(to: list[str] = to, handler: SMTPProtocolHandler = handler) -> None:
                    result = handler.send_message(to, peers.SUBJECT, peers.TEXT_2KB)
                    assert result.success, result

                ours()
                smtp.send(to)
                cases[f"ours {count}"] = lambda f=ours, n=n: seconds_per_call(f, n) * 1000
                cases[f"smtplib {count}"] = lambda s=smtp, to=to, n=n: (
                    seconds_per_call(lambda: s.send(to), n) * 1000
                )
            samples = interleaved(cases, plan.repetitions)
            for smtp in senders:
                smtp.close()
            handler.close()
        mode = "PIPELINING" if pipelining else "no PIPELINING (lock-step)"
        for count, required in ((1, 0.5), (20, 0.2)):
            report.add(
                _row(
                    "4" if pipelining else "4i",
                    f"latency per message, {count} recipient(s), 5 ms each way, {mode}, vs smtplib",
                    samples,
                    f"ours {count}",
                    f"smtplib {count}",
                    "ms",
                    required if pipelining else None,
                    higher=False,
                )
            )


def group_chunking(plan: Plan, report: Report) -> None:
    """Target 4c: Postfix smtpd (CHUNKING and PIPELINING) through the 5 ms proxy.

    One recipient on a warm connection: MAIL, RCPT and ``BDAT <size> LAST`` with the
    body go out in one write (one round trip), where smtplib takes four (MAIL, RCPT,
    DATA, the body).
    """
    from bench import peers
    from bench.measure import interleaved, seconds_per_call
    from bench.servers import HOST, BenchStack, DelayProxy
    from src.handlers._mime.builder import build_message
    from src.handlers._smtp.pool import SMTPConnectionPool
    from src.handlers.smtp import SMTPProtocolHandler

    with BenchStack(users=()) as bench:
        stack = bench.stack
        to = [stack.address("sender")]
        with DelayProxy(stack.smtp_plain_port, 0.005) as proxy:
            handler = SMTPProtocolHandler(
                HOST,
                proxy.port,
                encryption="none",
                from_address=peers.SENDER,
                pool_size=1,
                pool=SMTPConnectionPool(max_connections=1),
            )
            offered = handler.capabilities()
            assert offered.offers("CHUNKING") and offered.offers("PIPELINING"), offered
            data = build_message(
                from_address=peers.SENDER,
                to_addresses=to,
                subject=peers.SUBJECT,
                text_body=peers.TEXT_2KB,
            ).data
            smtp = peers.SmtplibSender(HOST, proxy.port, data)

            def ours() -> None:
                result = handler.send_message(to, peers.SUBJECT, peers.TEXT_2KB)
                assert result.success, result

            ours()
            smtp.send(to)
            n = plan.delay_messages
            samples = interleaved(
                {
                    "ours": lambda: seconds_per_call(ours, n) * 1000,
                    "smtplib": lambda: seconds_per_call(lambda: smtp.send(to), n) * 1000,
                },
                plan.repetitions,
            )
            smtp.close()
            handler.close()
    report.add(
        _row(
            "4c",
            "latency per message, 1 recipient, 5 ms each way, Postfix smtpd with CHUNKING "
            "(BDAT pipelined), vs smtplib (DATA)",
            samples,
            "ours",
            "smtplib",
            "ms",
            0.3,
            higher=False,
        )
    )


def group_raw(plan: Plan, report: Report) -> None:
    """Target 2r: ``send_raw`` of pre-built bytes vs smtplib's ``sendmail`` of the same
    bytes, each on one warm connection to smtp-sink, one recipient."""
    from bench import peers
    from bench.measure import interleaved, rate
    from bench.placement import placed, placements
    from bench.servers import HOST, SmtpSink
    from src.handlers._mime.builder import build_message
    from src.handlers._smtp.pool import SMTPConnectionPool
    from src.handlers.smtp import SMTPProtocolHandler

    to = peers.recipients(1)
    n = plan.raw_messages
    data = build_message(
        from_address=peers.SENDER,
        to_addresses=to,
        subject=peers.SUBJECT,
        text_body=peers.TEXT_2KB,
    ).data
    with SmtpSink() as sink:
        handler = SMTPProtocolHandler(
            HOST,
            sink.port,
            encryption="none",
            from_address=peers.SENDER,
            pool_size=1,
            pool=SMTPConnectionPool(max_connections=1),
        )
        smtp = peers.SmtplibSender(HOST, sink.port, data)

        def ours() -> None:
            result = handler.send_raw(peers.SENDER, to, data)
            assert result.success, result

        ours()
        smtp.send(to)
        for placement in placements():
            with placed(placement, sink.pid):
                samples = interleaved(
                    {
                        "ours": lambda: rate(ours, n),
                        "smtplib": lambda: rate(lambda: smtp.send(to), n),
                    },
                    plan.repetitions,
                )
            report.add(
                _row(
                    "2r",
                    "send_raw of pre-built bytes, 2 KB, one connection to smtp-sink, vs "
                    f"smtplib sendmail; {placement.name}",
                    samples,
                    "ours",
                    "smtplib",
                    "msg/s",
                    1.5,
                )
            )
        smtp.close()
        handler.close()


# --------------------------------------------------------------------------- POP3 groups


@contextlib.contextmanager
def pop3_stack(plan: Plan, users: tuple[str, ...]) -> Iterator[Any]:
    from bench import peers
    from bench.servers import BenchStack

    with BenchStack(users=users) as bench:
        fill = {
            "small": lambda: (peers.small_message(i) for i in range(plan.small_messages)),
            "hundred": lambda: (peers.small_message(i) for i in range(plan.hundred)),
            "big": lambda: (
                peers.large_message(i, plan.big_size) for i in range(plan.big_messages)
            ),
            "huge": lambda: [peers.large_message(0, plan.huge_size)],
            "sync": lambda: (peers.small_message(i) for i in range(plan.sync_mailbox)),
        }
        for user in users:
            bench.fill_mailbox(user, fill[user]())
            # Let Dovecot build its index (and the page cache fill) before timing.
            client = peers.poplib_login(
                bench.host, bench.stack.pop3_port, user, bench.password(user)
            )
            client.uidl()
            for number in range(1, 3):
                with contextlib.suppress(Exception):
                    client.retr(number)
            client.quit()
        yield bench


def _pop3(bench: Any, user: str, port: int | None = None, **options: Any) -> Any:
    from src.handlers.pop3 import POP3ProtocolHandler

    return POP3ProtocolHandler(
        bench.host,
        port or bench.stack.pop3_port,
        user,
        bench.password(user),
        encryption="none",
        **options,
    )


def _raw_fetch(handler: Any) -> dict[int, bytes]:
    fetch = getattr(handler, "fetch_raw_messages", None)
    if fetch is not None:
        return fetch()  # type: ignore[no-any-return]
    with handler.session():  # no raw API: the closest public path
        return {m["id"]: m for m in handler.fetch_messages()}


def group_pop3(plan: Plan, report: Report) -> None:
    """Targets 7 and 8 against Dovecot over plain POP3 on loopback."""
    from bench import peers
    from bench.measure import interleaved

    with pop3_stack(plan, ("small", "big")) as bench:
        port = bench.stack.pop3_port

        def poplib_all(user: str, parse: bool) -> float:
            # Connect and login timed too, as fetch_messages() opens its own session.
            started = time.perf_counter()
            client = peers.poplib_login(bench.host, port, user, bench.password(user))
            count, total = client.stat()
            for number in range(1, count + 1):
                raw = peers.poplib_retrieve(client, number)
                if parse:
                    peers.stdlib_parse(raw, number)
            client.quit()
            elapsed = time.perf_counter() - started
            return count / elapsed if parse or user == "small" else total / elapsed / 1e6

        def ours_parsed() -> float:
            started = time.perf_counter()
            messages = _pop3(bench, "small").fetch_messages()
            assert len(messages) == plan.small_messages
            return len(messages) / (time.perf_counter() - started)

        client_cpu: list[float] = []

        def ours_raw(user: str) -> float:
            started, cpu = time.perf_counter(), time.process_time()
            messages = _raw_fetch(_pop3(bench, user))
            elapsed = time.perf_counter() - started
            if user == "small":
                client_cpu.append((time.process_time() - cpu) / len(messages) * 1e6)
                return len(messages) / elapsed
            total = sum(len(v) if isinstance(v, bytes) else v["size"] for v in messages.values())
            return total / elapsed / 1e6

        samples = interleaved(
            {
                "ours parsed": ours_parsed,
                "poplib+policy.default": lambda: poplib_all("small", True),
                "ours raw small": lambda: ours_raw("small"),
                "poplib raw small": lambda: poplib_all("small", False),
                "ours raw big": lambda: ours_raw("big"),
                "poplib raw big": lambda: poplib_all("big", False),
            },
            plan.repetitions,
        )
    report.add(
        _row(
            "7",
            f"fetch_messages() of {plan.small_messages} x 2 KB into dicts vs poplib "
            "RETR + policy.default with get_body/iter_attachments",
            samples,
            "ours parsed",
            "poplib+policy.default",
            "msg/s",
            3,
        )
    )
    from bench.measure import median

    per_message = 1e6 / median(samples["ours raw small"])
    report.note(
        f"target 8: pipelined raw retrieval takes {per_message:.0f} us of wall time per "
        f"small message, of which {median(client_cpu):.0f} us is our CPU; the rest is "
        f"Dovecot's own work per RETR, which bounds the ratio (poplib: "
        f"{1e6 / median(samples['poplib raw small']):.0f} us per message)"
    )
    report.add(
        _row(
            "8",
            f"raw retrieval of {plan.small_messages} x 2 KB vs poplib RETR",
            samples,
            "ours raw small",
            "poplib raw small",
            "msg/s",
            3,
        )
    )
    report.add(
        _row(
            "8",
            f"raw retrieval of {plan.big_messages} x {plan.big_size >> 20} MB vs poplib RETR",
            samples,
            "ours raw big",
            "poplib raw big",
            "MB/s",
            2,
        )
    )


def group_pop3_delay(plan: Plan, report: Report) -> None:
    """Target 9: 100 small messages through the 5 ms-each-way proxy, connect included."""
    from bench import peers
    from bench.measure import interleaved
    from bench.servers import DelayProxy

    with pop3_stack(plan, ("hundred",)) as bench, DelayProxy(bench.stack.pop3_port, 0.005) as proxy:

        def ours() -> float:
            started = time.perf_counter()
            messages = _pop3(bench, "hundred", port=proxy.port).fetch_messages()
            assert len(messages) == plan.hundred
            return 1 / (time.perf_counter() - started)

        def poplib_all() -> float:
            started = time.perf_counter()
            client = peers.poplib_login(
                bench.host, proxy.port, "hundred", bench.password("hundred")
            )
            for number in range(1, plan.hundred + 1):
                peers.poplib_retrieve(client, number)
            client.quit()
            return 1 / (time.perf_counter() - started)

        samples = interleaved({"ours": ours, "poplib": poplib_all}, plan.repetitions)

        # An incremental sync: the last few messages are new. getmail's way with poplib
        # is UIDL, then one RETR per new message; sync() asks their sizes and downloads
        # them in one pipelined batch each.
        uids = _pop3(bench, "hundred", port=proxy.port).list_uids()
        numbers = sorted(uids)
        new = numbers[len(numbers) - plan.sync_new :]
        known = [uids[number] for number in numbers if number not in new]

        def ours_sync() -> float:
            from src.handlers._sync.uid_store import MemoryUIDStore

            handed: list[dict[str, Any]] = []
            started = time.perf_counter()
            handler = _pop3(bench, "hundred", port=proxy.port)
            result = handler.sync(MemoryUIDStore(known), handed.append)
            assert result.fetched == len(new) == len(handed), result
            return 1 / (time.perf_counter() - started)

        def poplib_sync() -> float:
            started = time.perf_counter()
            client = peers.poplib_login(
                bench.host, proxy.port, "hundred", bench.password("hundred")
            )
            _, lines, _ = client.uidl()
            seen = set(known)
            todo = [int(line.split()[0]) for line in lines if line.split()[1].decode() not in seen]
            for number in todo:
                peers.poplib_retrieve(client, number)
            client.quit()
            assert todo == new
            return 1 / (time.perf_counter() - started)

        syncs = interleaved({"ours": ours_sync, "poplib": poplib_sync}, plan.repetitions)
    report.add(
        _row(
            "9s",
            f"sync of {plan.hundred} messages, {plan.sync_new} of them new, through 5 ms "
            "each way (connect, login, quit included): sync() vs poplib UIDL and a RETR "
            "per new message",
            syncs,
            "ours",
            "poplib",
            "syncs/s",
            None,
        )
    )
    report.add(
        _row(
            "9",
            f"fetch {plan.hundred} small messages through 5 ms each way (connect, "
            "login, quit included): fetch_messages() vs poplib raw RETR",
            samples,
            "ours",
            "poplib",
            "fetches/s",
            10,
        )
    )


def group_pop3_rss(plan: Plan, report: Report) -> None:
    """Target 10: peak RSS growth while fetching one large message, in a fresh process."""
    from bench.measure import Row

    with pop3_stack(plan, ("huge",)) as bench:
        results = {}
        for mode in ("fetch_message", "raw", "poplib"):
            output = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "bench.child",
                    "pop3-rss",
                    mode,
                    bench.host,
                    str(bench.stack.pop3_port),
                    "huge",
                    bench.password("huge"),
                ],
                capture_output=True,
                text=True,
                check=True,
                cwd=ROOT,
                timeout=600,
            ).stdout
            results[mode] = json.loads(output.strip().splitlines()[-1])
    size_mb = results["raw"]["size"] / 1e6
    for mode in ("fetch_message", "raw"):
        growth = results[mode]["growth_kib"] * 1024 / 1e6
        report.add(
            Row(
                "10",
                f"peak RSS growth fetching one {size_mb:.0f} MB message ({mode}) vs 3 x its size",
                growth,
                3 * size_mb,
                "MB",
                higher_is_better=False,
                required=1.0,
            )
        )
    report.note(
        "target 10: poplib RETR of the same message grows the peak RSS by "
        f"{results['poplib']['growth_kib'] / 1024:.0f} MiB"
    )


def group_sync(plan: Plan, report: Report) -> None:
    """Target 11: UIDL sync of a large mailbox holding a few new messages."""
    from bench.measure import Row, interleaved, median
    from src.handlers._sync.uid_store import MemoryUIDStore

    with pop3_stack(plan, ("sync",)) as bench:
        handler = _pop3(bench, "sync")
        uids = handler.list_uids()
        numbers = sorted(uids)
        known = [uids[n] for n in numbers[: len(numbers) - plan.sync_new]]
        handed: list[dict[str, Any]] = []

        def sync() -> float:
            handed.clear()
            store = MemoryUIDStore(known)
            started = time.perf_counter()
            result = handler.sync(store, handed.append)
            elapsed = time.perf_counter() - started
            assert result.fetched == plan.sync_new == len(handed), result
            return elapsed

        def full() -> float:
            started = time.perf_counter()
            messages = handler.fetch_messages()
            assert len(messages) == plan.sync_mailbox
            return time.perf_counter() - started

        samples = interleaved({"sync": sync, "full": full}, plan.repetitions)
    report.add(
        Row(
            "11",
            f"UIDL sync of {plan.sync_mailbox} messages with {plan.sync_new} new "
            "vs a full fetch_messages()",
            median(samples["sync"]) * 1000,
            median(samples["full"]) * 1000,
            "ms",
            higher_is_better=False,
            required=0.05,
        )
    )


def group_dkim(plan: Plan, report: Report) -> None:
    """DKIM: CPU per signature through DKIMSigner against dkimpy called directly.

    Both sign the same built 2 KB message with the same key, canonicalization and header
    list, so the difference is what the signer adds around dkimpy (the header list, the
    key kept ready, the prepending): it must stay within 10 % of the signing itself.
    """
    import base64

    import dkim
    from cryptography.hazmat.primitives import serialization as ser
    from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

    from bench import peers
    from bench.measure import cpu_seconds_per_call, interleaved
    from src.handlers._dkim.signer import DKIMSigner
    from src.handlers._mime.builder import build_message

    data = build_message(
        from_address=peers.SENDER,
        to_addresses=peers.recipients(1),
        subject=peers.SUBJECT,
        text_body=peers.TEXT_2KB,
    ).data
    domain = peers.SENDER.rpartition("@")[2]
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        ser.Encoding.PEM, ser.PrivateFormat.TraditionalOpenSSL, ser.NoEncryption()
    )
    ed_raw = ed25519.Ed25519PrivateKey.generate().private_bytes(
        ser.Encoding.Raw, ser.PrivateFormat.Raw, ser.NoEncryption()
    )
    keys = {"rsa-sha256": rsa_key, "ed25519-sha256": base64.b64encode(ed_raw)}
    for algorithm, key in keys.items():
        signer = DKIMSigner(domain, "bench", key, algorithm=algorithm)  # type: ignore[arg-type]
        headers = signer.headers_to_sign(data)

        def ours(signer: DKIMSigner = signer) -> bytes:
            return signer.sign(data)

        def direct(
            key: bytes = key, algorithm: str = algorithm, headers: list[bytes] = headers
        ) -> bytes:
            signature = dkim.sign(
                data,
                b"bench",
                domain.encode(),
                key,
                canonicalize=(b"relaxed", b"relaxed"),
                signature_algorithm=algorithm.encode(),
                include_headers=headers,
            )
            return bytes(signature) + data

        ours()
        direct()
        count = plan.dkim_signatures * (1 if algorithm.startswith("rsa") else 5)
        samples = interleaved(
            {
                "ours": lambda c=count: cpu_seconds_per_call(ours, c) * 1000,
                "dkimpy": lambda c=count: cpu_seconds_per_call(direct, c) * 1000,
            },
            plan.repetitions,
        )
        report.add(
            _row(
                "dkim",
                f"{algorithm} signature of a 2 KB message, DKIMSigner vs dkimpy directly",
                samples,
                "ours",
                "dkimpy",
                "CPU-ms",
                1.10,
                higher=False,
            )
        )


# The shared corpus of real-world mail, next to the project (see its README.md).
CORPUS = ROOT.parent / "shared" / "mail-corpus"


def group_parse(plan: Plan, report: Report) -> None:
    """Parsing the real-world corpus: ``parse_message`` against the stdlib doing the same
    work (``policy.default`` parse, ``get_body`` for text and HTML, ``iter_attachments``
    with decoded contents: ``peers.stdlib_parse``), no network involved."""
    from bench import peers
    from src.handlers._mime.parser import parse_message

    manifest = CORPUS / "MANIFEST.json"
    if not manifest.is_file():
        report.note("parse: the shared mail corpus is not next to the project; skipped")
        return
    names = [entry["file"] for entry in json.loads(manifest.read_text(encoding="utf-8"))]
    messages = [(CORPUS / name).read_bytes() for name in names]
    count = len(messages) * plan.corpus_rounds

    def ours() -> None:
        for _ in range(plan.corpus_rounds):
            for number, raw in enumerate(messages, 1):
                parse_message(raw, number)

    def stdlib() -> None:
        for _ in range(plan.corpus_rounds):
            for number, raw in enumerate(messages, 1):
                # A few corpus messages make the stdlib raise; the work until then counts.
                with contextlib.suppress(Exception):
                    peers.stdlib_parse(raw, number)

    samples: dict[str, list[float]] = {"ours": [], "stdlib": []}
    cases = {"ours": ours, "stdlib": stdlib}
    for repetition in range(plan.repetitions):
        order = list(cases)[repetition % 2 :] + list(cases)[: repetition % 2]
        for name in order:
            gc.collect()
            samples[name].append(_timed_rate(count, cases[name]))
    report.add(
        _row(
            "P",
            f"parse the {len(messages)}-message corpus",
            samples,
            "ours",
            "stdlib",
            "messages/s",
            25.0,
        )
    )
    slowest = max(_slowest(parse_message, raw) for raw in messages)
    report.note(f"parse: slowest corpus message {slowest * 1000:.1f} ms (budget 50 ms)")


def _slowest(parse: Callable[[bytes, int], object], raw: bytes) -> float:
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        parse(raw, 1)
        best = min(best, time.perf_counter() - started)
    return best


RUNNERS: dict[str, Callable[[Plan, Report], None]] = {
    "smtp": group_smtp,
    "build": group_build,
    "tls": group_tls,
    "delay": group_delay,
    "chunking": group_chunking,
    "raw": group_raw,
    "pop3": group_pop3,
    "pop3-delay": group_pop3_delay,
    "pop3-rss": group_pop3_rss,
    "sync": group_sync,
    "dkim": group_dkim,
    "parse": group_parse,
    "celery": lambda plan, report: _celery_group(plan, report),
}


def _celery_group(plan: Plan, report: Report) -> None:
    # Needs PostgreSQL and Redis as well (.ci/install-data-servers.sh) and the test extra.
    from bench.celery_bench import group_celery

    group_celery(plan, report)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny counts, nothing written")
    parser.add_argument("--only", default="", help=f"comma-separated groups of {GROUPS}")
    parser.add_argument("--no-install", action="store_true", help="skip the install step")
    parser.add_argument(
        "--write",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="rewrite the results in docs/performance.md (default: full runs)",
    )
    args = parser.parse_args(argv)
    groups = [g for g in args.only.split(",") if g] or list(GROUPS)
    unknown = set(groups) - set(GROUPS)
    if unknown:
        parser.error(f"unknown groups {sorted(unknown)}; choose from {GROUPS}")
    if not args.no_install:
        ensure_installed()
    sys.path.insert(0, str(ROOT))
    _quiet_library_logs()
    plan = SMOKE if args.smoke else FULL
    machine = machine_note()
    print(f"machine: {machine}", flush=True)
    report = Report(smoke=args.smoke)
    started = time.perf_counter()
    from tests.interop.mailstack import servers_available

    available, reason = servers_available()
    if not available:
        if os.environ.get("CI", "").strip().lower() == "true":
            raise SystemExit(f"the private Postfix/Dovecot cannot run: {reason}")
        skipped = [group for group in groups if group in STACK_GROUPS]
        print(f"skipping {', '.join(skipped)}: {reason}", flush=True)
        groups = [group for group in groups if group not in STACK_GROUPS]
    for group in groups:
        print(f"[{group}]", flush=True)
        group_started = time.perf_counter()
        RUNNERS[group](plan, report)
        print(f"  ({time.perf_counter() - group_started:.1f} s)", flush=True)
    elapsed = time.perf_counter() - started
    failed = [row for row in report.rows if row.verdict == "NOT met"]
    if args.smoke:
        print(f"smoke run done in {elapsed:.0f} s: {len(report.rows)} figures, none judged")
    else:
        print(
            f"done in {elapsed:.0f} s: {len(report.rows)} figures, {len(failed)} target(s) not met"
        )
    write = args.write if args.write is not None else not args.smoke
    if write:
        command = "python -m bench.run" + (f" --only {args.only}" if args.only else "")
        celery = Report()
        celery.rows = [row for row in report.rows if row.target.startswith("C")]
        celery.notes = [note for note in report.notes if note.startswith("C")]
        report.rows = [row for row in report.rows if row not in celery.rows]
        report.notes = [note for note in report.notes if note not in celery.notes]
        if report.rows:
            write_doc(report.markdown(plan, command, machine, elapsed))
        if celery.rows:
            block = celery.markdown(plan, command, machine, elapsed)
            block = block.replace(START, CELERY_START).replace(END, CELERY_END)
            write_doc(block, CELERY_START, CELERY_END)
    return 0


if __name__ == "__main__":
    sys.exit(main())
