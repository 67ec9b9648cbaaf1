"""The credits module: wallets, transfers and grants over an append-only ledger."""

from __future__ import annotations

from typing import Any

from core.module import BaseModule

__all__ = ["CreditsModule"]


class CreditsModule(BaseModule):
    """Creates the ledger's indexes; the handlers do the rest through ``ctx.db``."""

    def initialize(self, app_manager: Any) -> None:
        super().initialize(app_manager)
        ledger = self.ctx.db.collection("credit_ledger")
        ledger.create_index(["from", "at"])
        ledger.create_index(["to", "at"])
