"""An action as the pipeline runs it: its declaration, compiled validators and handler."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any, Literal

from core.actions.params import ParamSpec, ParamsValidator, ReturnsValidator, object_schema
from core.contracts.limits import Limit

if TYPE_CHECKING:
    from core.contracts.context import Context

AuthMode = Literal["public", "user", "api_key", "any"]
RunMode = Literal["inline", "background", "either"]
Invoker = Callable[["Context", dict[str, Any]], Any]


@dataclass(frozen=True)
class ActionSpec:
    """A validated declaration from ``actions.yaml`` (or ``actions/<file>.yaml``)."""

    name: str  # full name: <module>.<action>
    module: str
    source: str  # file the declaration came from, relative to the project when possible
    handler: str  # "handlers:transfer" or "function:_name" (seed form), for docs and errors
    summary: str = ""
    description: str = ""
    auth: AuthMode = "user"
    roles: frozenset[str] = frozenset()
    scopes: frozenset[str] = frozenset()
    rate_limit: tuple[Limit, ...] = ()  # parsed at load
    rate_limit_by: tuple[str, ...] = ("caller",)  # caller | ip | params.<name>
    rate_limit_failure: Literal["open", "closed"] = "open"
    idempotent: bool = False
    timeout: float | None = None
    params: Mapping[str, ParamSpec] = field(default_factory=dict)
    returns: Mapping[str, Any] | None = None
    deprecated: bool = False
    examples: tuple[Any, ...] = ()
    url_pattern: str | None = None
    cache: float | None = None  # seconds a result is kept (read-only actions)
    path_params: tuple[str, ...] = ()  # params that become a URL path segment (typed http)
    # inline: answered in the call; background: an execution (202); either: the caller
    # chooses with Prefer: respond-async. A background job's ``timeout`` is its time limit.
    run: RunMode = "inline"
    keep: float | None = None  # seconds an execution's record is kept (None: the setting)

    @cached_property
    def secret_params(self) -> frozenset[str]:
        return frozenset(n for n, p in self.params.items() if p.secret)

    @cached_property
    def secret_returns(self) -> frozenset[str]:
        """Top-level fields of the result marked ``secret: true`` in ``returns``."""
        properties = (self.returns or {}).get("properties") or {}
        return frozenset(
            name
            for name, schema in properties.items()
            if isinstance(schema, dict) and schema.get("secret") is True
        )

    def describe(self) -> dict[str, Any]:
        """The public description served by ``GET /api/v1/actions``."""
        described: dict[str, Any] = {
            "name": self.name,
            "module": self.module,
            "summary": self.summary,
            "description": self.description,
            "auth": self.auth,
            "roles": sorted(self.roles),
            "scopes": sorted(self.scopes),
            "params": object_schema(self.params, self.path_params),
            "returns": self.returns,
            "idempotent": self.idempotent,
            "rate_limit": [limit.text for limit in self.rate_limit],
            "rate_limit_by": list(self.rate_limit_by),
            "timeout": self.timeout,
            "deprecated": self.deprecated,
            "run": self.run,
        }
        if self.examples:
            described["examples"] = list(self.examples)
        if self.cache is not None:
            described["cache"] = self.cache
        return described


@dataclass(frozen=True)
class Action:
    """A runnable action: spec, compiled validators, and the call into the handler."""

    spec: ActionSpec
    validate: ParamsValidator
    invoke: Invoker
    returns: ReturnsValidator | None = None
