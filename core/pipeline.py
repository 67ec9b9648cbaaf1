"""The action pipeline: identify -> authorize -> rate-limit -> validate -> run -> audit.

Steps are plain callables on a ``Call``, fixed when the pipeline is built at boot. A step
ends the call by raising an ``ActionError``; anything else a step or handler raises
becomes one ``InternalError`` (500) with the request id, logged with its traceback.
Both transports (HTTP, Socket.IO, and the CLI) hand a ``CallRequest`` to ``invoke``.
"""

from __future__ import annotations

import concurrent.futures
import logging
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from core.actions import Action
from core.calls import Call, CallRequest, CallResult, Identify, Step, respond
from core.context import Context
from core.errors import ActionError, DependencyUnavailable, InternalError, NotFound, Timeout
from core.hooks import ACTION_AFTER, ACTION_BEFORE, ACTION_FAILED, HookEmitter
from core.idempotency import REPLAYED, Idempotency
from core.logging import request_id_var, secret_params_var
from core.steps import (
    IdempotencyStep,
    RateLimiter,
    RateLimitStep,
    Replay,
    authorize,
    identify_anonymous,
    may_call,
    rate_limit_headers,
    validate,
)

# Re-exported: transports and managers import these from here.
__all__ = [
    "ActionRegistry",
    "Call",
    "CallRequest",
    "CallResult",
    "Identify",
    "ModuleAvailability",
    "Pipeline",
    "RateLimiter",
    "Step",
    "masked",
    "may_call",
    "rate_limit_headers",
]

if TYPE_CHECKING:
    from core.app_manager import AppManager

log = logging.getLogger("switchboard.pipeline")
audit_log = logging.getLogger("switchboard.audit")

MASK = "***"


class ActionRegistry(Protocol):
    """What the pipeline needs from action discovery."""

    def lookup(self, name: str) -> Action | None: ...

    def actions(self) -> Sequence[Action]: ...


class ModuleAvailability(Protocol):
    """What the pipeline needs from the module manager."""

    def unavailable_reason(self, module: str) -> str | None: ...


def masked(params: Mapping[str, Any], secret: frozenset[str]) -> dict[str, Any]:
    """``params`` with the values of secret params replaced by ``***``."""
    return {k: (MASK if k in secret else v) for k, v in params.items()} if secret else dict(params)


