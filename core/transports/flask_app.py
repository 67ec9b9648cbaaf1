"""The HTTP edge's share of booting: the booted app (``core.runtime.booted``) gets the Flask
app that serves its routes, and modules add theirs."""

from __future__ import annotations

from collections.abc import Sequence

from flask import Flask

from core.base.errors import ModuleError
from core.config.config import Config
from core.contracts.module import ModuleCatalog, failure_problem
from core.runtime.booted import BootedApp, boot
from core.runtime.manager import Manager
from core.transports.http import extension, init_http


def build_runtime(config: Config, managers: Sequence[Manager]) -> BootedApp:
    """Boot ``managers`` on ``config``; the result's ``http`` is the Flask app serving it."""
    runtime = boot(config, managers)
    flask_app = Flask("switchboard", root_path=str(config.root))
    flask_app.config["DEBUG"] = bool(config["app.debug"])
    runtime.app_manager.flask = flask_app
    runtime.http = flask_app
    init_http(flask_app, runtime)
    catalog = runtime.capability(ModuleCatalog)
    for loaded in catalog or ():
        if loaded.status != "ok":
            continue
        try:
            loaded.instance.register_routes()
        except Exception as exc:  # the module's own code: a problem, not a traceback
            runtime.close()
            raise ModuleError(
                [failure_problem(loaded.name, "register_routes", exc, loaded.manifest.path)]
            ) from exc
    runtime.started()
    return runtime


def build_app(config: Config, managers: Sequence[Manager]) -> Flask:
    """Boot ``managers`` on ``config`` and return the Flask app serving them."""
    flask_app = build_runtime(config, managers).http
    assert flask_app is not None
    return flask_app


def shutdown_app(flask_app: Flask) -> None:
    """Take down the app ``flask_app`` serves (``BootedApp.close``)."""
    extension(flask_app).runtime.close()
