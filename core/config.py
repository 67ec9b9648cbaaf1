"""The configuration chain and the ``config`` manager.

Resolution, highest first (this issue builds levels 3-5; secret files and Vault slot in
above the environment later):

    command-line overrides (``serve --host --port --workers``)
    environment ``SB_<KEY>`` (``.`` -> ``__``, upper-cased), then the unprefixed aliases
    ``config/<APP_ENV>.yaml``
    ``config/default.yaml``
    built-in defaults (``core.settings``)

Every value is typed and checked at load; an unknown key or a wrong type is a
``ConfigError`` naming the file (or variable) and the key.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.errors import ConfigError, Problem
from core.manager import Manager
from core.settings import ALIASES, ENVIRONMENTS, MAPPING_KEYS, SETTINGS
from core.yamlfile import YamlFileError, load_yaml_file

REDACTED = "***"


@dataclass(frozen=True)
class Value:
    """A resolved setting and where it came from."""

    value: Any
    source: str


class Config:
    """Read-only, typed settings of one app (``ctx.config``)."""

    def __init__(self, root: Path, values: Mapping[str, Value]) -> None:
        self.root = root
        self._values = dict(values)

    def __getitem__(self, key: str) -> Any:
        try:
            return self._values[key].value
        except KeyError:
            raise KeyError(f"unknown setting {key!r}") from None

    def get(self, key: str, default: Any = None) -> Any:
        entry = self._values.get(key)
        return default if entry is None else entry.value

    def source(self, key: str) -> str:
        return self._values[key].source

    @property
    def env(self) -> str:
        return str(self["app.env"])

    @property
    def is_production(self) -> bool:
        return self.env == "production"

    def path(self, value: str) -> Path:
        """A path setting resolved against the project root (absolute paths stay)."""
        path = Path(value)
        return path if path.is_absolute() else self.root / path

    def describe(self) -> Iterator[tuple[str, Any, str]]:
        """(key, value, source) for every setting, secrets redacted."""
        for key in sorted(self._values):
            entry = self._values[key]
            shown = REDACTED if SETTINGS[key].secret and entry.value else entry.value
            yield key, shown, entry.source


def _flatten(data: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for name, value in data.items():
        key = f"{prefix}{name}"
        if isinstance(value, dict) and key not in MAPPING_KEYS:
            yield from _flatten(value, key + ".")
        else:
            yield key, value


def _unknown(key: str, where: str) -> Problem:
    close = difflib.get_close_matches(key, SETTINGS, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return Problem(f"unknown setting {key!r}{hint}", file=where, field=key)


def _read_layer(path: Path, label: str, problems: list[Problem]) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = load_yaml_file(path)
    except YamlFileError as exc:
        problems.append(Problem(str(exc), file=label))
        return {}
    if data is None:
        return {}
    if not isinstance(data, dict):
        problems.append(Problem("the top level must be a mapping of settings", file=label))
        return {}
    return dict(_flatten(data))


def _env_layer(environ: Mapping[str, str], problems: list[Problem]) -> dict[str, tuple[Any, str]]:
    layer: dict[str, tuple[Any, str]] = {}
    for alias, key in ALIASES.items():
        if alias in environ:
            layer[key] = (environ[alias], f"env {alias}")
    for name, raw in environ.items():
        if not name.startswith("SB_"):
            continue
        key = name[3:].lower().replace("__", ".")
        if key not in SETTINGS:
            problems.append(_unknown(key, f"env {name}"))
            continue
        layer[key] = (raw, f"env {name}")  # the prefixed name wins over the alias
    return layer


def load_config(
    root: Path,
    environ: Mapping[str, str],
    overrides: Mapping[str, Any] | None = None,
) -> Config:
    """Resolve every setting; raise ``ConfigError`` listing every problem found."""
    problems: list[Problem] = []
    env_layer = _env_layer(environ, problems)
    default_layer = _read_layer(root / "config" / "default.yaml", "config/default.yaml", problems)

    # APP_ENV picks the environment file, so it is resolved from the other layers first.
    app_env = (
        (overrides or {}).get("app.env")
        or (env_layer["app.env"][0] if "app.env" in env_layer else default_layer.get("app.env"))
        or SETTINGS["app.env"].default
    )
    if app_env not in ENVIRONMENTS:
        app_env = "development"  # the typed pass below reports the bad value with its source
    env_label = f"config/{app_env}.yaml"
    env_file_layer = _read_layer(root / "config" / f"{app_env}.yaml", env_label, problems)

    values: dict[str, Value] = {}
    for key, setting in SETTINGS.items():
        candidates: list[tuple[Any, str, bool]] = []  # (raw, source, from_text), best first
        if overrides and key in overrides:
            candidates.append((overrides[key], "command line", False))
        if key in env_layer:
            raw, source = env_layer[key]
            candidates.append((raw, source, True))
        if key in env_file_layer:
            candidates.append((env_file_layer[key], env_label, False))
        if key in default_layer:
            candidates.append((default_layer[key], "config/default.yaml", False))
        if not candidates:
            values[key] = Value(setting.default, "default")
            continue
        raw, source, from_text = candidates[0]
        try:
            values[key] = Value(setting.coerce(raw, from_text=from_text), source)
        except ValueError as exc:
            problems.append(Problem(f"{key}: {exc}", file=source, field=key))

    for label, layer in (("config/default.yaml", default_layer), (env_label, env_file_layer)):
        problems.extend(_unknown(key, label) for key in layer if key not in SETTINGS)

    if problems:
        raise ConfigError(problems)
    return Config(root, values)


class ConfigManager(Manager):
    """Exposes the loaded ``Config`` as the ``config`` manager (``ctx.config``)."""

    name = "config"

    def __init__(self, config: Config) -> None:
        self.config = config
