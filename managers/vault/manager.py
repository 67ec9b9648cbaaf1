"""VaultManager: the ``vault`` manager behind ``ctx.secrets``.

Disabled (health ``disabled``) while ``vault.addr`` is unset. Otherwise it logs in at boot
(a refusal or an unreachable Vault fails the boot), keeps the token alive from a background
thread, and hands each module a ``Secrets`` facade limited to the globs its ``module.yaml``
declares under ``secrets:``.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from fnmatch import fnmatchcase
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from core.base.errors import DependencyUnavailable, Forbidden, NotFound, Problem
from core.base.logging import remember_secret
from core.config.config import ReferenceResolver
from core.config.config_loader import SourceSpec
from core.config.settings import Setting, duration, text
from core.contracts.module import ModuleCatalog
from core.manager import Health, Manager

if TYPE_CHECKING:
    from core.manager import App
    from managers.vault.client import Clock, VaultClient

log = logging.getLogger("switchboard.vault")

_OWNER = "manager vault"

VAULT_SETTINGS: tuple[Setting, ...] = (
    Setting(
        "vault.addr",
        text,
        None,
        "Vault address; unset disables Vault",
        alias="VAULT_ADDR",
        owner=_OWNER,
    ),
    Setting(
        "vault.config_path",
        text,
        "switchboard/config",
        "KV v2 path of the config document",
        owner=_OWNER,
    ),
    Setting("vault.mount", text, "secret", "Mount point of the KV v2 secrets engine", owner=_OWNER),
    Setting(
        "vault.auth_method",
        text,
        "token",
        "token, approle or kubernetes",
        choices=("token", "approle", "kubernetes"),
        owner=_OWNER,
    ),
    Setting(
        "vault.token",
        text,
        None,
        "Token for vault.auth_method=token",
        alias="VAULT_TOKEN",
        secret=True,
        owner=_OWNER,
    ),
    Setting("vault.role_id", text, None, "AppRole role_id", owner=_OWNER),
    Setting("vault.secret_id", text, None, "AppRole secret_id", secret=True, owner=_OWNER),
    Setting("vault.kubernetes_role", text, None, "Vault role for Kubernetes auth", owner=_OWNER),
    Setting(
        "vault.kubernetes_jwt_path",
        text,
        "/var/run/secrets/kubernetes.io/serviceaccount/token",
        "Service account token file for Kubernetes auth",
        owner=_OWNER,
    ),
    Setting(
        "vault.kubernetes_mount",
        text,
        "kubernetes",
        "Mount of the Kubernetes auth method",
        owner=_OWNER,
    ),
    Setting(
        "vault.approle_mount", text, "approle", "Mount of the AppRole auth method", owner=_OWNER
    ),
    Setting("vault.timeout", duration, 2.0, "Timeout of one Vault request", owner=_OWNER),
    Setting(
        "vault.cache_ttl",
        duration,
        60.0,
        "How long a secret read from Vault is reused",
        owner=_OWNER,
    ),
    Setting(
        "vault.secrets_path",
        text,
        "switchboard/modules",
        "KV v2 path under which ctx.secrets.get(name) reads",
        owner=_OWNER,
    ),
)


VAULT_KEYS = frozenset(setting.key for setting in VAULT_SETTINGS)
DEFAULT_SECRETS_PATH = "switchboard/modules"


def parse_reference(target: str) -> tuple[str, str]:
    """``<path>#<key>`` of a ``vault://`` reference; ``ValueError`` saying how to write it."""
    path, _, field = target.partition("#")
    if not path or not field:
        raise ValueError("write a Vault reference as vault://<path>#<key>")
    return path, field


class DocumentReader(Protocol):
    """What reading the config chain needs of a Vault client: a KV v2 document by path
    (``KeyError`` when there is none)."""

    def read(self, path: str) -> Mapping[str, Any]: ...


def read_reference(client: DocumentReader, target: str) -> Any:
    """The value ``vault://<target>`` names; ``ValueError`` saying why there is none."""
    path, field = parse_reference(target)
    try:
        document = client.read(path)
    except KeyError:
        raise ValueError(f"Vault has no secret at {path}") from None
    if field not in document:
        raise ValueError(f"Vault secret {path} has no key {field!r}")
    return document[field]


class VaultDocument:
    """The Vault level of the config chain: one KV v2 document, and ``vault://`` targets."""

    def __init__(self, client: DocumentReader, config_path: str) -> None:
        self._client = client
        self.label = f"vault {config_path}"
        self._path = config_path

    def document(self) -> Mapping[str, Any]:
        try:
            return dict(self._client.read(self._path))
        except KeyError:
            return {}  # no config document: the other levels decide

    def resolve(self, target: str) -> Any:
        return read_reference(self._client, target)

    def close(self) -> None:
        close = getattr(self._client, "close", None)
        if callable(close):
            close()


Connect = Callable[[Mapping[str, Any], Path], DocumentReader]


def _connect(settings: Mapping[str, Any], root: Path) -> DocumentReader:
    # hvac is imported only when Vault is configured.
    from managers.vault.client import VaultClient

    return VaultClient.connect(settings, root)


def vault_source(connect: Connect = _connect) -> SourceSpec:
    """The Vault level of the config chain, reached through ``connect`` (a test's double)."""

    def open_document(own: Mapping[str, Any], root: Path) -> VaultDocument:
        config_path = own.get("vault.config_path") or "switchboard/config"
        return VaultDocument(connect(own, root), str(config_path))

    return SourceSpec("vault", "Vault", VAULT_KEYS, "vault.addr", open_document)


