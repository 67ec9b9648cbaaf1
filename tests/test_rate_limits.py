"""The rate limiter: one contract for memory:// and a real redis-server, exactness under
concurrency from two processes, a property test against a reference model, and outages.

Contract tests run through a booted ``RateLimiterManager`` (config + redis managers only) on
each backend. Durations are never asserted, only outcomes; the few waits are for a small
limit's period or a short ban to pass.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app import ROOT
from core.base.errors import ConfigError, DependencyUnavailable
from core.runtime.app_manager import AppManager
from managers.rate_limiter.manager import Decision, Limit, RateLimiterManager, parse_limit
from managers.redis.manager import RedisManager
from tests.helpers import load_config
from tests.servers import RedisServer

MakeLimiter = Callable[..., RateLimiterManager]
USER = "user:u1"


class FakeClock:
    """Integer microseconds, read as seconds: exact for the magnitudes used here."""

    def __init__(self, start_us: int = 1_000_000_000) -> None:
        self.us = start_us

    def __call__(self) -> float:
        return self.us / 1_000_000

    def advance(self, seconds: float) -> None:
        self.us += round(seconds * 1_000_000)


def boot(
    root: Path,
    url: str,
    prefix: str = "sb:",
    *,
    clock: Callable[[], float] | None = None,
    **settings: Any,
) -> tuple[AppManager, RateLimiterManager]:
    """An app of only config, redis and rate_limiter; ``settings`` are ratelimit.* keys."""
    overrides = {"redis.prefix": prefix, "ratelimit.ban_threshold": 0}
    overrides.update({f"ratelimit.{key}": value for key, value in settings.items()})
    config = load_config(root, {"REDIS_URL": url}, overrides=overrides)
    app = AppManager(config, [RedisManager(), RateLimiterManager(clock=clock)]).boot()
    return app, app.get("rate_limiter", RateLimiterManager)


@pytest.fixture(params=["memory", "redis"])
def make_limiter(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MakeLimiter]:
    """Boot limiters on one backend (Redis: the session server, a prefix of this test's)."""
    apps: list[AppManager] = []
    if request.param == "redis":
        url = request.getfixturevalue("redis_url")
        base = request.getfixturevalue("redis_prefix")
    else:
        url, base = "memory://", "t:"

    def make(**settings: Any) -> RateLimiterManager:
        app, limiter = boot(tmp_path, url, f"{base}{len(apps)}:", **settings)
        apps.append(app)
        return limiter

    yield make
    for app in apps:
        app.shutdown()


def allowed(decisions: Sequence[Decision]) -> list[bool]:
    return [d.allowed for d in decisions]


def remaining(decision: Decision) -> dict[str, int]:
    return {s.name: s.remaining for s in decision.states}


# --- parsing -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "count", "period"),
    [
        ("10/minute", 10, 60),
        ("5/second", 5, 1),
        ("200/hour", 200, 3600),
        ("1000/day", 1000, 86400),
        ("10/5minute", 10, 300),
        (" 7 / 2 minutes ", 7, 120),
        ("3/s", 3, 1),
        ("3/secs", 3, 1),
        ("3/m", 3, 60),
        ("3/d", 3, 86400),
    ],
)
def test_parse_limit_reads_the_declaration_grammar(text: str, count: int, period: int) -> None:
    limit = parse_limit(text)
    assert (limit.count, limit.period, limit.text) == (count, period, text.strip())


@pytest.mark.parametrize(
    "text",
    [
        "",
        "10",
        "abc",
        "0/minute",
        "-1/minute",
        "10/",
        "/minute",
        "10/fortnight",
        "10/0minute",
        "1e3/second",
        "10/MINUTE",
        "10/ms",  # would read as minutes
        "3/hs",  # plurals are of the spelled-out units only
        "10/minute/hour",
        "\uff11\uff10/minute",  # full-width digits
        "99999999999/second",
        "10/999999999day",
        "9" * 5000 + "/second",
        None,
        10,
        ["10/minute"],
    ],
)
def test_parse_limit_refuses_garbage_with_value_error(text: Any) -> None:
    with pytest.raises(ValueError):
        parse_limit(text)


