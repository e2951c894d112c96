"""Rate limits per server and login: token bucket, connection caps, slowing down on
throttling replies. Time is a fake clock that ``sleep`` advances, so nothing waits."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from ci import unavailable

from src.handlers._net.ratelimit import (
    RateLimit,
    RateLimiter,
    RedisRateStore,
    is_throttling_reply,
)
from src.handlers.errors import RateLimitTimeout

KEY = ("smtp.example.test", 587, "alice")


class FakeClock:
    """Monotonic time that only moves when slept through or advanced."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []
        self._lock = threading.Lock()

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        with self._lock:
            self.slept.append(seconds)
            self.now += seconds

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def limiter(clock: FakeClock, **limits: float | int | None) -> RateLimiter:
    return RateLimiter(RateLimit(**limits), clock=clock, sleep=clock.sleep)  # type: ignore[arg-type]


def test_unlimited_by_default_never_sleeps(clock: FakeClock) -> None:
    rl = limiter(clock)
    for _ in range(100):
        with rl.acquire(KEY) as permit:
            assert permit.waited == 0
    assert clock.slept == []
    assert rl.current_rate(KEY) is None


def test_token_bucket_spaces_messages(clock: FakeClock) -> None:
    rl = limiter(clock, per_second=2, burst=3)
    waits = [rl.acquire(KEY).waited for _ in range(6)]
    assert waits[:3] == [0, 0, 0]
    assert waits[3:] == pytest.approx([0.5, 0.5, 0.5])
    clock.advance(10)  # the bucket refills, up to the burst only
    assert [rl.acquire(KEY).waited for _ in range(4)] == pytest.approx([0, 0, 0, 0.5])


def test_keys_are_independent(clock: FakeClock) -> None:
    rl = RateLimiter(
        RateLimit(per_second=1),
        limits={("other", 25, None): RateLimit(per_second=100)},
        clock=clock,
        sleep=clock.sleep,
    )
    rl.acquire(KEY)
    rl.acquire(("other", 25, None))
    assert clock.slept == []
    assert rl.limit(("other", 25, None)).per_second == 100


def test_deadline_refuses_without_waiting_or_taking_a_token(clock: FakeClock) -> None:
    rl = limiter(clock, per_second=1)
    rl.acquire(KEY)
    with pytest.raises(RateLimitTimeout) as caught:
        rl.acquire(KEY, deadline=clock() + 0.5)
    assert caught.value.retry_after == pytest.approx(1.0)
    assert isinstance(caught.value, TimeoutError)
    assert clock.slept == []
    # The refused call left the bucket as it was: the next token is due in 1 s.
    assert rl.acquire(KEY, deadline=clock() + 1.0).waited == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("code", "enhanced", "throttling"),
    [
        (421, None, True),
        (421, "4.7.0", True),
        (451, "4.7.1", True),
        (451, "4.3.0", False),
        (454, "4.7.0", True),
        (454, "4.7.1", False),
        (452, "4.3.1", True),
        (452, "4.2.2", False),
        (450, "4.2.1", False),
        (550, "5.7.1", False),
        (250, "2.0.0", False),
    ],
)
def test_throttling_replies(code: int, enhanced: str | None, throttling: bool) -> None:
    assert is_throttling_reply(code, enhanced) is throttling


def test_aimd_halves_on_throttle_and_recovers_after_cool_down(clock: FakeClock) -> None:
    rl = limiter(clock, per_second=8, cool_down=30, increase=1)
    assert rl.observe_reply(KEY, 250, "2.0.0") is False
    assert rl.current_rate(KEY) == 8
    assert rl.observe_reply(KEY, 451, "4.7.1") is True
    assert rl.current_rate(KEY) == 4
    rl.observe_reply(KEY, 421)
    assert rl.current_rate(KEY) == 2
    clock.advance(29)
    assert rl.current_rate(KEY) == 2  # still cooling down
    clock.advance(1)
    assert rl.current_rate(KEY) == 3
    clock.advance(60)
    assert rl.current_rate(KEY) == 5
    clock.advance(3600)
    assert rl.current_rate(KEY) == 8  # never above the ceiling


def test_throttle_drains_the_bucket(clock: FakeClock) -> None:
    rl = limiter(clock, per_second=10, burst=10)
    rl.observe_reply(KEY, 421)  # now 5/s with an empty bucket
    assert rl.acquire(KEY).waited == pytest.approx(0.2)


def test_rate_never_drops_below_the_floor(clock: FakeClock) -> None:
    rl = limiter(clock, per_second=1, min_per_second=0.25)
    for _ in range(10):
        rl.observe_reply(KEY, 421)
    assert rl.current_rate(KEY) == 0.25


def test_unlimited_key_is_slowed_then_released(clock: FakeClock) -> None:
    rl = limiter(clock, after_throttle=2, cool_down=10)
    rl.observe_reply(KEY, 454, "4.7.0")
    assert rl.current_rate(KEY) == 2
    assert rl.acquire(KEY).waited == pytest.approx(0.5)
    clock.advance(10)
    assert rl.current_rate(KEY) == pytest.approx(2.2)
    clock.advance(100)
    assert rl.current_rate(KEY) is None


