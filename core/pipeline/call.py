"""``Call``: the state of one call as it moves through the chain, and the success
envelope the run step encodes once."""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from core.actions.actions import Action, ActionSpec
from core.base.errors import (
    InternalError,
)
from core.base.logging import redact
from core.contracts.calls import CallRequest
from core.contracts.context import ANONYMOUS, Caller
from core.contracts.limits import Decision
from core.pipeline.gate import GateRequest

log = logging.getLogger("switchboard.pipeline")


@dataclass
class Call:
    """The state of one call as it moves through the chain."""

    request: CallRequest
    started: float
    caller: Caller = ANONYMOUS
    found: Action | None = None  # set by the lookup step
    params: dict[str, Any] = field(default_factory=dict)  # set by the validate step
    gate: GateRequest = field(default_factory=GateRequest)  # what the gate step will ask
    decision: Decision | None = None  # the limits' decision, once the gate answered
    claimed: bool = False  # this call holds its idempotency key
    admitted: bool = False  # the gate let it through (a 401 after it is not identification's)

    @property
    def action(self) -> Action:
        if self.found is None:
            raise RuntimeError("the action has not been looked up yet")
        return self.found

    @property
    def spec(self) -> ActionSpec:
        return self.action.spec


def encode_envelope(
    spec: ActionSpec,
    request_id: str,
    value: Any,
    duration_ms: float,
    extra: Mapping[str, Any] | None = None,
) -> str:
    """The success envelope as JSON text, encoded once; a value that is not JSON (an
    object, NaN) raises ``TypeError`` naming the action."""
    meta = {"action": spec.name, "request_id": request_id, "duration_ms": duration_ms}
    envelope = {"data": value, "meta": {**extra, **meta} if extra else meta}
    try:
        return json.dumps(envelope, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        where = not_json(value)
        at = f" at {where}" if where else ""
        raise TypeError(f"{spec.name} returned a value that is not JSON{at}: {exc}") from exc


def not_json(value: Any, path: str = "") -> str | None:
    """The JSON pointer and type of the first part of ``value`` that is not JSON
    (``/due_date: date``), or None."""
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                return f"{path}/{key!r}: a {type(key).__name__} key"
            found = not_json(item, f"{path}/{key}")
            if found:
                return found
        return None
    if isinstance(value, list | tuple):
        for index, item in enumerate(value):
            found = not_json(item, f"{path}/{index}")
            if found:
                return found
        return None
    if value is None or isinstance(value, str | bool | int):
        return None
    if isinstance(value, float):
        return None if math.isfinite(value) else f"{path or '/'}: {value!r}"
    return f"{path or '/'}: {type(value).__name__}"


MASK = "***"


def masked(values: Mapping[str, Any], secret: frozenset[str]) -> dict[str, Any]:
    """``values`` with the values of ``secret`` keys replaced by ``***``."""
    return {k: (MASK if k in secret else v) for k, v in values.items()} if secret else dict(values)


def unexpected(call: Call, exc: BaseException) -> InternalError:
    """The one 500 for an error nobody expected: logged with its traceback, the caller
    gets only the request id."""
    request = call.request
    log.error(
        "action %s failed unexpectedly (request %s)",
        request.action,
        request.request_id,
        exc_info=exc,
    )
    # What went wrong, for the module's author; production's pipeline replaces the detail
    # of every 5xx with words that name nothing of the deployment.
    what = redact(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
    return InternalError(
        f"an unexpected error occurred ({what[:500]}); quote request id {request.request_id}"
    )


def elapsed_ms(call: Call) -> float:
    return round((time.perf_counter() - call.started) * 1000, 3)