# --- the contract, on every backend --------------------------------------------------------


def test_a_burst_admits_exactly_n(make_limiter: MakeLimiter) -> None:
    limiter = make_limiter(user=["5/minute"])
    decisions = [limiter.check(identity=USER, kind="user") for _ in range(8)]
    assert allowed(decisions) == [True] * 5 + [False] * 3
    assert [d.states[0].remaining for d in decisions[:5]] == [4, 3, 2, 1, 0]
    assert [d.states[0].name for d in decisions] == ["user-5/minute"] * 8
    assert all(d.banned_until is None and not d.degraded for d in decisions)


def test_a_burst_of_a_count_that_does_not_divide_the_period_admits_exactly_n(
    make_limiter: MakeLimiter,
) -> None:
    limiter = make_limiter(user=["7/minute"])
    decisions = [limiter.check(identity=USER, kind="user") for _ in range(9)]
    assert allowed(decisions) == [True] * 7 + [False] * 2
    action = [
        limiter.check(identity="sio:s", kind="sio", action="m.a", action_limits=["3/7second"])
        for _ in range(5)
    ]
    assert allowed(action) == [True] * 3 + [False] * 2


def test_several_windows_the_tighter_denies_and_a_denial_consumes_nothing(
    make_limiter: MakeLimiter,
) -> None:
    limiter = make_limiter(user=["4/minute", "6/hour"])

    def call(action: str | None = None, limits: Sequence[str] = ()) -> Decision:
        return limiter.check(identity=USER, kind="user", action=action, action_limits=limits)

    assert allowed([call("m.a", ["2/minute"]) for _ in range(3)]) == [True, True, False]
    denied = call("m.a", ["2/minute"])
    assert remaining(denied) == {"user-4/minute": 2, "user-6/hour": 4, "action-2/minute": 0}
    # The action's denials took nothing from the global limits: two more fit, then the
    # tighter global window denies while the wider one keeps its two.
    assert allowed([call() for _ in range(3)]) == [True, True, False]
    assert remaining(call()) == {"user-4/minute": 0, "user-6/hour": 2}


def test_action_limits_count_per_identity_and_per_action(make_limiter: MakeLimiter) -> None:
    limiter = make_limiter(user=["100/minute"])

    def call(identity: str, action: str) -> bool:
        decision = limiter.check(
            identity=identity, kind="user", action=action, action_limits=["1/minute"]
        )
        return decision.allowed

    assert call("user:a", "m.one")
    assert not call("user:a", "m.one")
    assert call("user:a", "m.two")  # another action
    assert call("user:b", "m.one")  # another identity
    assert not call("user:b", "m.one")


def test_own_limits_replace_the_kind_s_global_limits(make_limiter: MakeLimiter) -> None:
    limiter = make_limiter(api_key=["2/minute"])
    plain = [limiter.check(identity="api_key:k1", kind="api_key") for _ in range(3)]
    assert allowed(plain) == [True, True, False]
    own = [
        limiter.check(identity="api_key:k2", kind="api_key", own_limits=["4/minute"])
        for _ in range(5)
    ]
    assert allowed(own) == [True] * 4 + [False]
    assert [s.name for s in own[0].states] == ["api_key-4/minute"]
    unlimited = limiter.check(identity="api_key:k3", kind="api_key", own_limits=[])
    assert unlimited.allowed and unlimited.states == ()


def test_a_kind_without_global_limits_has_only_its_action_s(make_limiter: MakeLimiter) -> None:
    limiter = make_limiter()
    socket = [
        limiter.check(identity="sio:abc", kind="sio", action="sio.say", action_limits=["2/minute"])
        for _ in range(3)
    ]
    assert allowed(socket) == [True, True, False]
    assert [s.name for s in socket[0].states] == ["action-2/minute"]


