"""ActionDiscoveryManager: finds every declaration file and owns the action registry.

Sources: ``<module>/actions.yaml`` of every loaded module (in module order), then the
project's ``actions/*.yaml``. Every problem in every file is collected and raised
together, each naming its file, module, action and field (``python app.py check``).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from core.actions.actions import Action
from core.actions.declaration_schema import ACTION_KEY, FILE_KEYS, SEED_FILE_CONFIG
from core.actions.declarations import MetaSchema, Where, build_action
from core.base.errors import DeclarationError, Problem
from core.base.yamlfile import YamlFileError, load_yaml_file
from core.contracts.module import MODULE_NAME, BaseModule, ModuleCatalog
from core.contracts.services import ServiceDirectory
from core.manager import Health, Manager
from core.pipeline.authorize import ActionRegistry

if TYPE_CHECKING:
    from core.manager import App

log = logging.getLogger("switchboard.actions")

_FILE_CONFIG = MetaSchema(SEED_FILE_CONFIG)
_ACTION_KEY = re.compile(ACTION_KEY)


@dataclass
class DeclarationFile:
    """One parsed declaration file and the module its actions belong to."""

    label: str
    module: str
    operator: bool  # actions/*.yaml (may set module:) rather than <module>/actions.yaml
    instance: BaseModule | None = None
    defaults: Mapping[str, Any] = field(default_factory=dict)
    declarations: Mapping[Any, Any] = field(default_factory=dict)
    lines: dict[int, dict[Any, int]] = field(default_factory=dict)  # of every key, by mapping
    data: Any = None  # the document (keeps the mappings that ``lines`` names alive)

    def where(self, action: str | None = None, key: Any = None) -> Where:
        """Where problems of the file (or of the declaration at ``key``) are reported."""
        if key is None:
            return Where(self.label, self.module, action)
        return Where(
            self.label,
            self.module,
            action,
            tree=self.declarations.get(key),
            lines=self.lines,
            line=self.lines.get(id(self.declarations), {}).get(key),
        )


def with_settings(where: Where, declaration: Any, settings: Mapping[str, Any]) -> Any:
    """The declaration with every ``{setting: <key>}`` inside its params replaced by the
    module's setting (a ``null`` setting drops the keyword), so a schema can carry a policy
    an operator configures (``minLength: {setting: password_min_length}``) and the API
    listing and OpenAPI document show what the server really accepts."""
    if not isinstance(declaration, dict) or not isinstance(declaration.get("params"), dict):
        return declaration

    def resolve(value: Any, path: str) -> Any:
        if isinstance(value, dict):
            if set(value) == {"setting"}:
                key = value["setting"]
                if not isinstance(key, str) or key not in settings:
                    known = ", ".join(sorted(settings)) or "none"
                    raise where.fail(
                        f"{{setting: {key!r}}}: the module has no such setting (it has: {known})",
                        path,
                    )
                return settings[key]
            resolved = {k: resolve(v, f"{path}.{k}") for k, v in value.items()}
            return {k: v for k, v in resolved.items() if v is not None or value[k] is None}
        if isinstance(value, list):
            return [resolve(item, f"{path}.{i}") for i, item in enumerate(value)]
        return value

    return {**declaration, "params": resolve(declaration["params"], "params")}


class ActionDiscoveryManager(Manager):
    """Owns the action registry: ``lookup(name)`` is an exact dict lookup, never fuzzy."""

    name = "actions"
    requires = ("config", "modules")
    phase = 1
    provides: ClassVar[tuple[type, ...]] = (ActionRegistry,)

    def __init__(self) -> None:
        self._actions: dict[str, Action] = {}
        self._app: App | None = None

    # --- registry ---------------------------------------------------------------------

    def lookup(self, name: str) -> Action | None:
        return self._actions.get(name)

    def actions(self) -> list[Action]:
        return [self._actions[n] for n in sorted(self._actions)]

    def register(self, action: Action) -> None:
        """Add an action (only while booting); a duplicate name raises ``DeclarationError``."""
        if self._app is not None:
            self._app.check_not_frozen(f"action {action.spec.name!r}")
        spec = action.spec
        existing = self._actions.get(spec.name)
        if existing is not None:
            raise Where(spec.source, spec.module, spec.name).fail(
                f"action {spec.name!r} is declared twice: here and in {existing.spec.source}"
            )
        self._actions[spec.name] = action

    # --- lifecycle --------------------------------------------------------------------

    def start(self, app: App) -> None:
        self._app = app
        catalog = self.require(ModuleCatalog)
        problems: list[Problem] = []
        services = app.capability(ServiceDirectory)
        for file in self._files(app.config.root, catalog, problems):
            for key, declaration in file.declarations.items():
                where = file.where(f"{file.module}.{key}", key)
                if not isinstance(key, str) or not _ACTION_KEY.match(key):
                    problems.append(where.problem(f"action name {key!r} must match {ACTION_KEY}"))
                    continue
                try:
                    settings = file.instance.settings if file.instance is not None else {}
                    resolved = with_settings(where, declaration, settings)
                    self.register(
                        build_action(where, resolved, file.defaults, file.instance, services)
                    )
                except DeclarationError as exc:
                    problems.extend(exc.problems)
        if problems:
            raise DeclarationError(problems)
        log.info("loaded %d actions", len(self._actions))

    def health(self) -> Health:
        return Health("ok", {"actions": len(self._actions)})

    # --- files ------------------------------------------------------------------------

    def _files(
        self, root: Path, catalog: ModuleCatalog, problems: list[Problem]
    ) -> list[DeclarationFile]:
        instances = {loaded.name: loaded.instance for loaded in catalog}
        candidates = [
            (loaded.manifest.path / "actions.yaml", loaded.name, False) for loaded in catalog
        ]
        operator_dir = root / "actions"
        if operator_dir.is_dir():
            paths = sorted([*operator_dir.glob("*.yaml"), *operator_dir.glob("*.yml")])
            candidates.extend((path, path.stem, True) for path in paths)
        files = []
        for path, module, operator in candidates:
            if not path.is_file():
                continue
            label = str(path.relative_to(root)) if path.is_relative_to(root) else str(path)
            file = DeclarationFile(label, module, operator)
            if self._parse(path, file, problems):
                file.instance = instances.get(file.module)
                files.append(file)
        return files

    def _parse(self, path: Path, file: DeclarationFile, problems: list[Problem]) -> bool:
        """Read the file's top level into ``file``; false when nothing in it can load."""
        where = file.where()
        try:
            data = file.data = load_yaml_file(path, file.lines)
        except YamlFileError as exc:
            problems.append(where.problem(str(exc)))
            return False
        data = {} if data is None else data
        where = Where(file.label, file.module, tree=data, lines=file.lines, line=1)
        if not isinstance(data, dict):
            problems.append(where.problem("the top level must be a mapping with 'actions:'"))
            return False
        allowed = FILE_KEYS if file.operator else FILE_KEYS - {"module"}
        problems.extend(
            where.problem(
                f"unknown top-level key {key!r}; allowed: {', '.join(sorted(allowed))}", str(key)
            )
            for key in data
            if key not in allowed
        )
        declared = data.get("module", file.module) if file.operator else file.module
        if not isinstance(declared, str) or not MODULE_NAME.match(declared):
            hint = "" if "module" in data else " (the file name is used; set module: instead)"
            problems.append(
                where.problem(
                    f"module {declared!r} must match {MODULE_NAME.pattern}{hint}", "module"
                )
            )
            return False
        file.module = declared
        config = data.get("config") or {}
        problems.extend(_FILE_CONFIG.problems(config, file.where()))
        file.defaults = config if isinstance(config, dict) else {}
        actions = data.get("actions") or {}
        if not isinstance(actions, dict):
            problems.append(
                where.problem("'actions' must map action names to declarations", "actions")
            )
            return False
        file.declarations = actions
        if not actions and self._app is not None:
            self._app.warn(where.problem("declares no actions (is the file empty?)", "actions"))
        return True
