"""executions.show / list / cancel: the executions manager's records, as their caller sees
them (``ctx.executions`` is the manager: this module requires it)."""

from __future__ import annotations

from typing import Any


def show(ctx: Any, *, id: str) -> Any:
    return ctx.executions.show(ctx.caller, id)


def listing(
    ctx: Any,
    *,
    action: str | None = None,
    status: str | None = None,
    caller: str | None = None,
    limit: int = 20,
    cursor: str | None = None,
) -> Any:
    return ctx.executions.listing(
        ctx.caller, action=action, status=status, of=caller, limit=limit, cursor=cursor
    )


def cancel(ctx: Any, *, id: str) -> Any:
    return ctx.executions.cancel(ctx.caller, id)
