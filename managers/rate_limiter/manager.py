"""RateLimiterManager: GCRA limits per caller and per action, auto-bans, and a local fallback.

One ``check()`` covers every limit that applies to a request: the caller kind's global
limits (``ratelimit.ip`` / ``user`` / ``api_key``, or an API key's own), and the action's
``rate_limit``, counted per identity and action. All are decided together in one atomic step
of the backend (one EVALSHA on Redis): if any denies, none is consumed. Denials count
strikes toward an auto-ban. The algorithm is in ``managers/rate_limits/gcra.py``; where its
state lives is the backend's business (``managers/rate_limits/``), picked from the store
the ``redis`` manager opened.

When Redis is down, an action with ``rate_limit_failure: open`` is decided by an in-process
limiter of this worker (the same algorithm, so there is still a bound per worker) and one
with ``closed`` gets ``DependencyUnavailable``. Every check tries Redis first, so the
limiter recovers on its own when Redis returns. Other callers use the same ``check()``
(a kind without global limits, such as ``kind="sio"``, counts only the limits it passes).
"""

from __future__ import annotations

import argparse
import collections
import functools
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any, ClassVar

from core.base.errors import ActionError, ConfigError, DependencyUnavailable, Problem
from core.base.store import KeyValueStore
from core.config.settings import Setting, boolean, duration, integer, strings
from core.contracts.limits import Decision, LimitState, RateLimiter
from core.manager import Command, CommandRuntime, Health, Manager
from core.pipeline.gate import Gate, GateOutcome, GateRequest, LimitRequest, fall_back
from core.pipeline.identity import AUTH_FAILURE
from managers.rate_limiter.backends import open_limiter
from managers.rate_limiter.backends.base import (
    BanPolicy,
    Check,
    Claim,
    Clock,
    LimiterBackend,
    limit_key,
    subject_of,
)
from managers.rate_limiter.backends.decision import decide, denying
from managers.rate_limiter.backends.gcra import MAX_COST, MAX_PERIOD, MICROS, Limit, parse_limit
from managers.rate_limiter.backends.memory import MemoryLimiter

if TYPE_CHECKING:
    from core.manager import App

__all__ = ["Decision", "Limit", "LimitState", "RateLimiterManager", "parse_limit"]

# Kinds with global limits in the config, and their settings.
KINDS = {
    "ip": "ratelimit.ip",
    "user": "ratelimit.user",
    "api_key": "ratelimit.api_key",
    AUTH_FAILURE: "ratelimit.auth_failures",
}
# Failed identifications count per IP apart from the IP's call limits, even when both are
# the same text: their keys carry this scope (never an action name: it has no "!").
AUTH_FAILURE_SCOPE = "!auth_failures"
PLAN_CACHE_SIZE = 4096  # callers x actions whose limit keys a worker keeps
FAILURES = ("open", "closed")
_OWNER = "manager rate_limiter"