class Pipeline:
    """Runs calls through the fixed steps, then the handler, audit and hooks."""

    def __init__(
        self,
        app: AppManager,
        *,
        registry: ActionRegistry,
        modules: ModuleAvailability,
        hooks: HookEmitter | None = None,
        identify: Identify = identify_anonymous,
        idempotency: Idempotency | None = None,
        limiter: RateLimiter | None = None,
        steps: Sequence[tuple[str, Step]] | None = None,
    ) -> None:
        self.app = app
        self.identify = identify
        self.registry = registry
        self.modules = modules
        self.hooks = hooks
        self._idempotency = IdempotencyStep(idempotency) if idempotency is not None else None
        if steps is None:
            steps = [("authorize", authorize)]
            if limiter is not None:
                steps.append(("rate_limit", RateLimitStep(limiter)))
            if self._idempotency is not None:
                steps.append(("idempotency", self._idempotency))
            steps.append(("validate", validate))
        self.steps: tuple[tuple[str, Step], ...] = tuple(steps)
        self.check_returns = not app.config.is_production
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._timeout_workers = int(app.config["actions.timeout_workers"])

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)

    def invoke(self, request: CallRequest) -> CallResult:
        """Run one call; raise ``ActionError`` (the problem to send) when it fails."""
        call = Call(request=request, started=time.perf_counter())
        token = request_id_var.set(request.request_id)
        secrets_token = secret_params_var.set(frozenset())
        try:
            return self._invoke(call)
        finally:
            secret_params_var.reset(secrets_token)
            request_id_var.reset(token)

    def _invoke(self, call: Call) -> CallResult:
        request = call.request
        try:
            call.caller = self.identify(request)
            call.found = self.registry.lookup(request.action)
            if call.found is None:
                raise NotFound(f"no action named {request.action!r}")
            for _name, step in self.steps:
                step(call)
            self._run(call)
            duration_ms = self._elapsed(call)
            result = respond(call, duration_ms)
            if call.response_headers:
                result = CallResult(
                    result.body, result.status, result.content_type, call.response_headers
                )
        except Replay as replay:
            stored = replay.stored
            self._audit(call, stored.status, self._elapsed(call), "replayed")
            return CallResult(stored.body, stored.status, stored.content_type, {REPLAYED: "true"})
        except ActionError as exc:
            if call.response_headers:
                exc.headers = {**call.response_headers, **exc.headers}
            self._settle(call, error=exc)
            self._failed(call, exc)
            raise
        except Exception as exc:
            log.exception(
                "action %s failed unexpectedly (request %s)", request.action, request.request_id
            )
            error = InternalError(
                f"an unexpected error occurred; quote request id {request.request_id}"
            )
            self._settle(call)
            self._failed(call, error)
            raise error from exc
        self._settle(call, result=result)
        self._audit(call, 200, duration_ms)
        if self.hooks is not None and self.hooks.has_listeners(ACTION_AFTER):
            self.hooks.emit(ACTION_AFTER, **self._hook_data(call), duration_ms=duration_ms)
        return result

    def _settle(
        self, call: Call, *, result: CallResult | None = None, error: ActionError | None = None
    ) -> None:
        if self._idempotency is not None:
            self._idempotency.settle(call, result=result, error=error)

    @staticmethod
    def _elapsed(call: Call) -> float:
        return round((time.perf_counter() - call.started) * 1000, 3)

    # --- the run step -----------------------------------------------------------------

    def _run(self, call: Call) -> None:
        spec = call.spec
        reason = self.modules.unavailable_reason(spec.module)
        if reason is not None:
            raise DependencyUnavailable(f"module {spec.module!r} is unavailable: {reason}")
        deadline = time.monotonic() + spec.timeout if spec.timeout is not None else None
        ctx = Context(
            app=self.app,
            action=spec.name,
            module=spec.module,
            caller=call.caller,
            request_id=call.request.request_id,
            client_ip=call.request.client_ip,
            deadline=deadline,
            logger=logging.getLogger(f"switchboard.modules.{spec.module}"),
        )
        if self.hooks is not None and self.hooks.has_listeners(ACTION_BEFORE):
            self.hooks.emit(ACTION_BEFORE, **self._hook_data(call))
        if spec.timeout is None:
            result = call.action.invoke(ctx, call.params)
        else:
            result = self._run_with_timeout(call, ctx, spec.timeout)
        if self.check_returns and call.action.returns is not None:
            problems = call.action.returns.problems(result)
            if problems:
                raise RuntimeError(
                    f"{spec.name} returned a value that breaks its `returns` schema: "
                    + "; ".join(problems)
                )
        call.result = result

    def _run_with_timeout(self, call: Call, ctx: Context, timeout: float) -> Any:
        if self._executor is None:
            self._executor = concurrent.futures.ThreadPoolExecutor(
                max_workers=self._timeout_workers, thread_name_prefix="action"
            )
        future = self._executor.submit(call.action.invoke, ctx, call.params)
        try:
            return future.result(timeout=timeout)
        except concurrent.futures.TimeoutError:
            # The handler keeps running (threads cannot be killed); ctx.deadline tells it.
            raise Timeout(f"{call.spec.name} did not finish within {timeout:g}s") from None

    # --- audit and hooks --------------------------------------------------------------

    def _hook_data(self, call: Call) -> dict[str, Any]:
        secret = call.found.spec.secret_params if call.found else frozenset()
        return {
            "action": call.request.action,
            "module": call.found.spec.module if call.found else None,
            "caller": call.caller,
            "request_id": call.request.request_id,
            "params": masked(call.params, secret),
        }

    def _failed(self, call: Call, error: ActionError) -> None:
        duration_ms = self._elapsed(call)
        self._audit(call, error.status, duration_ms, error.slug)
        if self.hooks is not None and self.hooks.has_listeners(ACTION_FAILED):
            self.hooks.emit(
                ACTION_FAILED, **self._hook_data(call), status=error.status, problem=error.slug
            )

    def _audit(
        self, call: Call, status: int, duration_ms: float, problem: str | None = None
    ) -> None:
        # Params are left out on purpose: they may hold personal data; their names suffice.
        audit_log.info(
            "%s %s %d",
            call.request.action,
            call.caller.kind,
            status,
            extra={
                "audit": {
                    "action": call.request.action,
                    "caller_kind": call.caller.kind,
                    "caller_id": call.caller.id,
                    "client_ip": call.request.client_ip,
                    "transport": call.request.transport,
                    "request_id": call.request.request_id,
                    "status": status,
                    "problem": problem,
                    "duration_ms": duration_ms,
                    "param_names": sorted(call.params),
                }
            },
        )
