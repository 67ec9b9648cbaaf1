"""VaultClient: login, token upkeep and cached KV v2 reads, on hvac.

Used twice: by the config loader at boot (one KV document at ``vault.config_path``) and by
the ``vault`` manager (``ctx.secrets``). Login problems are ``ConfigError`` naming the
setting and the auth method; an outage while reading is ``DependencyUnavailable`` unless a
last-known-good value can be served. Tokens, secret ids, JWTs and secret values are never
logged nor put in an error message.
"""

from __future__ import annotations

import copy
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import hvac  # type: ignore[import-untyped]
import requests
from hvac import exceptions as hvac_errors

from core.base.errors import ConfigError, DependencyUnavailable, Problem

log = logging.getLogger("switchboard.vault")

Clock = Callable[[], float]
MaintainResult = Literal["skipped", "renewed", "relogged", "unavailable", "failed"]

FILE_PREFIX = "file://"

# Vault is down, sealed, overloaded or unreachable: worth serving the last-known-good value.
_OUTAGE: tuple[type[BaseException], ...] = (
    requests.exceptions.ConnectionError,
    requests.exceptions.Timeout,
    hvac_errors.VaultDown,
    hvac_errors.InternalServerError,
    hvac_errors.BadGateway,
    hvac_errors.VaultNotInitialized,
    hvac_errors.RateLimitExceeded,
)
# Vault answered and refused the credentials.
_REJECTED: tuple[type[BaseException], ...] = (
    hvac_errors.Forbidden,
    hvac_errors.Unauthorized,
    hvac_errors.InvalidRequest,
    hvac_errors.InvalidPath,
)


def host_of(addr: str) -> str:
    """``addr`` without scheme, credentials or path: what health and messages show."""
    parts = urlsplit(addr)
    if not parts.hostname:
        return addr
    return f"{parts.hostname}:{parts.port}" if parts.port else parts.hostname


@dataclass(frozen=True)
class VaultSettings:
    """The ``vault.*`` settings the client needs, typed."""

    addr: str
    auth_method: str = "token"
    mount: str = "secret"
    token: str | None = None
    role_id: str | None = None
    secret_id: str | None = None
    kubernetes_role: str | None = None
    kubernetes_jwt_path: str = "/var/run/secrets/kubernetes.io/serviceaccount/token"
    kubernetes_mount: str = "kubernetes"
    approle_mount: str = "approle"
    timeout: float = 2.0
    cache_ttl: float = 60.0

    @classmethod
    def from_mapping(cls, settings: Mapping[str, Any]) -> VaultSettings:
        """Build from resolved ``vault.*`` keys; a missing key takes its built-in default."""

        defaults = {f.name: f.default for f in fields(cls)}

        def value(name: str) -> Any:
            key = f"vault.{name}"
            return settings[key] if key in settings else defaults.get(name)

        addr = value("addr")
        if not addr:
            raise ConfigError([Problem("vault.addr is not set", field="vault.addr")])
        return cls(
            addr=str(addr),
            auth_method=str(value("auth_method")),
            mount=str(value("mount")),
            token=value("token"),
            role_id=value("role_id"),
            secret_id=value("secret_id"),
            kubernetes_role=value("kubernetes_role"),
            kubernetes_jwt_path=str(value("kubernetes_jwt_path")),
            kubernetes_mount=str(value("kubernetes_mount")),
            approle_mount=str(value("approle_mount")),
            timeout=float(value("timeout")),
            cache_ttl=float(value("cache_ttl")),
        )


@dataclass(frozen=True)
class _Cached:
    data: dict[str, Any]
    fetched_at: float


class VaultUnreachable(ConfigError):
    """Vault did not answer (down, sealed, refused the connection) while logging in."""


def _problem(message: str, *fields: str, kind: type[ConfigError] = ConfigError) -> ConfigError:
    return kind([Problem(message, field=f) for f in fields] or [Problem(message)])


