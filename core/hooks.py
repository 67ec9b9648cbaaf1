"""Hook event names and the emitter interface the kernel depends on.

The kernel (pipeline, AppManager glue) fires events through ``HookEmitter``; the
``hooks`` manager implements it. Hooks are notifications: they never change a call.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

APP_STARTED = "app.started"
APP_STOPPING = "app.stopping"
MODULE_LOADED = "module.loaded"
ACTION_BEFORE = "action.before"
ACTION_AFTER = "action.after"
ACTION_FAILED = "action.failed"

BUILTIN_EVENTS = (
    APP_STARTED,
    APP_STOPPING,
    MODULE_LOADED,
    ACTION_BEFORE,
    ACTION_AFTER,
    ACTION_FAILED,
)


@dataclass(frozen=True)
class HookEvent:
    """What a callback receives: the event name and its context."""

    name: str
    data: dict[str, Any] = field(default_factory=dict)


HookCallback = Callable[[HookEvent], None]


@runtime_checkable
class HookEmitter(Protocol):
    def emit(self, event: str, **data: Any) -> None: ...

    def has_listeners(self, event: str) -> bool: ...
