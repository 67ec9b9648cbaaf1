"""The ``run`` step, the innermost: the handler, its ``timeout:``, its ``returns`` check
outside production, and the envelope encoded once.
"""

from __future__ import annotations

import concurrent.futures
import time
from typing import TYPE_CHECKING, Any

from core.base.errors import (
    ActionError,
    DependencyUnavailable,
    Timeout,
)
from core.contracts.calls import CallResult, WithMeta
from core.contracts.context import Context
from core.contracts.executions import PREFIX as EXECUTIONS
from core.contracts.executions import Enqueue, Executions
from core.pipeline.call import Call, elapsed_ms, encode_envelope, unexpected

if TYPE_CHECKING:
    from core.contracts.module import ModuleCatalog
    from core.pipeline.host import Host


class RunStep:
    """The innermost step: the handler, its ``timeout:``, its ``returns`` check outside
    production, and the envelope encoded once (a result that is not JSON is a 500)."""

    def __init__(
        self,
        app: Host,
        modules: ModuleCatalog | None,
        *,
        check_returns: bool,
        workers: int,
        executions: Executions | None = None,
    ) -> None:
        self.app = app
        self.modules = modules
        self.executions = executions
        self.check_returns = check_returns
        self._workers = workers
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)

    def __call__(self, call: Call) -> CallResult:
        spec = call.spec
        reason = self.modules.unavailable_reason(spec.module) if self.modules else None
        if reason is not None:
            raise DependencyUnavailable(f"module {spec.module!r} is unavailable: {reason}")
        request = call.request
        job = request.job
        if job is None and (
            spec.run == "background" or (spec.run == "either" and request.respond_async)
        ):
            return self._enqueue(call)
        key = request.idempotency_key if spec.idempotent else None
        ctx = Context(
            self.app.scope(spec.module),
            spec.name,
            call.caller,
            request.request_id,
            request.client_ip,
            time.monotonic() + spec.timeout if spec.timeout is not None and job is None else None,
            job.ref.id if job is not None else key,
            job,
        )
        try:
            if spec.timeout is None or job is not None:  # a job's time limit is its runner's
                value = call.action.invoke(ctx, call.params)
            else:
                value = self._with_timeout(call, ctx, spec.timeout)
            extra = None
            if isinstance(value, WithMeta):
                value, extra = value.data, value.meta
            if self.check_returns and call.action.returns is not None:
                problems = call.action.returns.problems(value)
                if problems:
                    raise TypeError(
                        f"{spec.name} returned a value that breaks its `returns` schema: "
                        + "; ".join(problems)
                    )
            body = encode_envelope(spec, request.request_id, value, elapsed_ms(call), extra)
        except ActionError:
            raise
        except Exception as exc:
            raise unexpected(call, exc) from exc
        return CallResult(body, value=value)

    def _enqueue(self, call: Call) -> CallResult:
        """A background call: the execution's record, answered 202 with its URL."""
        if self.executions is None:
            raise DependencyUnavailable(
                f"{call.spec.name} runs in the background, and this app runs no executions"
            )
        spec, request = call.spec, call.request
        record = self.executions.enqueue(
            Enqueue(
                action=spec.name,
                params=call.params,
                secret_params=spec.secret_params,
                caller=call.caller,
                request_id=request.request_id,
                client_ip=request.client_ip,
                timeout=spec.timeout,
                keep=spec.keep,
                revocations=tuple(p.key for p in call.gate.absent if p.lasting),
            )
        )
        body = encode_envelope(spec, request.request_id, record, elapsed_ms(call), None)
        headers = {"Location": f"{EXECUTIONS}{record['id']}"}
        if spec.run == "either":
            headers["Preference-Applied"] = "respond-async"
        return CallResult(body, status=202, headers=headers, value=record)

    def _with_timeout(self, call: Call, ctx: Context, timeout: float) -> Any:
        if self._executor is None:
            self._executor = concurrent.futures.ThreadPoolExecutor(
                max_workers=self._workers, thread_name_prefix="action"
            )
        future = self._executor.submit(call.action.invoke, ctx, call.params)
        try:
            return future.result(timeout=timeout)
        except concurrent.futures.TimeoutError:
            # The handler keeps running (threads cannot be killed); ctx.deadline tells it.
            raise Timeout(f"{call.spec.name} did not finish within {timeout:g}s") from None
