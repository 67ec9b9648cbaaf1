"""The ``config`` manager: the loaded ``Config`` as ``ctx.config``, its references re-read."""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, ClassVar

from core.config.config import Config, ReferenceResolver
from core.config.settings import Setting
from core.runtime.manager import Manager

if TYPE_CHECKING:
    from core.runtime.manager import App

log = logging.getLogger("switchboard.config")


class ConfigManager(Manager):
    """Exposes the loaded ``Config`` as the ``config`` manager (``ctx.config``) and, when
    settings come from references, re-reads them every ``refresh_interval``."""

    name = "config"
    settings: ClassVar[tuple[Setting, ...]] = ()  # the kernel's are in core.config.settings

    def __init__(self, config: Config, *, interval: float | None = None) -> None:
        self.config = config
        self._interval = interval
        self._app: App | None = None
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, app: App) -> None:
        self._app = app
        if not self.config.has_references():
            return
        self._thread = threading.Thread(target=self._loop, name="config-refresh", daemon=True)
        self._thread.start()

    def _resolver(self) -> ReferenceResolver | None:
        return self._app.capability(ReferenceResolver) if self._app is not None else None

    def refresh(self) -> list[str]:
        """One refresh, through the running reference resolver (Vault's cached client)."""
        resolver = self._resolver()
        resolvers = {resolver.scheme: resolver.resolve_reference} if resolver else {}
        changed = self.config.refresh(resolvers)
        if changed:
            log.info("settings refreshed from their references: %s", ", ".join(changed))
        return changed

    def _loop(self) -> None:
        while True:
            resolver = self._resolver()
            interval = self._interval or (resolver.refresh_interval if resolver else 60.0)
            if self._stopping.wait(interval):
                return
            self.refresh()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
