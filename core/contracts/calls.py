"""What a transport hands in (``CallRequest``) and gets back (``CallResult``), and what a
handler may return to say more than its data (``WithMeta``). The chain's own state of a
call is ``core.pipeline.call``."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from core.base.headers import Headers
from core.contracts.context import Caller
from core.contracts.jobs import JobControl


@dataclass(frozen=True)
class CallRequest:
    """One call as a transport hands it over."""

    action: str
    params: Any
    request_id: str
    client_ip: str | None = None
    transport: str = "http"
    headers: Mapping[str, str] = field(default_factory=Headers)  # any case: a ``Headers``
    caller: Caller | None = None  # preset by trusted transports (the CLI runs as system)
    idempotency_key: str | None = None  # the Idempotency-Key header
    respond_async: bool = False  # Prefer: respond-async (a run: either action: an execution)
    job: JobControl | None = None  # set by a worker: this call runs an execution's job


@dataclass(frozen=True)
class CallResult:
    """What the transport sends: the JSON text as the run step encoded it (or as it was
    stored, for an idempotent replay), its status, content type and extra headers.

    ``value`` is the handler's result (not for replays), for hooks; it is not sent.
    """

    body: str
    status: int = 200
    content_type: str = "application/json"
    headers: Mapping[str, str] = field(default_factory=Headers)  # any case: a ``Headers``
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
