"""The ``rate_limit`` step: which limits the call counts against (the gate decides them)."""

from __future__ import annotations

import json

from core.base.errors import (
    ActionError,
)
from core.contracts.calls import CallResult
from core.contracts.limits import rate_limit_headers
from core.pipeline.call import Call
from core.pipeline.chain import Next
from core.pipeline.gate import LimitRequest


def caller_identity(call: Call) -> tuple[str, str]:
    """(identity, kind) the limits, strikes and bans count against: the user or key, else
    the IP. A public action counts the IP whatever credential comes along: a token buys no
    budget there (no more password guesses on ``auth.login``) and lifts no ban of the IP."""
    caller = call.caller
    public = call.spec.auth == "public"
    if caller.kind in ("user", "api_key") and caller.id is not None and not public:
        return caller.key, caller.kind
    return f"ip:{call.request.client_ip}", "ip"


def action_subjects(call: Call, identity: str) -> list[tuple[str, str]]:
    """(label, identity) each of the action's limits counts against, per ``rate_limit_by``;
    an optional param the call leaves out counts against nothing."""
    subjects = []
    for by in call.spec.rate_limit_by:
        if by == "caller":
            subjects.append(("", identity))
        elif by == "ip":
            subjects.append(("ip", f"ip:{call.request.client_ip}"))
        else:
            name = by[len("params.") :]
            if call.params.get(name) is not None:
                value = json.dumps(call.params[name], sort_keys=True, ensure_ascii=False)
                subjects.append((name, f"param:{call.spec.name}:{name}:{value}"))
    return subjects


class RateLimitStep:
    """Declares the limits of the call (the caller kind's global ones, or an API key's own,
    plus the action's) for the gate; puts the RateLimit headers on every answer of the
    call: results, problems and replays alike."""

    def __call__(self, call: Call, next: Next) -> CallResult:
        if call.caller.kind == "system" or call.request.job is not None:
            return next(call)  # a job's limits were counted when it was enqueued
        identity, kind = caller_identity(call)
        call.gate.limits = LimitRequest(
            identity=identity,
            kind=kind,
            action=call.spec.name,
            action_limits=call.spec.rate_limit,
            action_subjects=action_subjects(call, identity),
            own_limits=(call.caller.rate_limit or None) if kind == "api_key" else None,
            failure=call.spec.rate_limit_failure,
            # A banned IP is refused whatever credential it presents.
            ip=None if kind == "ip" else f"ip:{call.request.client_ip}",
        )
        try:
            result = next(call)
        except ActionError as error:
            if call.decision is not None:
                error.headers = {**rate_limit_headers(call.decision.states), **error.headers}
            raise
        if call.decision is None:
            return result
        return result.with_headers(rate_limit_headers(call.decision.states))
