"""GCRA on exact integers (the ``"10/minute"`` grammar is the kernel's: ``core.limits``).

A limit of N per T admits a burst of exactly N and then one request per emission interval
I = T/N. Each limit keeps a theoretical arrival time (TAT): a request at ``now`` moves it to
``max(tat, now) + I * cost`` and is admitted iff that is at most T ahead of ``now``.

Times are integer microseconds, and a TAT is ``us + frac / count`` microseconds, so I is
exact even when N does not divide T: no float rounding can admit an N+1st request, and the
Lua script (doubles, every value an integer below 2**53) and the in-process backend (Python
ints) compute the same numbers. Everything here is pure; backends only store TATs.
"""

from __future__ import annotations

from typing import NamedTuple

from core.contracts.limits import MAX_COST, MAX_COUNT, MAX_PERIOD, MICROS, Limit, parse_limit

__all__ = [
    "MAX_COST",
    "MAX_COUNT",
    "MAX_PERIOD",
    "MICROS",
    "Limit",
    "Tat",
    "admits",
    "advance",
    "current",
    "parse_limit",
    "remaining",
    "reset_seconds",
    "retry_seconds",
]


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
