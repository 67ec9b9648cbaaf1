"""The auth module: users (Argon2id), tokens, and API key administration."""

from __future__ import annotations

from typing import Any

from argon2 import PasswordHasher

from core.module import BaseModule, Limit, parse_limit

from .handlers import USERS

__all__ = ["AuthModule"]


class AuthModule(BaseModule):
    """Holds the password hasher and policy; handlers reach it through ``ctx``.

    ``hasher`` is an attribute so tests can inject a counting one.
    """

    hasher: Any
    dummy_hash: str
    failures_per_email: Limit

    def initialize(self, app_manager: Any) -> None:
        super().initialize(app_manager)
        self.hasher = PasswordHasher()  # Argon2id with the RFC 9106 low-memory parameters
        # Unknown emails are checked against this, so a login costs the same either way.
        self.dummy_hash = self.hasher.hash("switchboard-dummy-password")
        # The password policy (password_min_length, password_pattern) is in the params
        # schema of auth.register: actions.yaml reads the settings.
        self.failures_per_email = parse_limit(str(self.settings["login_failures_per_email"]))
        # The runtime's own collections start with sb_ (a code-free action cannot name
        # them); "users" of earlier versions is renamed once, with its index.
        if self.ctx.db.rename_collection("users", USERS):
            self.ctx.logger.info("collection 'users' renamed to %r", USERS)
        self.ctx.db.collection(USERS).create_index(["email"], unique=True)
