"""``Health``: what a manager's or a module's ``health()`` answers."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

HealthStatus = Literal["ok", "degraded", "failed", "disabled"]


@dataclass(frozen=True)
class Health:
    """A manager's (or module's) health: a status plus free-form details."""

    status: HealthStatus = "ok"
    details: Mapping[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"status": self.status, **self.details}
