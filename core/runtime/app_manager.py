"""AppManager: boots managers in dependency order, collects what they contribute, stops them
in reverse, and aggregates their health."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Iterator
from graphlib import CycleError, TopologicalSorter
from typing import TYPE_CHECKING, Any, TypeVar, cast, overload

from core.base.errors import BootError, ManagerStopError, ModuleError, Problem, RegistryFrozen
from core.base.health import Health
from core.base.hooks import BUILTIN_EVENTS
from core.config.config import Config
from core.contracts.context import ModuleScope
from core.contracts.module import ModuleCatalog, ModuleManifest
from core.runtime.config_manager import ConfigManager
from core.runtime.manager import AsgiMount, Manager, Route

if TYPE_CHECKING:
    from flask import Flask

    from core.pipeline.chain import Middleware
    from core.pipeline.pipeline import Pipeline

log = logging.getLogger("switchboard.app")

M = TypeVar("M", bound=Manager)
T = TypeVar("T")


def _with_line(problem: Problem, manifest: ModuleManifest | None) -> Problem:
    """``problem`` with the line of its field in the module.yaml it names, when known."""
    if manifest is None or problem.line is not None:
        return problem
    return dataclasses.replace(problem, line=manifest.line_of(problem.field))


class AppManager:
    """One app: its config, its managers and what they contribute; nothing global.

    Managers are handed in (the kernel imports no concrete manager). ``boot()`` starts
    phase-0 managers in the order their ``requires`` give, then phase-1 managers (module
    loading); a failure stops what already started and raises. After boot the registry is
    frozen.
    """

    def __init__(self, config: Config, managers: Iterable[Manager]) -> None:
        self.config = config
        self.flask: Flask | None = None  # set by the HTTP layer before boot
        self.pipeline: Pipeline | None = None  # the call chain, built once managers are up
        self._managers: dict[str, Manager] = {}
        self._providers: dict[type, Manager] = {}
        self._facades: dict[str, Manager] = {}
        self._order: list[str] = []
        self._started: list[Manager] = []
        self._scopes: dict[str, ModuleScope] = {}
        self._frozen = False
        self.warnings: list[Problem] = []  # what boots but is probably a mistake
        self.register(ConfigManager(config))
        for manager in managers:
            self.register(manager)

    # --- registry ---------------------------------------------------------------------

    @property
    def frozen(self) -> bool:
        return self._frozen

    def check_not_frozen(self, what: str) -> None:
        """Raise ``RegistryFrozen`` when the app already booted."""
        if self._frozen:
            raise RegistryFrozen(f"cannot register {what}: the app has already booted")

    def register(self, manager: Manager) -> None:
        self.check_not_frozen(f"manager {manager.name!r}")
        if manager.name in self._managers:
            raise BootError(f"manager {manager.name!r} is registered twice")
        for kind in manager.provides:
            other = self._providers.get(kind)
            if other is not None:
                raise BootError(
                    f"managers {other.name!r} and {manager.name!r} both provide {kind.__name__}"
                )
        if manager.facade is not None and manager.facade in self._facades:
            other = self._facades[manager.facade]
            raise BootError(
                f"managers {other.name!r} and {manager.name!r} both give ctx.{manager.facade}"
            )
        manager._owner = self
        self._managers[manager.name] = manager
        for kind in manager.provides:
            self._providers[kind] = manager
        if manager.facade is not None:
            self._facades[manager.facade] = manager

    def warn(self, problem: Problem) -> None:
        """Something that loads but is likely a mistake: listed by ``check`` (and logged at
        INFO, which ``check``'s quiet logging leaves out, so it is printed once)."""
        self.warnings.append(problem)
        log.info("warning: %s", problem)

    def has(self, name: str) -> bool:
        return name in self._managers

    @overload
    def get(self, which: str) -> Manager: ...

    @overload
    def get(self, which: str, kind: type[M]) -> M: ...

    @overload
    def get(self, which: type[M]) -> M: ...

    def get(self, which: str | type[M], kind: type[M] | None = None) -> Manager | M:
        """The manager called ``which`` (checked to be a ``kind``), or the one of class
        ``which``."""
        if isinstance(which, str):
            try:
                manager = self._managers[which]
            except KeyError:
                raise LookupError(f"no manager named {which!r} in this app") from None
            if kind is not None and not isinstance(manager, kind):
                raise TypeError(
                    f"manager {which!r} is {type(manager).__name__}, not {kind.__name__}"
                )
            return manager
        for manager in self._managers.values():
            if isinstance(manager, which):
                return manager
        raise LookupError(f"no {which.__name__} in this app")

    def __getattr__(self, name: str) -> Manager:
        # app_manager.db, app_manager.hooks, ... for module authors; only reached when
        # normal attribute lookup fails, so real attributes win.
        managers = self.__dict__.get("_managers", {})
        if name in managers:
            return cast(Manager, managers[name])
        raise AttributeError(name)

    def managers(self) -> Iterator[Manager]:
        """Managers in start order (registration order before boot)."""
        names = self._order or list(self._managers)
        return (self._managers[n] for n in names)

    # --- capabilities -----------------------------------------------------------------

    def capability(self, kind: type[T]) -> T | None:
        """What implements ``kind`` in this app, or None (for the kernel's optional parts)."""
        provider = self._providers.get(kind)
        return None if provider is None else provider.capability(kind)

    def capability_for(self, manager: Manager, kind: type[T]) -> T:
        """``manager.require(kind)``: refused unless ``manager.requires`` names the provider."""
        provider = self._providers.get(kind)
        if provider is None:
            raise BootError(
                f"manager {manager.name!r} needs {kind.__name__}, which no manager provides"
            )
        if provider is not manager and provider.name not in manager.requires:
            raise BootError(
                f"manager {manager.name!r} uses {kind.__name__} of manager "
                f"{provider.name!r}: add {provider.name!r} to its requires"
            )
        return provider.capability(kind)

    def declared_events(self) -> frozenset[str]:
        """The kernel's hook events and those every manager says it emits."""
        return frozenset(BUILTIN_EVENTS).union(*(m.events for m in self._managers.values()))

    # --- what started managers contribute ---------------------------------------------

    def middleware(self) -> list[tuple[str, Middleware]]:
        """(manager, middleware) in declaration order (``app.py``'s list)."""
        return [(m.name, mw) for m in self._managers.values() for mw in m.middleware()]

    def routes(self) -> list[Route]:
        return [route for manager in self._managers.values() for route in manager.routes()]

    def asgi_mounts(self) -> list[AsgiMount]:
        return [mount for manager in self._managers.values() for mount in manager.asgi_mounts()]

    def names_in_use(self, kind: str) -> set[str]:
        """The roles (``kind="roles"``) or scopes some action, or some realtime room, asks
        for."""
        pipeline = self.pipeline
        found = (
            {name for action in pipeline.registry.actions() for name in getattr(action.spec, kind)}
            if pipeline is not None
            else set()
        )
        for manager in self.managers():
            for room in getattr(manager, "rooms", {}).values():
                found.update(getattr(room, kind, ()))
        return found

    def scope(self, module: str) -> ModuleScope:
        """What every ``ctx`` of ``module`` shares (settings, logger, facades)."""
        scope = self._scopes.get(module)
        if scope is None:
            catalog = self.capability(ModuleCatalog)
            loaded = catalog.get(module) if catalog is not None else None
            settings = loaded.instance.settings if loaded is not None else {}
            scope = self._scopes[module] = ModuleScope(module, self.config, settings, self._facade)
        return scope

    def _facade(self, module: str, name: str) -> object:
        manager = self._facades.get(name)
        if manager is None:
            raise AttributeError(f"ctx.{name}: this app runs no manager that provides it")
        if manager.privileged:
            catalog = self.capability(ModuleCatalog)
            loaded = catalog.get(module) if catalog is not None else None
            if loaded is None or manager.name not in loaded.manifest.requires:
                raise AttributeError(
                    f"ctx.{name} is given only to modules that require it: add "
                    f"{manager.name!r} to requires in module.yaml of {module!r}"
                )
        return manager.facade_for(module)

    def publish_modules(self, catalog: ModuleCatalog) -> None:
        """The modules-loaded phase: every started manager reads the manifests it owns
        (state machines, secrets, hooks, ...); every problem is raised together."""
        problems: list[Problem] = []
        for manager in self._started:
            problems.extend(manager.modules_loaded(catalog))
        if problems:
            manifests = {loaded.manifest.file: loaded.manifest for loaded in catalog}
            raise ModuleError([_with_line(p, manifests.get(p.file or "")) for p in problems])

    # --- lifecycle --------------------------------------------------------------------

    def start_order(self) -> list[str]:
        problems = [
            Problem(f"manager {m.name!r} requires {r!r}, which is not registered")
            for m in self._managers.values()
            for r in m.requires
            if r not in self._managers
        ]
        problems.extend(
            Problem(
                f"manager {m.name!r} requires {r!r}, which starts after it (phase "
                f"{self._managers[r].phase} > {m.phase})"
            )
            for m in self._managers.values()
            for r in m.requires
            if r in self._managers and self._managers[r].phase > m.phase
        )
        if problems:
            raise BootError(problems)
        order: list[str] = []
        for phase in sorted({m.phase for m in self._managers.values()}):
            members = {m.name: m for m in self._managers.values() if m.phase == phase}
            sorter = TopologicalSorter(
                {name: [r for r in m.requires if r in members] for name, m in members.items()}
            )
            try:
                order.extend(sorter.static_order())
            except CycleError as exc:
                cycle = " -> ".join(exc.args[1])
                raise BootError(f"managers require each other in a cycle: {cycle}") from None
        return order

    def boot(self) -> AppManager:
        """Start every manager in order; on failure stop the started ones and re-raise."""
        if self._frozen:
            raise RegistryFrozen("the app has already booted")
        self._order = self.start_order()
        for name in self._order:
            manager = self._managers[name]
            try:
                manager.start(self)
            except BaseException:
                try:
                    self._stop_started()
                except ManagerStopError as stop_exc:
                    log.error("while unwinding a failed boot: %s", stop_exc)
                raise
            self._started.append(manager)
        self._frozen = True
        return self

    def shutdown(self) -> None:
        """Stop every started manager in reverse order; raise their errors together."""
        self._stop_started()

    def _stop_started(self) -> None:
        errors: dict[str, BaseException] = {}
        while self._started:
            manager = self._started.pop()
            try:
                manager.stop()
            except Exception as exc:  # every stop runs; errors are raised together below
                errors[manager.name] = exc
        if errors:
            raise ManagerStopError(errors)

    # --- health -----------------------------------------------------------------------

    def health(self) -> tuple[bool, dict[str, dict[str, Any]]]:
        """(ready, checks): ready is false when a required part reports ``failed``."""
        checks: dict[str, dict[str, Any]] = {}
        ready = True
        for manager in self.managers():
            try:
                health = manager.health()
            except Exception as exc:  # a broken health check is itself a failure
                log.exception("health check of manager %r raised", manager.name)
                health = Health("failed", {"error": type(exc).__name__})
            checks[manager.name] = health.as_dict()
            if health.status == "failed" and manager.required:
                ready = False
        return ready, checks
