"""Assembling one running app: config -> managers -> pipeline -> Flask, and taking it down."""

from __future__ import annotations

from collections.abc import Sequence

from flask import Flask

from core.base.errors import ModuleError
from core.base.hooks import APP_STARTED, APP_STOPPING, HookBus
from core.config.config import Config
from core.contracts.module import ModuleCatalog, failure_problem
from core.pipeline.pipeline import build_pipeline
from core.runtime.app_manager import AppManager
from core.runtime.manager import Manager
from core.transports.http import extension, init_http


def build_app(config: Config, managers: Sequence[Manager]) -> Flask:
    """Boot ``managers`` on ``config`` and return the Flask app serving them."""
    app_manager = AppManager(config, managers)
    flask_app = Flask("switchboard", root_path=str(config.root))
    flask_app.config["DEBUG"] = bool(config["app.debug"])
    app_manager.flask = flask_app
    app_manager.boot()
    pipeline = build_pipeline(app_manager)
    app_manager.pipeline = pipeline
    init_http(flask_app, app_manager, pipeline)
    catalog = app_manager.capability(ModuleCatalog)
    for loaded in catalog or ():
        if loaded.status != "ok":
            continue
        try:
            loaded.instance.register_routes()
        except Exception as exc:  # the module's own code: a problem, not a traceback
            app_manager.shutdown()
            raise ModuleError(
                [failure_problem(loaded.name, "register_routes", exc, loaded.manifest.path)]
            ) from exc
    hooks = app_manager.capability(HookBus)
    if hooks is not None:
        hooks.emit(APP_STARTED, app=app_manager)
    return flask_app


def shutdown_app(flask_app: Flask) -> None:
    """Fire ``app.stopping``, stop the pipeline's workers, stop managers in reverse order."""
    current = extension(flask_app)
    app_manager = current.app_manager
    hooks = app_manager.capability(HookBus)
    if hooks is not None:
        hooks.emit(APP_STOPPING, app=app_manager)
    current.pipeline.close()
    app_manager.shutdown()