class RateLimiterManager(Manager):
    """``check()`` for the chain; ``bans()``/``unban()`` for admins; ``counters`` of
    allowed/limited/banned decisions per limit name."""

    name = "rate_limiter"
    requires = ("config", "redis")
    provides: ClassVar[tuple[type, ...]] = (RateLimiter, Gate)
    facade = "rate_limiter"
    privileged = True
    settings: ClassVar[tuple[Setting, ...]] = (
        Setting(
            "ratelimit.enabled",
            boolean,
            True,
            "Apply rate limits (the test config turns them off; tests of the limiter turn them on)",
            owner=_OWNER,
        ),
        Setting(
            "ratelimit.ip",
            strings,
            ("300/minute",),
            "Limits per client IP for anonymous callers",
            owner=_OWNER,
        ),
        Setting("ratelimit.user", strings, ("600/minute",), "Limits per user", owner=_OWNER),
        Setting(
            "ratelimit.api_key",
            strings,
            ("3000/minute",),
            "Limits per API key (a key's own rate_limit replaces these)",
            owner=_OWNER,
        ),
        Setting(
            "ratelimit.auth_failures",
            strings,
            ("30/minute",),
            "Failed identifications (a missing, malformed, invalid, expired or revoked "
            "credential) allowed per client IP; beyond them 429, which counts as a strike",
            owner=_OWNER,
        ),
        Setting(
            "ratelimit.ban_threshold",
            integer,
            20,
            "An identity answered 429 more than this many "
            "times within ratelimit.ban_window is banned (0: never ban)",
            minimum=0,
            owner=_OWNER,
        ),
        Setting(
            "ratelimit.ban_window",
            duration,
            60.0,
            "Window in which 429 answers are counted",
            owner=_OWNER,
        ),
        Setting(
            "ratelimit.ban_ttl",
            duration,
            60.0,
            "First ban's length; each repeat doubles it",
            owner=_OWNER,
        ),
        Setting("ratelimit.ban_max_ttl", duration, 86400.0, "Longest ban", owner=_OWNER),
    )

    @classmethod
    def commands(cls) -> Sequence[Command]:
        return (
            Command("bans", "list automatic bans, or lift one", _bans_command, _bans_arguments),
        )

    def __init__(self, *, clock: Clock | None = None) -> None:
        # The clock times the in-process limiters; on Redis the server's TIME does.
        self._clock: Clock = clock or time.time
        self.counters: collections.Counter[tuple[str, str]] = collections.Counter()
        self._counting = threading.Lock()
        self._enabled = True
        self._globals: dict[str, tuple[Limit, ...]] = {}
        self._ban = BanPolicy()
        self._store: KeyValueStore | None = None
        self._backend: LimiterBackend | None = None
        self._fallback: LimiterBackend | None = None
        self._degraded = False
        self._plans: dict[
            tuple[Any, ...], tuple[str, tuple[Limit, ...], tuple[str, ...], tuple[str, ...]]
        ] = {}

    # --- lifecycle --------------------------------------------------------------------

    def use_clock(self, clock: Clock) -> None:
        self._clock = clock
        for backend in (self._backend, self._fallback):
            if isinstance(backend, MemoryLimiter):
                backend.use_clock(clock)

    def start(self, app: App) -> None:
        config = app.config
        problems: list[Problem] = []
        limits: dict[str, tuple[Limit, ...]] = {}
        for kind, key in KINDS.items():
            try:
                limits[kind] = tuple(parse_limit(text) for text in config[key])
            except ValueError as exc:
                problems.append(Problem(f"{key}: {exc}", field=key))
        threshold = int(config["ratelimit.ban_threshold"])
        durations = {}
        for name in ("ban_window", "ban_ttl", "ban_max_ttl"):
            key = f"ratelimit.{name}"
            seconds = float(config[key])
            if threshold and not 0 < seconds <= MAX_PERIOD:
                problems.append(
                    Problem(f"{key} must be more than 0 and at most 366 days", field=key)
                )
            durations[name] = max(1, round(seconds * MICROS))
        if problems:
            raise ConfigError(problems)
        self._enabled = bool(config["ratelimit.enabled"])
        self._globals = limits
        self._ban = BanPolicy(
            threshold,
            durations["ban_window"],
            durations["ban_ttl"],
            durations["ban_max_ttl"],
        )
        self._store = self.require(KeyValueStore)
        self._backend = open_limiter(self._store, self._clock)
        # The local bound when the shared store is down (memory:// is never down).
        self._fallback = None if self._backend.name == "memory" else MemoryLimiter(self._clock)
        self._degraded = False

    def stop(self) -> None:
        self._backend = self._fallback = None

    def health(self) -> Health:
        if self._backend is None:
            return Health("failed", {"error": "not started"})
        details: dict[str, Any] = {"backend": self._backend.name, "enabled": self._enabled}
        if self._degraded:
            return Health("degraded", {**details, "fallback": "in-process (redis unavailable)"})
        return Health("ok", details)

    # --- checks -----------------------------------------------------------------------

    def check(
        self,
        *,
        identity: str,
        kind: str,
        action: str | None = None,
        action_limits: Sequence[Limit | str] = (),
        action_subjects: Sequence[tuple[str, str]] = (),
        own_limits: Sequence[str] | None = None,
        failure: str = "open",
        cost: int = 1,
    ) -> Decision:
        """Decide one request of ``identity`` (see the module docstring).

        ``kind`` selects the global limits (``ip``, ``user``, ``api_key``; another kind has
        none); ``own_limits`` replace them when given. The action's limits count against
        each of ``action_subjects`` ((label, identity): an action's ``rate_limit_by``), or
        ``identity`` when there are none. ``ValueError`` for a bad limit text, cost or
        failure mode; ``DependencyUnavailable`` when the store is down and ``failure`` is
        ``closed``.
        """
        if not self._enabled:
            return Decision(True, ())
        if isinstance(cost, bool) or not isinstance(cost, int) or not 1 <= cost <= MAX_COST:
            raise ValueError(f"cost must be an integer from 1 to {MAX_COST}, got {cost!r}")
        if not isinstance(identity, str):
            raise TypeError(f"identity must be a string, got {type(identity).__name__}")
        request = LimitRequest(
            identity,
            kind,
            action,
            action_limits,
            action_subjects,
            own_limits,
            failure,
            cost=cost,
        )
        decision = self.pass_gate(GateRequest(limits=request)).decision
        return Decision(True, ()) if decision is None else decision  # None: nothing to ask

    def pass_gate(self, request: GateRequest) -> GateOutcome:
        """A call's gate (``core.gate``) in one step of the backend: one EVALSHA on Redis.

        When Redis is down: revocations are answered by their fallbacks (or 503), limits by
        the in-process twin (or 503 for ``closed``), and a claim cannot be made (503).
        """
        limits = request.limits if self._enabled else None
        if limits is None and not request.absent and request.claim is None:
            return GateOutcome()  # limits are off and nothing else to ask
        if limits is not None and limits.failure not in FAILURES:
            raise ValueError(f"failure must be 'open' or 'closed', got {limits.failure!r}")
        claim = request.claim
        plan = self._plan(
            identity=limits.identity if limits else "",
            kind=limits.kind if limits else "",
            action=limits.action if limits else None,
            action_limits=limits.action_limits if limits else (),
            action_subjects=limits.action_subjects if limits else (),
            own_limits=limits.own_limits if limits else None,
            cost=limits.cost if limits else 1,
            absent=tuple(p.key for p in request.absent),
            claim=Claim(claim.key, claim.value, max(1, round(claim.ttl * 1000))) if claim else None,
            limited=limits is not None,
            ip=limits.ip if limits else None,
        )
        backend = self._started()
        degraded = False
        try:
            outcome = backend.evaluate(plan)
        except DependencyUnavailable as outage:
            self._degraded = True
            fall_back(request.absent, outage)
            if request.claim is not None or (limits and limits.failure == "closed"):
                raise
            if limits is None or self._fallback is None:
                return GateOutcome()
            plan = replace(plan, absent=(), claim=None)
            outcome = self._fallback.evaluate(plan)
            degraded = True
        self._degraded = degraded
        if outcome.revoked is not None:
            raise request.absent[outcome.revoked].error()
        if limits is None:
            return GateOutcome(None, outcome.taken)
        decision = decide(plan, outcome, degraded=degraded)
        self._count(plan, decision, denying(plan, outcome))
        return GateOutcome(decision, outcome.taken)

    def _plan(
        self,
        *,
        identity: str,
        kind: str,
        action: str | None,
        action_limits: Sequence[Limit | str],
        action_subjects: Sequence[tuple[str, str]],
        own_limits: Sequence[str] | None,
        cost: int,
        absent: tuple[str, ...] = (),
        claim: Claim | None = None,
        limited: bool = True,
        ip: str | None = None,
    ) -> Check:
        if action_limits and action is None:
            raise ValueError("action_limits need the action they belong to")
        if limited is False:  # no limits apply: the gate's other checks only
            return Check("", "", (), (), (), cost, self._ban, absent, claim, limited=False)
        if isinstance(action_limits, str):  # a single limit where a list was meant
            action_limits = (action_limits,)
        subject, limits, keys, names = self._applied(
            (
                identity,
                kind,
                action,
                tuple(action_limits),
                tuple(action_subjects),
                None if own_limits is None else tuple(own_limits),
            )
        )
        ip_subject = _subject(ip) if ip is not None and ip != identity else ""
        return Check(
            identity,
            subject,
            limits,
            keys,
            names,
            cost,
            self._ban,
            absent,
            claim,
            ip_subject=ip_subject,
        )

    def _applied(
        self, key: tuple[Any, ...]
    ) -> tuple[str, tuple[Limit, ...], tuple[str, ...], tuple[str, ...]]:
        """(subject, limits, their keys, their names) for ``key`` = (identity, kind, action,
        action limits, action subjects, own limits): the same for every call of one caller
        to one action, so kept (``_plans``)."""
        found = self._plans.get(key)
        if found is not None:
            return found
        identity, kind, action, action_limits, action_subjects, own_limits = key
        subject = subject_of(identity)
        kind_limits = self._globals.get(kind, ()) if own_limits is None else _parsed(own_limits)
        applied: dict[str, tuple[str, Limit]] = {}  # by key: a limit listed twice counts once
        scope = AUTH_FAILURE_SCOPE if kind == AUTH_FAILURE else None
        for limit in kind_limits:
            applied.setdefault(limit_key(subject, limit, scope), (f"{kind}-{limit.text}", limit))
        limits = [
            limit if isinstance(limit, Limit) else parse_limit(limit) for limit in action_limits
        ]
        for label, who in action_subjects or (("", identity),):
            by = subject if who == identity else subject_of(who)
            prefix = f"action-{label}-" if label else "action-"
            for limit in limits:
                applied.setdefault(limit_key(by, limit, action), (f"{prefix}{limit.text}", limit))
        found = (
            subject,
            tuple(limit for _, limit in applied.values()),
            tuple(applied),
            tuple(name for name, _ in applied.values()),
        )
        if len(self._plans) >= PLAN_CACHE_SIZE:
            self._plans.pop(next(iter(self._plans)), None)  # the oldest entry
        self._plans[key] = found
        return found

    def _count(self, plan: Check, decision: Decision, denied: Iterable[int]) -> None:
        if decision.allowed:
            counts = [("allowed", name) for name in plan.names]
        elif decision.banned_until is not None:
            counts = [("banned", name) for name in plan.names]
        else:
            counts = [("limited", plan.names[i]) for i in denied]
        with self._counting:
            self.counters.update(counts)

    # --- bans -------------------------------------------------------------------------

    @staticmethod
    def parse_limit(text: str) -> Limit:
        """A limit as declarations write it; ``ValueError`` says what is wrong."""
        return parse_limit(text)

    def bans(self) -> list[dict[str, Any]]:
        """Bans in force: ``[{"identity", "until" (epoch seconds), "level"}]``, soonest
        first. On Redis, by SCAN of the ban keys (``DependencyUnavailable`` when it is down).
        """
        found = self._started().bans()
        return [
            {"identity": ban.identity, "until": ban.until / MICROS, "level": ban.level}
            for ban in sorted(found, key=lambda ban: (ban.until, ban.identity))
        ]

    def unban(self, identity: str) -> bool:
        """Lift ``identity``'s ban and forget its strikes and ban level (the next ban starts
        again at ``ratelimit.ban_ttl``); True when a ban was in force."""
        backend = self._started()
        lifted = self._fallback.unban(identity) if self._fallback is not None else False
        return backend.unban(identity) or lifted

    def _started(self) -> LimiterBackend:
        if self._backend is None:
            raise self.not_started()
        return self._backend