def test_remaining_reset_and_retry_after(make_limiter: MakeLimiter) -> None:
    limiter = make_limiter(user=["5/minute"])  # one request back every 12 s
    first = limiter.check(identity=USER, kind="user")
    (state,) = first.states
    assert state.limit == Limit(5, 60.0, "5/minute")
    assert state.remaining == 4 and 11 < state.reset <= 12
    heavy = limiter.check(identity=USER, kind="user", cost=3)
    assert heavy.allowed and heavy.states[0].remaining == 1 and 47 < heavy.states[0].reset <= 48
    too_heavy = limiter.check(identity=USER, kind="user", cost=2)
    assert not too_heavy.allowed
    assert too_heavy.states[0].remaining == 1  # nothing was consumed
    assert 11 < too_heavy.retry_after <= 12
    last = limiter.check(identity=USER, kind="user")
    assert last.allowed and last.states[0].remaining == 0 and 59 < last.states[0].reset <= 60
    denied = limiter.check(identity=USER, kind="user")
    assert not denied.allowed and 11 < denied.retry_after <= 12
    assert not limiter.check(identity=USER, kind="user", cost=6).allowed  # never fits 5


def test_the_quota_is_back_after_the_period(make_limiter: MakeLimiter) -> None:
    limiter = make_limiter(user=["3/second"])
    burst = [limiter.check(identity=USER, kind="user") for _ in range(4)]
    assert allowed(burst) == [True, True, True, False]
    time.sleep(max(d.states[0].reset for d in burst) + 0.02)
    again = [limiter.check(identity=USER, kind="user") for _ in range(4)]
    assert allowed(again) == [True, True, True, False]


def test_denials_ban_and_repeats_double_the_ban_up_to_the_cap(make_limiter: MakeLimiter) -> None:
    limiter = make_limiter(
        user=["1/minute"], ban_threshold=2, ban_window=60, ban_ttl=0.1, ban_max_ttl=0.3
    )
    identity = "user:noisy"

    def call() -> Decision:
        return limiter.check(identity=identity, kind="user")

    assert call().allowed
    for expected_level, ttl in [(1, 0.1), (2, 0.2), (3, 0.3), (3, 0.3)]:  # 0.4 is capped
        strikes = [call(), call()]
        assert [d.banned_until for d in strikes] == [None, None]
        assert not any(allowed(strikes))
        banned = call()  # the third denial is more than ban_threshold=2
        assert not banned.allowed and banned.banned_until is not None
        assert banned.retry_after == pytest.approx(ttl, abs=1e-6)
        assert [s.name for s in banned.states] == ["user-1/minute"]
        (listed,) = limiter.bans()
        assert listed == {
            "identity": identity,
            "until": banned.banned_until,
            "level": expected_level,
        }
        during = call()  # answered by the ban, consuming and striking nothing
        assert during.banned_until == banned.banned_until and during.states == ()
        time.sleep(max(0.0, banned.banned_until - time.time()) + 0.01)
    assert limiter.counters[("banned", "user-1/minute")] == 8
    assert limiter.counters[("limited", "user-1/minute")] == 8
    assert limiter.counters[("allowed", "user-1/minute")] == 1


def test_unban_lifts_the_ban_and_forgets_its_level(make_limiter: MakeLimiter) -> None:
    limiter = make_limiter(
        user=["1/minute"], ban_threshold=1, ban_window=60, ban_ttl=60, ban_max_ttl=600
    )
    others = ["user:x", "user:y"]
    for identity in others:
        decisions = [limiter.check(identity=identity, kind="user") for _ in range(3)]
        assert decisions[-1].banned_until is not None
    assert [b["identity"] for b in limiter.bans()] == others
    assert limiter.unban("user:x") is True
    assert limiter.unban("user:x") is False
    assert limiter.unban("user:never-seen") is False
    assert [b["identity"] for b in limiter.bans()] == ["user:y"]
    # Unbanned: denied again (its quota is still spent), and its next ban is a first one.
    after = [limiter.check(identity="user:x", kind="user") for _ in range(2)]
    assert [d.banned_until is None for d in after] == [True, False]
    assert after[1].retry_after == pytest.approx(60, abs=1e-6)


