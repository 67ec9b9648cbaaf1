"""The configuration chain: one layer per source, resolved highest first.

    command-line overrides (``serve --host --port --workers``)
    secret files ``<dir>/<key>`` (``secrets.mounts``, then ``secrets.dir``)
    document sources: one config document in a secret store (Vault, contributed by its
        manager); the source's own settings skip this level
    environment ``SB_<KEY>`` (``.`` -> ``__``, upper-cased), then the unprefixed aliases
    ``config/<APP_ENV>.yaml``
    ``config/default.yaml``
    built-in defaults (each ``Setting``'s)

What the chain knows is a ``ConfigSpec``: the settings the kernel, the managers and the
modules declare, the document sources, and the production checks. A value may be a
reference, ``file://<path>`` or ``<scheme>://<target>`` of a document source, resolved at
boot. Every value is typed and checked at load; an unknown key or a wrong type is a
``ConfigError`` naming the file (or variable) and the key.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from core.base.errors import ActionError, ConfigError, Problem
from core.base.yamlfile import YamlFileError, load_yaml_file
from core.config.config import Config, Value, read_file_reference
from core.config.config_policy import kernel_problems
from core.config.settings import ENVIRONMENTS, KERNEL_SETTINGS, Setting, SettingsTable

# Settings that locate the other levels (and the modules that declare settings), so they
# come only from the command line, the environment and the YAML files.
BOOTSTRAP = ("app.env", "secrets.dir", "secrets.mounts", "modules.path")

Candidate = tuple[Any, str, bool]  # (raw value, where it came from, whether it is text)
ProductionCheck = Callable[[Config], list[Problem]]
SettingsDiscovery = Callable[[Config], Sequence[Setting]]


class DocumentSource(Protocol):
    """An opened secret store: one config document, and references into it."""

    label: str  # names the document in sources and problems, e.g. "vault switchboard/config"

    def document(self) -> Mapping[str, Any]:
        """The config document (nested or dotted keys); empty when there is none."""
        ...

    def resolve(self, target: str) -> Any:
        """The value ``<scheme>://<target>`` names; ``ValueError`` saying why there is none."""
        ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class SourceSpec:
    """A document source a manager contributes to the chain (the Vault level)."""

    scheme: str  # references it resolves: "<scheme>://..."
    name: str  # for messages: "Vault"
    own_keys: frozenset[str]  # settings that configure it: they cannot come from it
    enabled_by: str  # the setting whose value turns it on
    open: Callable[[Mapping[str, Any], Path], DocumentSource]


@dataclass(frozen=True)
class ConfigSpec:
    """What the parts of one app contribute to its configuration."""

    settings: tuple[Setting, ...] = KERNEL_SETTINGS
    discover: tuple[SettingsDiscovery, ...] = ()  # settings found on disk (module config)
    sources: tuple[SourceSpec, ...] = ()
    checks: tuple[ProductionCheck, ...] = field(default=(kernel_problems,))


# --- reading the layers -----------------------------------------------------------------


def _flatten(
    data: Mapping[str, Any], keep: frozenset[str], prefix: str = ""
) -> Iterator[tuple[str, Any]]:
    for name, value in data.items():
        key = f"{prefix}{name}"
        if key == "modules.settings" and isinstance(value, dict):
            # The older spelling of module settings: modules.settings.<module>.<key>.
            yield from _flatten(value, keep)
        elif isinstance(value, dict) and key not in keep:
            yield from _flatten(value, keep, key + ".")
        else:
            yield key, value


def _read_yaml(path: Path, label: str, problems: list[Problem]) -> dict[str, Any]:
    """The file's settings, nested keys flattened later (the mapping keys are not known yet)."""
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
    return data


