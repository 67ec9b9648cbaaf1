"""VaultManager: the ``vault`` manager behind ``ctx.secrets``.

Disabled (health ``disabled``) while ``vault.addr`` is unset. Otherwise it logs in at boot
(a refusal or an unreachable Vault fails the boot), keeps the token alive from a background
thread, and hands each module a ``Secrets`` facade limited to the globs its ``module.yaml``
declares under ``secrets:``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING, Any

from core.errors import DependencyUnavailable, Forbidden, NotFound
from core.logging import remember_secret
from core.manager import Health, Manager
from core.settings import SETTINGS
from managers.vault_client import Clock, VaultClient

if TYPE_CHECKING:
    from core.app_manager import AppManager

log = logging.getLogger("switchboard.vault")

VAULT_KEYS = tuple(key for key in SETTINGS if key.startswith("vault."))


class Secrets:
    """What a module's handlers see as ``ctx.secrets``: reads limited to declared globs."""

    def __init__(
        self,
        module: str,
        globs: Sequence[str],
        client: VaultClient | None,
        base_path: str,
    ) -> None:
        self.module = module
        self.globs = tuple(globs)
        self._client = client
        self._base = base_path.strip("/")

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
        if self._client is None:
            raise DependencyUnavailable("Vault is not configured (vault.addr is unset)")
        try:
            data = self._client.read(f"{self._base}/{name}" if self._base else name)
        except KeyError:
            raise NotFound(f"secret {name!r} not found") from None
        except PermissionError:
            raise Forbidden(f"Vault's policy denies reading secret {name!r}") from None
        remember_secret(data)  # whatever a handler does with it, logs show ***
        if field is None:
            return data
        if field not in data:
            raise NotFound(f"secret {name!r} has no field {field!r}")
        return data[field]


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

    def __init__(self, *, maintain_interval: float = 10.0, clock: Clock = time.monotonic) -> None:
        self._interval = maintain_interval
        self._clock = clock
        self._client: VaultClient | None = None
        self._app: AppManager | None = None
        self._secrets_path = str(SETTINGS["vault.secrets_path"].default)
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def client(self) -> VaultClient | None:
        """The logged-in client, or None while Vault is disabled."""
        return self._client

    def start(self, app: AppManager) -> None:
        self._app = app
        settings = {key: app.config[key] for key in VAULT_KEYS}
        self._secrets_path = str(settings["vault.secrets_path"])
        if not settings["vault.addr"]:
            return
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

    def facade_for(self, module: str) -> Secrets:
        """``ctx.secrets`` of ``module``: reads limited to its manifest's ``secrets`` globs."""
        return Secrets(module, self._globs(module), self._client, self._secrets_path)

    def _globs(self, module: str) -> tuple[str, ...]:
        app = self._app
        if app is None or not app.has("modules"):
            return ()
        loaded = app.get("modules").get(module)
        return tuple(loaded.manifest.secrets) if loaded is not None else ()