def test_garbage_identities_work_and_stay_apart(make_limiter: MakeLimiter) -> None:
    limiter = make_limiter(ip=["1/minute"], ban_threshold=1, ban_ttl=60)
    identities = [
        "",
        "*",
        "ip:*",
        "ip:[a-z]?*",
        "a:b:c",
        "{tag}",
        "\\",
        "\x00",
        "ü 名前",
        "\ud800",
        "x" * 10_000,
    ]
    for identity in identities:
        decisions = [limiter.check(identity=identity, kind="ip") for _ in range(3)]
        assert allowed(decisions) == [True, False, False]
        assert decisions[-1].banned_until is not None
    assert sorted(b["identity"] for b in limiter.bans()) == sorted(identities)
    for identity in identities:
        assert limiter.unban(identity)
    assert limiter.bans() == []


def test_garbage_limits_and_arguments_are_value_errors(make_limiter: MakeLimiter) -> None:
    limiter = make_limiter()
    bad_calls: list[dict[str, Any]] = [
        {"action": "m.a", "action_limits": ["10/fortnight"]},
        {"action": "m.a", "action_limits": [None]},
        {"own_limits": ["0/minute"]},
        {"action_limits": ["1/minute"]},  # no action to count them under
        {"failure": "sideways"},
        {"cost": 0},
        {"cost": True},
        {"cost": 10**7},
    ]
    for arguments in bad_calls:
        with pytest.raises(ValueError):
            limiter.check(identity=USER, kind="user", **arguments)
    ok = limiter.check(identity=USER, kind="user", action="m.a", action_limits="2/minute")
    assert [s.name for s in ok.states] == ["user-600/minute", "action-2/minute"]


def test_a_limit_listed_twice_counts_once(make_limiter: MakeLimiter) -> None:
    limiter = make_limiter(user=["2/minute", "2/1minute"])
    decisions = [limiter.check(identity=USER, kind="user") for _ in range(3)]
    assert allowed(decisions) == [True, True, False]
    assert len(decisions[0].states) == 1


def test_disabled_always_allows(make_limiter: MakeLimiter) -> None:
    limiter = make_limiter(enabled=False, user=["1/minute"], ban_threshold=1)
    decisions = [
        limiter.check(identity=USER, kind="user", action="m.a", action_limits=["1/hour"])
        for _ in range(20)
    ]
    assert all(d == Decision(True, ()) for d in decisions)
    assert limiter.bans() == []
    assert limiter.health().status == "ok"