def test_connection_cap_and_budget(clock: FakeClock) -> None:
    rl = limiter(clock, max_connections=2, messages_per_connection=3)
    assert rl.connection_budget(KEY) == 3
    first = rl.connection(KEY)
    second = rl.connection(KEY)
    assert rl.open_connections(KEY) == 2
    with pytest.raises(RateLimitTimeout):
        rl.connection(KEY, deadline=clock())
    first.release()
    first.release()  # twice is harmless
    with rl.connection(KEY, deadline=clock()) as third:
        assert [third.spend(), third.spend(), third.spend()] == [True, True, False]
        assert third.exhausted
    second.release()
    assert rl.open_connections(KEY) == 0


def test_waiting_for_a_connection_slot_wakes_on_release() -> None:
    rl = RateLimiter(RateLimit(max_connections=1))
    held = rl.connection(KEY)
    got: list[float] = []

    def waiter() -> None:
        with rl.connection(KEY, deadline=time.monotonic() + 10):
            got.append(time.monotonic())

    thread = threading.Thread(target=waiter)
    thread.start()
    time.sleep(0.05)
    assert got == []
    held.release()
    thread.join(timeout=5)
    assert len(got) == 1


def test_threads_share_one_bucket(clock: FakeClock) -> None:
    rl = limiter(clock, per_second=10, burst=1)
    waits: list[float] = []
    lock = threading.Lock()

    def send() -> None:
        for _ in range(25):
            waited = rl.acquire(KEY).waited
            with lock:
                waits.append(waited)

    threads = [threading.Thread(target=send) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert len(waits) == 100
    # One token at a time: 100 messages at 10/s take 9.9 s of (fake) time in total.
    assert sum(clock.slept) == pytest.approx(9.9, abs=0.5)


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError):
        RateLimit(per_second=0)
    with pytest.raises(ValueError):
        RateLimit(decrease=1.5)
    with pytest.raises(ValueError):
        RateLimit(max_connections=0)
    with pytest.raises(ValueError):
        RateLimit(burst=0.5)


def test_repr_shows_state(clock: FakeClock) -> None:
    rl = limiter(clock, per_second=3)
    rl.acquire(KEY)
    assert "rate=3/s" in repr(rl) and "smtp.example.test:587:alice" in repr(rl)


# --------------------------------------------------------------------------- Redis

REDIS_INSTALL = "apt-get install redis-server (and pip install redis)"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    binary = shutil.which("redis-server", path=os.pathsep.join([os.environ["PATH"], "/usr/bin"]))
    try:
        import redis
    except ImportError:
        redis = None  # type: ignore[assignment]
    if binary is None or redis is None:
        unavailable(
            f"needs redis-server and the redis package: {REDIS_INSTALL}",
            in_ci_reason=f"redis-server and the redis package are needed: {REDIS_INSTALL}",
        )
    directory = Path(tempfile.mkdtemp(prefix="redis-"))
    port = _free_port()
    process = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(directory),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        client = redis.Redis(host="127.0.0.1", port=port)
        for _ in range(100):
            try:
                client.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.05)
        else:
            pytest.fail("redis-server did not answer")
        client.close()
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        process.wait(timeout=10)
        shutil.rmtree(directory, ignore_errors=True)


def test_redis_store_shares_the_bucket_between_limiters(redis_url: str) -> None:
    """Two limiters (two worker processes, say) draw from the same Redis bucket."""
    one = RateLimiter(RateLimit(per_second=5, burst=2), store=RedisRateStore(redis_url))
    two = RateLimiter(RateLimit(per_second=5, burst=2), store=RedisRateStore(redis_url))
    slept: list[float] = []
    two._sleep = slept.append  # record instead of waiting
    assert one.acquire(KEY).waited == 0
    assert one.acquire(KEY).waited == 0
    # The bucket of two tokens is empty now for the other limiter too.
    waited = two.acquire(KEY).waited
    assert 0.1 < waited <= 0.2
    with pytest.raises(RateLimitTimeout):
        two.acquire(KEY, deadline=time.monotonic() + 0.01)
    one.observe_reply(KEY, 421)
    assert one.current_rate(KEY) == 2.5


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_forked_child_starts_with_free_slots_and_the_same_rate(clock: FakeClock) -> None:
    rl = limiter(clock, per_second=4, max_connections=1)
    rl.observe_reply(KEY, 421)
    held = rl.connection(KEY)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report and leave at once, never running pytest's teardown
        try:
            ok = rl.open_connections(KEY) == 0 and rl.current_rate(KEY) == 2
            with rl.connection(KEY, deadline=clock()):
                pass
            os.write(write, b"ok" if ok else b"no")
        finally:
            os._exit(0)
    os.close(write)
    try:
        assert os.read(read, 2) == b"ok"
    finally:
        os.close(read)
        os.waitpid(pid, 0)
    assert rl.open_connections(KEY) == 1  # the parent's slot is still held
    held.release()
