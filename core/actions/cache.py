"""The result cache of read-only actions (``cache:`` on a handler action, or a read-only
code-free one): results kept for a ttl, keyed by the action, its validated params and,
unless public, the caller; a code-free write bumps its collection's generation.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from core.actions.actions import Invoker
from core.actions.templates import MISSING
from core.contracts.cache import call_key
from core.contracts.calls import WithMeta

if TYPE_CHECKING:
    from core.contracts.context import Context

log = logging.getLogger("switchboard.actions")


def _generation_key(collection: str) -> str:
    return f"actions:gen:{collection}"


def invalidate(ctx: Context, collection: str) -> None:
    """A code-free write: cached code-free reads of ``collection`` are stale from now on."""
    try:
        ctx.cache.incr(_generation_key(collection))
    except Exception:  # the write happened; a cache outage must not turn it into an error
        log.warning(
            "cache: could not mark %s changed; cached reads expire by their ttl",
            collection,
            exc_info=True,
        )


def cached(
    invoke: Invoker, action: str, ttl: float, *, per_caller: bool, collection: str | None
) -> Invoker:
    """``invoke`` whose results are kept ``ttl`` seconds, keyed by the action and its
    validated params (and the caller, when ``per_caller``). A cache outage is a miss."""

    def key(ctx: Context, values: Mapping[str, Any]) -> str:
        text = call_key((), values)
        if per_caller:
            text += f"|{ctx.caller.key}"
        digest = hashlib.sha256(text.encode()).hexdigest()[:40]
        generation = (
            0 if collection is None else int(ctx.cache.get_json(_generation_key(collection), 0))
        )
        return f"actions:{action}:{generation}:{digest}"

    def invoke_cached(ctx: Context, values: dict[str, Any]) -> Any:
        try:
            cache_key = key(ctx, values)
            hit = ctx.cache.get_json(cache_key, MISSING)
        except Exception:
            log.warning("cache: read failed for %s; calling through", action, exc_info=True)
            return invoke(ctx, values)
        if hit is not MISSING:
            return hit
        result = invoke(ctx, values)
        if not isinstance(result, WithMeta):
            try:
                ctx.cache.set_json(cache_key, result, ttl=ttl)
            except (TypeError, ValueError):
                pass  # not JSON: answered, not cached
            except Exception:
                log.warning("cache: write failed for %s", action, exc_info=True)
        return result

    return invoke_cached
