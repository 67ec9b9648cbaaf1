"""``serve``: the app under gunicorn (threaded workers), with a clean shutdown per worker."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flask import Flask
from gunicorn.app.base import BaseApplication

from core.config import Config
from core.runtime import shutdown_app


class _Server(BaseApplication):  # type: ignore[misc]  # gunicorn ships no type hints
    def __init__(self, factory: Callable[[], Flask], options: dict[str, Any]) -> None:
        self._factory = factory
        self._options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self._options.items():
            self.cfg.set(key, value)

    def load(self) -> Flask:
        return self._factory()


def _worker_exit(_server: Any, worker: Any) -> None:
    app = getattr(worker, "wsgi", None)
    if isinstance(app, Flask):
        shutdown_app(app)


def serve(config: Config, factory: Callable[[], Flask]) -> None:
    """Serve ``factory()`` per worker process on ``http.host:http.port`` until signalled."""
    options: dict[str, Any] = {
        "bind": f"{config['http.host']}:{config['http.port']}",
        "workers": config["http.workers"],
        "threads": config["http.threads"],
        "worker_class": "gthread",
        "graceful_timeout": max(1, round(config["shutdown.grace"])),  # gunicorn wants whole seconds
        "timeout": 60,
        "accesslog": None,
        "errorlog": "-",
        "loglevel": str(config["logging.level"]).lower(),
        "control_socket_disable": True,
        "worker_exit": _worker_exit,
        "proc_name": config["app.name"],
    }
    _Server(factory, options).run()
