"""The typed table of every setting Switchboard knows.

A key that is not in this table is a boot error wherever it appears (YAML file or
``SB_*`` environment variable), so a typo never silently falls back to a default.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from core.durations import parse_duration

Parser = Callable[[Any, bool], Any]  # (value, from_text) -> typed value; raises ValueError

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _str(value: Any, from_text: bool) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {type(value).__name__}")
    return value


def _int(value: Any, from_text: bool) -> int:
    if from_text and isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            raise ValueError(f"expected an integer, got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"expected an integer, got {type(value).__name__}")
    return value


def _bool(value: Any, from_text: bool) -> bool:
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


def _path_list(value: Any, from_text: bool) -> tuple[str, ...]:
    if isinstance(value, str):
        return tuple(p for p in value.split(os.pathsep) if p)
    if isinstance(value, list) and all(isinstance(p, str) for p in value):
        return tuple(value)
    raise ValueError("expected a list of paths or an os.pathsep-separated string")


def _mapping(value: Any, from_text: bool) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise ValueError(f"expected a mapping, got {type(value).__name__}")
    return value


def _str_list(value: Any, from_text: bool) -> tuple[str, ...]:
    if isinstance(value, str):
        return tuple(p.strip() for p in value.split(",") if p.strip())
    if isinstance(value, list) and all(isinstance(p, str) for p in value):
        return tuple(value)
    raise ValueError("expected a list of strings or a comma-separated string")


def _seconds(value: Any, from_text: bool) -> float:
    return parse_duration(value)


@dataclass(frozen=True)
class Setting:
    """One setting: its parser, default, constraints and the env alias it may have."""

    key: str
    parse: Parser
    default: Any
    description: str
    alias: str | None = None
    choices: tuple[Any, ...] | None = None
    minimum: int | None = None
    maximum: int | None = None
    secret: bool = False

    @property
    def env_name(self) -> str:
        return "SB_" + self.key.replace(".", "__").upper()

    @property
    def is_mapping(self) -> bool:
        return self.parse is _mapping

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


ENVIRONMENTS = ("development", "test", "production")

_TABLE = (
    Setting(
        "app.env",
        _str,
        "development",
        "Environment: development, test or production; selects config/<env>.yaml",
        alias="APP_ENV",
        choices=ENVIRONMENTS,
    ),
    Setting("app.name", _str, "switchboard", "Service name reported by system.info and logs"),
    Setting("app.debug", _bool, False, "Debug mode (never in production)"),
    Setting("http.host", _str, "127.0.0.1", "Address `serve` binds"),
    Setting("http.port", _int, 8000, "Port `serve` binds", alias="PORT", minimum=0, maximum=65535),
    Setting("http.workers", _int, 1, "Worker processes of `serve`", minimum=1, maximum=64),
    Setting("http.threads", _int, 8, "Threads per worker process", minimum=1, maximum=256),
    Setting(
        "http.max_body_bytes",
        _int,
        1024 * 1024,
        "Largest accepted request body (413 above)",
        minimum=0,
    ),
    Setting(
        "logging.level",
        _str,
        "INFO",
        "Log level",
        choices=("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"),
    ),
    Setting(
        "logging.format",
        _str,
        "json",
        "Log format: json (one object a line) or text",
        choices=("json", "text"),
    ),
    Setting(
        "modules.path",
        _path_list,
        (),
        "Extra module folders, os.pathsep-separated, loaded after modules/",
        alias="MODULES_PATH",
    ),
    Setting(
        "modules.strict",
        _bool,
        True,
        "A module whose initialize() raises fails the boot; "
        "false: it is reported failed and its actions answer 503",
        alias="MODULES_STRICT",
    ),
    Setting(
        "modules.settings",
        _mapping,
        {},
        "Per-module overrides of module.yaml `config:` (YAML only): {module: {key: value}}",
    ),
    Setting(
        "actions.timeout_workers",
        _int,
        16,
        "Threads that run actions declaring `timeout:`",
        minimum=1,
    ),
    Setting(
        "database.url",
        _str,
        "sqlite:///var/switchboard.db",
        "sqlite:///relative/path, sqlite:////absolute/path, postgresql://… or mongodb://…",
        alias="DATABASE_URL",
        secret=True,
    ),
    Setting(
        "database.read_url",
        _str,
        None,
        "Optional URL of a read-only role for reads outside transactions",
        alias="DATABASE_READ_URL",
        secret=True,
    ),
    Setting(
        "database.pool_size",
        _int,
        10,
        "Connections per worker process (PostgreSQL, SQLite)",
        minimum=1,
        maximum=500,
    ),
    Setting(
        "database.pool_timeout",
        _seconds,
        5.0,
        "How long a call waits for a free connection before answering 503",
    ),
    Setting(
        "database.statement_timeout",
        _seconds,
        30.0,
        "PostgreSQL statement_timeout; SQLite busy timeout",
    ),
    Setting(
        "database.connect_retries",
        _int,
        3,
        "Retries of a transient connection error (with backoff)",
        minimum=0,
        maximum=10,
    ),
    Setting(
        "redis.url",
        _str,
        "memory://",
        "memory:// (in-process, one worker only), redis://… or rediss://…",
        alias="REDIS_URL",
        secret=True,
    ),
    Setting("redis.prefix", _str, "sb:", "Prefix of every key and channel Switchboard uses"),
    Setting("redis.pool_size", _int, 20, "Redis connections per worker process", minimum=1),
    Setting("redis.socket_timeout", _seconds, 2.0, "Redis socket connect/read timeout"),
    Setting(
        "state.local_ttl",
        _seconds,
        1.0,
        "How long a worker trusts its in-process copy of "
        "a state when an invalidation message is missed",
    ),
    Setting(
        "idempotency.ttl",
        _seconds,
        86400.0,
        "How long a stored result is replayed for an Idempotency-Key",
    ),
    Setting("vault.addr", _str, None, "Vault address; unset disables Vault", alias="VAULT_ADDR"),
    Setting("vault.config_path", _str, "switchboard/config", "KV v2 path of the config document"),
    Setting("vault.mount", _str, "secret", "Mount point of the KV v2 secrets engine"),
    Setting(
        "vault.auth_method",
        _str,
        "token",
        "token, approle or kubernetes",
        choices=("token", "approle", "kubernetes"),
    ),
    Setting(
        "vault.token",
        _str,
        None,
        "Token for vault.auth_method=token",
        alias="VAULT_TOKEN",
        secret=True,
    ),
    Setting("vault.role_id", _str, None, "AppRole role_id"),
    Setting("vault.secret_id", _str, None, "AppRole secret_id", secret=True),
    Setting("vault.kubernetes_role", _str, None, "Vault role for Kubernetes auth"),
    Setting(
        "vault.kubernetes_jwt_path",
        _str,
        "/var/run/secrets/kubernetes.io/serviceaccount/token",
        "Service account token file for Kubernetes auth",
    ),
    Setting("vault.kubernetes_mount", _str, "kubernetes", "Mount of the Kubernetes auth method"),
    Setting("vault.approle_mount", _str, "approle", "Mount of the AppRole auth method"),
    Setting("vault.timeout", _seconds, 2.0, "Timeout of one Vault request"),
    Setting("vault.cache_ttl", _seconds, 60.0, "How long a secret read from Vault is reused"),
    Setting(
        "vault.secrets_path",
        _str,
        "switchboard/modules",
        "KV v2 path under which ctx.secrets.get(name) reads",
    ),
    Setting("secrets.dir", _str, "secrets", "Directory of local secret files", alias="SECRETS_DIR"),
    Setting(
        "secrets.mounts",
        _str_list,
        ("/run/secrets", "/var/run/secrets/switchboard"),
        "Secret file directories read before secrets.dir (Docker, Kubernetes)",
    ),
    Setting(
        "http.cors_origins",
        _str_list,
        (),
        "Origins allowed by CORS (a wildcard is refused in production)",
    ),
    Setting("shutdown.grace", _seconds, 10.0, "Seconds `serve` waits for in-flight requests"),
    Setting(
        "jwt.algorithm",
        _str,
        "EdDSA",
        "Signing algorithm: EdDSA or RS256 (HS256 outside production only)",
        choices=("EdDSA", "RS256", "HS256"),
    ),
    Setting(
        "jwt.private_key",
        _str,
        None,
        "PEM private key that signs tokens (EdDSA/RS256); "
        "generated into var/dev-secrets/ outside production",
        secret=True,
    ),
    Setting(
        "jwt.secret", _str, None, "HS256 shared secret (development and tests only)", secret=True
    ),
    Setting("jwt.kid", _str, None, "Key id of the signing key (default: its RFC 7638 thumbprint)"),
    Setting(
        "jwt.verification_keys",
        _mapping,
        {},
        "Extra public keys still accepted, {kid: PEM} (YAML only), for key rotation",
    ),
    Setting("jwt.issuer", _str, "switchboard", "iss claim issued and required"),
    Setting("jwt.audience", _str, "switchboard-api", "aud claim issued and required"),
    Setting("jwt.access_ttl", _seconds, 900.0, "Lifetime of access tokens"),
    Setting("jwt.refresh_ttl", _seconds, 30 * 86400.0, "Lifetime of refresh tokens"),
    Setting("jwt.leeway", _seconds, 30.0, "Clock skew tolerated on exp/nbf/iat"),
    Setting(
        "api_keys.pepper",
        _str,
        None,
        "Server-side secret mixed into API key hashes; "
        "generated into var/dev-secrets/ outside production",
        secret=True,
    ),
    Setting(
        "http.trusted_proxies",
        _str_list,
        (),
        "Proxies (IPs or CIDRs) whose "
        "X-Forwarded-For is believed; the client is the right-most address not in this list",
    ),
    Setting(
        "ratelimit.enabled",
        _bool,
        True,
        "Apply rate limits (the test config turns them off; tests of the limiter turn them on)",
    ),
    Setting(
        "ratelimit.ip", _str_list, ("300/minute",), "Limits per client IP for anonymous callers"
    ),
    Setting("ratelimit.user", _str_list, ("600/minute",), "Limits per user"),
    Setting(
        "ratelimit.api_key",
        _str_list,
        ("3000/minute",),
        "Limits per API key (a key's own rate_limit replaces these)",
    ),
    Setting(
        "ratelimit.ban_threshold",
        _int,
        20,
        "An identity answered 429 more than this many "
        "times within ratelimit.ban_window is banned (0: never ban)",
        minimum=0,
    ),
    Setting("ratelimit.ban_window", _seconds, 60.0, "Window in which 429 answers are counted"),
    Setting("ratelimit.ban_ttl", _seconds, 60.0, "First ban's length; each repeat doubles it"),
    Setting("ratelimit.ban_max_ttl", _seconds, 86400.0, "Longest ban"),
    Setting(
        "auth.password_min_length",
        _int,
        12,
        "Shortest password auth.register accepts",
        minimum=8,
        maximum=1024,
    ),
    Setting(
        "auth.password_pattern",
        _str,
        None,
        "Optional regular expression a password must also match",
    ),
)

SETTINGS: Mapping[str, Setting] = {s.key: s for s in _TABLE}
MAPPING_KEYS = frozenset(k for k, s in SETTINGS.items() if s.is_mapping)
ALIASES: Mapping[str, str] = {s.alias: s.key for s in _TABLE if s.alias}
