"""The configuration chain and the ``config`` manager.

Resolution, highest first:

    command-line overrides (``serve --host --port --workers``)
    secret files ``<dir>/<key>`` (``secrets.mounts``: /run/secrets and a Kubernetes mount,
        then ``secrets.dir``)
    Vault: one KV v2 document at ``vault.config_path`` (``vault.*`` and ``secrets.*`` skip it)
    environment ``SB_<KEY>`` (``.`` -> ``__``, upper-cased), then the unprefixed aliases
    ``config/<APP_ENV>.yaml``
    ``config/default.yaml``
    built-in defaults (``core.settings``)

A value may be a reference, ``vault://<path>#<key>`` or ``file://<path>``, resolved at
boot. Every value is typed and checked at load; an unknown key or a wrong type is a
``ConfigError`` naming the file (or variable) and the key. In production, unsafe
combinations are refused, each naming the setting and the fix.
"""

from __future__ import annotations

import difflib
import logging
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from core.errors import ActionError, ConfigError, Problem
from core.manager import Manager
from core.settings import ALIASES, ENVIRONMENTS, MAPPING_KEYS, SETTINGS
from core.yamlfile import YamlFileError, load_yaml_file

if TYPE_CHECKING:
    from core.app_manager import AppManager

REDACTED = "***"
log = logging.getLogger("switchboard.config")


@dataclass(frozen=True)
class Value:
    """A resolved setting, where it came from, and whether it must never be shown."""

    value: Any
    source: str
    sensitive: bool = False
    reference: str | None = None  # the vault:// or file:// it came from, re-read on refresh


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

    def refresh(self, reader: SecretReader | None) -> list[str]:
        """Re-read every ``vault://`` and ``file://`` reference; return the keys that changed.

        A reference that fails now keeps its last value (logged), so a Vault outage never
        takes a setting away. Values that managers copied at boot need a restart.
        """
        resolver = _Resolver(self.root, lambda: reader)
        changed = []
        for key, entry in list(self._values.items()):
            if entry.reference is None:
                continue
            try:
                raw, _ = resolver(entry.reference, key)
                value = SETTINGS[key].coerce(raw, from_text=True)
            except (ValueError, KeyError, OSError, ActionError) as exc:
                log.warning("could not refresh %s from its reference: %s", key, type(exc).__name__)
                continue
            if value != entry.value:
                self._values[key] = Value(value, entry.source, entry.sensitive, entry.reference)
                changed.append(key)
        return changed

    def secret_values(self) -> frozenset[str]:
        """Every sensitive value as text, for the log redaction filter."""
        return frozenset(
            str(entry.value)
            for entry in self._values.values()
            if entry.sensitive and entry.value and len(str(entry.value)) >= 4
        )

    def describe(self) -> Iterator[tuple[str, Any, str]]:
        """(key, value, source) for every setting, secrets redacted."""
        for key in sorted(self._values):
            entry = self._values[key]
            shown = REDACTED if entry.sensitive and entry.value else entry.value
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


class SecretReader(Protocol):
    """What the chain needs from Vault: a KV v2 document by path (KeyError if missing)."""

    def read(self, path: str) -> Mapping[str, Any]: ...


VaultConnect = Callable[[Mapping[str, Any], Path], SecretReader]

# Settings that locate the secret levels themselves, so they cannot come from them.
_BOOTSTRAP = frozenset({"secrets.dir", "secrets.mounts", "app.env"})


def _secret_files(directories: Sequence[Path], root: Path) -> dict[str, tuple[str, str]]:
    """``<dir>/<key>`` for every known key; the first directory that has one wins."""
    found: dict[str, tuple[str, str]] = {}
    for directory in directories:
        if not directory.is_dir():
            continue
        for key in SETTINGS:
            if key in found or key in _BOOTSTRAP:
                continue
            path = directory / key
            if path.is_file():
                try:
                    text = path.read_text(encoding="utf-8").rstrip("\n")
                except (OSError, UnicodeDecodeError):
                    continue
                found[key] = (text, f"secret file {path}")
    return found


def _flatten_document(data: Mapping[str, Any]) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for name, value in data.items():
        if isinstance(value, dict) and name not in MAPPING_KEYS:
            flat.update({f"{name}.{k}": v for k, v in _flatten_document(value).items()})
        else:
            flat[name] = value
    return flat


