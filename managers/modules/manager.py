"""ModuleManager: finds module folders, orders them by dependency and runs their lifecycle.

It starts in phase 1, after every other manager: it imports each module, hands the
catalog to the managers (``AppManager.publish_modules``: state machines, secrets, hooks,
... are read by the managers that own them), then initializes the modules in dependency
order. A module's ``config:`` keys are settings ``<module>.<key>`` of the config chain
(``discover_settings``), so ``ctx.settings`` holds what the operator set.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from graphlib import CycleError, TopologicalSorter
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from core.base.errors import ManagerStopError, ModuleError, Problem
from core.base.hooks import MODULE_LOADED, HookBus
from core.config.config import Config
from core.config.settings import Setting
from core.contracts.context import SYSTEM, Context
from core.contracts.module import ImportFailed, LoadedModule, ModuleCatalog, failure_problem
from core.manager import Health, Manager
from managers.modules.loading import (
    _import_package,
    _module_class,
    _rel,
    declared_settings,
    discover,
    module_folders,
    private_core_imports,
)

if TYPE_CHECKING:
    from core.manager import App

log = logging.getLogger("switchboard.modules")


class ModuleManager(Manager):
    """Discovers ``modules/`` then ``MODULES_PATH``, loads in dependency order.

    With ``modules.strict`` (the default) a module whose ``initialize`` raises fails the
    boot; otherwise it is reported ``failed`` in health and its actions answer 503.
    """

    name = "modules"
    requires = ("config",)
    phase = 1
    provides: ClassVar[tuple[type, ...]] = (ModuleCatalog,)
    facade = "modules"

    def __init__(self) -> None:
        self._modules: dict[str, LoadedModule] = {}
        self._order: list[str] = []

    @classmethod
    def discover_settings(cls, bootstrap: Config) -> Sequence[Setting]:
        # Broken manifests are skipped here: start() reports them with the module's name.
        found = discover(module_folders(bootstrap), bootstrap.root, [])
        return [setting for manifest in found.values() for setting in declared_settings(manifest)]

    # --- the catalog ------------------------------------------------------------------

    def __iter__(self) -> Iterator[LoadedModule]:
        return (self._modules[n] for n in self._order)

    def get(self, name: str) -> LoadedModule | None:
        return self._modules.get(name)

    def names(self) -> list[str]:
        return list(self._order)

    def unavailable_reason(self, module: str) -> str | None:
        loaded = self._modules.get(module)
        if loaded is None or loaded.status == "ok":
            return None  # actions/*.yaml may name a module without a folder
        return loaded.error or loaded.status

    # --- lifecycle --------------------------------------------------------------------

    def start(self, app: App) -> None:
        root = app.config.root
        problems: list[Problem] = []
        found = discover(module_folders(app.config), root, problems)
        if problems:
            raise ModuleError(problems)
        for manifest in found.values():
            if manifest.name != manifest.path.name:
                app.warn(
                    Problem(
                        f"module.yaml names the module {manifest.name!r} but its folder is "
                        f"{manifest.path.name!r}; it loads as {manifest.name!r}",
                        file=manifest.file,
                        module=manifest.name,
                        field="name",
                        line=manifest.line_of("name"),
                    )
                )
            for problem in private_core_imports(manifest, root):
                app.warn(problem)
            try:
                package = _import_package(manifest)
                instance = _module_class(package)()
            except (Exception, SystemExit) as exc:  # a module that does not import: its problem
                problems.append(ImportFailed(manifest.name, exc, manifest.path).problem)
                continue
            instance.module_name = manifest.name
            instance.manifest = manifest
            instance.settings = {
                key: app.config.get(f"{manifest.name}.{key}", default)
                for key, default in manifest.config.items()
            }
            deps = (*manifest.depends_on, *instance.declare_dependencies())
            self._modules[manifest.name] = LoadedModule(
                manifest, package, instance, depends_on=tuple(dict.fromkeys(deps))
            )
            problems.extend(
                Problem(
                    f"requires manager {req!r}, which this app does not run",
                    file=manifest.file,
                    module=manifest.name,
                    field="requires",
                )
                for req in manifest.requires
                if not app.has(req)
            )
        if problems:
            raise ModuleError(problems)
        self._order = self._dependency_order(root)
        for loaded in self:
            loaded.instance.ctx = Context(app.scope(loaded.name), "", SYSTEM, "")
        app.publish_modules(self)
        self._initialize_all(app)

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

    def _initialize_all(self, app: App) -> None:
        strict = bool(app.config["modules.strict"])
        hooks = app.capability(HookBus)
        for name in self._order:
            loaded = self._modules[name]
            failed_deps = [d for d in loaded.depends_on if self._modules[d].status != "ok"]
            if failed_deps:
                loaded.status, loaded.error = (
                    "failed",
                    f"depends on failed {', '.join(failed_deps)}",
                )
                continue
            stage = "initialize"
            try:
                loaded.instance.initialize(app)
                stage = "configure"
                loaded.instance.configure()
            except Exception as exc:  # strict: the boot fails; else the module answers 503
                if strict:
                    raise ModuleError(
                        [failure_problem(name, stage, exc, loaded.manifest.path)]
                    ) from exc
                log.exception("module %s: %s failed; its actions will answer 503", name, stage)
                loaded.status, loaded.error = "failed", f"{stage} failed: {type(exc).__name__}"
                continue
            loaded.status = "ok"
            if hooks is not None:
                hooks.emit(MODULE_LOADED, module=name, version=loaded.manifest.version)

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
            except Exception as exc:  # a broken health check is itself a failure
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
