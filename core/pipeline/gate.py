"""The gate: everything a call needs from the shared store before its handler runs, asked in
one round trip.

The chain's steps declare what they need on ``call.gate``: identify adds the revocation
markers of the caller's credential (a denylisted token, a revoked session or API key), the
rate-limit step the limits that apply, the idempotency step the claim of its key. The
``gate`` step, right before ``run``, hands the whole request to the app's ``Gate``: the rate
limiter runs it as one Lua script on Redis (or its in-process twin on ``memory://``);
without a rate limiter, ``StoreGate`` asks the store key by key. Order inside the gate:
revocations first (a revoked credential consumes nothing), then bans and limits (a refused
call claims nothing), then the claim.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from core.base.errors import ActionError, Banned, DependencyUnavailable, RateLimited
from core.base.store import KeyValueStore
from core.contracts.limits import Decision, Limit

if TYPE_CHECKING:
    from core.contracts.calls import CallResult


@dataclass(frozen=True)
class Precondition:
    """A store key that must not exist (a revocation marker), and the error raised when it
    does (made only then: nearly every call passes).

    ``fallback`` answers instead when the store cannot be asked (an API key is re-checked
    in the database); without one, a store outage is 503.
    """

    key: str
    error: Callable[[], ActionError]
    fallback: Callable[[], None] | None = None
    # Whether it speaks for the caller beyond this one credential (an account's or a key's
    # revocation, not one access token's logout): a background job enqueued with the
    # credential checks these again when it starts.
    lasting: bool = True


@dataclass(frozen=True)
class LimitRequest:
    """The limits of one call (see ``RateLimiter.check`` for the fields)."""

    identity: str
    kind: str
    action: str | None = None
    action_limits: Sequence[Limit | str] = ()
    action_subjects: Sequence[tuple[str, str]] = ()
    own_limits: Sequence[str] | None = None
    failure: str = "open"
    ip: str | None = None  # the client's IP identity when ``identity`` is a user or key
    cost: int = 1


@dataclass(frozen=True)
class ClaimRequest:
    """Set ``key`` to ``value`` for ``ttl`` seconds unless it exists; ``taken(record)`` is
    the answer when it does (a replay, or a 409/422 it raises)."""

    key: str
    value: str
    ttl: float
    taken: Callable[[bytes], CallResult]


@dataclass
class GateRequest:
    """What the steps of one call declared; filled on the way in, asked once."""

    absent: list[Precondition] = field(default_factory=list)
    limits: LimitRequest | None = None
    claim: ClaimRequest | None = None

    def __bool__(self) -> bool:
        return bool(self.absent) or self.limits is not None or self.claim is not None


@dataclass(frozen=True)
class GateOutcome:
    """The limits' decision (None when none applied) and, when the claim's key was held
    already, its record."""

    decision: Decision | None = None
    taken: bytes | None = None


class Gate(Protocol):
    """Answers a ``GateRequest`` in one step; raises the error of a present revocation
    marker, or ``DependencyUnavailable`` when the store is needed and down."""

    def pass_gate(self, request: GateRequest) -> GateOutcome: ...


def limit_refusal(decision: Decision, limited: str) -> ActionError:
    """The answer to a call the limits did not allow: 403 ``banned`` with the ban's end, or
    429 ``rate-limited`` saying ``limited``; both with ``Retry-After``."""
    if decision.banned_until is not None:
        until = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(decision.banned_until))
        wait = max(1, math.ceil(decision.banned_until - time.time()))
        return Banned(
            f"too many rejected requests: banned until {until}",
            headers={"Retry-After": str(wait)},
            extra={"banned_until": until},
        )
    return RateLimited(
        limited, headers={"Retry-After": str(max(1, math.ceil(decision.retry_after)))}
    )


def check_absent(store: KeyValueStore, preconditions: Sequence[Precondition]) -> None:
    """The revocation markers, one GET each; a fallback answers for a store that is down."""
    for precondition in preconditions:
        try:
            present = store.get(precondition.key) is not None
        except DependencyUnavailable as outage:
            fall_back((precondition,), outage)
            continue
        if present:
            raise precondition.error()


def fall_back(preconditions: Sequence[Precondition], outage: DependencyUnavailable) -> None:
    """The store could not be asked: each marker's fallback answers for it (and raises its
    error); a marker without one makes the outage the answer (503)."""
    for precondition in preconditions:
        if precondition.fallback is None:
            raise outage
        precondition.fallback()


def claim_key(store: KeyValueStore, key: str, value: str, ttl: float) -> bytes | None:
    """SET NX ``key``; the record that holds it when that fails (None: claimed)."""
    for _ in range(3):  # the holder's record may expire between our SET NX and GET
        if store.set(key, value, ttl=ttl, nx=True):
            return None
        held = store.get(key)
        if held is not None:
            return held
    raise DependencyUnavailable("the idempotency record keeps changing; retry shortly")


class StoreGate:
    """The gate of an app without a rate limiter: revocations and the claim, key by key."""

    def __init__(self, store: KeyValueStore) -> None:
        self._store = store

    def pass_gate(self, request: GateRequest) -> GateOutcome:
        check_absent(self._store, request.absent)
        claim = request.claim
        taken = claim_key(self._store, claim.key, claim.value, claim.ttl) if claim else None
        return GateOutcome(None, taken)
