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
from core.pipeline.call import Call, elapsed_ms, encode_envelope, unexpected

if TYPE_CHECKING:
    from core.contracts.module import ModuleCatalog
    from core.pipeline.host import Host


class RunStep:
    """The innermost step: the handler, its ``timeout:``, its ``returns`` check outside
    production, and the envelope encoded once (a result that is not JSON is a 500)."""

    def __init__(
        self, app: Host, modules: ModuleCatalog | None, *, check_returns: bool, workers: int
    ) -> None:
        self.app = app
        self.modules = modules
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
        ctx = Context(
            self.app.scope(spec.module),
            spec.name,
            call.caller,
            request.request_id,
            request.client_ip,
            time.monotonic() + spec.timeout if spec.timeout is not None else None,
            request.idempotency_key if spec.idempotent else None,
        )
        try:
            if spec.timeout is None:
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
