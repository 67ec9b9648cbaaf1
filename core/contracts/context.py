"""What a handler (or a hook callback, or a module object) sees: the caller and ``ctx``."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol, cast

from core.base.errors import Cancelled

if TYPE_CHECKING:
    from core.config.config import Config
    from core.contracts.cache import Cache
    from core.contracts.facades import Documents, Hooks, Realtime, Secrets, StateMachines
    from core.contracts.jobs import ExecutionRef, JobControl

CallerKind = Literal["anonymous", "user", "api_key", "system"]


class Modules(Protocol):
    """``ctx.modules``: the loaded modules in load order (``core.contracts.module``'s
    ``ModuleCatalog``, whose entries are ``LoadedModule``; named loosely here, since a
    module object holds a ``Context`` of its own)."""

    def __iter__(self) -> Iterator[Any]: ...

    def get(self, name: str) -> Any: ...

    def names(self) -> list[str]: ...


@dataclass(frozen=True)
class Caller:
    """Who is calling: filled by the chain's identify step."""

    kind: CallerKind
    id: str | None = None
    roles: frozenset[str] = frozenset()
    scopes: frozenset[str] = frozenset()
    token_id: str | None = None  # jti of the access token (logout denylists it)
    session: str | None = None  # the token family (logout revokes its refresh tokens)
    expires_at: float | None = None  # exp of the access token
    rate_limit: tuple[str, ...] = ()  # an API key's own limits

    @property
    def key(self) -> str:
        """How logs, limits and records name the caller: ``user:<id>``, ``api_key:<id>``,
        ``system:system``; the bare kind (``anonymous``) when there is no id."""
        return self.kind if self.id is None else f"{self.kind}:{self.id}"


ANONYMOUS = Caller("anonymous")
SYSTEM = Caller("system", id="system")


class ModuleScope:
    """What every ``ctx`` of one module shares: its settings, logger and facades.

    Built once per module by the AppManager; ``facade(name)`` is handed the lookup that
    knows which manager serves ``ctx.<name>`` and whether this module may have it.
    """

    def __init__(
        self,
        module: str,
        config: Config,
        settings: Mapping[str, Any],
        lookup: Callable[[str, str], object],
    ) -> None:
        self.module = module
        self.config = config
        self.settings = settings
        self.logger = logging.getLogger(f"switchboard.modules.{module}")
        self._lookup = lookup
        self._facades: dict[str, object] = {}

    def facade(self, name: str) -> object:
        found = self._facades.get(name)
        if found is None:
            found = self._facades[name] = self._lookup(self.module, name)
        return found


@dataclass(frozen=True, slots=True)
class Context:
    """``ctx``: one call's caller and request facts, and the module's view of the app.

    ``ctx.db``, ``ctx.cache``, ``ctx.state``, ``ctx.hooks``, ``ctx.secrets`` and
    ``ctx.modules`` are typed; any other facade a manager contributes (``ctx.realtime``,
    ``ctx.jwt`` for modules that require it, ...) is reached the same way by name. Asking
    for one the app does not run raises ``AttributeError`` naming it.
    """

    scope: ModuleScope
    action: str
    caller: Caller
    request_id: str
    client_ip: str | None = None
    deadline: float | None = None  # time.monotonic() value past which the caller gets 504
    # The call's Idempotency-Key on an idempotent action: a handler can make its writes
    # unique by it, so a retry after a store outage cannot apply them twice. A background
    # job's is its execution id, the same on every attempt.
    idempotency_key: str | None = None
    job: JobControl | None = None  # set when this call runs an execution's job

    @property
    def execution(self) -> ExecutionRef | None:
        """The execution this job runs (``id``, ``attempt``); None in an inline call."""
        return None if self.job is None else self.job.ref

    @property
    def cancelled(self) -> bool:
        """True once the execution was asked to stop (cancel, or its time limit)."""
        return self.job is not None and self.job.cancelled

    def check_cancelled(self) -> None:
        """End the job here, as ``cancelled``, if a cancel was asked; else nothing."""
        if self.cancelled:
            raise Cancelled("the execution was cancelled")

    def progress(self, done: float, message: str | None = None) -> None:
        """Report how far a background job is (``done`` from 0 to 1); stored at most every
        ``executions.progress_interval`` and always at the end. Inline calls: nothing."""
        if self.job is not None:
            self.job.progress(done, message)

    @property
    def module(self) -> str:
        return self.scope.module

    @property
    def config(self) -> Config:
        return self.scope.config

    @property
    def settings(self) -> Mapping[str, Any]:
        """The module's merged ``config:`` (module.yaml defaults, then the operator's)."""
        return self.scope.settings

    @property
    def logger(self) -> logging.Logger:
        return self.scope.logger

    @property
    def db(self) -> Documents:
        return cast("Documents", self.scope.facade("db"))

    @property
    def cache(self) -> Cache:
        return cast("Cache", self.scope.facade("cache"))

    @property
    def state(self) -> StateMachines:
        return cast("StateMachines", self.scope.facade("state"))

    @property
    def hooks(self) -> Hooks:
        return cast("Hooks", self.scope.facade("hooks"))

    @property
    def secrets(self) -> Secrets:
        return cast("Secrets", self.scope.facade("secrets"))

    @property
    def modules(self) -> Modules:
        return cast("Modules", self.scope.facade("modules"))

    @property
    def realtime(self) -> Realtime:
        return cast("Realtime", self.scope.facade("realtime"))

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return self.scope.facade(name)
