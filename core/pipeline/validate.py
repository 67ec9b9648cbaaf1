"""The ``validate`` step: the params checked against the action's schema, defaults applied."""

from __future__ import annotations

from collections.abc import Mapping

from core.base.errors import (
    MalformedRequest,
)
from core.base.logging import secret_params_var
from core.contracts.calls import CallResult
from core.pipeline.call import Call
from core.pipeline.chain import Next


def validate(call: Call, next: Next) -> CallResult:
    raw = call.request.params
    if raw is None:
        raw = {}
    elif type(raw) is not dict and not isinstance(raw, Mapping):
        raise MalformedRequest("params must be a JSON object")
    call.params = call.action.validate(raw)
    secret = call.spec.secret_params
    if secret:  # the log filter masks these values for the rest of the call
        secret_params_var.set(
            frozenset(str(call.params[n]) for n in secret if call.params.get(n) is not None)
        )
    return next(call)