class Secrets:
    """What a module's handlers see as ``ctx.secrets``: reads limited to declared globs."""

    def __init__(
        self,
        module: str,
        globs: Sequence[str],
        client: VaultClient | None,
        base_path: str,
        local: Path | None = None,
    ) -> None:
        self.module = module
        self.globs = tuple(globs)
        self._client = client
        self._base = base_path.strip("/")
        self._local = local  # development without Vault: <secrets.dir>/<name>.json

    def allows(self, name: str) -> bool:
        return _valid_name(name) and any(fnmatchcase(name, glob) for glob in self.globs)

    def get(self, name: str, field: str | None = None) -> Any:
        """The secret ``name`` (a dict), or one ``field`` of it.

        ``Forbidden`` unless ``name`` matches a glob of the module's manifest, ``NotFound``
        when Vault has no such secret (or field), ``DependencyUnavailable`` when Vault is down
        and no earlier value is known, or Vault is not configured.
        """
        if not self.allows(name):
            raise Forbidden(
                f"module {self.module!r} may not read secret {name!r}; "
                "declare it in module.yaml secrets"
            )
        if self._client is not None:
            try:
                data = self._client.read(f"{self._base}/{name}" if self._base else name)
            except KeyError:
                raise NotFound(f"secret {name!r} not found") from None
            except PermissionError:
                raise Forbidden(f"Vault's policy denies reading secret {name!r}") from None
        elif self._local is not None:
            data = _read_local_secret(self._local, name)
        else:
            raise DependencyUnavailable("Vault is not configured (vault.addr is unset)")
        remember_secret(data)  # whatever a handler does with it, logs show ***
        if field is None:
            return data
        if field not in data:
            raise NotFound(f"secret {name!r} has no field {field!r}")
        return data[field]


def _read_local_secret(directory: Path, name: str) -> dict[str, Any]:
    path = directory / f"{name}.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise NotFound(
            f"secret {name!r} not found: Vault is not configured, and {path} does not exist "
            '(in development, write the secret\'s fields there as JSON: {"token": "…"})'
        ) from None
    except (OSError, ValueError) as exc:
        raise DependencyUnavailable(f"secret file {path} cannot be read: {exc}") from None
    if not isinstance(data, dict):
        raise DependencyUnavailable(f"secret file {path} must hold a JSON object of fields")
    return data


def _valid_name(name: str) -> bool:
    # fnmatch's * crosses "/", so "credits/../admin" would match "credits/*": refuse dot
    # segments and empty segments outright.
    if not name or name.startswith("/") or name.endswith("/"):
        return False
    return all(part not in ("", ".", "..") for part in name.split("/"))


class VaultManager(Manager):
    """Owns the Vault client: login at start, token upkeep in a thread, close at stop."""

    name = "vault"
    requires = ("config",)
    required = False
    provides: ClassVar[tuple[type, ...]] = (ReferenceResolver,)
    facade = "secrets"
    settings: ClassVar[tuple[Setting, ...]] = VAULT_SETTINGS
    scheme = "vault"

    @classmethod
    def config_sources(cls) -> tuple[SourceSpec, ...]:
        return (vault_source(),)

    def __init__(self, *, maintain_interval: float = 10.0, clock: Clock = time.monotonic) -> None:
        self._interval = maintain_interval
        self._clock = clock
        self._client: VaultClient | None = None
        self._secrets_path = DEFAULT_SECRETS_PATH
        self._globs: dict[str, tuple[str, ...]] = {}
        self._local: Path | None = None
        self.refresh_interval = 60.0
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def client(self) -> VaultClient | None:
        """The logged-in client, or None while Vault is disabled."""
        return self._client

    def start(self, app: App) -> None:
        settings = {key: app.config[key] for key in VAULT_KEYS}
        self._secrets_path = str(settings["vault.secrets_path"])
        self.refresh_interval = float(settings["vault.cache_ttl"])
        if not settings["vault.addr"]:
            # Development without Vault reads secrets from files; production never does.
            if not app.config.is_production:
                self._local = app.config.path(str(app.config["secrets.dir"]))
            return
        from managers.vault.client import VaultClient  # hvac only when Vault is configured

        self._client = VaultClient.connect(settings, app.config.root, clock=self._clock)
        self._stopping.clear()
        self._thread = threading.Thread(
            target=self._maintain_loop, name="vault-token-upkeep", daemon=True
        )
        self._thread.start()

    def _maintain_loop(self) -> None:
        client = self._client
        assert client is not None
        while not self._stopping.wait(self._interval):
            try:
                client.maintain()
            except Exception:  # the thread must outlive a surprise, or the token lapses
                log.exception("Vault token upkeep raised")

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._client is not None:
            self._client.close()
            self._client = None

    def health(self) -> Health:
        client = self._client
        if client is None:
            return Health("disabled")
        details: dict[str, Any] = {"addr": client.host, "auth": client.settings.auth_method}
        if client.degraded:
            return Health("degraded", {**details, "reason": "Vault unreachable; serving cache"})
        if client.auth_failed:
            return Health("degraded", {**details, "reason": "token renewal and login failed"})
        return Health("ok", details)

    def resolve_reference(self, target: str) -> Any:
        """``vault://<target>`` through the running (cached) client: for config refresh."""
        if self._client is None:
            raise ValueError("Vault is not configured (vault.addr is unset)")
        return read_reference(self._client, target)

    def modules_loaded(self, modules: ModuleCatalog) -> Sequence[Problem]:
        self._globs = {loaded.name: tuple(loaded.manifest.secrets) for loaded in modules}
        return ()

    def facade_for(self, module: str) -> Secrets:
        """``ctx.secrets`` of ``module``: reads limited to its manifest's ``secrets`` globs."""
        return Secrets(
            module, self._globs.get(module, ()), self._client, self._secrets_path, self._local
        )