def test_bad_global_limits_fail_the_boot_naming_the_setting(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        boot(tmp_path, "memory://", ip=["10/fortnight"], api_key=["ok"])
    fields = [p.field for p in caught.value.problems]
    assert fields == ["ratelimit.ip", "ratelimit.api_key"]


# --- exact values on a fake clock ------------------------------------------------------------


def test_exact_boundaries_on_a_fake_clock(tmp_path: Path) -> None:
    clock = FakeClock()
    app, limiter = boot(tmp_path, "memory://", clock=clock, user=["3/second"])
    try:
        burst = [limiter.check(identity=USER, kind="user") for _ in range(4)]
        assert allowed(burst) == [True, True, True, False]
        resets = [d.states[0].reset for d in burst]
        assert resets == pytest.approx([1 / 3, 2 / 3, 1.0, 1.0], abs=1e-12)
        assert burst[3].retry_after == pytest.approx(1 / 3, abs=1e-9)
        clock.us += 333_333  # one microsecond short of an emission interval
        assert not limiter.check(identity=USER, kind="user").allowed
        clock.us += 1  # 1/3 s has passed, rounded up to the microsecond
        back = limiter.check(identity=USER, kind="user")
        assert back.allowed and back.states[0].remaining == 0
        clock.advance(1.0)
        assert allowed([limiter.check(identity=USER, kind="user") for _ in range(4)]) == [
            True,
            True,
            True,
            False,
        ]
    finally:
        app.shutdown()


# --- one round trip, exactness across processes -----------------------------------------------


def test_one_evalsha_per_check(redis_url: str, redis_prefix: str, tmp_path: Path) -> None:
    app, limiter = boot(tmp_path, redis_url, redis_prefix, user=["5/minute", "50/hour"])
    client = redis.Redis.from_url(redis_url)
    try:
        limiter.check(identity="user:warm", kind="user")  # the first call loads the script
        client.config_resetstat()
        for _ in range(7):
            limiter.check(identity=USER, kind="user", action="m.a", action_limits=["2/second"])
        stats: dict[str, Any] = client.info("commandstats")  # type: ignore[assignment]
        assert stats["cmdstat_evalsha"]["calls"] == 7
        assert "cmdstat_eval" not in stats and "cmdstat_script|load" not in stats
    finally:
        client.close()
        app.shutdown()


WORKER = r"""
import json, sys, threading
from pathlib import Path

from core.runtime.app_manager import AppManager
from tests.helpers import load_config
from managers.rate_limiter.manager import RateLimiterManager
from managers.redis.manager import RedisManager

url, prefix, root, threads, each = sys.argv[1:6]
config = load_config(
    Path(root),
    {"REDIS_URL": url},
    overrides={
        "redis.prefix": prefix,
        "ratelimit.ip": ["20/2second"],
        "ratelimit.ban_threshold": 0,
    },
)
app = AppManager(config, [RedisManager(), RateLimiterManager()]).boot()
limiter = app.get("rate_limiter")
store = app.get("redis").store
limiter.check(identity="ip:warm-up", kind="ip")  # connections and the script, before the burst
print("ready", flush=True)
for line in sys.stdin:
    command, _, identity = line.strip().partition(" ")
    if command != "go":
        break
    start = threading.Barrier(int(threads) + 1)
    decisions = []

    def burst():
        start.wait()
        for _ in range(int(each)):
            decisions.append(limiter.check(identity=identity, kind="ip"))

    workers = [threading.Thread(target=burst) for _ in range(int(threads))]
    for worker in workers:
        worker.start()
    first = store.time()  # the server's clock, as the limiter's
    start.wait()
    for worker in workers:
        worker.join()
    last = store.time()
    answer = {
        "admitted": sum(d.allowed for d in decisions),
        "reset": max(s.reset for d in decisions for s in d.states),
        "first": first,
        "last": last,
    }
    print(json.dumps(answer), flush=True)
app.shutdown()
"""
N, T = 20, 2.0  # the workers' limit: one request back every T / N = 0.1 s


def test_two_processes_of_eight_threads_admit_exactly_n(
    redis_url: str, redis_prefix: str, tmp_path: Path
) -> None:
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, redis_url, redis_prefix, str(tmp_path), "8", "4"],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]

    def burst(identity: str) -> tuple[int, float, float]:
        """64 attempts on ``identity`` from 16 threads: (admitted, reset, span on the server)."""
        for process in processes:
            assert process.stdin is not None
            process.stdin.write(f"go {identity}\n")
            process.stdin.flush()
        answers = []
        for process in processes:
            assert process.stdout is not None
            answers.append(json.loads(process.stdout.readline()))
        span = max(a["last"] for a in answers) - min(a["first"] for a in answers)
        admitted = sum(a["admitted"] for a in answers)
        # GCRA's bound for requests spread over ``span``: N + floor(span / (T / N)). For a
        # burst shorter than T / N, as bursts are unless the machine stalls, that is exactly N.
        assert N <= admitted <= N + math.floor(span / (T / N))
        return admitted, max(a["reset"] for a in answers), span

    try:
        for process in processes:
            assert process.stdout is not None
            assert process.stdout.readline().strip() == "ready"
        for attempt in range(5):  # a stalled machine may spread a burst: try a fresh key
            identity = f"ip:203.0.113.{attempt}"
            admitted, reset, span = burst(identity)
            if span < T / N:
                break
        else:
            pytest.fail("no burst of 64 requests took less than T / N = 0.1 s")
        assert admitted == N
        time.sleep(reset + 0.05)  # T has passed since the burst: the full quota is back
        burst(identity)  # N again (exactly, when this burst is short too)
    finally:
        for process in processes:
            if process.stdin is not None:
                process.stdin.close()
        for process in processes:
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)
    assert [p.returncode for p in processes] == [0, 0]


