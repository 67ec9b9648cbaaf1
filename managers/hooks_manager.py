"""HooksManager: declared events, prioritised callbacks, isolated failures.

Events are declared before anyone may listen or emit: the kernel's, each manager's
``events``, and each module's ``module.yaml`` ``events:`` (as ``<module>.<event>``). Modules
register callbacks in ``module.yaml`` (``hooks: {action.after: handlers:on_after}``); a
callback is ``def on_after(ctx, event)`` with a ``system`` ctx of its module.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from core.base.errors import ActionError, InternalError, Problem
from core.base.hooks import (
    ACTION_AFTER,
    ACTION_BEFORE,
    ACTION_FAILED,
    HookBus,
    HookCallback,
    HookEvent,
    UndeclaredEvent,
)
from core.base.logging import request_id_var
from core.base.metrics import Instruments
from core.contracts.calls import CallResult
from core.contracts.context import SYSTEM, Context
from core.contracts.module import EVENT_NAME, ImportFailed, ModuleCatalog, RefError, resolve_ref
from core.manager import Health, Manager
from core.pipeline.call import Call, elapsed_ms, masked
from core.pipeline.chain import Middleware, Next

if TYPE_CHECKING:
    from core.manager import App

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


class ModuleHooks:
    """``ctx.hooks`` of one module: it emits the module's own declared events."""

    def __init__(self, bus: HooksManager, module: str) -> None:
        self._bus = bus
        self._module = module

    def emit(self, event: str, data: Mapping[str, Any] | None = None, **fields: Any) -> None:
        if not event.startswith(f"{self._module}."):
            raise UndeclaredEvent(
                f"module {self._module!r} may emit only its own events "
                f"({self._module}.<event>, declared under events: in module.yaml), "
                f"not {event!r}"
            )
        self._bus.emit(event, data, **fields)

    def has_listeners(self, event: str) -> bool:
        return self._bus.has_listeners(event)


