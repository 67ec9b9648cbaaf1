"""What a limiter backend is asked and answers, the key layout, and the ban ladder.

A backend gets one ``Check`` (every limit that applies to one request, plus the ban policy,
plus the rest of the call's gate: revocation markers that must be absent and an
idempotency claim) and answers one ``Outcome``, atomically: the revocation markers, the
ban check, all limits, the strike counter, a new ban and the claim happen together, so no
interleaving of requests can admit more than a limit allows.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol
from urllib.parse import quote

from managers.rate_limiter.backends.gcra import Limit, Tat

Clock = Callable[[], float]  # seconds since the epoch, like time.time
Status = Literal["allowed", "limited", "banned", "revoked"]

ROOT = "rl:"
BAN_PREFIX = ROOT + "ban:"


@dataclass(frozen=True)
class BanPolicy:
    """Auto-ban: more than ``threshold`` denials within ``window_us`` ban for ``ttl_us``,
    doubling per repeat up to ``max_ttl_us`` (microseconds; threshold 0: never ban)."""

    threshold: int = 0
    window_us: int = 60 * 10**6
    ttl_us: int = 60 * 10**6
    max_ttl_us: int = 86400 * 10**6


@dataclass(frozen=True)
class Claim:
    """SET ``key`` to ``value`` for ``ttl_ms`` unless it exists (an idempotency key)."""

    key: str
    value: str
    ttl_ms: int


@dataclass(frozen=True)
class Check:
    """One request: who, which limits (with their store keys and policy names), its cost."""

    identity: str
    subject: str  # the identity's digest, the only form of it in keys
    limits: tuple[Limit, ...]
    keys: tuple[str, ...]
    names: tuple[str, ...]
    cost: int
    ban: BanPolicy
    absent: tuple[str, ...] = ()  # store keys that must not exist (revocation markers)
    claim: Claim | None = None  # set only when the call is admitted
    limited: bool = True  # False: no ban and no limits apply (limits off, a system call)
    # The client IP's subject when the limits count against a user or key: a ban of the IP
    # refuses the call all the same ("" for none).
    ip_subject: str = ""

    @property
    def ban_key(self) -> str:
        return ban_key(self.subject)

    @property
    def strike_key(self) -> str:
        return strike_key(self.subject)

    @property
    def level_key(self) -> str:
        return level_key(self.subject)


@dataclass(frozen=True)
class Outcome:
    """A backend's answer; times in microseconds of the backend's clock.

    ``tats`` has one TAT per limit: after the request when it was allowed, as found (nothing
    consumed) when it was not, and none when an existing ban or a revocation answered.
    ``revoked`` indexes the first ``absent`` key found; ``taken`` is the record that held
    the claim's key (None: claimed, or no claim).
    """

    status: Status
    now: int
    tats: tuple[Tat, ...] = ()
    banned_until: int | None = None
    level: int = 0
    revoked: int | None = None
    taken: bytes | None = None


@dataclass(frozen=True)
class BanRecord:
    identity: str
    until: int  # microseconds since the epoch
    level: int


class LimiterBackend(Protocol):
    """Where TATs, strikes and bans live: in this process, or on the Redis server."""

    name: str

    def evaluate(self, check: Check) -> Outcome:
        """Decide ``check`` atomically; ``DependencyUnavailable`` when the store is down."""
        ...

    def bans(self) -> list[BanRecord]:
        """Bans in force."""
        ...

    def unban(self, identity: str) -> bool:
        """Lift a ban and forget its strikes and level; True when a ban was in force."""
        ...


def subject_of(identity: str) -> str:
    """The identity in keys: a digest, so ``:``, glob characters or braces in it are inert."""
    return hashlib.sha1(identity.encode("utf-8", "surrogatepass")).hexdigest()


def ban_key(subject: str) -> str:
    # The braces make every key of one identity a Redis Cluster hash tag of the same slot.
    return f"{BAN_PREFIX}{{{subject}}}"


def strike_key(subject: str) -> str:
    return f"{ROOT}strikes:{{{subject}}}"


def level_key(subject: str) -> str:
    return f"{ROOT}level:{{{subject}}}"


def limit_key(subject: str, limit: Limit, action: str | None) -> str:
    """Global limits count per identity; action limits per identity and action."""
    if action is None:
        return f"{ROOT}lim:{{{subject}}}:{limit.key}"
    return f"{ROOT}act:{{{subject}}}:{quote(action, safe='._-')}:{limit.key}"


def next_ban(previous_level: int, policy: BanPolicy) -> tuple[int, int]:
    """(level, ttl_us) of the ban that follows ``previous_level`` (0: none recently).

    The TTL doubles per level up to ``max_ttl_us``; the level stops growing there.
    """
    level, ttl = 1, min(policy.ttl_us, policy.max_ttl_us)
    while level <= previous_level and ttl < policy.max_ttl_us:
        level += 1
        ttl = min(ttl * 2, policy.max_ttl_us)
    return level, ttl


def encode_identity(identity: str) -> bytes:
    return identity.encode("utf-8", "surrogatepass")


def decode_identity(data: bytes) -> str:
    return data.decode("utf-8", "surrogatepass")
