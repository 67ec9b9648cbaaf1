"""The ``lookup`` and ``authorize`` steps: the action by its exact name, and whether the
caller passes its ``auth``, ``roles`` and ``scopes``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from core.actions.actions import Action, ActionSpec
from core.base.errors import (
    Forbidden,
    NotFound,
    Unauthorized,
)
from core.contracts.calls import CallResult
from core.contracts.context import Caller
from core.pipeline.call import Call
from core.pipeline.chain import Next

if TYPE_CHECKING:
    from collections.abc import Sequence


class ActionRegistry(Protocol):
    """What the chain needs from action discovery."""

    def lookup(self, name: str) -> Action | None: ...

    def actions(self) -> Sequence[Action]: ...


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
