"""Module discovery and loading: finding module folders, reading ``module.yaml``, importing.

Problems are collected, not raised, so one boot error can name every broken module at once.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import inspect
import sys
import types
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from core.errors import Problem
from core.module import MANIFEST_KEYS, MODULE_NAME, MODULE_PACKAGE, BaseModule, ModuleManifest
from core.yamlfile import YamlFileError, load_yaml_file

_MARKERS = ("__init__.py", "module.yaml", "actions.yaml")


class DefaultModule(BaseModule):
    """The module object of a module whose ``__init__.py`` exports no ``BaseModule``."""


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


def discover(folders: list[Path], root: Path, problems: list[Problem]) -> dict[str, ModuleManifest]:
    """The manifests of the module folders inside ``folders``, by module name.

    The first folder (``modules/``) may be absent; problems are appended, not raised.
    """
    found: dict[str, ModuleManifest] = {}
    for index, folder in enumerate(folders):
        if not folder.is_dir():
            if index > 0:  # modules/ itself may be absent; a configured path may not
                problems.append(
                    Problem(f"MODULES_PATH entry {folder} is not a directory", field="modules.path")
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
