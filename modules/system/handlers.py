"""Handlers of the system module."""

from __future__ import annotations

import time
from typing import Any

from core.module import VERSION


def ping(ctx: Any) -> dict[str, bool]:
    return {"pong": True}


def echo(ctx: Any, *, message: str) -> dict[str, str]:
    return {"message": message}


def info(ctx: Any) -> dict[str, Any]:
    modules = ctx.modules
    system = modules.get("system")
    started = getattr(system.instance, "started_at", 0.0) if system else 0.0
    info: dict[str, Any] = {
        "name": ctx.config["app.name"],
        "version": VERSION,
        "uptime_seconds": round(time.monotonic() - started, 3),
        "modules": [
            {"name": m.name, "version": m.manifest.version, "status": m.status} for m in modules
        ],
    }
    if not ctx.config.is_production:  # anyone may call this: production says less
        info["env"] = ctx.config.env
    try:
        info["realtime_url"] = ctx.realtime.url  # what a Socket.IO client connects to
    except AttributeError:  # an app without the realtime manager
        info["realtime_url"] = None
    return info
