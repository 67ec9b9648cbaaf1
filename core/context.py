"""What a handler sees: the caller and ``ctx``."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal

if TYPE_CHECKING:
    from core.app_manager import AppManager
    from core.config import Config

CallerKind = Literal["anonymous", "user", "api_key", "system"]


@dataclass(frozen=True)
class Caller:
    """Who is calling: filled by the pipeline's identify step."""

    kind: CallerKind
    id: str | None = None
    roles: frozenset[str] = frozenset()
    scopes: frozenset[str] = frozenset()
    token_id: str | None = None  # jti of the access token (logout denylists it)
    session: str | None = None  # the token family (logout revokes its refresh tokens)
    expires_at: float | None = None  # exp of the access token
    rate_limit: tuple[str, ...] = ()  # an API key's own limits


ANONYMOUS = Caller("anonymous")
SYSTEM = Caller("system", id="system")


@dataclass(frozen=True)
class Context:
    """``ctx``: one call's caller, request facts and the app's managers.

    Managers are reached by name: ``ctx.db``, ``ctx.cache``, ``ctx.hooks``, ... as listed in
    DESIGN.md. Asking for one this app does not run raises ``AttributeError`` naming it.
    """

    app: AppManager
    action: str
    module: str
    caller: Caller
    request_id: str
    client_ip: str | None
    deadline: float | None  # time.monotonic() value past which the caller gets 504
    logger: logging.Logger
    module_settings: Mapping[str, Any] = field(default_factory=dict)

    # ``ctx.<name>`` -> manager attribute; names follow DESIGN.md's "handler sees" column.
    _ALIASES: ClassVar[Mapping[str, str]] = {
        "cache": "redis",
        "secrets": "vault",
        "realtime": "websocket",
    }

    @property
    def config(self) -> Config:
        return self.app.config

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        manager_name = self._ALIASES.get(name, name)
        if self.app.has(manager_name):
            manager: Any = self.app.get(manager_name)
            # A manager may hand handlers a narrower facade than itself, or one scoped to
            # the calling module (ctx.secrets reads only what module.yaml declares).
            scoped = getattr(manager, "facade_for", None)
            if callable(scoped):
                return scoped(self.module)
            facade = getattr(manager, "handler_facade", None)
            return facade() if callable(facade) else manager
        raise AttributeError(f"ctx.{name}: this app runs no {manager_name!r} manager")
