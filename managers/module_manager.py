"""ModuleManager: finds module folders, orders them by dependency and runs their lifecycle."""

from __future__ import annotations

import functools
import importlib
import importlib.machinery
import importlib.util
import inspect
import logging
import sys
import types
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from graphlib import CycleError, TopologicalSorter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.errors import ManagerStopError, ModuleError, Problem
from core.hooks import MODULE_LOADED, HookEmitter
from core.manager import Health, Manager
from core.module import MANIFEST_KEYS, MODULE_NAME, MODULE_PACKAGE, BaseModule, ModuleManifest
from core.state import MachineRegistry, parse_machine
from core.yamlfile import YamlFileError, load_yaml_file

if TYPE_CHECKING:
    from core.app_manager import AppManager

log = logging.getLogger("switchboard.modules")

_MARKERS = ("__init__.py", "module.yaml", "actions.yaml")


class DefaultModule(BaseModule):
    """The module object of a module whose ``__init__.py`` exports no ``BaseModule``."""


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


def _rel(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def _tuple_of_str(value: Any, key: str, label: str, problems: list[Problem]) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    problems.append(Problem(f"{key} must be a list of strings", file=label, field=key))
    return ()


def _mapping(value: Any, key: str, label: str, problems: list[Problem]) -> Mapping[str, Any]:
    if value is None:
        return {}
    if isinstance(value, dict):
        return value
    problems.append(Problem(f"{key} must be a mapping", file=label, field=key))
    return {}


def read_manifest(folder: Path, root: Path, problems: list[Problem]) -> ModuleManifest:
    """The folder's ``module.yaml`` (all keys optional); problems are appended, not raised."""
    path = folder / "module.yaml"
    label = _rel(path, root)
    data: Any = {}
    if path.is_file():
        try:
            data = load_yaml_file(path) or {}
        except YamlFileError as exc:
            problems.append(Problem(str(exc), file=label, module=folder.name))
            data = {}
        if not isinstance(data, dict):
            problems.append(Problem("module.yaml must be a mapping", file=label))
            data = {}
    for key in sorted(set(data) - MANIFEST_KEYS):
        problems.append(
            Problem(
                f"unknown key {key!r}; allowed: {', '.join(sorted(MANIFEST_KEYS))}",
                file=label,
                module=folder.name,
                field=key,
            )
        )
    name = data.get("name", folder.name)
    if not isinstance(name, str) or not MODULE_NAME.match(name):
        problems.append(
            Problem(
                f"module name {name!r} must match {MODULE_NAME.pattern}",
                file=label,
                module=folder.name,
                field="name",
            )
        )
        name = folder.name
    version = data.get("version", "0.0.0")
    description = data.get("description", "")
    for key, value in (("version", version), ("description", description)):
        if not isinstance(value, str):
            problems.append(Problem(f"{key} must be a string", file=label, module=name, field=key))
    return ModuleManifest(
        name=name,
        path=folder,
        version=str(version),
        description=str(description),
        depends_on=_tuple_of_str(data.get("depends_on"), "depends_on", label, problems),
        requires=_tuple_of_str(data.get("requires"), "requires", label, problems),
        secrets=_tuple_of_str(data.get("secrets"), "secrets", label, problems),
        state_machines=_mapping(data.get("state_machines"), "state_machines", label, problems),
        rooms=_mapping(data.get("rooms"), "rooms", label, problems),
        config=_mapping(data.get("config"), "config", label, problems),
    )


def _import_package(manifest: ModuleManifest) -> types.ModuleType:
    """Import the folder as ``switchboard_modules.<name>``, fresh (two apps may differ)."""
    if MODULE_PACKAGE not in sys.modules:
        namespace = types.ModuleType(MODULE_PACKAGE)
        namespace.__path__ = []
        sys.modules[MODULE_PACKAGE] = namespace
    qualified = f"{MODULE_PACKAGE}.{manifest.name}"
    for loaded in [m for m in sys.modules if m == qualified or m.startswith(qualified + ".")]:
        del sys.modules[loaded]
    init = manifest.path / "__init__.py"
    spec: importlib.machinery.ModuleSpec | None
    if init.is_file():
        spec = importlib.util.spec_from_file_location(
            qualified, init, submodule_search_locations=[str(manifest.path)]
        )
    else:  # YAML + handlers only: an empty package whose submodules live in the folder
        spec = importlib.machinery.ModuleSpec(qualified, None, is_package=True)
        spec.submodule_search_locations = [str(manifest.path)]
    if spec is None:  # pragma: no cover - spec_from_file_location only fails on odd paths
        raise ImportError(f"cannot build an import spec for {manifest.path}")
    package = importlib.util.module_from_spec(spec)
    sys.modules[qualified] = package
    try:
        if spec.loader is not None:
            spec.loader.exec_module(package)
    except BaseException:
        del sys.modules[qualified]
        raise
    return package


def _resolve(package: str, ref: str) -> Any:
    """``"handlers:can_ship"`` inside the module package."""
    module_path, _, attr = ref.partition(":")
    if not attr:
        raise ValueError("use 'python_module:function'")
    function = getattr(importlib.import_module(f"{package}.{module_path}"), attr)
    if not callable(function):
        raise TypeError(f"{ref} is not callable")
    return function


def _module_class(package: types.ModuleType) -> type[BaseModule]:
    """``__all__[0]`` if it names a BaseModule subclass, else the first one defined here."""
    exported = getattr(package, "__all__", None)
    if exported:
        candidate = getattr(package, exported[0], None)
        if inspect.isclass(candidate) and issubclass(candidate, BaseModule):
            return candidate
    for value in vars(package).values():
        if (
            inspect.isclass(value)
            and issubclass(value, BaseModule)
            and value is not BaseModule
            and value.__module__.startswith(package.__name__)
        ):
            return value
    return DefaultModule


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
        found = self._discover(app, root, problems)
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

    def _discover(
        self, app: AppManager, root: Path, problems: list[Problem]
    ) -> dict[str, ModuleManifest]:
        found: dict[str, ModuleManifest] = {}
        for index, folder in enumerate(self.folders(app)):
            if not folder.is_dir():
                if index > 0:  # modules/ itself may be absent; a configured path may not
                    problems.append(
                        Problem(
                            f"MODULES_PATH entry {folder} is not a directory", field="modules.path"
                        )
                    )
                continue
            for child in sorted(folder.iterdir()):
                if child.name.startswith((".", "_")) or not child.is_dir():
                    continue
                if not any((child / marker).is_file() for marker in _MARKERS):
                    continue
                manifest = read_manifest(child, root, problems)
                if manifest.name in found:
                    problems.append(
                        Problem(
                            f"module {manifest.name!r} found twice: "
                            f"{_rel(found[manifest.name].path, root)} and {_rel(child, root)}",
                            module=manifest.name,
                        )
                    )
                    continue
                found[manifest.name] = manifest
        return found

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
