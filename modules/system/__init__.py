"""The system module: ping, echo and info."""

from __future__ import annotations

import time
from typing import Any

from core.module import BaseModule

__all__ = ["SystemModule"]


class SystemModule(BaseModule):
    """Records when the app started so ``system.info`` can report uptime."""

    started_at: float = 0.0

    def initialize(self, app_manager: Any) -> None:
        super().initialize(app_manager)
        self.started_at = time.monotonic()
