"""The action pipeline: identify -> authorize -> rate-limit -> validate -> run -> audit.

Steps are plain callables on a ``Call``, fixed when the pipeline is built at boot. A step
ends the call by raising an ``ActionError``; anything else a step or handler raises
becomes one ``InternalError`` (500) with the request id, logged with its traceback.
Both transports (HTTP, Socket.IO, and the CLI) hand a ``CallRequest`` to ``invoke``.
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from core.actions import Action, ActionSpec
from core.context import ANONYMOUS, Caller, Context
from core.errors import (
    ActionError,
    Banned,
    DependencyUnavailable,
    Forbidden,
    InternalError,
    MalformedRequest,
    NotFound,
    RateLimited,
    Timeout,
    Unauthorized,
)
from core.hooks import ACTION_AFTER, ACTION_BEFORE, ACTION_FAILED, HookEmitter
from core.idempotency import REPLAYED, Claim, Idempotency, StoredResponse
from core.logging import request_id_var

if TYPE_CHECKING:
    from core.app_manager import AppManager

log = logging.getLogger("switchboard.pipeline")
audit_log = logging.getLogger("switchboard.audit")

MASK = "***"


class ActionRegistry(Protocol):
    """What the pipeline needs from action discovery."""

    def lookup(self, name: str) -> Action | None: ...

    def actions(self) -> Sequence[Action]: ...


class RateLimiter(Protocol):
    """What the pipeline needs from the rate limiter (see managers/rate_limiter_manager)."""

    def check(
        self,
        *,
        identity: str,
        kind: str,
        action: str | None = None,
        action_limits: Sequence[str] = (),
        own_limits: Sequence[str] | None = None,
        failure: str = "open",
        cost: int = 1,
    ) -> Any: ...


class ModuleAvailability(Protocol):
    """What the pipeline needs from the module manager."""

    def unavailable_reason(self, module: str) -> str | None: ...


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


def identify_anonymous(request: CallRequest) -> Caller:
    """Until credentials exist every caller is anonymous (trusted transports preset one)."""
    return request.caller or ANONYMOUS


def may_call(caller: Caller, spec: ActionSpec) -> bool:
    """Whether ``caller`` passes the action's ``auth``, ``roles`` and ``scopes``."""
    if caller.kind == "system":
        return True
    if spec.auth == "public":
        return True
    if caller.kind == "anonymous":
        return False
    if spec.auth == "user" and caller.kind != "user":
        return False
    if spec.auth == "api_key" and caller.kind != "api_key":
        return False
    if spec.roles and not (spec.roles & caller.roles):
        return False
    return not (caller.kind == "api_key" and not spec.scopes <= caller.scopes)


def authorize(call: Call) -> None:
    if may_call(call.caller, call.spec):
        return
    if call.caller.kind == "anonymous":
        raise Unauthorized(f"action {call.spec.name} requires credentials (auth: {call.spec.auth})")
    raise Forbidden(f"this caller may not call {call.spec.name}")


def validate(call: Call) -> None:
    raw = call.request.params
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise MalformedRequest("params must be a JSON object")
    call.params = call.action.validate(raw)


def rate_limit_headers(states: Sequence[Any]) -> dict[str, str]:
    """The ``RateLimit-Policy`` and ``RateLimit`` fields of
    draft-ietf-httpapi-ratelimit-headers-10 for the limits that applied."""
    if not states:
        return {}
    return {
        "RateLimit-Policy": ", ".join(
            f'"{s.name}";q={s.limit.count};w={math.ceil(s.limit.period)}' for s in states
        ),
        "RateLimit": ", ".join(
            f'"{s.name}";r={max(0, s.remaining)};t={math.ceil(max(0.0, s.reset))}' for s in states
        ),
    }


def masked(params: Mapping[str, Any], secret: frozenset[str]) -> dict[str, Any]:
    """``params`` with the values of secret params replaced by ``***``."""
    return {k: (MASK if k in secret else v) for k, v in params.items()} if secret else dict(params)


class _Replay(Exception):
    """Raised by the idempotency step: the stored response answers this call."""

    def __init__(self, stored: StoredResponse) -> None:
        super().__init__("replay")
        self.stored = stored


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
        self.idempotency = idempotency
        self.limiter = limiter
        self.steps: tuple[tuple[str, Step], ...] = tuple(
            steps
            if steps is not None
            else (
                ("authorize", authorize),
                ("rate_limit", self._rate_limit),
                ("idempotency", self._claim),
                ("validate", validate),
            )
        )
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
        try:
            return self._invoke(call)
        finally:
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
        except _Replay as replay:
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

    # --- rate limits ------------------------------------------------------------------

    def _rate_limit(self, call: Call) -> None:
        """Global limits of the caller's kind (an API key's own instead, if it has them)
        plus the action's, all in one check; headers go on every answer of the call."""
        caller = call.caller
        if self.limiter is None or caller.kind == "system":
            return
        identity: str
        kind: str
        if caller.kind in ("user", "api_key") and caller.id is not None:
            identity, kind = f"{caller.kind}:{caller.id}", caller.kind
        else:
            identity, kind = f"ip:{call.request.client_ip}", "ip"
        decision = self.limiter.check(
            identity=identity,
            kind=kind,
            action=call.spec.name,
            action_limits=call.spec.rate_limit,
            own_limits=caller.rate_limit or None,
            failure=call.spec.rate_limit_failure,
        )
        call.response_headers.update(rate_limit_headers(decision.states))
        if decision.banned_until is not None:
            until = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(decision.banned_until))
            wait = max(1, math.ceil(decision.banned_until - time.time()))
            raise Banned(
                f"too many rejected requests: banned until {until}",
                headers={"Retry-After": str(wait)},
                extra={"banned_until": until},
            )
        if not decision.allowed:
            wait = max(1, math.ceil(decision.retry_after))
            raise RateLimited(
                f"rate limit exceeded for {call.spec.name}; retry later",
                headers={"Retry-After": str(wait)},
            )

    # --- idempotency ------------------------------------------------------------------

    def _claim(self, call: Call) -> None:
        """The idempotency step: claim the key, or replay what the first call answered."""
        key = call.request.idempotency_key
        if self.idempotency is None or key is None or not call.spec.idempotent:
            return
        caller = call.caller
        who = f"{caller.kind}:{caller.id}" if caller.id else f"ip:{call.request.client_ip}"
        outcome = self.idempotency.begin(call.spec.name, who, key, call.request.params)
        if isinstance(outcome, StoredResponse):
            raise _Replay(outcome)
        call.claim = outcome

    def _settle(
        self, call: Call, *, result: CallResult | None = None, error: ActionError | None = None
    ) -> None:
        """Store the outcome for replay (or release the claim after a crash). The call's
        own outcome stands even if the store fails: the claim then expires by itself."""
        if call.claim is None or self.idempotency is None:
            return
        try:
            if result is not None:
                self.idempotency.finish(call.claim, result.status, result.body, result.content_type)
            elif error is not None:
                self.idempotency.finish_error(call.claim, error, call.request.request_id)
            else:
                self.idempotency.release(call.claim)
        except ActionError:
            log.exception("could not settle the idempotency record of %s", call.request.action)

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
