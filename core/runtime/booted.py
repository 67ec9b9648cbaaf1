"""The booted app: config -> managers -> pipeline, as one object handed to every transport.

``boot`` starts the managers (``AppManager``) and builds the call chain over them; the
``BootedApp`` it returns is the ``Runtime`` a transport works with (``invoke``,
``caller_of``, ``actions``, ``health``, ``clock``), and ``close`` takes it down again.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from core.base.hooks import APP_STARTED, APP_STOPPING, HookBus
from core.pipeline.pipeline import build_pipeline
from core.runtime.app_manager import AppManager

if TYPE_CHECKING:
    from flask import Flask

    from core.actions.actions import Action
    from core.config.config import Config
    from core.contracts.calls import CallRequest, CallResult
    from core.contracts.context import Caller
    from core.pipeline.pipeline import Pipeline
    from core.runtime.manager import Manager

T = TypeVar("T")


class BootedApp:
    """One booted app (the ``Runtime`` Protocol of ``core.manager``)."""

    def __init__(self, app_manager: AppManager, pipeline: Pipeline) -> None:
        self.app_manager = app_manager
        self.pipeline = pipeline
        self.http: Flask | None = None  # the Flask app of its routes, once the edge made it
        self._clock: Callable[[], float] = time.time

    @property
    def config(self) -> Config:
        return self.app_manager.config

    @property
    def app(self) -> AppManager:
        return self.app_manager

    def invoke(self, request: CallRequest) -> CallResult:
        return self.pipeline.invoke(request)

    def caller_of(self, request: CallRequest, *, count_failure: bool = True) -> Caller:
        return self.pipeline.caller_of(request, count_failure=count_failure)

    def actions(self) -> Sequence[Action]:
        return self.pipeline.registry.actions()

    def capability(self, kind: type[T]) -> T | None:
        return self.app_manager.capability(kind)

    def health(self) -> tuple[bool, dict[str, dict[str, Any]]]:
        return self.app_manager.health()

    def clock(self) -> float:
        return self._clock()

    def use_clock(self, clock: Callable[[], float]) -> None:
        """Tests: every manager that keeps time in the process reads ``clock`` from now on."""
        self._clock = clock
        for manager in self.app_manager.managers():
            manager.use_clock(clock)

    def started(self) -> None:
        """Say ``app.started`` (once the transports that serve it are in place)."""
        hooks = self.app_manager.capability(HookBus)
        if hooks is not None:
            hooks.emit(APP_STARTED, app=self.app_manager)

    def close(self) -> None:
        """Fire ``app.stopping``, stop the pipeline's workers, stop managers in reverse."""
        hooks = self.app_manager.capability(HookBus)
        if hooks is not None:
            hooks.emit(APP_STOPPING, app=self.app_manager)
        self.pipeline.close()
        self.app_manager.shutdown()


def boot(config: Config, managers: Sequence[Manager]) -> BootedApp:
    """Start ``managers`` on ``config`` and build the chain; a failure stops what started."""
    app_manager = AppManager(config, managers)
    app_manager.boot()
    try:
        pipeline = build_pipeline(app_manager)
    except BaseException:
        app_manager.shutdown()
        raise
    app_manager.pipeline = pipeline
    return BootedApp(app_manager, pipeline)
