"""Rate limits as declarations write them (``"10/minute"``), and what a limiter decides.

The grammar is the kernel's: action declarations, API keys and settings are checked
against it at load time. The algorithm that enforces limits (GCRA) and where its state
lives belong to the rate limiter manager, which implements ``RateLimiter``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Protocol

MICROS = 1_000_000
MAX_COUNT = 10**9
MAX_PERIOD = 366 * 86400  # seconds; keeps every microsecond value far below 2**53
MAX_COST = 10**6

# A limit as declarations write it (the declaration schema's pattern: one grammar everywhere).
RATE = (
    r"^\s*[1-9][0-9]*\s*/\s*([1-9][0-9]*\s*)?"
    r"(seconds?|secs?|s|minutes?|mins?|m|hours?|h|days?|d)\s*$"
)
_PATTERN = re.compile(RATE)
_UNIT = re.compile(r"^([0-9]*)\s*([a-z]+)$")
_UNITS = {
    "s": 1,
    "sec": 1,
    "second": 1,
    "m": 60,
    "min": 60,
    "minute": 60,
    "h": 3600,
    "hour": 3600,
    "d": 86400,
    "day": 86400,
}


@dataclass(frozen=True)
class Limit:
    """``count`` requests per ``period`` seconds; ``text`` as written (e.g. ``10/minute``)."""

    count: int
    period: float
    text: str

    @property
    def period_us(self) -> int:
        return round(self.period * MICROS)

    @property
    def key(self) -> str:
        """The limit in store keys: the same for every spelling (``10/min``, ``10/1minute``)."""
        return f"{self.count}/{round(self.period)}s"


def parse_limit(text: str) -> Limit:
    """``"10/minute"``, ``"5/second"``, ``"200/hour"``, ``"1000/day"``, ``"10/5minute"``.

    ``ValueError`` for anything else, for ``ms`` (the pattern would read it as minutes), and
    for counts above 10**9 or periods above 366 days.
    """
    if not isinstance(text, str):
        raise ValueError(f"a rate limit is a string like '10/minute', got {type(text).__name__}")
    return _parse(text)


@lru_cache(maxsize=1024)
def _parse(text: str) -> Limit:
    if not _PATTERN.fullmatch(text):
        raise ValueError(f"{text!r} is not a rate limit like '10/minute' or '100/5minute'")
    count_text, _, per = text.partition("/")
    found = _UNIT.match(per.strip())
    if found is None:  # unreachable for text the pattern accepted; kept as a guard
        raise ValueError(f"{text!r} is not a rate limit like '10/minute'")
    multiplier_text, unit = found.groups()
    if unit == "ms":
        raise ValueError(f"{text!r}: 'ms' would mean minutes here; write 'minute' or 'second'")
    if unit not in _UNITS:
        unit = unit[:-1]  # a plural: "minutes", "secs", "hs"
    count = int(count_text.strip())
    period = int(multiplier_text or "1") * _UNITS[unit]
    if count > MAX_COUNT:
        raise ValueError(f"{text!r}: at most {MAX_COUNT} requests per period")
    if period > MAX_PERIOD:
        raise ValueError(f"{text!r}: the period is at most 366 days")
    return Limit(count, float(period), text.strip())


@dataclass(frozen=True)
class LimitState:
    """One applied limit after this request."""

    name: str  # policy name for headers, e.g. "ip-10/minute", "action-10/minute"
    limit: Limit
    remaining: int  # requests left right now (after this one when allowed)
    reset: float  # seconds until the full quota is back


@dataclass(frozen=True)
class Decision:
    """Whether a request may go on, and every limit that applied to it."""

    allowed: bool
    states: tuple[LimitState, ...]
    retry_after: float = 0.0  # seconds (when not allowed)
    banned_until: float | None = None  # epoch seconds (when banned)
    degraded: bool = False  # True when Redis was down and the local fallback answered


class RateLimiter(Protocol):
    """What the chain's rate-limit step needs (the ``rate_limiter`` manager)."""

    def check(
        self,
        *,
        identity: str,
        kind: str,
        action: str | None = None,
        action_limits: Sequence[Limit] = (),
        action_subjects: Sequence[tuple[str, str]] = (),
        own_limits: Sequence[str] | None = None,
        failure: str = "open",
        cost: int = 1,
    ) -> Decision: ...


def rate_limit_headers(states: Sequence[LimitState]) -> dict[str, str]:
    """The ``RateLimit-Policy`` and ``RateLimit`` fields of
    draft-ietf-httpapi-ratelimit-headers-10 for the limits that applied."""
    if not states:
        return {}
    return {
        "RateLimit-Policy": ", ".join(
            f'"{s.name}";q={s.limit.count};w={math.ceil(s.limit.period)}' for s in states
        ),
        "RateLimit": ", ".join(
            f'"{s.name}";r={max(0, s.remaining)};t={math.ceil(max(0.0, s.reset))}' for s in states
        ),
    }