# --- property: the in-process limiter against a reference model ------------------------------


class Reference:
    """Rate limits as token buckets (exact fractions) plus auto-bans, written out plainly.

    Each limit is a bucket of ``count`` tokens refilled at one per ``period / count``; a
    request takes ``cost`` tokens from every bucket or from none. More than ``threshold``
    denials within a window opened by the first one ban for ``ttl * 2**(level - 1)``, at
    most ``longest``; the level counts bans whose end was less than ``longest`` ago, and it
    stops growing where the ban length reaches ``longest``.
    """

    def __init__(
        self, limits: Sequence[tuple[int, int]], threshold: int, ban: tuple[int, int, int]
    ) -> None:
        self.limits = [(count, Fraction(period, count)) for count, period in limits]
        self.tokens = [Fraction(count) for count, _ in limits]
        self.last: int | None = None
        self.threshold = threshold
        self.window, self.ttl, self.longest = ban
        self.strikes, self.window_end = 0, -1
        self.banned_until, self.level, self.level_until = -1, 0, -1

    def request(self, t: int, cost: int) -> tuple[str, tuple[int, ...], float]:
        """(status, remaining per limit, retry_after seconds) for a request at ``t`` (us)."""
        if t < self.banned_until:
            return "banned", (), (self.banned_until - t) / 1e6
        now = [
            min(Fraction(count), tokens + (t - self.last) / interval)
            if self.last is not None
            else tokens
            for (count, interval), tokens in zip(self.limits, self.tokens, strict=True)
        ]
        if all(tokens >= cost for tokens in now):
            self.tokens = [tokens - cost for tokens in now]
            self.last = t
            return "allowed", tuple(math.floor(tokens) for tokens in self.tokens), 0.0
        left = tuple(math.floor(tokens) for tokens in now)
        wait = max(
            (cost - tokens) * interval
            for (_, interval), tokens in zip(self.limits, now, strict=True)
            if tokens < cost
        )
        if self.threshold == 0:
            return "limited", left, float(wait) / 1e6
        if t >= self.window_end:
            self.strikes, self.window_end = 0, t + self.window
        self.strikes += 1
        if self.strikes <= self.threshold:
            return "limited", left, float(wait) / 1e6
        previous = self.level if t < self.level_until else 0
        cap = 1
        while self.ttl * 2 ** (cap - 1) < self.longest:
            cap += 1
        self.level = min(previous + 1, cap)
        length = min(self.ttl * 2 ** (self.level - 1), self.longest)
        self.banned_until = t + length
        self.level_until = self.banned_until + self.longest
        self.strikes, self.window_end = 0, -1
        return "banned", left, length / 1e6


