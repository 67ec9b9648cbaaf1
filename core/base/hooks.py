"""Hook events: the kernel's event names, what a callback receives, and the bus interface.

The ``hooks`` manager implements ``HookBus``; the kernel (runtime, module loading) fires
its events through it. Hooks are notifications: they never change a call. Events are
declared: the kernel's below, a manager's in ``Manager.events``, a module's in its
``module.yaml`` ``events:`` (named ``<module>.<event>``); registering a callback for, or
emitting, an undeclared event is an error naming it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
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
    """What a callback receives: the event name and its data."""

    name: str
    data: dict[str, Any] = field(default_factory=dict)


HookCallback = Callable[[HookEvent], None]


class UndeclaredEvent(LookupError):
    """A callback or an emit named an event nobody declared."""


@runtime_checkable
class HookBus(Protocol):
    """What the kernel and managers need from the hooks manager."""

    def emit(self, event: str, data: Mapping[str, Any] | None = None, **fields: Any) -> None: ...

    def has_listeners(self, event: str) -> bool: ...

    def declared(self) -> frozenset[str]:
        """Every event that may be emitted (the kernel's, managers' and modules')."""
        ...

    def register(
        self, event: str, callback: HookCallback, *, priority: int = 100, owner: str | None = None
    ) -> None: ...
