"""The action pipeline: the call chain of one app, built once at boot.

``build_pipeline`` fills the built-in steps (``core.pipeline.chain.STEPS``) from the capabilities
the app's managers provide (``TokenVerifier``, ``KeyVerifier``, ``RateLimiter``,
``KeyValueStore``, ``ActionRegistry``, ``ModuleCatalog``), places the middleware they
contribute, and composes the chain. Every transport (HTTP, the CLI) hands a
``CallRequest`` to ``Pipeline.invoke`` and gets a ``CallResult`` or an ``ActionError``.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from core.base.errors import ActionError, BootError, InternalError, Unauthorized
from core.base.logging import call_var, request_id_var, secret_params_var
from core.base.store import KeyValueStore
from core.contracts.calls import CallRequest, CallResult
from core.contracts.context import Caller
from core.contracts.executions import Executions
from core.contracts.limits import RateLimiter
from core.contracts.module import ModuleCatalog
from core.pipeline.audit import AuditSink, AuditStep
from core.pipeline.authorize import ActionRegistry, LookupStep, authorize
from core.pipeline.call import Call, unexpected
from core.pipeline.chain import Handle, arrange, compose
from core.pipeline.gate import Gate, GateRequest, StoreGate
from core.pipeline.gate_step import GateStep
from core.pipeline.idempotency import Idempotency, IdempotencyStep
from core.pipeline.identity import (
    FailedIdentification,
    Identify,
    IdentifyStep,
    KeyVerifier,
    TokenVerifier,
    credential_identifier,
)
from core.pipeline.rate_limit import RateLimitStep
from core.pipeline.run import RunStep
from core.pipeline.validate import validate

if TYPE_CHECKING:
    from core.pipeline.host import Host

log = logging.getLogger("switchboard.pipeline")
OPAQUE_LOG_EVERY = 60.0


class Pipeline:
    """Runs calls through the chain; ``steps`` names it, outermost first."""

    def __init__(
        self,
        middleware: Sequence[tuple[str, Handle]],
        run: RunStep,
        *,
        registry: ActionRegistry,
        identify: Identify,
        gate: Gate | None,
        failed: FailedIdentification | None = None,
        opaque_errors: bool = False,
    ) -> None:
        self.registry = registry
        self._opaque = opaque_errors
        self._opaque_logged: dict[str, float] = {}
        self._identify = identify
        self._gate = gate
        self._failed = failed
        self.steps: tuple[str, ...] = (*(name for name, _ in middleware), "run")
        self._run = run
        self._chain = compose(middleware, run)

    def close(self) -> None:
        self._run.close()

    def caller_of(self, request: CallRequest, *, count_failure: bool = True) -> Caller:
        """Who ``request`` comes from, revocations checked (``Unauthorized`` otherwise).
        A failure counts against the client IP as in a call, so 403 or 429 may answer;
        ``count_failure=False`` for checks the server makes on its own (a socket's
        credential checked again, which may simply have expired)."""
        try:
            caller, revocations = self._identify(request)
            if revocations and self._gate is not None:
                self._gate.pass_gate(GateRequest(absent=list(revocations)))
        except Unauthorized:
            if count_failure and self._failed is not None:
                self._failed(request)
            raise
        return caller

    def invoke(self, request: CallRequest) -> CallResult:
        """Run one call; raise ``ActionError`` (the problem to send) when it fails."""
        call = Call(request=request, started=time.perf_counter())
        token = request_id_var.set(request.request_id)
        call_token = call_var.set((request.action, None))
        secrets_token = secret_params_var.set(frozenset())
        try:
            return self._chain(call)
        except ActionError as error:
            if not self._opaque or error.status < InternalError.status:
                raise
            raise self._opaque_error(error, request) from None
        except Exception as exc:  # a middleware's own bug: still one clean 500
            failure = unexpected(call, exc)
            if self._opaque:
                raise self._opaque_error(failure, request) from exc
            raise failure from exc
        finally:
            secret_params_var.reset(secrets_token)
            call_var.reset(call_token)
            request_id_var.reset(token)

    def _opaque_error(self, error: ActionError, request: CallRequest) -> ActionError:
        """The same problem (status, slug, headers) with a detail that names nothing of the
        deployment. The original detail is logged, once a minute for each action and
        detail (an outage fails every call alike; the audit record has each request id);
        a 500 was logged with its traceback already: only its words change."""
        if error.status == InternalError.status:
            detail = f"an unexpected error occurred; quote request id {request.request_id}"
            return dataclasses.replace(error, detail=detail, errors=())
        key = f"{request.action} {error.status} {error.detail}"
        now = time.monotonic()
        if now - self._opaque_logged.get(key, -OPAQUE_LOG_EVERY) >= OPAQUE_LOG_EVERY:
            if len(self._opaque_logged) > 1000:
                self._opaque_logged.clear()
            self._opaque_logged[key] = now
            log.warning(
                "action %s answers %s: %s (request %s; repeats are not logged for a minute)",
                request.action,
                error.status,
                error.detail,
                request.request_id,
            )
        detail = f"{error.title}; retry later, or quote request id {request.request_id}"
        return dataclasses.replace(error, detail=detail, errors=())


def build_pipeline(app: Host) -> Pipeline:
    """The chain of ``app``: built-in steps from its capabilities, plus what its managers
    contribute, in place."""
    registry = app.capability(ActionRegistry)
    if registry is None:
        raise BootError("no manager provides ActionRegistry: this app cannot run actions")
    identify = credential_identifier(app.capability(TokenVerifier), app.capability(KeyVerifier))
    limiter = app.capability(RateLimiter)
    store = app.capability(KeyValueStore)
    limiter_gate = app.capability(Gate)
    gate = limiter_gate or (StoreGate(store) if store is not None else None)
    # Failed identifications count per IP where a rate limiter runs the gate.
    failed = FailedIdentification(limiter_gate) if limiter_gate is not None else None
    idempotency = (
        IdempotencyStep(
            Idempotency(store, float(app.config["idempotency.ttl"])),
            float(app.config["idempotency.claim_ttl"]),
        )
        if store is not None
        else None
    )
    builtins: list[tuple[str, Handle | None]] = [
        ("audit", AuditStep(app.capability(AuditSink))),
        ("identify", IdentifyStep(identify, failed)),
        ("lookup", LookupStep(registry)),
        ("authorize", authorize),
        ("validate", validate),
        ("rate_limit", RateLimitStep() if limiter is not None else None),
        ("idempotency", idempotency),
        ("gate", GateStep(gate) if gate is not None else None),
    ]
    run = RunStep(
        app,
        app.capability(ModuleCatalog),
        check_returns=not app.config.is_production,
        workers=int(app.config["actions.timeout_workers"]),
        executions=app.capability(Executions),
    )
    middleware = arrange(builtins, app.middleware())
    return Pipeline(
        middleware,
        run,
        registry=registry,
        identify=identify,
        gate=gate,
        failed=failed,
        opaque_errors=app.config.is_production,
    )
