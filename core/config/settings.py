"""Typed settings: the ``Setting`` declaration, its parsers, and the kernel's own settings.

Every setting is declared by the part that owns it: the kernel's are below, each manager
declares its own on its class (``Manager.settings``), and a module's ``module.yaml``
``config:`` keys become ``<module>.<key>``. ``SettingsTable`` gathers them; a key that is
in no table is a boot error wherever it appears (YAML file, ``SB_*`` variable, Vault), so a
typo never silently falls back to a default.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from core.base.durations import parse_duration
from core.base.errors import ConfigError, Problem

Parser = Callable[[Any, bool], Any]  # (value, from_text) -> typed value; raises ValueError

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def text(value: Any, from_text: bool) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {type(value).__name__}")
    return value


def integer(value: Any, from_text: bool) -> int:
    if from_text and isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            raise ValueError(f"expected an integer, got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"expected an integer, got {type(value).__name__}")
    return value


def number(value: Any, from_text: bool) -> float:
    if from_text and isinstance(value, str):
        try:
            parsed = float(value.strip())
        except ValueError:
            raise ValueError(f"expected a number, got {value!r}") from None
    elif isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"expected a number, got {type(value).__name__}")
    else:
        parsed = float(value)
    if not math.isfinite(parsed):
        raise ValueError("expected a finite number")
    return parsed


def boolean(value: Any, from_text: bool) -> bool:
    if from_text and isinstance(value, str):
        lowered = value.strip().lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
        raise ValueError(f"expected true or false, got {value!r}")
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {type(value).__name__}")
    return value


def paths(value: Any, from_text: bool) -> tuple[str, ...]:
    if isinstance(value, str):
        return tuple(p for p in value.split(os.pathsep) if p)
    if isinstance(value, list) and all(isinstance(p, str) for p in value):
        return tuple(value)
    raise ValueError("expected a list of paths or an os.pathsep-separated string")


def mapping(value: Any, from_text: bool) -> Mapping[str, Any]:
    if from_text and isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise ValueError("expected a JSON object") from None
    if not isinstance(value, dict):
        raise ValueError(f"expected a mapping, got {type(value).__name__}")
    return value


def strings(value: Any, from_text: bool) -> tuple[str, ...]:
    if isinstance(value, str):
        return tuple(p.strip() for p in value.split(",") if p.strip())
    if isinstance(value, list) and all(isinstance(p, str) for p in value):
        return tuple(value)
    raise ValueError("expected a list of strings or a comma-separated string")


def duration(value: Any, from_text: bool) -> float:
    return parse_duration(value)


def positive_duration(value: Any, from_text: bool) -> float:
    """A duration above zero (a timeout of 0 would leave its sweeper spinning)."""
    seconds = parse_duration(value)
    if seconds <= 0:
        raise ValueError(f"must be more than 0s, got {value!r}")
    return seconds


def anything(value: Any, from_text: bool) -> Any:
    return value


@dataclass(frozen=True)
class Setting:
    """One setting: its parser, default, constraints, the env alias it may have, and who
    declared it (``kernel``, ``manager jwt``, ``module auth``) for error messages."""

    key: str
    parse: Parser
    default: Any
    description: str
    alias: str | None = None
    choices: tuple[Any, ...] | None = None
    minimum: int | None = None
    maximum: int | None = None
    secret: bool = False
    owner: str = "kernel"

    @property
    def env_name(self) -> str:
        return "SB_" + self.key.replace(".", "__").upper()

    @property
    def is_mapping(self) -> bool:
        """A mapping is kept whole, never flattened into dotted keys."""
        return self.parse is mapping

    def coerce(self, value: Any, *, from_text: bool) -> Any:
        """Parse ``value`` and check its constraints; raise ``ValueError`` with the reason."""
        if value is None and self.default is None:
            return None
        typed = self.parse(value, from_text)
        if self.choices is not None and typed not in self.choices:
            allowed = ", ".join(map(str, self.choices))
            raise ValueError(f"expected one of {allowed}, got {typed!r}")
        if self.minimum is not None and typed < self.minimum:
            raise ValueError(f"must be at least {self.minimum}, got {typed}")
        if self.maximum is not None and typed > self.maximum:
            raise ValueError(f"must be at most {self.maximum}, got {typed}")
        return typed


class SettingsTable(Mapping[str, Setting]):
    """Every setting one app knows, by key; a key declared twice is a boot error naming both
    owners."""

    def __init__(self, settings: Iterable[Setting]) -> None:
        self._by_key: dict[str, Setting] = {}
        problems = []
        for setting in settings:
            first = self._by_key.get(setting.key)
            if first is not None:
                problems.append(
                    Problem(
                        f"setting {setting.key!r} is declared by {first.owner} and by "
                        f"{setting.owner}",
                        field=setting.key,
                    )
                )
                continue
            self._by_key[setting.key] = setting
        if problems:
            raise ConfigError(problems)
        self.aliases: Mapping[str, str] = {s.alias: s.key for s in self._by_key.values() if s.alias}
        self.mapping_keys = frozenset(k for k, s in self._by_key.items() if s.is_mapping)

    def __getitem__(self, key: str) -> Setting:
        return self._by_key[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._by_key)

    def __len__(self) -> int:
        return len(self._by_key)

    def extended(self, more: Iterable[Setting]) -> SettingsTable:
        return SettingsTable([*self._by_key.values(), *more])


ENVIRONMENTS = ("development", "test", "production")

KERNEL_SETTINGS: tuple[Setting, ...] = (
    Setting(
        "app.env",
        text,
        "development",
        "Environment: development, test or production; selects config/<env>.yaml",
        alias="APP_ENV",
        choices=ENVIRONMENTS,
    ),
    Setting("app.name", text, "switchboard", "Service name reported by system.info and logs"),
    Setting("app.debug", boolean, False, "Debug mode (never in production)"),
    Setting("http.host", text, "127.0.0.1", "Address `serve` binds"),
    Setting(
        "http.port", integer, 8000, "Port `serve` binds", alias="PORT", minimum=0, maximum=65535
    ),
    Setting("http.workers", integer, 1, "Worker processes of `serve`", minimum=1, maximum=64),
    Setting(
        "http.threads",
        integer,
        8,
        "Threads per worker process that run calls (bodies are read before one is taken)",
        minimum=1,
        maximum=256,
    ),
    Setting(
        "http.read_timeout",
        positive_duration,
        10.0,
        "How long a request body may take to arrive (408 after)",
    ),
    Setting(
        "http.max_body_bytes",
        integer,
        1024 * 1024,
        "Largest accepted request body (413 above)",
        minimum=0,
    ),
    Setting(
        "http.max_url_bytes",
        integer,
        2048,
        "Longest accepted request target, path and query (414 above)",
        minimum=64,
    ),
    Setting(
        "http.max_header_bytes",
        integer,
        16384,
        "Largest accepted total of header names and values (431 above)",
        minimum=1024,
    ),
    Setting(
        "http.max_headers",
        integer,
        100,
        "Most header fields a request may carry (431 above)",
        minimum=8,
    ),
    Setting(
        "http.header_timeout",
        positive_duration,
        10.0,
        "How long a request's line and headers may take to arrive, from their first byte "
        "(408 after)",
    ),
    Setting(
        "http.max_connections",
        integer,
        1000,
        "Open connections one worker holds (WebSockets included); beyond it a fixed 503",
        minimum=1,
    ),
    Setting(
        "http.max_json_depth",
        integer,
        64,
        "Deepest nesting of a JSON body (400 malformed-request deeper)",
        minimum=1,
        maximum=512,
    ),
    Setting(
        "http.cors_origins",
        strings,
        (),
        "Origins allowed by CORS (a wildcard is refused in production)",
    ),
    Setting(
        "http.trusted_proxies",
        strings,
        (),
        "Proxies (IPs or CIDRs) whose "
        "X-Forwarded-For is believed; the client is the right-most address not in this list",
    ),
    Setting(
        "logging.level",
        text,
        "INFO",
        "Log level",
        choices=("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"),
    ),
    Setting(
        "logging.format",
        text,
        "json",
        "Log format: json (one object a line) or text",
        choices=("json", "text"),
    ),
    Setting(
        "logging.file",
        text,
        None,
        "Write logs to files instead of stderr: <name>.<pid>.<ext> beside this path, one per "
        "process, rotated at logging.max_bytes",
    ),
    Setting(
        "logging.max_bytes",
        integer,
        10 * 1024 * 1024,
        "Size at which a log file is rotated",
        minimum=1024,
    ),
    Setting("logging.backups", integer, 5, "Rotated log files kept per process", minimum=0),
    Setting(
        "modules.path",
        paths,
        (),
        "Extra module folders, os.pathsep-separated, loaded after modules/",
        alias="MODULES_PATH",
    ),
    Setting(
        "modules.strict",
        boolean,
        True,
        "A module whose initialize() raises fails the boot; "
        "false: it is reported failed and its actions answer 503",
        alias="MODULES_STRICT",
    ),
    Setting(
        "actions.timeout_workers",
        integer,
        16,
        "Threads that run actions declaring `timeout:`",
        minimum=1,
    ),
    Setting(
        "idempotency.ttl",
        duration,
        86400.0,
        "How long a stored result is replayed for an Idempotency-Key",
    ),
    Setting(
        "idempotency.claim_ttl",
        duration,
        300.0,
        "How long a running call holds its Idempotency-Key: the claim of a worker that died "
        "frees itself after this (make it longer than your slowest idempotent action)",
    ),
    Setting(
        "health.allow",
        strings,
        ("127.0.0.1/32", "::1/128"),
        "Clients (IPs or CIDRs) shown the checks of /health/ready in production; "
        "admins always are, others get only the status",
    ),
    Setting("secrets.dir", text, "secrets", "Directory of local secret files", alias="SECRETS_DIR"),
    Setting(
        "secrets.mounts",
        strings,
        ("/run/secrets", "/var/run/secrets/switchboard"),
        "Secret file directories read before secrets.dir (Docker, Kubernetes)",
    ),
    Setting("shutdown.grace", duration, 10.0, "Seconds `serve` waits for in-flight requests"),
)
