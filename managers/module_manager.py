"""ModuleManager: finds module folders, orders them by dependency and runs their lifecycle."""

from __future__ import annotations

import functools
import logging
import types
from collections.abc import Iterator
from dataclasses import dataclass, field
from graphlib import CycleError, TopologicalSorter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.errors import ManagerStopError, ModuleError, Problem
from core.hooks import MODULE_LOADED, HookEmitter
from core.manager import Health, Manager
from core.module import BaseModule, ModuleManifest
from core.state import MachineRegistry, parse_machine
from managers.module_loading import _import_package, _module_class, _rel, _resolve, discover

if TYPE_CHECKING:
    from core.app_manager import AppManager

log = logging.getLogger("switchboard.modules")


@dataclass
class LoadedModule:
    """A discovered module and how its lifecycle went."""

    manifest: ModuleManifest
    package: types.ModuleType
    instance: BaseModule
    status: str = "pending"  # pending | ok | failed
    error: str | None = None
    depends_on: tuple[str, ...] = field(default=())

    @property
    def name(self) -> str:
        return self.manifest.name


class ModuleManager(Manager):
    """Discovers ``modules/`` then ``MODULES_PATH``, loads in dependency order.

    With ``modules.strict`` (the default) a module whose ``initialize`` raises fails the
    boot; otherwise it is reported ``failed`` in health and its actions answer 503.
    """

    name = "modules"
    requires = ("config", "hooks")
    # Modules initialize once every service they may use is up.
    after = (
        "db",
        "redis",
        "state",
        "vault",
        "jwt",
        "api_keys",
        "rate_limiter",
        "websocket",
        "services",
        "metrics",
    )

    def __init__(self) -> None:
        self._modules: dict[str, LoadedModule] = {}
        self._order: list[str] = []
        self._app: AppManager | None = None

    # --- queries ----------------------------------------------------------------------

    def __iter__(self) -> Iterator[LoadedModule]:
        return (self._modules[n] for n in self._order)

    def get(self, name: str) -> LoadedModule | None:
        return self._modules.get(name)

    def names(self) -> list[str]:
        return list(self._order)

    def module_objects(self) -> list[tuple[ModuleManifest, BaseModule]]:
        return [(m.manifest, m.instance) for m in self]

    def unavailable_reason(self, module: str) -> str | None:
        loaded = self._modules.get(module)
        if loaded is None or loaded.status == "ok":
            return None  # actions/*.yaml may name a module without a folder
        return loaded.error or loaded.status

    # --- lifecycle --------------------------------------------------------------------

    def folders(self, app: AppManager) -> list[Path]:
        config = app.config
        return [config.root / "modules", *(config.path(p) for p in config["modules.path"])]

    def start(self, app: AppManager) -> None:
        self._app = app
        root = app.config.root
        problems: list[Problem] = []
        found = discover(self.folders(app), root, problems)
        if problems:
            raise ModuleError(problems)

        for manifest in found.values():
            label = _rel(manifest.path, root)
            try:
                package = _import_package(manifest)
                instance = _module_class(package)()
            except Exception as exc:
                problems.append(
                    Problem(
                        f"import failed: {type(exc).__name__}: {exc}",
                        file=label,
                        module=manifest.name,
                    )
                )
                continue
            instance.module_name = manifest.name
            instance.manifest = manifest
            operator = app.config["modules.settings"].get(manifest.name, {})
            instance.settings = {**manifest.config, **operator}
            deps = (*manifest.depends_on, *instance.declare_dependencies())
            self._modules[manifest.name] = LoadedModule(
                manifest, package, instance, depends_on=tuple(dict.fromkeys(deps))
            )
            problems.extend(
                Problem(
                    f"requires manager {req!r}, which this app does not run",
                    file=label,
                    module=manifest.name,
                    field="requires",
                )
                for req in manifest.requires
                if not app.has(req)
            )
        problems.extend(self._define_machines(app, root))
        if problems:
            raise ModuleError(problems)
        self._order = self._dependency_order(root)
        self._initialize_all(app)

    def _define_machines(self, app: AppManager, root: Path) -> list[Problem]:
        """Hand module.yaml ``state_machines`` to the state manager, before any initialize()."""
        problems: list[Problem] = []
        for loaded in self._modules.values():
            declared = loaded.manifest.state_machines
            if not declared:
                continue
            where: dict[str, str | None] = {
                "file": _rel(loaded.manifest.path / "module.yaml", root),
                "module": loaded.name,
            }
            if not app.has("state"):
                problems.append(
                    Problem(
                        "declares state_machines, but this app runs no state manager",
                        field="state_machines",
                        **where,
                    )
                )
                continue
            registry: MachineRegistry = app.get("state")
            package = loaded.package.__name__
            for name, spec in declared.items():
                machine, found = parse_machine(
                    f"{loaded.name}.{name}", spec, functools.partial(_resolve, package), where
                )
                problems.extend(found)
                if machine is not None:
                    registry.define(machine)
        return problems

    def _dependency_order(self, root: Path) -> list[str]:
        problems = [
            Problem(
                f"depends on module {dep!r}, which was not found",
                file=_rel(m.manifest.path, root),
                module=m.name,
                field="depends_on",
            )
            for m in self._modules.values()
            for dep in m.depends_on
            if dep not in self._modules
        ]
        if problems:
            raise ModuleError(problems)
        sorter = TopologicalSorter({m.name: m.depends_on for m in self._modules.values()})
        try:
            return list(sorter.static_order())
        except CycleError as exc:
            cycle = " -> ".join(exc.args[1])
            raise ModuleError(
                [
                    Problem(
                        f"modules depend on each other in a cycle: {cycle}",
                        module=exc.args[1][0],
                        field="depends_on",
                    )
                ]
            ) from None

    def _initialize_all(self, app: AppManager) -> None:
        strict = bool(app.config["modules.strict"])
        hooks: HookEmitter | None = app.get("hooks") if app.has("hooks") else None
        for name in self._order:
            loaded = self._modules[name]
            failed_deps = [d for d in loaded.depends_on if self._modules[d].status != "ok"]
            if failed_deps:
                loaded.status, loaded.error = (
                    "failed",
                    f"depends on failed {', '.join(failed_deps)}",
                )
                continue
            try:
                loaded.instance.initialize(app)
                loaded.instance.configure()
            except Exception as exc:
                if strict:
                    raise ModuleError(
                        [
                            Problem(
                                f"initialize failed: {type(exc).__name__}: {exc}",
                                file=_rel(loaded.manifest.path, app.config.root),
                                module=name,
                            )
                        ]
                    ) from exc
                log.exception("module %s failed to initialize; its actions will answer 503", name)
                loaded.status, loaded.error = "failed", f"initialize failed: {type(exc).__name__}"
                continue
            loaded.status = "ok"
            if hooks is not None:
                hooks.emit(MODULE_LOADED, module=name, version=loaded.manifest.version)

    def register_routes(self) -> None:
        """Let every healthy module add Flask routes (called once the Flask app exists)."""
        for loaded in self:
            if loaded.status == "ok":
                loaded.instance.register_routes()

    def stop(self) -> None:
        errors: dict[str, BaseException] = {}
        for name in reversed(self._order):
            loaded = self._modules[name]
            if loaded.status != "ok":
                continue
            try:
                loaded.instance.dispose()
            except Exception as exc:  # every dispose runs; errors are raised together
                errors[f"module {name}"] = exc
        self._order = []
        if errors:
            raise ManagerStopError(errors)

    def health(self) -> Health:
        modules: dict[str, Any] = {}
        degraded = False
        for loaded in self:
            if loaded.status != "ok":
                modules[loaded.name] = {"status": loaded.status, "error": loaded.error}
                degraded = True
                continue
            try:
                reported = loaded.instance.health_check()
            except Exception as exc:
                log.exception("health_check of module %s raised", loaded.name)
                reported = Health("failed", {"error": type(exc).__name__})
            health = (
                reported
                if isinstance(reported, Health)
                else Health(
                    reported.get("status", "ok"),
                    {k: v for k, v in reported.items() if k != "status"},
                )
                if isinstance(reported, dict)
                else Health()
            )
            modules[loaded.name] = health.as_dict()
            degraded = degraded or health.status != "ok"
        return Health("degraded" if degraded else "ok", {"modules": modules})
