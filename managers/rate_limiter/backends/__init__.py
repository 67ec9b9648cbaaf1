"""Rate limiting: the GCRA (``gcra.py``) apart from where its state lives (the backends).

``BACKENDS`` is the explicit registry: the name of the ``redis`` manager's store (so the
scheme of ``redis.url``) -> a factory of the limiter backend that keeps its state beside
it. ``memory`` keeps it in this process; ``redis`` runs one Lua script per check on the
server. Both implement ``base.LimiterBackend``, and one contract test table
(tests/test_rate_limits.py) runs them both.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from core.base.errors import ConfigError, Problem
from core.base.store import KeyValueStore
from managers.rate_limiter.backends.base import Clock, LimiterBackend

LimiterFactory = Callable[[KeyValueStore, Clock], LimiterBackend]


def _memory(store: KeyValueStore, clock: Clock) -> LimiterBackend:
    from managers.rate_limiter.backends.memory import MemoryLimiter

    return MemoryLimiter(clock, store)


def _redis(store: KeyValueStore, clock: Clock) -> LimiterBackend:
    # The server's TIME times every check: ``clock`` only serves the memory backends.
    from managers.rate_limiter.backends.redis_lua import RedisLimiter, ScriptingStore

    if not isinstance(store, ScriptingStore):
        raise ConfigError([Problem("the redis store cannot run Lua scripts", field="redis.url")])
    return RedisLimiter(store, store)


BACKENDS: Mapping[str, LimiterFactory] = {"memory": _memory, "redis": _redis}


def open_limiter(store: KeyValueStore, clock: Clock) -> LimiterBackend:
    """The limiter backend for the store the ``redis`` manager opened."""
    name = str(getattr(store, "name", ""))
    factory = BACKENDS.get(name)
    if factory is None:
        known = ", ".join(BACKENDS)
        raise ConfigError(
            [Problem(f"no rate limiter for the {name!r} store (known: {known})", field="redis.url")]
        )
    return factory(store, clock)