class VaultClient:
    """One authenticated hvac client with a read cache and token upkeep.

    Thread-safe: request threads read while the manager's thread calls ``maintain()``.
    """

    def __init__(
        self, settings: VaultSettings, root: Path, *, clock: Clock = time.monotonic
    ) -> None:
        self.settings = settings
        self.root = root
        self.host = host_of(settings.addr)
        self._clock = clock
        # token="" keeps hvac from picking up VAULT_TOKEN or ~/.vault-token on its own.
        self._hvac = hvac.Client(url=settings.addr, token="", timeout=settings.timeout)
        self._cache: dict[str, _Cached] = {}
        self._lock = threading.Lock()
        self._auth_lock = threading.Lock()
        self._degraded = False
        self._auth_failed = False
        self._token_ttl = 0.0  # 0: the token never expires
        self._token_renewable = False
        self._token_expires_at = 0.0

    # --- construction and login -------------------------------------------------------

    @classmethod
    def connect(
        cls, settings: Mapping[str, Any], root: Path, *, clock: Clock = time.monotonic
    ) -> VaultClient:
        """Build a client from resolved ``vault.*`` settings and log in; ``ConfigError``
        when the settings are incomplete, the credentials are refused or Vault is down."""
        client = cls(VaultSettings.from_mapping(settings), root, clock=clock)
        try:
            client.login()
        except BaseException:
            client.close()
            raise
        return client

    def login(self) -> None:
        """Log in with the configured method, then learn the token's TTL (lookup-self)."""
        method = self.settings.auth_method
        with self._auth_lock:
            try:
                if method == "token":
                    info = self._login_token()
                elif method == "approle":
                    info = self._login_approle()
                elif method == "kubernetes":
                    info = self._login_kubernetes()
                else:
                    raise _problem(
                        f"vault.auth_method: unknown method {method!r}", "vault.auth_method"
                    )
            except VaultUnreachable:
                raise
            except ConfigError:
                self._auth_failed = True
                raise
            data = info.get("data") or {}
            self._set_token_ttl(float(data.get("ttl") or 0), bool(data.get("renewable")))
            self._auth_failed = False
            self._degraded = False
        log.info(
            "logged in to Vault at %s (auth %s, token ttl %ss, renewable %s)",
            self.host,
            method,
            int(self._token_ttl),
            self._token_renewable,
        )

    def _login_token(self) -> dict[str, Any]:
        token = self.settings.token
        if not token:
            raise _problem("vault.token is not set (vault.auth_method=token)", "vault.token")
        self._hvac.token = token
        return self._call_login(lambda: None, ("vault.token",))

    def _login_approle(self) -> dict[str, Any]:
        role_id = self._credential("vault.role_id", self.settings.role_id)
        secret_id = self._credential("vault.secret_id", self.settings.secret_id)
        self._hvac.token = ""
        return self._call_login(
            lambda: self._hvac.auth.approle.login(
                role_id=role_id, secret_id=secret_id, mount_point=self.settings.approle_mount
            ),
            ("vault.role_id", "vault.secret_id"),
        )

    def _login_kubernetes(self) -> dict[str, Any]:
        role = self.settings.kubernetes_role
        if not role:
            raise _problem(
                "vault.kubernetes_role is not set (vault.auth_method=kubernetes)",
                "vault.kubernetes_role",
            )
        jwt = self._read_file("vault.kubernetes_jwt_path", self.settings.kubernetes_jwt_path)
        self._hvac.token = ""
        return self._call_login(
            lambda: self._hvac.auth.kubernetes.login(
                role=role, jwt=jwt, mount_point=self.settings.kubernetes_mount
            ),
            ("vault.kubernetes_role", "vault.kubernetes_jwt_path"),
        )

    def _call_login(self, login: Callable[[], Any], fields: tuple[str, ...]) -> dict[str, Any]:
        """Run the login call, then lookup-self (whose answer is returned), translating
        failures to ``ConfigError``."""
        method = self.settings.auth_method
        named = ", ".join(fields)
        try:
            login()
            info = self._hvac.auth.token.lookup_self()
        except _OUTAGE as exc:
            self._mark_degraded(exc)
            raise _problem(
                f"Vault at {self.host} is unreachable ({_reason(exc)}); "
                f"check vault.addr or unset it to run without Vault",
                "vault.addr",
                kind=VaultUnreachable,
            ) from None
        except _REJECTED as exc:
            raise _problem(
                f"Vault at {self.host} refused the credentials of auth method {method} "
                f"({_reason(exc)}): check {named}",
                *fields,
            ) from None
        return dict(info)

    def _set_token_ttl(self, ttl: float, renewable: bool) -> None:
        self._token_ttl = ttl
        self._token_renewable = renewable
        self._token_expires_at = self._clock() + ttl

    def _credential(self, key: str, value: str | None) -> str:
        """A credential setting, or the content of the file it names (``file://path``)."""
        if not value:
            raise _problem(f"{key} is not set (vault.auth_method={self.settings.auth_method})", key)
        if value.startswith(FILE_PREFIX):
            return self._read_file(key, value[len(FILE_PREFIX) :])
        return value

    def _read_file(self, key: str, name: str) -> str:
        path = Path(name)
        if not path.is_absolute():
            path = self.root / path
        try:
            content = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise _problem(f"{key}: cannot read {path} ({exc.strerror})", key) from None
        if not content:
            raise _problem(f"{key}: {path} is empty", key)
        return content

    # --- token upkeep -----------------------------------------------------------------

    @property
    def token_ttl(self) -> float:
        return self._token_ttl

    @property
    def token_renewable(self) -> bool:
        return self._token_renewable

    @property
    def auth_failed(self) -> bool:
        """True when the last renewal and re-login both failed."""
        return self._auth_failed

    def maintain(self) -> MaintainResult:
        """Renew the token when less than a third of its TTL is left; log in again when
        renewal fails. While degraded, probe Vault (lookup-self) to notice recovery."""
        if self._degraded and not self._probe():
            return "unavailable"
        if self._token_ttl <= 0:
            return "skipped"
        left = self._token_expires_at - self._clock()
        if left > self._token_ttl / 3:
            return "skipped"
        if self._token_renewable:
            try:
                answer = self._hvac.auth.token.renew_self()
            except _OUTAGE as exc:
                self._mark_degraded(exc)
                return "unavailable"
            except hvac_errors.VaultError as exc:
                log.warning("renewing the Vault token failed (%s); logging in again", _reason(exc))
            else:
                auth = answer.get("auth") or {}
                self._set_token_ttl(
                    float(auth.get("lease_duration") or 0), bool(auth.get("renewable"))
                )
                log.info("renewed the Vault token (ttl %ss)", int(self._token_ttl))
                return "renewed"
        try:
            self.login()
        except ConfigError as exc:
            log.error("logging in to Vault again failed: %s", exc)
            return "failed"
        return "relogged"

    def _probe(self) -> bool:
        try:
            self._hvac.auth.token.lookup_self()
        except _OUTAGE:
            return False
        except hvac_errors.VaultError:
            # Vault answers but refuses the token: make it due, so renew or re-login follows.
            self._token_expires_at = self._clock()
        self._recovered()
        return True

    # --- reads ------------------------------------------------------------------------

    @property
    def degraded(self) -> bool:
        """True while Vault is unreachable (last-known-good values are being served)."""
        return self._degraded

    def read(self, path: str) -> dict[str, Any]:
        """The data of the KV v2 secret at ``path`` (a copy), cached for ``cache_ttl``.

        ``KeyError(path)`` when missing, ``PermissionError(path)`` when the policy denies it,
        ``DependencyUnavailable`` when Vault is down and no earlier value is known.
        """
        now = self._clock()
        with self._lock:
            cached = self._cache.get(path)
        if cached is not None and now - cached.fetched_at < self.settings.cache_ttl:
            return copy.deepcopy(cached.data)
        try:
            answer = self._hvac.secrets.kv.v2.read_secret_version(
                path=path, mount_point=self.settings.mount, raise_on_deleted_version=True
            )
        except hvac_errors.InvalidPath:
            self._forget(path)
            self._recovered()
            raise KeyError(path) from None
        except hvac_errors.Forbidden:
            self._recovered()
            log.warning("Vault denied reading %s/%s", self.settings.mount, path)
            raise PermissionError(path) from None
        except _OUTAGE as exc:
            self._mark_degraded(exc)
            if cached is not None:
                log.warning("serving the last-known-good value of %s", path)
                return copy.deepcopy(cached.data)
            raise DependencyUnavailable(f"Vault at {self.host} is unavailable") from None
        data = dict((answer.get("data") or {}).get("data") or {})
        with self._lock:
            self._cache[path] = _Cached(data, self._clock())
        self._recovered()
        log.debug("read %s/%s from Vault", self.settings.mount, path)
        return copy.deepcopy(data)

    def _forget(self, path: str) -> None:
        with self._lock:
            self._cache.pop(path, None)

    def _mark_degraded(self, exc: BaseException) -> None:
        if not self._degraded:
            log.warning("Vault at %s is unavailable (%s)", self.host, _reason(exc))
        self._degraded = True

    def _recovered(self) -> None:
        if self._degraded:
            log.info("Vault at %s answers again", self.host)
        self._degraded = False

    def close(self) -> None:
        """Close the HTTP session (the token is left to expire on its own)."""
        self._hvac.adapter.close()


def _reason(exc: BaseException) -> str:
    """A short, secret-free reason: hvac errors carry Vault's ``errors`` list, which names
    what went wrong but never echoes a credential; transport errors only their type."""
    if isinstance(exc, hvac_errors.VaultError):
        errors = exc.errors if isinstance(exc.errors, list) else []
        text = "; ".join(str(e) for e in errors)[:200]
        return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return type(exc).__name__