@functools.lru_cache(maxsize=4096)
def _subject(identity: str) -> str:
    return subject_of(identity)  # a client's IP repeats on every one of its calls


def _parsed(texts: Sequence[str]) -> tuple[Limit, ...]:
    if isinstance(texts, str):  # a single limit where a list was meant
        texts = (texts,)
    return _parse_all(tuple(texts))


@functools.lru_cache(maxsize=1024)
def _parse_all(texts: tuple[str, ...]) -> tuple[Limit, ...]:
    # Declared and per-key limits repeat on every request: parse each list once.
    return tuple(parse_limit(text) for text in texts)


# --- python app.py bans ----------------------------------------------------------------


def _bans_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="bans_command")
    lift = sub.add_parser("lift", help="lift a ban")
    lift.add_argument("identity", help="as listed, e.g. ip:203.0.113.7 or user:<id>")


def _bans_command(args: argparse.Namespace, runtime: CommandRuntime) -> int:
    if runtime.config()["redis.url"] == "memory://":
        print(
            "note: redis.url is memory://: a running server keeps its bans in its own "
            "process, which this command cannot see (use ratelimit.bans over HTTP, or give "
            "the server a Redis)",
            file=sys.stderr,
        )
    with runtime.booted_managers() as app:
        limiter = app.get(RateLimiterManager)
        try:
            if args.bans_command == "lift":
                if not limiter.unban(args.identity):
                    print(f"{args.identity!r} is not banned", file=sys.stderr)
                    return 1
                print(f"lifted the ban of {args.identity}")
                return 0
            bans = limiter.bans()
        except ActionError as error:
            print(f"{error.title}: {error.detail}", file=sys.stderr)
            return 1
    if not bans:
        print("no bans")
    for ban in bans:
        until = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ban["until"]))
        print(f"{ban['identity']}  until {until}  (level {ban['level']})")
    return 0
