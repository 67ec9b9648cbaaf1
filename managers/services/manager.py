"""ServicesManager: the upstream HTTP services modules declare, as ``ctx.services.<name>``.

A module declares its services in module.yaml ``services:``; operator config
``services.<name>.<key>`` overrides a declared key (``SB_SERVICES__SUPPLIER__BASE_URL``,
a secret file, Vault). ``services.allow_networks``, ``services.max_response_bytes`` and
``services.defaults`` are the manager's own settings. Seed ``external_api`` actions get a
one-URL service of their own through ``endpoint``. The clients and their protections are
in managers/service_client.py.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING, Any, ClassVar, cast

import jsonschema

from core.actions.declaration_schema import DURATION_VALUE
from core.actions.declarations import did_you_mean
from core.base.durations import parse_duration
from core.base.errors import Problem
from core.base.metrics import Instruments
from core.config.config import Config
from core.config.settings import Parser, Setting, duration, integer, mapping, strings, text
from core.contracts.facades import Secrets
from core.contracts.module import MODULE_NAME, ModuleCatalog, ModuleManifest
from core.contracts.services import RESERVED_NAMES, Service, ServiceDirectory
from core.manager import Health, Manager
from managers.modules.loading import discover, module_folders
from managers.services.rules import (
    AddressPolicy,
    BreakerState,
    HeaderValue,
    SecretHeader,
    ServiceSettings,
    parse_networks,
)

if TYPE_CHECKING:
    from core.manager import App
    from managers.services.client import ServiceClient

log = logging.getLogger("switchboard.services")
_OWNER = "manager services"

_TUNING: dict[str, Any] = {
    "timeout": DURATION_VALUE,
    "retries": {"type": "integer", "minimum": 0, "maximum": 10},
    "breaker": {
        "type": "object",
        "properties": {
            "failures": {"type": "integer", "minimum": 1, "maximum": 1000},
            "reset": DURATION_VALUE,
        },
        "additionalProperties": False,
    },
    "redirects": {"type": "integer", "minimum": 0, "maximum": 10},
}
SERVICE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["base_url"],
    "properties": {
        "base_url": {
            "type": "string",
            "pattern": r"^https?://[^/?#@\s]+(/[^?#\s]*)?$",
            "description": "http(s)://host[:port][/path], no query, fragment or user info",
        },
        "description": {"type": "string"},
        "headers": {
            "type": "object",
            "additionalProperties": {
                "anyOf": [
                    {"type": "string"},
                    {
                        "type": "object",
                        "required": ["secret"],
                        "properties": {
                            "secret": {"type": "string", "pattern": r"^[^#\s]+#[^#\s]+$"},
                            "prefix": {"type": "string"},
                        },
                        "additionalProperties": False,
                    },
                ]
            },
        },
        **_TUNING,
    },
    "additionalProperties": False,
}
DEFAULTS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": _TUNING,
    "additionalProperties": False,
}
BUILT_IN_DEFAULTS: Mapping[str, Any] = {
    "timeout": 10.0,
    "retries": 2,
    "breaker": {"failures": 5, "reset": 30.0},
    "redirects": 0,
}
# The keys of a service an operator may override, and how each is parsed.
OVERRIDABLE: Mapping[str, Parser] = {
    "base_url": text,
    "timeout": duration,
    "retries": integer,
    "headers": mapping,
    "breaker": mapping,
    "redirects": integer,
}
_SEED_URL = re.compile(r"^https?://[^/?#@\s]+(/[^#\s]*)?$")  # a query string may follow
_SERVICE_VALIDATOR = jsonschema.Draft202012Validator(SERVICE_SCHEMA)
_DEFAULTS_VALIDATOR = jsonschema.Draft202012Validator(DEFAULTS_SCHEMA)


def _schema_problems(
    validator: jsonschema.Draft202012Validator, data: Any, base: str
) -> list[tuple[str, str]]:
    """(field, message) for every violation, the field dotted from ``base``."""
    found = []
    for error in validator.iter_errors(data):
        path = ".".join([base, *(str(p) for p in error.path)])
        message = error.message
        if error.validator == "additionalProperties" and isinstance(error.instance, dict):
            allowed = sorted(error.schema.get("properties", {}))
            for key in sorted(set(error.instance) - set(allowed), key=str):
                found.append(
                    (
                        f"{path}.{key}",
                        f"unknown key {key!r}{did_you_mean(key, allowed)}; allowed: "
                        + ", ".join(allowed),
                    )
                )
            continue
        if error.validator == "pattern" and "description" in error.schema:
            message = f"{error.instance!r} is not {error.schema['description']}"
        found.append((path, message))
    return sorted(found)


class ModuleServices:
    """``ctx.services`` of one module: its declared services by name."""

    def __init__(self, module: str, services: Mapping[str, ServiceClient]) -> None:
        self._module = module
        self._services = dict(services)

    def __getattr__(self, name: str) -> ServiceClient:
        if name.startswith("_"):
            raise AttributeError(name)
        return self[name]

    def __getitem__(self, name: str) -> ServiceClient:
        try:
            return self._services[name]
        except KeyError:
            declared = ", ".join(sorted(self._services)) or "none"
            raise AttributeError(
                f"ctx.services.{name}: module {self._module!r} declares no such service "
                f"(it declares: {declared})"
            ) from None

    def __contains__(self, name: object) -> bool:
        return name in self._services

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._services))


class ServicesManager(Manager):
    """One pooled client per declared service (and per seed ``external_api`` URL)."""

    name = "services"
    requires = ("config",)
    required = False  # an open breaker degrades readiness, never fails it
    facade = "services"
    provides: ClassVar[tuple[type, ...]] = (ServiceDirectory,)
    settings: ClassVar[tuple[Setting, ...]] = (
        Setting(
            "services.allow_networks",
            strings,
            (),
            "Networks (CIDRs) services may reach although they are loopback, private or "
            "link-local; nothing else of those is ever reached",
            owner=_OWNER,
        ),
        Setting(
            "services.max_response_bytes",
            integer,
            5 * 1024 * 1024,
            "Largest answer read from an upstream (502 beyond it)",
            minimum=1,
            owner=_OWNER,
        ),
        Setting(
            "services.defaults",
            mapping,
            {},
            "timeout, retries, breaker {failures, reset} and redirects of every service "
            "that does not set its own (built in: 10s, 2, {5, 30s}, 0)",
            owner=_OWNER,
        ),
    )

    def __init__(self) -> None:
        self._app: App | None = None
        self._policy = AddressPolicy()
        self._max_bytes = 5 * 1024 * 1024
        self._defaults: dict[str, Any] = dict(BUILT_IN_DEFAULTS)
        self._by_module: dict[str, dict[str, ServiceClient]] = {}
        self._endpoints: dict[str, ServiceClient] = {}
        self._metrics: Instruments | None = None

    @classmethod
    def discover_settings(cls, bootstrap: Config) -> Sequence[Setting]:
        """``services.<name>.<key>`` for every service a module declares (None: as declared)."""
        found = discover(module_folders(bootstrap), bootstrap.root, [])
        settings: list[Setting] = []
        for manifest in found.values():
            for name in manifest.services:
                if not isinstance(name, str) or not MODULE_NAME.match(name):
                    continue  # reported by modules_loaded
                if name in RESERVED_NAMES:
                    continue
                settings.extend(
                    Setting(
                        f"services.{name}.{key}",
                        parse,
                        None,
                        f"{key} of service {name!r} (declared by module {manifest.name})",
                        secret=key == "headers",
                        owner=f"module {manifest.name}",
                    )
                    for key, parse in OVERRIDABLE.items()
                )
        return settings

    # --- lifecycle --------------------------------------------------------------------

    def start(self, app: App) -> None:
        self._app = app
        config = app.config
        networks, problems = parse_networks(config["services.allow_networks"])
        problems_found = [Problem(p, field="services.allow_networks") for p in problems]
        defaults = dict(config["services.defaults"])
        problems_found.extend(
            Problem(message, field=field)
            for field, message in _schema_problems(
                _DEFAULTS_VALIDATOR, defaults, "services.defaults"
            )
        )
        if problems_found:
            from core.base.errors import ConfigError

            raise ConfigError(problems_found)
        self._policy = AddressPolicy(networks)
        self._max_bytes = int(config["services.max_response_bytes"])
        self._defaults = {**BUILT_IN_DEFAULTS, **defaults}
        self._metrics = app.capability(Instruments)

    def stop(self) -> None:
        for client in self._clients():
            client.close()
        self._by_module.clear()
        self._endpoints.clear()

    def health(self) -> Health:
        states = {client.name: client.breaker.state for client in self._clients()}
        troubled = {name: state for name, state in states.items() if state != "closed"}
        return Health("degraded" if troubled else "ok", {"services": states})

    def _clients(self) -> list[ServiceClient]:
        return [
            *(c for services in self._by_module.values() for c in services.values()),
            *self._endpoints.values(),
        ]

    # --- what modules declare ---------------------------------------------------------

    def modules_loaded(self, modules: ModuleCatalog) -> Sequence[Problem]:
        problems: list[Problem] = []
        for loaded in modules:
            clients = {}
            for name, declared in loaded.manifest.services.items():
                client = self._declared(loaded.manifest, name, declared, problems)
                if client is not None:
                    clients[name] = client
            self._by_module[loaded.name] = clients
        return problems

    def _declared(
        self, manifest: ModuleManifest, name: Any, declared: Any, problems: list[Problem]
    ) -> ServiceClient | None:
        def problem(message: str, field: str) -> None:
            problems.append(Problem(message, file=manifest.file, module=manifest.name, field=field))

        if not isinstance(name, str) or not MODULE_NAME.match(name):
            problem(f"service name {name!r} must match {MODULE_NAME.pattern}", "services")
            return None
        if name in RESERVED_NAMES:
            problem(
                f"{name!r} is a setting of the services manager (services.{name}), not a "
                "name a service can have",
                f"services.{name}",
            )
            return None
        if not isinstance(declared, dict):
            problem("a service must be a mapping with base_url", f"services.{name}")
            return None
        merged = dict(declared)
        config = self._config()
        for key in OVERRIDABLE:
            value = config.get(f"services.{name}.{key}")
            if value is not None:
                merged[key] = value
        errors = _schema_problems(_SERVICE_VALIDATOR, merged, f"services.{name}")
        for field, message in errors:
            problem(message, field)
        if errors:
            return None
        settings = self._settings(name, merged)
        try:
            refusal = self._policy.literal_refusal(settings.base_url)
        except ValueError as exc:
            problem(f"base_url is not a usable URL: {exc}", f"services.{name}.base_url")
            return None
        if refusal is not None:
            problem(
                f"base_url {settings.base_url!r} is a {refusal} address; list its network in "
                "services.allow_networks to reach it",
                f"services.{name}.base_url",
            )
            return None
        for header, value in settings.headers.items():
            if not isinstance(value, SecretHeader):
                continue
            path = value.secret.partition("#")[0]
            if self._app is None or not self._app.has("vault"):
                problem(
                    "reading a secret needs the vault manager, which this app does not run",
                    f"services.{name}.headers.{header}",
                )
            elif ".." in path.split("/") or not any(fnmatchcase(path, g) for g in manifest.secrets):
                problem(
                    f"secret {path!r} is not under the module's secrets globs "
                    f"({', '.join(manifest.secrets) or 'none declared'})",
                    f"services.{name}.headers.{header}",
                )
        try:
            return self._client(settings, manifest.name)
        except Exception as exc:  # a URL the HTTP client cannot use
            problem(f"base_url is not a usable URL: {exc}", f"services.{name}.base_url")
            return None

    def _config(self) -> Config:
        if self._app is None:
            raise self.not_started()
        return self._app.config

    def _settings(self, name: str, declared: Mapping[str, Any]) -> ServiceSettings:
        def pick(key: str) -> Any:
            return declared.get(key, self._defaults[key])

        breaker = {
            **BUILT_IN_DEFAULTS["breaker"],
            **self._defaults["breaker"],
            **declared.get("breaker", {}),
        }
        headers: dict[str, HeaderValue] = {
            header: value
            if isinstance(value, str)
            else SecretHeader(value["secret"], value.get("prefix", ""))
            for header, value in (declared.get("headers") or {}).items()
        }
        return ServiceSettings(
            name=name,
            base_url=str(declared["base_url"]),
            timeout=parse_duration(pick("timeout")),
            retries=int(pick("retries")),
            headers=headers,
            failures=int(breaker["failures"]),
            reset=parse_duration(breaker["reset"]),
            redirects=int(pick("redirects")),
            max_response_bytes=self._max_bytes,
        )

    def _secret_reader(self, module: str) -> Callable[[str, str], Any] | None:
        """Reads through the module's ``ctx.secrets`` at call time (the facade is looked up
        then: the vault manager reads the modules' globs in this same phase)."""
        app = self._app
        if app is None or not app.has("vault"):
            return None

        def read(path: str, field: str) -> Any:
            return cast(Secrets, app.scope(module).facade("secrets")).get(path, field)

        return read

    def _client(self, settings: ServiceSettings, module: str | None) -> ServiceClient:
        # httpx is imported here, by the first service: an app that declares none never pays
        # for it at boot.
        from managers.services.client import ServiceClient

        metrics = self._metrics

        def on_breaker(service: str, state: BreakerState) -> None:
            log.warning("service %s: circuit breaker %s", service, state.replace("_", "-"))
            if metrics is not None:
                metrics.breaker_changed(service, state)

        return ServiceClient(
            settings,
            self._policy,
            read_secret=None if module is None else self._secret_reader(module),
            report=None if metrics is None else metrics.upstream_call,
            on_breaker=on_breaker,
        )

    # --- ServiceDirectory -------------------------------------------------------------

    def service(self, module: str, name: str) -> Service | None:
        return self._by_module.get(module, {}).get(name)

    def declared(self, module: str) -> list[str]:
        return sorted(self._by_module.get(module, {}))

    def endpoint(
        self, action: str, url: str, *, timeout: float | None, retries: int | None
    ) -> Service:
        if not _SEED_URL.match(url):
            raise ValueError(f"url {url!r} must be an http:// or https:// URL without user info")
        try:
            refusal = self._policy.literal_refusal(url)
        except ValueError as exc:
            raise ValueError(f"url {url!r} is not a usable URL: {exc}") from None
        if refusal is not None:
            raise ValueError(
                f"url {url!r} is a {refusal} address; list its network in "
                "services.allow_networks to reach it"
            )
        existing = self._endpoints.get(action)
        if existing is not None:
            existing.close()
        settings = ServiceSettings(
            name=action,
            base_url=url,
            timeout=parse_duration(self._defaults["timeout"]) if timeout is None else timeout,
            retries=int(self._defaults["retries"]) if retries is None else retries,
            headers={},
            failures=int(self._defaults["breaker"].get("failures", 5)),
            reset=parse_duration(self._defaults["breaker"].get("reset", 30.0)),
            redirects=int(self._defaults["redirects"]),
            max_response_bytes=self._max_bytes,
        )
        try:
            client = self._client(settings, None)
        except Exception as exc:  # a URL the HTTP client cannot use
            raise ValueError(f"url {url!r} is not usable: {exc}") from None
        self._endpoints[action] = client
        return client

    def facade_for(self, module: str) -> ModuleServices:
        return ModuleServices(module, self._by_module.get(module, {}))
