"""The pipeline's steps after identify: authorize, rate-limit, idempotency, validate.

Each is a plain callable on a ``Call``; the pipeline runs them in that order, fixed at boot,
and a step ends the call by raising an ``ActionError``.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from core.actions import ActionSpec
from core.calls import Call, CallRequest, CallResult
from core.context import ANONYMOUS, Caller
from core.errors import (
    ActionError,
    Banned,
    Forbidden,
    MalformedRequest,
    RateLimited,
    Unauthorized,
)
from core.idempotency import Idempotency, StoredResponse
from core.logging import secret_params_var

log = logging.getLogger("switchboard.pipeline")


def identify_anonymous(request: CallRequest) -> Caller:
    """Until credentials exist every caller is anonymous (trusted transports preset one)."""
    return request.caller or ANONYMOUS


def may_call(caller: Caller, spec: ActionSpec) -> bool:
    """Whether ``caller`` passes the action's ``auth``, ``roles`` and ``scopes``."""
    if caller.kind == "system":
        return True
    if spec.auth == "public":
        return True
    if caller.kind == "anonymous":
        return False
    if spec.auth == "user" and caller.kind != "user":
        return False
    if spec.auth == "api_key" and caller.kind != "api_key":
        return False
    if spec.roles and not (spec.roles & caller.roles):
        return False
    return not (caller.kind == "api_key" and not spec.scopes <= caller.scopes)


def authorize(call: Call) -> None:
    if may_call(call.caller, call.spec):
        return
    if call.caller.kind == "anonymous":
        raise Unauthorized(f"action {call.spec.name} requires credentials (auth: {call.spec.auth})")
    raise Forbidden(f"this caller may not call {call.spec.name}")


def validate(call: Call) -> None:
    raw = call.request.params
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise MalformedRequest("params must be a JSON object")
    call.params = call.action.validate(raw)
    secret = call.spec.secret_params
    if secret:  # the log filter masks these values for the rest of the call
        secret_params_var.set(
            frozenset(str(call.params[n]) for n in secret if call.params.get(n) is not None)
        )


def rate_limit_headers(states: Sequence[Any]) -> dict[str, str]:
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


class RateLimiter(Protocol):
    """What the pipeline needs from the rate limiter (see managers/rate_limiter_manager)."""

    def check(
        self,
        *,
        identity: str,
        kind: str,
        action: str | None = None,
        action_limits: Sequence[str] = (),
        own_limits: Sequence[str] | None = None,
        failure: str = "open",
        cost: int = 1,
    ) -> Any: ...


class RateLimitStep:
    """Global limits of the caller's kind (an API key's own instead, if it has them) plus the
    action's, all in one check; the RateLimit headers go on every answer of the call."""

    def __init__(self, limiter: RateLimiter) -> None:
        self.limiter = limiter

    def __call__(self, call: Call) -> None:
        """Global limits of the caller's kind (an API key's own instead, if it has them)
        plus the action's, all in one check; headers go on every answer of the call."""
        caller = call.caller
        if caller.kind == "system":
            return
        identity: str
        kind: str
        if caller.kind in ("user", "api_key") and caller.id is not None:
            identity, kind = f"{caller.kind}:{caller.id}", caller.kind
        else:
            identity, kind = f"ip:{call.request.client_ip}", "ip"
        decision = self.limiter.check(
            identity=identity,
            kind=kind,
            action=call.spec.name,
            action_limits=call.spec.rate_limit,
            own_limits=caller.rate_limit or None,
            failure=call.spec.rate_limit_failure,
        )
        call.response_headers.update(rate_limit_headers(decision.states))
        if decision.banned_until is not None:
            until = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(decision.banned_until))
            wait = max(1, math.ceil(decision.banned_until - time.time()))
            raise Banned(
                f"too many rejected requests: banned until {until}",
                headers={"Retry-After": str(wait)},
                extra={"banned_until": until},
            )
        if not decision.allowed:
            wait = max(1, math.ceil(decision.retry_after))
            raise RateLimited(
                f"rate limit exceeded for {call.spec.name}; retry later",
                headers={"Retry-After": str(wait)},
            )


class Replay(Exception):
    """Raised by the idempotency step: the stored response answers this call."""

    def __init__(self, stored: StoredResponse) -> None:
        super().__init__("replay")
        self.stored = stored


class IdempotencyStep:
    """Claims an ``Idempotency-Key`` before validation and settles it after the call."""

    def __init__(self, idempotency: Idempotency) -> None:
        self.idempotency = idempotency

    def __call__(self, call: Call) -> None:
        """The idempotency step: claim the key, or replay what the first call answered."""
        key = call.request.idempotency_key
        if key is None or not call.spec.idempotent:
            return
        caller = call.caller
        who = f"{caller.kind}:{caller.id}" if caller.id else f"ip:{call.request.client_ip}"
        outcome = self.idempotency.begin(call.spec.name, who, key, call.request.params)
        if isinstance(outcome, StoredResponse):
            raise Replay(outcome)
        call.claim = outcome

    def settle(
        self, call: Call, *, result: CallResult | None = None, error: ActionError | None = None
    ) -> None:
        """Store the outcome for replay (or release the claim after a crash). The call's
        own outcome stands even if the store fails: the claim then expires by itself."""
        if call.claim is None:
            return
        try:
            if result is not None:
                self.idempotency.finish(call.claim, result.status, result.body, result.content_type)
            elif error is not None:
                self.idempotency.finish_error(call.claim, error, call.request.request_id)
            else:
                self.idempotency.release(call.claim)
        except ActionError:
            log.exception("could not settle the idempotency record of %s", call.request.action)
