"""From a backend's ``Outcome`` to the ``Decision`` callers see (headers, Retry-After, 403)."""

from __future__ import annotations

from core.contracts.limits import Decision, LimitState
from managers.rate_limiter.backends.base import Check, Outcome
from managers.rate_limiter.backends.gcra import (
    MICROS,
    admits,
    remaining,
    reset_seconds,
    retry_seconds,
)


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
