"""AppManager: boots managers in dependency order, stops them in reverse, aggregates health."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from graphlib import CycleError, TopologicalSorter
from typing import TYPE_CHECKING, Any, TypeVar, overload

from core.config import Config, ConfigManager
from core.errors import BootError, ManagerStopError, Problem, RegistryFrozen
from core.manager import Health, Manager

if TYPE_CHECKING:
    from flask import Flask

log = logging.getLogger("switchboard.app")

M = TypeVar("M")


class AppManager:
    """One app: its config, its managers, and nothing global.

    Managers are handed in (the kernel imports no concrete manager). ``boot()`` starts them
    in the order their ``requires`` give; a failure stops what already started and raises.
    After boot the registry is frozen.
    """

    def __init__(self, config: Config, managers: Iterable[Manager]) -> None:
        self.config = config
        self.flask: Flask | None = None  # set by the HTTP layer before boot
        self._managers: dict[str, Manager] = {}
        self._order: list[str] = []
        self._started: list[Manager] = []
        self._frozen = False
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
        self._managers[manager.name] = manager

    def has(self, name: str) -> bool:
        return name in self._managers

    @overload
    def get(self, name: str) -> Any: ...

    @overload
    def get(self, name: str, kind: type[M]) -> M: ...

    def get(self, name: str, kind: type[M] | None = None) -> Any:
        """The manager called ``name``; with ``kind``, checked to be an instance of it."""
        try:
            manager = self._managers[name]
        except KeyError:
            raise LookupError(f"no manager named {name!r} in this app") from None
        if kind is not None and not isinstance(manager, kind):
            raise TypeError(f"manager {name!r} is {type(manager).__name__}, not {kind.__name__}")
        return manager

    def __getattr__(self, name: str) -> Any:
        # app_manager.db, app_manager.hooks, ... for module authors; only reached when
        # normal attribute lookup fails, so real attributes win.
        managers = self.__dict__.get("_managers", {})
        if name in managers:
            return managers[name]
        raise AttributeError(name)

    def managers(self) -> Iterator[Manager]:
        """Managers in start order (registration order before boot)."""
        names = self._order or list(self._managers)
        return (self._managers[n] for n in names)

    # --- lifecycle --------------------------------------------------------------------

    def start_order(self) -> list[str]:
        problems = [
            Problem(f"manager {m.name!r} requires {r!r}, which is not registered")
            for m in self._managers.values()
            for r in m.requires
            if r not in self._managers
        ]
        if problems:
            raise BootError(problems)
        sorter = TopologicalSorter(
            {
                m.name: (*m.requires, *(a for a in m.after if a in self._managers))
                for m in self._managers.values()
            }
        )
        try:
            return list(sorter.static_order())
        except CycleError as exc:
            cycle = " -> ".join(exc.args[1])
            raise BootError(f"managers require each other in a cycle: {cycle}") from None

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
