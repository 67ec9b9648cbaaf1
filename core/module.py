"""The module contract: the manifest of ``module.yaml`` and ``BaseModule``'s lifecycle."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from core.manager import Health

if TYPE_CHECKING:
    from core.app_manager import AppManager

MODULE_PACKAGE = "switchboard_modules"  # each module imports as switchboard_modules.<name>
MODULE_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
MANIFEST_KEYS = frozenset(
    {
        "name",
        "version",
        "description",
        "depends_on",
        "requires",
        "secrets",
        "state_machines",
        "rooms",
        "config",
    }
)


@dataclass(frozen=True)
class ModuleManifest:
    """What ``module.yaml`` says about a module (every key optional)."""

    name: str
    path: Path
    version: str = "0.0.0"
    description: str = ""
    depends_on: tuple[str, ...] = ()
    requires: tuple[str, ...] = ()
    secrets: tuple[str, ...] = ()
    state_machines: Mapping[str, Any] = field(default_factory=dict)
    rooms: Mapping[str, Any] = field(default_factory=dict)
    config: Mapping[str, Any] = field(default_factory=dict)


class BaseModule:
    """Base class a module's ``__init__.py`` may export to hook into its lifecycle.

    The loader creates the object, sets ``module_name``, ``manifest`` and ``settings``
    (module.yaml ``config:`` merged with the operator's ``modules.settings.<name>``), then
    calls ``initialize(app_manager)`` and ``configure()`` in dependency order and
    ``register_routes()`` once every module is up. ``dispose()`` runs in reverse order at
    shutdown. Seed-format actions (``type: function``) call ``_<function>(args)`` on it.
    """

    module_name: str
    manifest: ModuleManifest
    settings: Mapping[str, Any]

    def __init__(self, app_manager: AppManager | None = None) -> None:
        self.app_manager = app_manager
        self.registered_routes: list[str] = []
        self.dependencies: list[str] = []
        self.module_name = type(self).__name__

    def initialize(self, app_manager: AppManager) -> None:
        """Acquire what the module needs; raising here fails the module (and, strict, the boot)."""
        self.app_manager = app_manager

    def configure(self) -> None:
        """Apply configuration after ``initialize``."""

    def register_routes(self) -> None:
        """Add extra Flask routes through ``self.app_manager.flask`` (optional)."""

    def dispose(self) -> None:
        """Release what ``initialize`` acquired."""

    def declare_dependencies(self) -> list[str]:
        """Modules this one needs, in addition to module.yaml ``depends_on``."""
        return list(self.dependencies)

    def health_check(self) -> Health | dict[str, Any]:
        """``Health`` (or a dict with a ``status`` key) for ``/health/ready``."""
        return Health()


class ModuleCatalog(Protocol):
    """What action discovery needs from the module manager: modules in load order."""

    def module_objects(self) -> Sequence[tuple[ModuleManifest, BaseModule]]: ...
