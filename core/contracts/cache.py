"""``ctx.cache``: JSON values with TTLs, a ``cached`` decorator and pub/sub over the app's store.

The facade works on any ``core.base.store.KeyValueStore`` (memory:// or Redis). Everything it
touches lives under its namespace (``cache:``), so a handler's ``delete_prefix("")`` can empty
the cache but never reach idempotency records, rate-limit counters or state invalidations,
which other managers keep in the same store under their own names.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Mapping
from typing import Any, ParamSpec, TypeVar

from core.base.store import KeyValueStore, Subscription

P = ParamSpec("P")
R = TypeVar("R")

NAMESPACE = "cache:"
_DELETE_BATCH = 500


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def call_key(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> str:
    """Stable JSON of a call's arguments: keyword order does not matter."""
    return json.dumps(
        [list(args), dict(kwargs)], separators=(",", ":"), sort_keys=True, ensure_ascii=False
    )


class Cache:
    """What handlers see as ``ctx.cache``; one per app, bound to that app's store."""

    def __init__(self, store: KeyValueStore, namespace: str = NAMESPACE) -> None:
        self._store = store
        self._namespace = namespace

    def _key(self, key: str) -> str:
        return self._namespace + key

    # --- values ------------------------------------------------------------------------

    def get_json(self, key: str, default: Any = None) -> Any:
        """The decoded value stored at ``key``, or ``default`` when there is none."""
        raw = self._store.get(self._key(key))
        return default if raw is None else json.loads(raw)

    def set_json(self, key: str, value: Any, ttl: float | None = None) -> None:
        """Store ``value`` as JSON; ``ttl`` in seconds (None: until deleted)."""
        self._store.set(self._key(key), _dumps(value), ttl=ttl)

    def add_json(self, key: str, value: Any, ttl: float | None = None) -> bool:
        """Store ``value`` only when ``key`` is absent; True when it was stored."""
        return self._store.set(self._key(key), _dumps(value), ttl=ttl, nx=True)

    def delete(self, *keys: str) -> int:
        """Remove keys; the number that existed."""
        return self._store.delete(*(self._key(k) for k in keys))

    def delete_prefix(self, prefix: str) -> int:
        """Remove every key starting with ``prefix`` (SCAN, batched DEL); the number removed."""
        removed = 0
        batch: list[str] = []
        for key in self._store.scan(self._key(prefix)):
            batch.append(key)
            if len(batch) == _DELETE_BATCH:
                removed += self._store.delete(*batch)
                batch.clear()
        if batch:
            removed += self._store.delete(*batch)
        return removed

    def incr(self, key: str, amount: int = 1, *, ttl: float | None = None) -> int:
        """Add ``amount`` (a missing key counts as 0); ``ttl`` applies when the key is new."""
        return self._store.incr(self._key(key), amount, ttl=ttl)

    def ttl(self, key: str) -> float | None:
        """Seconds ``key`` has left; None when it is missing or does not expire."""
        return self._store.ttl(self._key(key))

    # --- pub/sub -----------------------------------------------------------------------

    def publish(self, channel: str, message: str | Mapping[str, Any]) -> int:
        """Send ``message`` (a mapping is sent as JSON); the number of subscribers reached."""
        text = message if isinstance(message, str) else _dumps(message)
        return self._store.publish(self._key(channel), text)

    def subscribe(self, channel: str, callback: Callable[[str], None]) -> Subscription:
        """Call ``callback(message: str)`` on a background thread; ``close()`` the result."""
        return self._store.subscribe(self._key(channel), callback)

    # --- memoisation -------------------------------------------------------------------

    def cached(
        self, ttl: float, key: Callable[..., str] | None = None
    ) -> Callable[[Callable[P, R]], Callable[P, R]]:
        """Decorator: keep a function's JSON result in this cache for ``ttl`` seconds.

        The key is ``<module>.<qualname>:<stable JSON of the arguments>``, or
        ``<module>.<qualname>:<key(*args, **kwargs)>`` with ``key``; arguments must be JSON
        values unless ``key`` is given. A cached ``None`` is a hit. Every call returns the
        result as decoded from JSON (a tuple comes back as a list), cached or not.
        """
        if ttl <= 0:
            raise ValueError(f"cached(ttl) needs a positive number of seconds, got {ttl!r}")

        def decorate(function: Callable[P, R]) -> Callable[P, R]:
            # The module is part of the name: two modules' `handlers.lookup` must not share.
            name = f"{function.__module__}.{function.__qualname__}"

            @functools.wraps(function)
            def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
                if key is not None:
                    suffix = key(*args, **kwargs)
                else:
                    try:
                        suffix = call_key(args, kwargs)
                    except TypeError as exc:
                        raise TypeError(
                            f"cached {name}(): arguments are not JSON values ({exc}); "
                            "pass key=... to cached()"
                        ) from None
                full = self._key(f"{name}:{suffix}")
                raw = self._store.get(full)
                if raw is not None:
                    result: R = json.loads(raw)
                    return result
                text = _dumps(function(*args, **kwargs))
                self._store.set(full, text, ttl=ttl)
                # What a later hit will return (a tuple becomes a list), so that every call,
                # first or not, in this worker or another, sees the same value.
                fresh: R = json.loads(text)
                return fresh

            return wrapper

        return decorate