class _Resolver:
    """Resolves ``vault://`` and ``file://`` references (Vault connected on first need)."""

    def __init__(self, root: Path, vault: Callable[[], SecretReader | None]) -> None:
        self.root = root
        self._vault = vault

    def __call__(self, raw: Any, key: str) -> tuple[Any, bool]:
        """(value, resolved) for one raw value; ``ValueError`` says what is wrong."""
        if not isinstance(raw, str):
            return raw, False
        if raw.startswith("file://"):
            path = Path(raw[len("file://") :])
            path = path if path.is_absolute() else self.root / path
            try:
                return path.read_text(encoding="utf-8").rstrip("\n"), True
            except OSError as exc:
                raise ValueError(f"cannot read {raw}: {exc.strerror}") from None
        if raw.startswith("vault://"):
            target, _, field = raw[len("vault://") :].partition("#")
            if not target or not field:
                raise ValueError("write a Vault reference as vault://<path>#<key>")
            reader = self._vault()
            if reader is None:
                raise ValueError("refers to Vault, but vault.addr is not set")
            try:
                document = reader.read(target)
            except KeyError:
                raise ValueError(f"Vault has no secret at {target}") from None
            if field not in document:
                raise ValueError(f"Vault secret {target} has no key {field!r}")
            return document[field], True
        return raw, False


def load_config(
    root: Path,
    environ: Mapping[str, str],
    overrides: Mapping[str, Any] | None = None,
    *,
    vault_connect: VaultConnect | None = None,
) -> Config:
    """Resolve every setting; raise ``ConfigError`` listing every problem found."""
    problems: list[Problem] = []
    overrides = overrides or {}
    env_layer = _env_layer(environ, problems)
    default_layer = _read_layer(root / "config" / "default.yaml", "config/default.yaml", problems)

    # APP_ENV picks the environment file, so it is resolved from the other layers first.
    app_env = (
        overrides.get("app.env")
        or (env_layer["app.env"][0] if "app.env" in env_layer else default_layer.get("app.env"))
        or SETTINGS["app.env"].default
    )
    if app_env not in ENVIRONMENTS:
        app_env = "development"  # the typed pass below reports the bad value with its source
    env_label = f"config/{app_env}.yaml"
    env_file_layer = _read_layer(root / "config" / f"{app_env}.yaml", env_label, problems)

    def candidates(
        key: str, secret_layer: Mapping[str, tuple[str, str]], vault_layer: Mapping[str, Any] | None
    ) -> list[tuple[Any, str, bool]]:
        found: list[tuple[Any, str, bool]] = []  # (raw, source, from_text), best first
        if key in overrides:
            found.append((overrides[key], "command line", False))
        if key in secret_layer:
            text, source = secret_layer[key]
            found.append((text, source, True))
        if vault_layer is not None and key in vault_layer:
            raw = vault_layer[key]
            found.append((raw, vault_label, isinstance(raw, str)))
        if key in env_layer:
            raw, source = env_layer[key]
            found.append((raw, source, True))
        if key in env_file_layer:
            found.append((env_file_layer[key], env_label, False))
        if key in default_layer:
            found.append((default_layer[key], "config/default.yaml", False))
        return found

    def resolve(key: str, found: list[tuple[Any, str, bool]], refs: _Resolver | None) -> Value:
        setting = SETTINGS[key]
        if not found:
            return Value(setting.default, "default", setting.secret)
        raw, source, from_text = found[0]
        referenced = False
        if refs is not None:
            raw, referenced = refs(raw, key)
            from_text = from_text or referenced
        value = setting.coerce(raw, from_text=from_text)
        sensitive = setting.secret or referenced or source.startswith(("secret file", "vault"))
        if not referenced:
            return Value(value, source, sensitive)
        return Value(value, f"{source} ({found[0][0]})", sensitive, reference=found[0][0])

    # Level 0: what locates the secret levels (never from them).
    bootstrap: dict[str, Value] = {}
    for key in ("secrets.dir", "secrets.mounts"):
        try:
            bootstrap[key] = resolve(key, candidates(key, {}, None), None)
        except ValueError as exc:
            problems.append(Problem(f"{key}: {exc}", field=key))
    directories = (
        [Path(d) for d in bootstrap["secrets.mounts"].value]
        if ("secrets.mounts" in bootstrap)
        else []
    )
    if "secrets.dir" in bootstrap:
        directory = Path(bootstrap["secrets.dir"].value)
        directories.append(directory if directory.is_absolute() else root / directory)
    secret_layer = _secret_files(directories, root)

    # Vault's own settings come from every level but Vault.
    vault_settings: dict[str, Any] = {}
    vault_values: dict[str, Value] = {}
    plain_refs = _Resolver(root, lambda: None)
    for key in SETTINGS:
        if key.startswith("vault."):
            try:
                vault_values[key] = resolve(key, candidates(key, secret_layer, None), plain_refs)
                vault_settings[key] = vault_values[key].value
            except ValueError as exc:
                problems.append(Problem(f"{key}: {exc}", field=key))
    reader: SecretReader | None = None
    vault_label = f"vault {vault_settings.get('vault.config_path')}"

    def connect() -> SecretReader | None:
        nonlocal reader
        if reader is None and vault_settings.get("vault.addr") and vault_connect is not None:
            reader = vault_connect(vault_settings, root)
        return reader

    vault_layer: dict[str, Any] | None = None
    if vault_settings.get("vault.addr") and not problems:
        if vault_connect is None:
            problems.append(
                Problem(
                    "vault.addr is set, but this program cannot reach Vault", field="vault.addr"
                )
            )
        else:
            try:
                connected = connect()
                document = connected.read(vault_settings["vault.config_path"]) if connected else {}
            except KeyError:
                document = {}  # no config document: the other levels decide
            vault_layer = _flatten_document(document)
            for key in vault_layer:
                if key not in SETTINGS:
                    problems.append(_unknown(key, vault_label))
                elif key.startswith("vault.") or key in _BOOTSTRAP:
                    problems.append(
                        Problem(f"{key} cannot be set in Vault itself", file=vault_label, field=key)
                    )

    refs = _Resolver(root, connect)
    values: dict[str, Value] = {**bootstrap, **vault_values}
    try:
        for key in SETTINGS:
            if key in values:
                continue
            found = candidates(key, secret_layer, vault_layer)
            try:
                values[key] = resolve(key, found, refs)
            except ValueError as exc:
                source = found[0][1] if found else "default"
                problems.append(Problem(f"{key}: {exc}", file=source, field=key))
    finally:
        close = getattr(reader, "close", None)  # the loader's own Vault session ends here
        if callable(close):
            close()

    for label, layer in (("config/default.yaml", default_layer), (env_label, env_file_layer)):
        problems.extend(_unknown(key, label) for key in layer if key not in SETTINGS)
    if problems:
        raise ConfigError(problems)
    config = Config(root, values)
    if config.is_production:
        refusals = production_problems(config)
        if refusals:
            raise ConfigError(refusals)
    return config


