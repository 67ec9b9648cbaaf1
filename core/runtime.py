"""Assembling one running app: config -> managers -> pipeline -> Flask, and taking it down."""

from __future__ import annotations

from collections.abc import Sequence

from flask import Flask

from core.app_manager import AppManager
from core.config import Config
from core.hooks import APP_STARTED, APP_STOPPING, HookEmitter
from core.http import init_http, state
from core.idempotency import Idempotency
from core.identity import credential_identifier
from core.manager import Manager
from core.pipeline import ActionRegistry, ModuleAvailability, Pipeline


def build_app(config: Config, managers: Sequence[Manager]) -> Flask:
    """Boot ``managers`` on ``config`` and return the Flask app serving them."""
    app_manager = AppManager(config, managers)
    flask_app = Flask("switchboard", root_path=str(config.root))
    flask_app.config["DEBUG"] = bool(config["app.debug"])
    app_manager.flask = flask_app
    app_manager.boot()
    hooks: HookEmitter | None = app_manager.get("hooks") if app_manager.has("hooks") else None
    registry: ActionRegistry = app_manager.get("actions")
    modules: ModuleAvailability = app_manager.get("modules")
    idempotency = None
    if app_manager.has("redis"):
        idempotency = Idempotency(app_manager.get("redis").store, config["idempotency.ttl"])
    identify = credential_identifier(
        app_manager.get("jwt") if app_manager.has("jwt") else None,
        app_manager.get("api_keys") if app_manager.has("api_keys") else None,
    )
    pipeline = Pipeline(
        app_manager,
        registry=registry,
        modules=modules,
        hooks=hooks,
        identify=identify,
        idempotency=idempotency,
        limiter=app_manager.get("rate_limiter") if app_manager.has("rate_limiter") else None,
    )
    init_http(flask_app, app_manager, pipeline)
    register_routes = getattr(modules, "register_routes", None)
    if callable(register_routes):
        register_routes()
    if hooks is not None:
        hooks.emit(APP_STARTED, app=app_manager)
    return flask_app


def shutdown_app(flask_app: Flask) -> None:
    """Fire ``app.stopping``, stop the pipeline's workers, stop managers in reverse order."""
    current = state(flask_app)
    app_manager = current.app_manager
    if app_manager.has("hooks"):
        hooks: HookEmitter = app_manager.get("hooks")
        hooks.emit(APP_STOPPING, app=app_manager)
    current.pipeline.close()
    app_manager.shutdown()
