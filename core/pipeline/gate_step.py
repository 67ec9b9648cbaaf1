"""The ``gate`` step: what the steps declared, asked of the gate in one round trip."""

from __future__ import annotations

from core.contracts.calls import CallResult
from core.pipeline.call import Call
from core.pipeline.chain import Next
from core.pipeline.gate import Gate, limit_refusal


class GateStep:
    """Asks the gate what the steps declared, in one round trip: a revoked credential is
    401, a ban 403, a spent limit 429, a held idempotency key its replay (or 409/422)."""

    def __init__(self, gate: Gate) -> None:
        self.gate = gate

    def __call__(self, call: Call, next: Next) -> CallResult:
        request = call.gate
        if not request:
            call.admitted = True
            return next(call)
        outcome = self.gate.pass_gate(request)
        decision = call.decision = outcome.decision
        if decision is not None and not decision.allowed:
            raise limit_refusal(decision, f"rate limit exceeded for {call.spec.name}; retry later")
        call.admitted = True
        if request.claim is not None:
            if outcome.taken is not None:
                return request.claim.taken(outcome.taken)
            call.claimed = True
        return next(call)
