"""The kernel's built-in steps of the call chain (see ``core.chain`` for their order).

Each middleware is ``(call, next) -> CallResult``; a step ends the call by raising an
``ActionError``. The ``run`` step is the innermost: it calls the handler and turns anything
else it raises into one ``InternalError`` (500) with the request id, logged with its
traceback, so every middleware around it sees a problem it can settle, count or decorate.
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from core.actions.actions import Action, ActionSpec
from core.base.errors import (
    ActionError,
    DependencyUnavailable,
    Forbidden,
    InternalError,
    MalformedRequest,
    NotFound,
    Timeout,
    Unauthorized,
)
from core.base.logging import call_var, redact, secret_params_var
from core.contracts.calls import CallResult, WithMeta
from core.contracts.context import Caller, Context
from core.contracts.limits import rate_limit_headers
from core.pipeline.call import Call, encode_envelope
from core.pipeline.chain import Next
from core.pipeline.gate import ClaimRequest, Gate, LimitRequest, limit_refusal
from core.pipeline.idempotency import REPLAYED, Idempotency
from core.pipeline.identity import FailedIdentification, Identify

if TYPE_CHECKING:
    from collections.abc import Sequence

    from core.contracts.module import ModuleCatalog
    from core.pipeline.host import Host

log = logging.getLogger("switchboard.pipeline")
audit_log = logging.getLogger("switchboard.audit")

MASK = "***"


class ActionRegistry(Protocol):
    """What the chain needs from action discovery."""

    def lookup(self, name: str) -> Action | None: ...

    def actions(self) -> Sequence[Action]: ...


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


# --- audit ----------------------------------------------------------------------------


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


# --- identify, lookup, authorize, validate ----------------------------------------------


class IdentifyStep:
    """Who is calling, from the credentials the transport passed on; whether they were
    revoked is left to the gate (one round trip for everything the call needs).

    A failed identification — a credential that is malformed, invalid, expired or revoked,
    or none where the action needs one — is handed to ``failed`` (``FailedIdentification``)
    before its 401 goes out, which may answer 403 ``banned`` or 429 instead. A 401 raised
    after the gate admitted the call (a handler's) is not one.
    """

    def __init__(self, identify: Identify, failed: FailedIdentification | None = None) -> None:
        self.identify = identify
        self.failed = failed

    def __call__(self, call: Call, next: Next) -> CallResult:
        try:
            call.caller, revocations = self.identify(call.request)
        except Unauthorized:
            if self.failed is not None:
                self.failed(call.request, call.gate)
            raise
        caller = call.caller
        who = f"{caller.kind}:{caller.id}" if caller.id is not None else caller.kind
        call_var.set((call.request.action, who))
        call.gate.absent.extend(revocations)
        if self.failed is None:
            return next(call)
        try:
            return next(call)
        except Unauthorized:
            if not call.admitted:
                self.failed(call.request, call.gate)
            raise


class LookupStep:
    """The action by its exact name (never fuzzy)."""

    def __init__(self, registry: ActionRegistry) -> None:
        self.registry = registry

    def __call__(self, call: Call, next: Next) -> CallResult:
        call.found = self.registry.lookup(call.request.action)
        if call.found is None:
            raise NotFound(f"no action named {call.request.action!r}")
        return next(call)


def refusal(caller: Caller, spec: ActionSpec) -> str | None:
    """What ``caller`` lacks to call the action (its ``auth``, ``roles``, ``scopes``), or
    None when it may."""
    if caller.kind == "system" or spec.auth == "public":
        return None
    if caller.kind == "anonymous":
        return f"needs credentials (auth: {spec.auth})"
    if spec.auth == "user" and caller.kind != "user":
        return "needs a user's token (auth: user), not an API key"
    if spec.auth == "api_key" and caller.kind != "api_key":
        return "needs an API key (auth: api_key), not a user's token"
    if spec.roles and not (spec.roles & caller.roles):
        roles = sorted(spec.roles)
        if len(roles) == 1:
            return f"needs role {roles[0]}"
        return f"needs one of roles {', '.join(roles)}"
    if caller.kind == "api_key" and not spec.scopes <= caller.scopes:
        missing = sorted(spec.scopes - caller.scopes)
        return f"needs scope{'s' if len(missing) > 1 else ''} {', '.join(missing)}"
    return None


def may_call(caller: Caller, spec: ActionSpec) -> bool:
    """Whether ``caller`` passes the action's ``auth``, ``roles`` and ``scopes``."""
    return refusal(caller, spec) is None


def authorize(call: Call, next: Next) -> CallResult:
    if not may_call(call.caller, call.spec):
        if call.caller.kind == "anonymous":
            raise Unauthorized(
                f"action {call.spec.name} requires credentials (auth: {call.spec.auth})",
                reason="missing",
            )
        raise Forbidden(f"{call.spec.name} {refusal(call.caller, call.spec)}")
    return next(call)


def validate(call: Call, next: Next) -> CallResult:
    raw = call.request.params
    if raw is None:
        raw = {}
    elif type(raw) is not dict and not isinstance(raw, Mapping):
        raise MalformedRequest("params must be a JSON object")
    call.params = call.action.validate(raw)
    secret = call.spec.secret_params
    if secret:  # the log filter masks these values for the rest of the call
        secret_params_var.set(
            frozenset(str(call.params[n]) for n in secret if call.params.get(n) is not None)
        )
    return next(call)


# --- rate limit -------------------------------------------------------------------------


def caller_identity(call: Call) -> tuple[str, str]:
    """(identity, kind) the limits, strikes and bans count against: the user or key, else
    the IP. A public action counts the IP whatever credential comes along: a token buys no
    budget there (no more password guesses on ``auth.login``) and lifts no ban of the IP."""
    caller = call.caller
    public = call.spec.auth == "public"
    if caller.kind in ("user", "api_key") and caller.id is not None and not public:
        return f"{caller.kind}:{caller.id}", caller.kind
    return f"ip:{call.request.client_ip}", "ip"


def action_subjects(call: Call, identity: str) -> list[tuple[str, str]]:
    """(label, identity) each of the action's limits counts against, per ``rate_limit_by``;
    an optional param the call leaves out counts against nothing."""
    subjects = []
    for by in call.spec.rate_limit_by:
        if by == "caller":
            subjects.append(("", identity))
        elif by == "ip":
            subjects.append(("ip", f"ip:{call.request.client_ip}"))
        else:
            name = by[len("params.") :]
            if call.params.get(name) is not None:
                value = json.dumps(call.params[name], sort_keys=True, ensure_ascii=False)
                subjects.append((name, f"param:{call.spec.name}:{name}:{value}"))
    return subjects


class RateLimitStep:
    """Declares the limits of the call (the caller kind's global ones, or an API key's own,
    plus the action's) for the gate; puts the RateLimit headers on every answer of the
    call: results, problems and replays alike."""

    def __call__(self, call: Call, next: Next) -> CallResult:
        if call.caller.kind == "system":
            return next(call)
        identity, kind = caller_identity(call)
        call.gate.limits = LimitRequest(
            identity=identity,
            kind=kind,
            action=call.spec.name,
            action_limits=call.spec.rate_limit,
            action_subjects=action_subjects(call, identity),
            own_limits=(call.caller.rate_limit or None) if kind == "api_key" else None,
            failure=call.spec.rate_limit_failure,
            # A banned IP is refused whatever credential it presents.
            ip=None if kind == "ip" else f"ip:{call.request.client_ip}",
        )
        try:
            result = next(call)
        except ActionError as error:
            if call.decision is not None:
                error.headers = {**rate_limit_headers(call.decision.states), **error.headers}
            raise
        if call.decision is None:
            return result
        return result.with_headers(rate_limit_headers(call.decision.states))


# --- idempotency ------------------------------------------------------------------------


class IdempotencyStep:
    """Declares the claim of an ``Idempotency-Key`` for the gate, and settles it: what the
    call answers is stored for replay unless it is a 5xx (worth retrying) or a 422 (the
    retry will send other params).

    The claim is made on the validated params, so ``3`` and ``3.0`` are one request.
    """

    def __init__(self, idempotency: Idempotency, claim_ttl: float = 300.0) -> None:
        self.idempotency = idempotency
        self.claim_ttl = claim_ttl  # a claim whose worker died frees itself after this

    def __call__(self, call: Call, next: Next) -> CallResult:
        key = call.request.idempotency_key
        if key is None or not call.spec.idempotent:
            return next(call)
        caller = call.caller
        who = f"{caller.kind}:{caller.id}" if caller.id else f"ip:{call.request.client_ip}"
        action = call.spec.name
        claim, running = self.idempotency.claim(action, who, key, call.params)

        def taken(record: bytes) -> CallResult:
            stored = self.idempotency.held(claim, record, action, key)
            return CallResult(
                stored.body, stored.status, stored.content_type, {REPLAYED: "true"}, replayed=True
            )

        call.gate.claim = ClaimRequest(claim.record, running, self.claim_ttl, taken)
        try:
            result = next(call)
        except ActionError as error:
            if not call.claimed:
                raise
            if error.status >= 500 or error.status == 422:
                self._settle(call, self.idempotency.release, claim)
            else:
                request_id = call.request.request_id
                self._settle(call, self.idempotency.finish_error, claim, error, request_id)
            raise
        except BaseException:
            if call.claimed:
                self._settle(call, self.idempotency.release, claim)
            raise
        if call.claimed:
            status, body, content_type = result.status, result.body, result.content_type
            self._settle(call, self.idempotency.finish, claim, status, body, content_type)
        return result

    @staticmethod
    def _settle(call: Call, settle: Callable[..., None], *args: Any) -> None:
        """The call's own outcome stands even if the store fails: the claim then expires."""
        try:
            settle(*args)
        except ActionError as error:  # the store is down: expected, and said once per call
            log.warning(
                "could not settle the idempotency record of %s (%s): a retry runs again "
                "after idempotency.claim_ttl",
                call.request.action,
                error.detail,
            )


# --- gate -------------------------------------------------------------------------------


class GateStep:
    """Asks the gate what the steps declared, in one round trip: a revoked credential is
    401, a ban 403, a spent limit 429, a held idempotency key its replay (or 409/422)."""

    def __init__(self, gate: Gate) -> None:
        self.gate = gate

    def __call__(self, call: Call, next: Next) -> CallResult:
        request = call.gate
        if not request:
            call.admitted = True
            return next(call)
        outcome = self.gate.pass_gate(request)
        decision = call.decision = outcome.decision
        if decision is not None and not decision.allowed:
            raise limit_refusal(decision, f"rate limit exceeded for {call.spec.name}; retry later")
        call.admitted = True
        if request.claim is not None:
            if outcome.taken is not None:
                return request.claim.taken(outcome.taken)
            call.claimed = True
        return next(call)


# --- run --------------------------------------------------------------------------------


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
