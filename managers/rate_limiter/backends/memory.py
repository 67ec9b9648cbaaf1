"""The in-process limiter: for memory://, and the per-worker fallback when Redis is down.

It takes the same steps as the Lua script in ``redis_lua.py``, in the same order, on the
same integers, so both give the same decisions for the same requests and clock. The clock
is injected (tests drive a fake one). One lock makes each check atomic; entries whose time
has passed are swept every few thousand checks. Revocation markers and claims live in the
``memory://`` store it is given (the fallback has none: it decides limits only).
"""

from __future__ import annotations

import threading
import time

from core.base.store import KeyValueStore
from core.pipeline.gate import claim_key
from managers.rate_limiter.backends.base import (
    BanPolicy,
    BanRecord,
    Check,
    Clock,
    Outcome,
    next_ban,
    subject_of,
)
from managers.rate_limiter.backends.gcra import MICROS, Tat, admits, advance, current

_SWEEP_EVERY = 4096


class MemoryLimiter:
    """``LimiterBackend`` in dicts, timed by ``clock`` (seconds)."""

    name = "memory"

    def __init__(self, clock: Clock = time.time, store: KeyValueStore | None = None) -> None:
        self._clock = clock
        self._store = store
        self._lock = threading.Lock()
        self._tats: dict[str, Tat] = {}
        self._strikes: dict[str, tuple[int, int]] = {}  # subject -> (strikes, window end)
        self._levels: dict[str, tuple[int, int]] = {}  # subject -> (level, forgotten at)
        self._bans: dict[str, BanRecord] = {}  # subject -> ban
        self._checks = 0

    def use_clock(self, clock: Clock) -> None:
        """Time from ``clock`` from now on (tests freeze it)."""
        self._clock = clock

    def now(self) -> int:
        return round(self._clock() * MICROS)

    def evaluate(self, check: Check) -> Outcome:
        if check.absent or check.claim is not None:
            return self._gate(check)
        return self._limits(check)

    def _gate(self, check: Check) -> Outcome:
        """Revocation markers and the claim around the limits, in the store."""
        if self._store is None:
            raise TypeError("this limiter has no store for revocations and claims")
        for index, key in enumerate(check.absent):
            if self._store.get(key) is not None:
                return Outcome("revoked", self.now(), revoked=index)
        outcome = self._limits(check)
        claim = check.claim
        if outcome.status != "allowed" or claim is None:
            return outcome
        taken = claim_key(self._store, claim.key, claim.value, claim.ttl_ms / 1000)
        return Outcome("allowed", outcome.now, outcome.tats, taken=taken)

    def _limits(self, check: Check) -> Outcome:
        now = self.now()
        with self._lock:
            self._checks += 1
            if self._checks % _SWEEP_EVERY == 0:
                self._sweep(now)
            if not check.limited:
                return Outcome("allowed", now)
            for subject in (check.subject, check.ip_subject):
                ban = self._bans.get(subject) if subject else None
                if ban is not None and now < ban.until:
                    return Outcome("banned", now, (), ban.until, ban.level)
            found = tuple(current(self._tats.get(key), now) for key in check.keys)
            if all(
                admits(tat, now, limit, check.cost)
                for tat, limit in zip(found, check.limits, strict=True)
            ):
                after = tuple(
                    advance(tat, limit, check.cost)
                    for tat, limit in zip(found, check.limits, strict=True)
                )
                self._tats.update(zip(check.keys, after, strict=True))
                return Outcome("allowed", now, after)
            return self._strike(check, now, found)

    def _strike(self, check: Check, now: int, found: tuple[Tat, ...]) -> Outcome:
        """Count a denial toward a ban; ban when it crosses the threshold. Locked."""
        policy: BanPolicy = check.ban
        if policy.threshold <= 0:
            return Outcome("limited", now, found)
        strikes, ends = self._strikes.get(check.subject, (0, 0))
        if now >= ends:
            strikes, ends = 0, now + policy.window_us
        strikes += 1
        if strikes <= policy.threshold:
            self._strikes[check.subject] = (strikes, ends)
            return Outcome("limited", now, found)
        previous, forgotten = self._levels.get(check.subject, (0, 0))
        if now >= forgotten:
            previous = 0
        level, ttl = next_ban(previous, policy)
        until = now + ttl
        self._bans[check.subject] = BanRecord(check.identity, until, level)
        self._levels[check.subject] = (level, until + policy.max_ttl_us)
        self._strikes.pop(check.subject, None)
        return Outcome("banned", now, found, until, level)

    def _sweep(self, now: int) -> None:
        for key in [k for k, tat in self._tats.items() if tat.us < now]:
            del self._tats[key]
        for table in (self._strikes, self._levels):
            for key in [k for k, (_, ends) in table.items() if ends <= now]:
                del table[key]
        for key in [k for k, ban in self._bans.items() if ban.until <= now]:
            del self._bans[key]

    def bans(self) -> list[BanRecord]:
        now = self.now()
        with self._lock:
            return [ban for ban in self._bans.values() if now < ban.until]

    def unban(self, identity: str) -> bool:
        subject = subject_of(identity)
        now = self.now()
        with self._lock:
            ban = self._bans.pop(subject, None)
            self._strikes.pop(subject, None)
            self._levels.pop(subject, None)
        return ban is not None and now < ban.until
