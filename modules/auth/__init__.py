"""The auth module: users (Argon2id), tokens, and API key administration."""

from __future__ import annotations

import re
from typing import Any

from argon2 import PasswordHasher

from core.module import BaseModule

__all__ = ["AuthModule"]


class AuthModule(BaseModule):
    """Holds the password hasher and policy; handlers reach it through ``ctx``.

    ``hasher`` is an attribute so tests can inject a counting one.
    """

    hasher: Any
    dummy_hash: str
    min_length: int
    pattern: re.Pattern[str] | None

    def initialize(self, app_manager: Any) -> None:
        super().initialize(app_manager)
        self.hasher = PasswordHasher()  # Argon2id with the RFC 9106 low-memory parameters
        # Unknown emails are checked against this, so a login costs the same either way.
        self.dummy_hash = self.hasher.hash("switchboard-dummy-password")
        self.min_length = int(self.settings["password_min_length"])
        pattern = self.settings["password_pattern"]
        self.pattern = re.compile(pattern) if pattern else None
        self.ctx.db.collection("users").create_index(["email"], unique=True)
