"""From a backend's ``Outcome`` to the ``Decision`` callers see (headers, Retry-After, 403)."""

from __future__ import annotations

from dataclasses import dataclass

from managers.rate_limits.base import Check, Outcome
from managers.rate_limits.gcra import (
    MICROS,
    Limit,
    admits,
    remaining,
    reset_seconds,
    retry_seconds,
)


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


def denying(check: Check, outcome: Outcome) -> tuple[int, ...]:
    """Indexes of the limits that refused the request (none when it was allowed)."""
    if outcome.status == "allowed" or not outcome.tats:  # no tats: an existing ban answered
        return ()
    return tuple(
        i
        for i, (tat, limit) in enumerate(zip(outcome.tats, check.limits, strict=True))
        if not admits(tat, outcome.now, limit, check.cost)
    )


def decide(check: Check, outcome: Outcome, *, degraded: bool = False) -> Decision:
    now = outcome.now
    states = tuple(
        LimitState(name, limit, remaining(tat, now, limit), reset_seconds(tat, now, limit))
        for name, limit, tat in zip(check.names, check.limits, outcome.tats, strict=False)
    )
    if outcome.status == "allowed":
        return Decision(True, states, degraded=degraded)
    if outcome.banned_until is not None:
        return Decision(
            False,
            states,
            retry_after=(outcome.banned_until - now) / MICROS,
            banned_until=outcome.banned_until / MICROS,
            degraded=degraded,
        )
    wait = max(
        (
            retry_seconds(outcome.tats[i], now, check.limits[i], check.cost)
            for i in denying(check, outcome)
        ),
        default=0.0,
    )
    return Decision(False, states, retry_after=wait, degraded=degraded)
