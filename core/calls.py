"""A call as it moves through the pipeline: what a transport hands in, what it gets back."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from core.actions import Action, ActionSpec
from core.context import ANONYMOUS, Caller
from core.idempotency import Claim


@dataclass(frozen=True)
class CallRequest:
    """One call as a transport hands it over."""

    action: str
    params: Any
    request_id: str
    client_ip: str | None = None
    transport: str = "http"
    headers: Mapping[str, str] = field(default_factory=dict)
    caller: Caller | None = None  # preset by trusted transports (the CLI runs as system)
    idempotency_key: str | None = None  # the Idempotency-Key header (or Socket.IO field)


@dataclass
class Call:
    """The state of one call as it moves through the steps."""

    request: CallRequest
    started: float
    caller: Caller = ANONYMOUS
    found: Action | None = None  # set once the name is looked up
    params: dict[str, Any] = field(default_factory=dict)
    result: Any = None
    claim: Claim | None = None  # held while an idempotent call runs
    response_headers: dict[str, str] = field(default_factory=dict)  # e.g. RateLimit fields

    @property
    def action(self) -> Action:
        if self.found is None:
            raise RuntimeError("the action has not been looked up yet")
        return self.found

    @property
    def spec(self) -> ActionSpec:
        return self.action.spec


@dataclass(frozen=True)
class CallResult:
    """What the transport sends: the JSON text as the respond step encoded it (or as it was
    stored, for an idempotent replay), its status, content type and extra headers."""

    body: str
    status: int = 200
    content_type: str = "application/json"
    headers: Mapping[str, str] = field(default_factory=dict)

    @property
    def envelope(self) -> dict[str, Any]:
        return json.loads(self.body)  # type: ignore[no-any-return]

    @property
    def data(self) -> Any:
        return self.envelope["data"]


def respond(call: Call, duration_ms: float) -> CallResult:
    """The respond step: build the envelope and encode it once, here, so that a result
    that is not JSON (an object, NaN) fails the call as a 500 that the audit sees."""
    envelope = {
        "data": call.result,
        "meta": {
            "action": call.spec.name,
            "request_id": call.request.request_id,
            "duration_ms": duration_ms,
        },
    }
    try:
        body = json.dumps(envelope, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{call.spec.name} returned a value that is not JSON: {exc}") from exc
    return CallResult(body)


Step = Callable[[Call], None]
Identify = Callable[[CallRequest], Caller]