@st.composite
def timelines(draw: st.DrawFn) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """(limits as (count, period us), requests as (time us, cost)), times sorted."""
    limits = draw(
        st.lists(
            st.tuples(st.integers(1, 7), st.integers(1, 4).map(lambda s: s * 1_000_000)),
            min_size=1,
            max_size=3,
            unique=True,
        )
    )
    # Gaps that land exactly on (or a microsecond beside) emission-interval boundaries.
    edges = sorted(
        {
            max(0, period * k // count + delta)
            for count, period in limits
            for k in range(1, count + 1)
            for delta in (-1, 0, 1)
        }
    )
    gap = st.one_of(st.just(0), st.sampled_from(edges), st.integers(0, 5_000_000))
    steps = draw(st.lists(st.tuples(gap, st.integers(1, 3)), min_size=1, max_size=50))
    requests, t = [], 0
    for delta, cost in steps:
        t += delta
        requests.append((t, cost))
    return limits, requests


@pytest.mark.parametrize("threshold", [0, 3])
def test_the_in_process_limiter_matches_the_reference_model(threshold: int, tmp_path: Path) -> None:
    clock = FakeClock()
    ban = (5_000_000, 700_000, 3_000_000)  # window, first ban, longest (microseconds)
    app, limiter = boot(
        tmp_path,
        "memory://",
        clock=clock,
        ban_threshold=threshold,
        ban_window=ban[0] / 1e6,
        ban_ttl=ban[1] / 1e6,
        ban_max_ttl=ban[2] / 1e6,
    )

    @settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
    @given(timelines())
    def run(timeline: tuple[list[tuple[int, int]], list[tuple[int, int]]]) -> None:
        limits, requests = timeline
        texts = [f"{count}/{period // 1_000_000}second" for count, period in limits]
        model = Reference(limits, threshold, ban)
        identity = f"user:{uuid.uuid4()}"
        start = clock.us + 1_000_000
        for t, cost in requests:
            clock.us = start + t
            decision = limiter.check(
                identity=identity, kind="none", action="m.a", action_limits=texts, cost=cost
            )
            status = (
                "allowed"
                if decision.allowed
                else "banned"
                if decision.banned_until is not None
                else "limited"
            )
            expected, left, wait = model.request(t, cost)
            assert (status, tuple(s.remaining for s in decision.states)) == (expected, left)
            assert decision.retry_after == pytest.approx(wait, abs=1e-6)

    try:
        run()
    finally:
        app.shutdown()


# --- Redis outage --------------------------------------------------------------------------


def test_redis_outage_fails_open_locally_or_closed_and_recovers(
    tmp_path: Path, private_redis: RedisServer
) -> None:
    server = private_redis  # its own: stopping it must not disturb other tests
    app, limiter = boot(tmp_path, server.url(), ip=["3/minute"])

    def open_() -> Decision:
        return limiter.check(identity="ip:198.51.100.1", kind="ip", failure="open")

    def closed() -> Decision:
        return limiter.check(identity="ip:198.51.100.2", kind="ip", failure="closed")

    try:
        first = open_()
        assert first.allowed and not first.degraded
        assert closed().allowed
        assert limiter.health().status == "ok"

        server.stop()
        during = [open_() for _ in range(5)]
        assert all(d.degraded for d in during)
        assert allowed(during) == [True, True, True, False, False]  # 3/minute in this worker
        with pytest.raises(DependencyUnavailable):
            closed()
        assert limiter.health().status == "degraded"

        server.start()  # same port, empty: the script is loaded again on first use
        back = open_()
        assert back.allowed and not back.degraded
        assert back.states[0].remaining == 2  # counted on Redis again
        assert closed().allowed
        assert limiter.health().status == "ok"
    finally:
        app.shutdown()  # the fixture stops and removes the server


def test_health_and_counters(tmp_path: Path) -> None:
    app, limiter = boot(tmp_path, "memory://", ip=["2/minute"])
    try:
        for _ in range(3):
            limiter.check(
                identity="ip:192.0.2.1", kind="ip", action="m.a", action_limits=["5/hour"]
            )
        assert limiter.counters == {
            ("allowed", "ip-2/minute"): 2,
            ("allowed", "action-5/hour"): 2,
            ("limited", "ip-2/minute"): 1,
        }
        assert limiter.health().status == "ok"
    finally:
        app.shutdown()


def test_checks_from_many_threads_in_one_process_admit_exactly_n(
    make_limiter: MakeLimiter,
) -> None:
    limiter = make_limiter(user=["25/minute"])
    start = threading.Barrier(10)
    results: list[bool] = []

    def burst() -> None:
        start.wait()
        for _ in range(6):
            results.append(limiter.check(identity=USER, kind="user").allowed)

    threads = [threading.Thread(target=burst) for _ in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(results) == 25
