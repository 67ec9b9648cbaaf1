"""HooksManager: named events, prioritised callbacks, isolated failures."""

from __future__ import annotations

import itertools
import logging
import threading
from collections import Counter
from dataclasses import dataclass
from typing import Any

from core.hooks import HookCallback, HookEvent
from core.manager import Health, Manager

log = logging.getLogger("switchboard.hooks")


@dataclass(frozen=True)
class _Registration:
    priority: int
    seq: int
    callback: HookCallback
    owner: str | None

    @property
    def label(self) -> str:
        name = getattr(self.callback, "__qualname__", repr(self.callback))
        return f"{self.owner}:{name}" if self.owner else name


class HooksManager(Manager):
    """Callbacks run in priority order (lower first, then registration order).

    A callback that raises is logged with its traceback and counted; the others still
    run and the event's emitter never sees the error. Callbacks may be registered at any
    time (copy-on-write, so ``emit`` takes no lock).
    """

    name = "hooks"
    requires = ("config",)

    def __init__(self) -> None:
        self._callbacks: dict[str, tuple[_Registration, ...]] = {}
        self._lock = threading.Lock()
        self._seq = itertools.count()
        self.failures: Counter[str] = Counter()

    def register(
        self, event: str, callback: HookCallback, *, priority: int = 100, owner: str | None = None
    ) -> None:
        """Call ``callback(HookEvent)`` on every ``event``; lower ``priority`` runs first."""
        if not callable(callback):
            raise TypeError(f"hook callback for {event!r} is not callable: {callback!r}")
        with self._lock:
            entry = _Registration(priority, next(self._seq), callback, owner)
            current = self._callbacks.get(event, ())
            self._callbacks[event] = tuple(
                sorted((*current, entry), key=lambda r: (r.priority, r.seq))
            )

    def unregister(self, event: str, callback: HookCallback) -> bool:
        """Remove ``callback`` from ``event``; return whether it was registered."""
        with self._lock:
            current = self._callbacks.get(event, ())
            kept = tuple(r for r in current if r.callback != callback)
            self._callbacks[event] = kept
            return len(kept) != len(current)

    def has_listeners(self, event: str) -> bool:
        return bool(self._callbacks.get(event))

    def emit(self, event: str, **data: Any) -> None:
        """Run every callback of ``event`` with ``HookEvent(event, data)``."""
        registrations = self._callbacks.get(event, ())
        if not registrations:
            return
        hook_event = HookEvent(event, data)
        for registration in registrations:
            try:
                registration.callback(hook_event)
            except Exception:  # isolation is the contract: one bad callback stops no other
                self.failures[event] += 1
                log.exception("hook callback %s failed on %s", registration.label, event)

    def health(self) -> Health:
        return Health(
            "ok",
            {
                "events": {e: len(r) for e, r in self._callbacks.items() if r},
                "failures": dict(self.failures),
            },
        )
