"""GCRA on exact integers, and the ``"10/minute"`` strings limits are written as.

A limit of N per T admits a burst of exactly N and then one request per emission interval
I = T/N. Each limit keeps a theoretical arrival time (TAT): a request at ``now`` moves it to
``max(tat, now) + I * cost`` and is admitted iff that is at most T ahead of ``now``.

Times are integer microseconds, and a TAT is ``us + frac / count`` microseconds, so I is
exact even when N does not divide T: no float rounding can admit an N+1st request, and the
Lua script (doubles, every value an integer below 2**53) and the in-process backend (Python
ints) compute the same numbers. Everything here is pure; backends only store TATs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import NamedTuple

from core.declaration_schema import RATE

MICROS = 1_000_000
MAX_COUNT = 10**9
MAX_PERIOD = 366 * 86400  # seconds; keeps every microsecond value far below 2**53
MAX_COST = 10**6

_PATTERN = re.compile(RATE)  # the declaration schema's pattern: one grammar everywhere
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


class Tat(NamedTuple):
    """A theoretical arrival time: ``us + frac / count`` microseconds (0 <= frac < count)."""

    us: int
    frac: int


def current(stored: Tat | None, now: int) -> Tat:
    """``max(stored, now)``: a TAT in the past means the full quota is back."""
    if stored is None or stored.us < now:
        return Tat(now, 0)
    return stored


def advance(tat: Tat, limit: Limit, cost: int) -> Tat:
    """``tat + I * cost`` with I = period / count, exactly."""
    whole, rest = divmod(limit.period_us, limit.count)
    carry, frac = divmod(tat.frac + rest * cost, limit.count)
    return Tat(tat.us + whole * cost + carry, frac)


def admits(tat: Tat, now: int, limit: Limit, cost: int) -> bool:
    """Whether ``cost`` more requests fit: ``advance(tat) - now <= period``.

    A cost above the count never fits (checked first, so the Lua script never multiplies
    large periods by large costs).
    """
    if cost > limit.count:
        return False
    after = advance(tat, limit, cost)
    ahead = after.us - now
    return ahead < limit.period_us or (ahead == limit.period_us and after.frac == 0)


def _ahead(tat: Tat, now: int, limit: Limit) -> int:
    """``tat - now`` in units of 1/count microsecond (never negative)."""
    return max(0, (tat.us - now) * limit.count + tat.frac)


def remaining(tat: Tat, now: int, limit: Limit) -> int:
    """Requests that still fit now: ``floor((period - (tat - now)) / I)``, at least 0."""
    room = limit.period_us * limit.count - _ahead(tat, now, limit)
    return max(0, room // limit.period_us)


def reset_seconds(tat: Tat, now: int, limit: Limit) -> float:
    """Seconds until the full quota is back: ``tat - now``."""
    return _ahead(tat, now, limit) / limit.count / MICROS


def retry_seconds(tat: Tat, now: int, limit: Limit, cost: int) -> float:
    """Seconds until ``cost`` requests fit (for a limit that denied): ``tat' - period - now``.

    For a cost above the count it is the wait that would be needed, though it never fits.
    """
    after = advance(tat, limit, cost)
    late = (after.us - now - limit.period_us) * limit.count + after.frac
    return max(0, late) / limit.count / MICROS
