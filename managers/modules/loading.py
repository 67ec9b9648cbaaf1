"""Module discovery and loading: finding module folders, reading ``module.yaml``, importing.

Problems are collected, not raised, so one boot error can name every broken module at once.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib.machinery
import importlib.util
import inspect
import json
import re
import sys
import types
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from core.actions.declarations import did_you_mean
from core.actions.params import SchemaCompileError, compile_schema
from core.base.errors import Problem
from core.base.yamlfile import YamlFileError, load_yaml_file
from core.config import settings
from core.config.config import Config
from core.config.settings import Parser, Setting
from core.contracts.module import (
    MANIFEST_KEYS,
    MODULE_NAME,
    MODULE_PACKAGE,
    BaseModule,
    ModuleManifest,
)

_MARKERS = ("__init__.py", "module.yaml", "actions.yaml")
CONFIG_KEY = re.compile(r"^[a-z_][a-z0-9_]*$")


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
    lines: dict[int, dict[Any, int]] = {}
    if path.is_file():
        try:
            data = load_yaml_file(path, lines) or {}
        except YamlFileError as exc:
            problems.append(Problem(str(exc), file=label, module=folder.name))
            data = {}
        if not isinstance(data, dict):
            problems.append(Problem("module.yaml must be a mapping", file=label))
            data = {}
    for key in sorted(set(data) - MANIFEST_KEYS, key=str):
        hint = did_you_mean(str(key), sorted(MANIFEST_KEYS))
        problems.append(
            Problem(
                f"unknown key {key!r}{hint}; allowed: {', '.join(sorted(MANIFEST_KEYS))}",
                file=label,
                module=folder.name,
                field=str(key),
                line=lines.get(id(data), {}).get(key),
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
        services=_mapping(data.get("services"), "services", label, problems),
        hooks=_mapping(data.get("hooks"), "hooks", label, problems),
        events=_tuple_of_str(data.get("events"), "events", label, problems),
        config=_config(data.get("config"), label, name, problems),
        config_schema=_config_schema(data.get("config_schema"), label, name, problems),
        file=label,
        document=data,
        lines=lines,
    )


def _config(value: Any, label: str, module: str, problems: list[Problem]) -> Mapping[str, Any]:
    config = _mapping(value, "config", label, problems)
    for key in config:
        if not isinstance(key, str) or not CONFIG_KEY.match(key):
            problems.append(
                Problem(
                    f"config key {key!r} must match {CONFIG_KEY.pattern}: it becomes the "
                    f"setting {module}.<key>",
                    file=label,
                    module=module,
                    field=f"config.{key}",
                )
            )
    return {k: v for k, v in config.items() if isinstance(k, str) and CONFIG_KEY.match(k)}


def _config_schema(
    value: Any, label: str, module: str, problems: list[Problem]
) -> Mapping[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, dict) or not isinstance(value.get("properties", {}), dict):
        problems.append(
            Problem(
                "config_schema must be a JSON Schema object with properties",
                file=label,
                module=module,
                field="config_schema",
            )
        )
        return None
    return value


# --- module config as settings ----------------------------------------------------------

_TYPES: dict[str, Parser] = {
    "integer": settings.integer,
    "number": settings.number,
    "boolean": settings.boolean,
    "string": settings.text,
    "array": settings.anything,  # parsed below: JSON or comma-separated text
    "object": settings.mapping,
}


def _kind_of(default: Any, schema: Mapping[str, Any] | None) -> str | None:
    declared = (schema or {}).get("type")
    if isinstance(declared, list):
        declared = next((t for t in declared if t != "null"), None)
    if isinstance(declared, str):
        return declared
    if isinstance(default, bool):
        return "boolean"
    for kind, python in (("integer", int), ("number", float), ("string", str)):
        if isinstance(default, python):
            return kind
    if isinstance(default, list):
        return "array"
    if isinstance(default, dict):
        return "object"
    return None  # no default and no schema: any JSON value, text from the environment


def _array(value: Any, from_text: bool) -> list[Any]:
    if from_text and isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                value = json.loads(text)
            except ValueError:
                raise ValueError("expected a JSON array or comma-separated text") from None
        else:
            return [part.strip() for part in text.split(",") if part.strip()]
    if not isinstance(value, list | tuple):
        raise ValueError(f"expected a list, got {type(value).__name__}")
    return list(value)


def _parser(default: Any, schema: Mapping[str, Any] | None) -> Parser:
    kind = _kind_of(default, schema)
    base = _array if kind == "array" else _TYPES.get(kind or "", settings.anything)
    if not schema:
        return base
    clean = {k: v for k, v in schema.items() if k not in ("secret", "description")}
    try:
        validator = compile_schema(clean)
    except SchemaCompileError:
        return base  # reported by the module manager, with the module's name

    def parse(value: Any, from_text: bool) -> Any:
        typed = base(value, from_text)
        for error in validator.iter_errors(typed):
            raise ValueError(error.message)
        return typed

    return parse


def declared_settings(manifest: ModuleManifest) -> list[Setting]:
    """The module's ``config:`` keys as settings ``<module>.<key>``, typed by their
    ``config_schema`` property, else by their default."""
    properties = (manifest.config_schema or {}).get("properties") or {}
    found = []
    for key, default in manifest.config.items():
        schema = properties.get(key)
        schema = schema if isinstance(schema, dict) else None
        found.append(
            Setting(
                f"{manifest.name}.{key}",
                _parser(default, schema),
                default,
                str((schema or {}).get("description", f"config {key!r} of module {manifest.name}")),
                secret=bool((schema or {}).get("secret", False)),
                owner=f"module {manifest.name}",
            )
        )
    return found


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


def module_folders(config: Config) -> list[Path]:
    """``modules/`` of the project, then every ``modules.path`` folder, in order."""
    return [config.root / "modules", *(config.path(p) for p in config["modules.path"])]


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
            before = len(problems)
            manifest = read_manifest(child, root, problems)
            problems[before:] = [
                dataclasses.replace(p, line=manifest.line_of(p.field) or 1)
                if p.line is None and p.file == manifest.file
                else p
                for p in problems[before:]
            ]
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


# What a module may import of the kernel (README "Writing a module"): the rest may move.
MODULE_API = ("core.errors", "core.module", "core.calls", "core.testing")


def private_core_imports(manifest: ModuleManifest, root: Path) -> list[Problem]:
    """A warning for each import of a kernel path outside the module API in the module's
    own files (its tests may import what they like)."""
    found: list[Problem] = []
    for path in sorted(manifest.path.rglob("*.py")):
        relative = path.relative_to(manifest.path).parts
        if "tests" in relative[:-1] or "__pycache__" in relative:
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        except (OSError, SyntaxError, ValueError):
            continue  # an import of it fails with its own problem
        for node in ast.walk(tree):
            names: list[str] = []
            if not isinstance(node, ast.Import | ast.ImportFrom):
                continue
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                base = node.module
                names = [base] if base != "core" else [f"core.{a.name}" for a in node.names]
            for name in names:
                top = ".".join(name.split(".")[:2])
                if (name == "core" or name.startswith("core.")) and top not in MODULE_API:
                    found.append(
                        Problem(
                            f"imports {name}, a private path of the kernel that may move; "
                            f"import only the module API ({', '.join(MODULE_API)})",
                            file=_rel(path, root),
                            module=manifest.name,
                            line=node.lineno,
                        )
                    )
    return found
