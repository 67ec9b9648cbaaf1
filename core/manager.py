"""The Manager contract: what the AppManager boots, stops and asks for health."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal

if TYPE_CHECKING:
    from core.app_manager import AppManager

HealthStatus = Literal["ok", "degraded", "failed", "disabled"]


@dataclass(frozen=True)
class Health:
    """A manager's (or module's) health: a status plus free-form details."""

    status: HealthStatus = "ok"
    details: Mapping[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"status": self.status, **self.details}


class Manager:
    """Base class of every manager.

    ``name`` is how other managers and handlers reach it (``app_manager.<name>``,
    ``ctx.<name>``); ``requires`` names the managers that must start before it, ``after``
    those that must start before it when present.
    ``required`` says whether a ``failed`` health makes the app not ready.
    """

    name: ClassVar[str]
    requires: ClassVar[tuple[str, ...]] = ()
    # Start after these when the app runs them; unlike ``requires`` they may be absent.
    after: ClassVar[tuple[str, ...]] = ()
    required: ClassVar[bool] = True

    def start(self, app: AppManager) -> None:
        """Connect, load and validate. Raise ``BootError`` with the place that is wrong."""

    def stop(self) -> None:
        """Release what ``start`` acquired.

        Called (in reverse start order) only for managers whose ``start`` returned; a
        ``start`` that raises must release what it acquired before raising.
        """

    def health(self) -> Health:
        return Health()
