"""The ``audit`` step: one audit record per call, whatever its outcome, logged and handed
to the app's ``AuditSink``.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any, Protocol

from core.base.errors import (
    ActionError,
    InternalError,
)
from core.contracts.calls import CallResult
from core.pipeline.call import Call, elapsed_ms
from core.pipeline.chain import Next

audit_log = logging.getLogger("switchboard.audit")


class AuditSink(Protocol):
    """Where audit records are kept beyond the ``switchboard.audit`` log line (the audit
    manager: the database, in batches). ``record`` must not block the call."""

    def record(self, entry: dict[str, Any]) -> None: ...


class AuditStep:
    """One audit record per call, whatever its outcome (params by name only: their values
    may be personal data): logged, and handed to the app's ``AuditSink`` if it has one."""

    def __init__(self, sink: AuditSink | None) -> None:
        self.sink = sink

    def __call__(self, call: Call, next: Next) -> CallResult:
        try:
            result = next(call)
        except ActionError as error:
            self._record(call, error.status, error.slug, replayed=False)
            raise
        except Exception:
            self._record(call, 500, InternalError.slug, replayed=False)
            raise
        problem = None
        if result.status >= 400:  # a replayed failure
            problem = problem_slug(result.body)
        self._record(call, result.status, problem, replayed=result.replayed)
        return result

    def _record(self, call: Call, status: int, problem: str | None, *, replayed: bool) -> None:
        logged = audit_log.isEnabledFor(logging.INFO)
        if not logged and self.sink is None:
            return
        request = call.request
        entry = {
            "at": time.time(),
            "request_id": request.request_id,
            "action": request.action,
            "known": call.found is not None,
            "caller_kind": call.caller.kind,
            "caller_id": call.caller.id,
            "client_ip": request.client_ip,
            "transport": request.transport,
            "outcome": problem or "ok",
            "status": status,
            "problem": problem,
            "duration_ms": elapsed_ms(call),
            "param_names": sorted(call.params),
            "replayed": replayed,
        }
        if logged:
            audit_log.info(f"{request.action} {call.caller.kind} {status}", extra={"audit": entry})
        if self.sink is not None:
            self.sink.record(entry)


def problem_slug(body: str | bytes) -> str:
    """The slug of a stored problem document (a replayed failure)."""
    try:
        kind = json.loads(body).get("type", "")
    except (ValueError, AttributeError):
        return InternalError.slug
    return str(kind).rsplit("/", 1)[-1] or InternalError.slug
