"""A call as it moves through the chain: what a transport hands in, what it gets back."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from core.actions import Action, ActionSpec
from core.context import ANONYMOUS, Caller
from core.gate import GateRequest
from core.limits import Decision


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
    idempotency_key: str | None = None  # the Idempotency-Key header


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


@dataclass(frozen=True)
class CallResult:
    """What the transport sends: the JSON text as the run step encoded it (or as it was
    stored, for an idempotent replay), its status, content type and extra headers.

    ``value`` is the handler's result (not for replays), for hooks; it is not sent.
    """

    body: str
    status: int = 200
    content_type: str = "application/json"
    headers: Mapping[str, str] = field(default_factory=dict)
    replayed: bool = False
    value: Any = field(default=None, compare=False, repr=False)

    def with_headers(self, headers: Mapping[str, str]) -> CallResult:
        """This result with ``headers`` added (its own win: a replay's marker stays)."""
        if not headers:
            return self
        merged = {**headers, **self.headers}
        return CallResult(
            self.body, self.status, self.content_type, merged, self.replayed, self.value
        )

    @property
    def envelope(self) -> dict[str, Any]:
        return json.loads(self.body)  # type: ignore[no-any-return]

    @property
    def data(self) -> Any:
        return self.envelope["data"]


@dataclass(frozen=True)
class WithMeta:
    """What a handler returns to say more than its data: ``data`` is the answer's ``data``
    (checked against ``returns``), ``meta`` adds keys to its ``meta`` (``next_cursor`` of a
    paged list); ``action``, ``request_id`` and ``duration_ms`` stay the kernel's."""

    data: Any
    meta: Mapping[str, Any]


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