class HooksManager(Manager):
    """Callbacks run in priority order (lower first, then registration order).

    A callback that raises is logged with its traceback and counted; the others still
    run and the event's emitter never sees the error. Callbacks may be registered at any
    time (copy-on-write, so ``emit`` takes no lock).
    """

    name = "hooks"
    requires = ("config",)
    provides: ClassVar[tuple[type, ...]] = (HookBus,)
    facade = "hooks"

    def __init__(self) -> None:
        self._callbacks: dict[str, tuple[_Registration, ...]] = {}
        self._declared: set[str] = set()
        self._lock = threading.Lock()
        self._seq = itertools.count()
        self._app: App | None = None
        self.failures: Counter[str] = Counter()
        self._metrics: Instruments | None = None

    def start(self, app: App) -> None:
        self._app = app
        self._metrics = app.capability(Instruments)
        self.declare(*app.declared_events())

    # --- events -----------------------------------------------------------------------

    def declare(self, *events: str) -> None:
        """Make ``events`` known, so callbacks may be registered and emits may fire."""
        with self._lock:
            self._declared.update(events)

    def declared(self) -> frozenset[str]:
        return frozenset(self._declared)

    def _check(self, event: str) -> None:
        if event not in self._declared:
            raise UndeclaredEvent(
                f"hook event {event!r} is not declared (known: {', '.join(sorted(self._declared))})"
            )

    def register(
        self, event: str, callback: HookCallback, *, priority: int = 100, owner: str | None = None
    ) -> None:
        """Call ``callback(HookEvent)`` on every ``event``; lower ``priority`` runs first."""
        if not callable(callback):
            raise TypeError(f"hook callback for {event!r} is not callable: {callback!r}")
        self._check(event)
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

    def emit(self, event: str, data: Mapping[str, Any] | None = None, **fields: Any) -> None:
        """Run every callback of ``event`` with ``HookEvent(event, {**data, **fields})``."""
        registrations = self._callbacks.get(event, ())
        if not registrations:
            self._check(event)
            return
        hook_event = HookEvent(event, {**(data or {}), **fields})
        for registration in registrations:
            try:
                registration.callback(hook_event)
            except Exception:  # isolation is the contract: one bad callback stops no other
                self.failures[event] += 1
                if self._metrics is not None:
                    self._metrics.hook_failed(event)
                log.exception("hook callback %s failed on %s", registration.label, event)

    # --- what it contributes ----------------------------------------------------------

    def facade_for(self, module: str) -> ModuleHooks:
        return ModuleHooks(self, module)

    def modules_loaded(self, modules: ModuleCatalog) -> Sequence[Problem]:
        """Declare every module's own events, then register the callbacks of its manifest."""
        problems: list[Problem] = []
        for loaded in modules:
            where: dict[str, Any] = {"file": loaded.manifest.file, "module": loaded.name}
            for event in loaded.manifest.events:
                if not EVENT_NAME.match(event):
                    problems.append(
                        Problem(f"event name {event!r} must look like book.lent", **where)
                    )
                else:
                    self.declare(f"{loaded.name}.{event}")
        for loaded in modules:
            where = {"file": loaded.manifest.file, "module": loaded.name}
            for event, spec in loaded.manifest.hooks.items():
                field = f"hooks.{event}"
                for ref, priority in _entries(spec):
                    if ref is None:
                        problems.append(
                            Problem(
                                "a hook is 'python_module:function' or {handler, priority}",
                                field=field,
                                **where,
                            )
                        )
                        continue
                    if event not in self._declared:
                        problems.append(
                            Problem(
                                f"no hook event {event!r}; events are named in full "
                                f"(a module's own as <module>.<event>, declared under events:)",
                                field=field,
                                **where,
                            )
                        )
                        continue
                    try:
                        function = resolve_ref(loaded.name, ref)
                    except ImportFailed as exc:
                        problems.append(exc.problem)
                        continue
                    except RefError as exc:
                        problems.append(Problem(str(exc), field=field, **where))
                        continue
                    self.register(
                        event,
                        self._module_callback(loaded.name, function),
                        priority=priority,
                        owner=loaded.name,
                    )
        return problems

    def _module_callback(
        self, module: str, function: Callable[[Context, HookEvent], Any]
    ) -> HookCallback:
        app = self._app

        def callback(event: HookEvent) -> None:
            if app is None:
                raise self.not_started()
            ctx = Context(app.scope(module), event.name, SYSTEM, request_id_var.get() or "")
            function(ctx, event)

        callback.__qualname__ = getattr(function, "__qualname__", "callback")
        return callback

    def middleware(self) -> Sequence[Middleware]:
        """``action.before`` right before the handler; ``action.after`` / ``action.failed``
        around the whole call."""
        return (
            Middleware("hooks.outcome", self._outcome, before="identify"),
            Middleware("hooks.before", self._before, before="run"),
        )

    def _before(self, call: Call, next: Next) -> CallResult:
        if self.has_listeners(ACTION_BEFORE):
            self.emit(ACTION_BEFORE, _event_data(call))
        return next(call)

    def _outcome(self, call: Call, next: Next) -> CallResult:
        try:
            result = next(call)
        except ActionError as error:
            if self.has_listeners(ACTION_FAILED):
                self.emit(ACTION_FAILED, _event_data(call), status=error.status, problem=error.slug)
            raise
        except Exception:
            if self.has_listeners(ACTION_FAILED):
                self.emit(ACTION_FAILED, _event_data(call), status=500, problem=InternalError.slug)
            raise
        if not result.replayed and self.has_listeners(ACTION_AFTER):
            value = result.value
            if call.found is not None and isinstance(value, dict):
                value = masked(value, call.found.spec.secret_returns)
            self.emit(ACTION_AFTER, _event_data(call), result=value, duration_ms=elapsed_ms(call))
        return result

    def health(self) -> Health:
        return Health(
            "ok",
            {
                "events": {e: len(r) for e, r in self._callbacks.items() if r},
                "failures": dict(self.failures),
            },
        )


def _entries(spec: Any) -> list[tuple[str | None, int]]:
    """``handlers:fn``, ``{handler, priority}``, or a list of either (None: neither)."""
    items = spec if isinstance(spec, list) else [spec]
    found: list[tuple[str | None, int]] = []
    for item in items:
        if isinstance(item, str):
            found.append((item, 100))
        elif isinstance(item, dict) and isinstance(item.get("handler"), str):
            priority = item.get("priority", 100)
            found.append((item["handler"], priority if isinstance(priority, int) else 100))
        else:
            found.append((None, 100))
    return found


def _event_data(call: Call) -> dict[str, Any]:
    secret = call.found.spec.secret_params if call.found else frozenset()
    return {
        "action": call.request.action,
        "module": call.found.spec.module if call.found else None,
        "caller": call.caller,
        "request_id": call.request.request_id,
        "params": masked(call.params, secret),
    }
