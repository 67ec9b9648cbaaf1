"""Handlers of the realtime test module."""

from __future__ import annotations

from typing import Any

from core.base.errors import Conflict


def say(ctx: Any, *, room: str, text: str) -> dict[str, Any]:
    ctx.realtime.emit("chat.message", {"text": text, "from": ctx.caller.id}, room=room)
    return {"sent": True}


def whisper(ctx: Any, *, user: str, text: str) -> dict[str, Any]:
    ctx.realtime.emit("chat.whisper", {"text": text}, user=user)
    return {"sent": True}


def say_then_fail(ctx: Any, *, text: str) -> dict[str, Any]:
    with ctx.db.transaction():
        ctx.db.collection("chat_log").insert_one({"text": text})
        ctx.realtime.emit("chat.message", {"text": text}, room="chat.anyone")
        raise Conflict("rolled back on purpose")


def announce(ctx: Any, *, text: str) -> dict[str, Any]:
    ctx.hooks.emit("chat.announced", {"text": text})
    return {"announced": True}


def ticket(ctx: Any, *, id: str) -> dict[str, Any]:
    ctx.state.create("chat.ticket", id)
    closed: dict[str, Any] = ctx.state.transition("chat.ticket", id, "closed")
    return closed


def count(ctx: Any, *, by: int) -> dict[str, Any]:
    total = ctx.cache.incr("chat-count", by)
    return {"total": total}


def may_join_vip(ctx: Any, room: str) -> bool:
    """Users whose email starts with "vip"."""
    if ctx.caller.kind != "user":
        return False
    user = ctx.db.collection("sb_users").find_one({"_id": ctx.caller.id})
    return user is not None and str(user["email"]).startswith("vip")
