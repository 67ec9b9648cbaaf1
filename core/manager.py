"""The manager API: what a manager subclasses, declares and looks up (README "Writing a
manager"). A manager imports this face plus the lower layers (``core.base``,
``core.config``, ``core.contracts``, ``core.actions``, ``core.pipeline``), never the
transports (``core.transports``) or the harness.
"""

from __future__ import annotations

from core.base.health import Health, HealthStatus
from core.base.hooks import HookBus
from core.base.metrics import Instruments
from core.base.store import KeyValueStore
from core.config.config import ReferenceResolver
from core.config.settings import Setting
from core.contracts.facades import Documents
from core.contracts.limits import RateLimiter
from core.contracts.module import ModuleCatalog
from core.pipeline.audit import AuditSink
from core.pipeline.authorize import ActionRegistry
from core.pipeline.chain import Middleware
from core.pipeline.gate import Gate
from core.pipeline.identity import KeyVerifier, TokenVerifier
from core.runtime.manager import (
    App,
    AsgiMount,
    Command,
    CommandRuntime,
    Manager,
    Route,
    Runtime,
)

__all__ = [
    "ActionRegistry",
    "App",
    "AsgiMount",
    "AuditSink",
    "Command",
    "CommandRuntime",
    "Documents",
    "Gate",
    "Health",
    "HealthStatus",
    "HookBus",
    "Instruments",
    "KeyValueStore",
    "KeyVerifier",
    "Manager",
    "Middleware",
    "ModuleCatalog",
    "RateLimiter",
    "ReferenceResolver",
    "Route",
    "Runtime",
    "Setting",
    "TokenVerifier",
]
