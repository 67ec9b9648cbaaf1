"""Handlers of the ratelimit module."""

from __future__ import annotations

import time
from typing import Any

from core.errors import NotFound


def bans(ctx: Any) -> list[dict[str, Any]]:
    listed: list[dict[str, Any]] = ctx.rate_limiter.bans()
    return [
        {**ban, "until_iso": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ban["until"]))}
        for ban in listed
    ]


def unban(ctx: Any, *, identity: str) -> dict[str, Any]:
    if not ctx.rate_limiter.unban(identity):
        raise NotFound(f"{identity!r} is not banned")
    return {"identity": identity, "unbanned": True}