def production_problems(config: Config) -> list[Problem]:
    """What production refuses to start with, each naming the setting and the fix."""
    problems = []
    if config["jwt.algorithm"] == "HS256":
        problems.append(
            Problem(
                "HS256 shares one secret between signer and verifiers; set "
                "jwt.algorithm to EdDSA or RS256 with jwt.private_key",
                field="jwt.algorithm",
            )
        )
    elif not config["jwt.private_key"]:
        problems.append(
            Problem(
                "production needs its own signing key: set jwt.private_key "
                "(a PEM; a secret file or a vault:// reference keeps it out of "
                "the environment)",
                field="jwt.private_key",
            )
        )
    if not config["api_keys.pepper"]:
        problems.append(
            Problem(
                "set api_keys.pepper (32 random bytes or more, from a secret file or Vault)",
                field="api_keys.pepper",
            )
        )
    if str(config["redis.url"]).startswith("memory://") and config["http.workers"] > 1:
        problems.append(
            Problem(
                "memory:// keeps limits, revocations and idempotency records "
                "inside one process: set REDIS_URL to a Redis server, or "
                "http.workers to 1",
                field="redis.url",
            )
        )
    if config["app.debug"]:
        problems.append(
            Problem("debug mode exposes internals: set app.debug to false", field="app.debug")
        )
    if "*" in config["http.cors_origins"]:
        problems.append(
            Problem(
                "a wildcard CORS origin lets any site call the API with the "
                "user's credentials: list the allowed origins in "
                "http.cors_origins",
                field="http.cors_origins",
            )
        )
    return problems


class ConfigManager(Manager):
    """Exposes the loaded ``Config`` as the ``config`` manager (``ctx.config``) and, when
    settings come from references, re-reads them every ``vault.cache_ttl``."""

    name = "config"

    def __init__(self, config: Config, *, interval: float | None = None) -> None:
        self.config = config
        self._interval = interval
        self._app: AppManager | None = None
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, app: AppManager) -> None:
        self._app = app
        if not any(v.reference for v in self.config._values.values()):
            return
        interval = self._interval or float(self.config["vault.cache_ttl"])
        self._thread = threading.Thread(
            target=self._loop, args=(interval,), name="config-refresh", daemon=True
        )
        self._thread.start()

    def refresh(self) -> list[str]:
        """One refresh, through the vault manager's (cached) client when it runs."""
        reader = None
        if self._app is not None and self._app.has("vault"):
            reader = getattr(self._app.get("vault"), "client", None)
        changed = self.config.refresh(reader)
        if changed:
            log.info("settings refreshed from their references: %s", ", ".join(changed))
        return changed

    def _loop(self, interval: float) -> None:
        while not self._stopping.wait(interval):
            self.refresh()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
