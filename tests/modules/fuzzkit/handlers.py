"""Handlers of the fuzz kit: they return what the declarations promise for any valid input."""

from __future__ import annotations

from typing import Any


def shapes(ctx: Any, *, count: int, mode: str, flag: bool, **rest: Any) -> dict[str, Any]:
    return {"count": count, "mode": mode, "flag": flag, "tags": rest.get("tags") or []}


def store(ctx: Any, *, key: str, value: Any) -> dict[str, Any]:
    notes = ctx.db.collection("fuzz_notes")
    notes.insert_one({"key": key, "value": value})
    return {"key": key, "stored": notes.count({"key": key}) > 0}