def _environment(environ: Mapping[str, str], aliases: Mapping[str, str]) -> dict[str, Candidate]:
    layer: dict[str, Candidate] = {}
    for alias, key in aliases.items():
        if alias in environ:
            layer[key] = (environ[alias], f"env {alias}", True)
    for name, raw in environ.items():
        if name.startswith("SB_") and len(name) > 3:
            key = name[3:].lower().replace("__", ".")
            layer[key] = (raw, f"env {name}", True)  # the prefixed name wins over the alias
    return layer


def _secret_files(directories: Sequence[Path], keys: Sequence[str]) -> dict[str, Candidate]:
    """``<dir>/<key>`` for every known key; the first directory that has one wins."""
    wanted = set(keys)
    found: dict[str, Candidate] = {}
    for directory in directories:
        try:
            names = os.listdir(directory)
        except OSError:
            continue
        for name in sorted(wanted.intersection(names) - set(found)):
            path = directory / name
            if not path.is_file():
                continue
            try:
                value = path.read_text(encoding="utf-8").rstrip("\n")
            except (OSError, UnicodeDecodeError):
                continue
            found[name] = (value, f"secret file {path}", True)
    return found


def _unknown(key: str, where: str, known: Mapping[str, Setting]) -> Problem:
    close = difflib.get_close_matches(key, list(known), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    section = key.split(".", 1)[0]
    if not any(k.startswith(section + ".") for k in known):
        hint = (
            f"; nothing has settings under {section!r} (no such module, or a module without "
            f"a config: block in its module.yaml){hint}"
        )
    return Problem(f"unknown setting {key!r}{hint}", file=where, field=key)


# --- resolving --------------------------------------------------------------------------


class _Chain:
    """The layers of one load, and how a key is resolved through them."""

    def __init__(self, root: Path, table: SettingsTable) -> None:
        self.root = root
        self.table = table
        self.layers: list[dict[str, Candidate]] = []  # best first
        self.sources: dict[str, DocumentSource] = {}  # by scheme, once opened
        self.unopened: dict[str, str] = {}  # scheme -> why it cannot resolve references

    def candidates(self, key: str, skip: Sequence[dict[str, Candidate]] = ()) -> list[Candidate]:
        return [layer[key] for layer in self.layers if key in layer and layer not in skip]

    def _dereference(self, raw: Any) -> tuple[Any, bool]:
        if not isinstance(raw, str) or "://" not in raw:
            return raw, False
        scheme, _, target = raw.partition("://")
        if scheme == "file":
            return read_file_reference(self.root, target), True
        if scheme in self.sources:
            return self.sources[scheme].resolve(target), True
        if scheme in self.unopened:
            raise ValueError(self.unopened[scheme])
        return raw, False  # an ordinary value that happens to contain "://" (a URL)

    def resolve(self, key: str, found: list[Candidate]) -> Value:
        setting = self.table[key]
        if not found:
            return Value(setting.default, "default", setting.secret)
        raw, source, from_text = found[0]
        value, referenced = self._dereference(raw)
        typed = setting.coerce(value, from_text=from_text or referenced)
        sensitive = setting.secret or referenced or source.startswith("secret file")
        sensitive = sensitive or any(source == s.label for s in self.sources.values())
        if not referenced:
            return Value(typed, source, sensitive)
        return Value(typed, f"{source} ({raw})", sensitive, reference=raw)


def load_config(
    root: Path,
    environ: Mapping[str, str],
    overrides: Mapping[str, Any] | None = None,
    *,
    spec: ConfigSpec | None = None,
) -> Config:
    """Resolve every setting ``spec`` declares; raise ``ConfigError`` listing every problem."""
    spec = spec or ConfigSpec()
    problems: list[Problem] = []
    table = SettingsTable(spec.settings)
    command_line = {key: (value, "command line", False) for key, value in (overrides or {}).items()}
    environment = _environment(environ, table.aliases)
    default_yaml = _read_yaml(root / "config" / "default.yaml", "config/default.yaml", problems)

    # APP_ENV picks the environment file, so it is resolved from the other layers first.
    app_env = (
        (overrides or {}).get("app.env")
        or (environment["app.env"][0] if "app.env" in environment else None)
        or (default_yaml.get("app") or {}).get("env")
        or table["app.env"].default
    )
    if app_env not in ENVIRONMENTS:
        app_env = "development"  # the typed pass below reports the bad value with its source
    env_label = f"config/{app_env}.yaml"
    env_yaml = _read_yaml(root / "config" / f"{app_env}.yaml", env_label, problems)

    chain = _Chain(root, table)

    def yaml_layers() -> list[dict[str, Candidate]]:
        keep = chain.table.mapping_keys
        return [
            {k: (v, label, False) for k, v in _flatten(data, keep)}
            for data, label in ((env_yaml, env_label), (default_yaml, "config/default.yaml"))
        ]

    chain.layers = [command_line, environment, *yaml_layers()]
    values: dict[str, Value] = {}
    settled: set[str] = set()  # tried, whether or not it resolved: one problem per key

    def settle(key: str, found: list[Candidate]) -> None:
        settled.add(key)
        try:
            values[key] = chain.resolve(key, found)
        except (ValueError, ActionError) as exc:
            source = found[0][1] if found else "default"
            problems.append(Problem(f"{key}: {exc}", file=source, field=key))

    for key in BOOTSTRAP:
        settle(key, chain.candidates(key))

    # Settings found on disk (each module's config), now that modules.path is known.
    if spec.discover and "modules.path" in values:
        bootstrap = Config(root, values, table)
        for discover in spec.discover:
            chain.table = chain.table.extended(discover(bootstrap))
        command_line_layer, environment_layer = chain.layers[:2]
        chain.layers = [command_line_layer, environment_layer, *yaml_layers()]

    directories = [Path(d) for d in values.get("secrets.mounts", Value((), "default")).value]
    if "secrets.dir" in values:
        directory = Path(values["secrets.dir"].value)
        directories.append(directory if directory.is_absolute() else root / directory)
    secret_files = _secret_files(directories, [k for k in chain.table if k not in BOOTSTRAP])
    chain.layers.insert(1, secret_files)

    try:
        for source_spec in spec.sources:
            for key in source_spec.own_keys:
                settle(key, chain.candidates(key))
            _open_source(chain, source_spec, values, problems)
        for key in chain.table:
            if key not in settled:
                settle(key, chain.candidates(key))
    finally:
        for source in chain.sources.values():
            source.close()  # the loader's own session; the manager keeps its own

    for layer in chain.layers:
        problems.extend(
            _unknown(key, label, chain.table)
            for key, (_, label, _) in layer.items()
            if key not in chain.table
        )
    if problems:
        raise ConfigError(problems)
    config = Config(root, values, chain.table)
    if config.is_production:
        refusals = [problem for check in spec.checks for problem in check(config)]
        if refusals:
            raise ConfigError(refusals)
    return config


def _open_source(
    chain: _Chain, spec: SourceSpec, values: Mapping[str, Value], problems: list[Problem]
) -> None:
    """Open a document source whose switch is on; add its document as the level below the
    secret files."""
    if not values.get(spec.enabled_by, Value(None, "default")).value:
        chain.unopened[spec.scheme] = f"refers to {spec.name}, but {spec.enabled_by} is not set"
        return
    if problems:  # its own settings are broken: say so rather than fail to connect
        chain.unopened[spec.scheme] = f"{spec.name} is not configured correctly"
        return
    own = {key: values[key].value for key in spec.own_keys if key in values}
    source = spec.open(own, chain.root)
    chain.sources[spec.scheme] = source
    document = dict(_flatten(source.document(), chain.table.mapping_keys))
    layer: dict[str, Candidate] = {}
    for key, raw in document.items():
        if key in spec.own_keys or key in BOOTSTRAP:
            problems.append(
                Problem(f"{key} cannot be set in {spec.name} itself", file=source.label, field=key)
            )
        else:
            layer[key] = (raw, source.label, isinstance(raw, str))
    chain.layers.insert(2, layer)  # after the command line and the secret files
