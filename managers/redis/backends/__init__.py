"""Backends of the ``redis`` manager's key-value store, chosen by the scheme of ``redis.url``.

``BACKENDS`` is the explicit registry: scheme -> factory. A factory imports its backend module
(and so its client library) only when that scheme is configured, so ``memory://`` never needs
redis-py. Every backend implements ``core.base.store.KeyValueStore`` plus ``name`` and ``close()``
(``Backend`` below), and one contract test table (tests/test_store_contract.py) runs them all.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol
from urllib.parse import urlsplit

from core.base.errors import ConfigError, Problem
from core.base.store import KeyValueStore

log = logging.getLogger("switchboard.redis")

SETTING = "redis.url"


class Backend(KeyValueStore, Protocol):
    """A store the manager owns: ``name`` for health, ``close()`` for shutdown."""

    name: str

    def close(self) -> None:
        """Close pools and every subscription (their threads joined); idempotent."""
        ...


@dataclass(frozen=True)
class StoreOptions:
    """What a backend factory is given; ``url`` may hold a password, so it is not in repr."""

    url: str = field(repr=False)
    prefix: str = "sb:"
    pool_size: int = 20
    socket_timeout: float = 2.0


BackendFactory = Callable[[StoreOptions], Backend]


def _memory(options: StoreOptions) -> Backend:
    from managers.redis.backends.memory import MemoryStore

    return MemoryStore(prefix=options.prefix)


def _redis(options: StoreOptions) -> Backend:
    try:
        from managers.redis.backends.redis_server import RedisStore
    except ImportError as exc:  # the client library is optional until a redis:// URL is set
        if not (exc.name or "").startswith("redis"):
            raise  # a broken import of our own, not a missing client
        raise ConfigError(
            [
                Problem(
                    f"{scheme_of(options.url)}:// needs the redis package ({exc.name} is "
                    "missing): pip install 'redis>=5'",
                    field=SETTING,
                )
            ]
        ) from None
    return RedisStore.connect(options)


BACKENDS: Mapping[str, BackendFactory] = {
    "memory": _memory,
    "redis": _redis,
    "rediss": _redis,
}


def scheme_of(url: str) -> str | None:
    """The URL's scheme, or None when it has none (never more of the URL than that)."""
    scheme, separator, _ = url.partition("://")
    if not separator or not scheme.isascii() or not scheme.replace("+", "").isalnum():
        return None
    return scheme.lower()


def redacted(url: str) -> str:
    """``scheme://host:port`` of a URL, for messages: no user, password, path or query."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return f"{scheme_of(url)}://(unparseable address)"
    host = parts.hostname or "(no host)"
    return f"{parts.scheme}://{host}" + (f":{port}" if port else "")


def open_store(options: StoreOptions) -> Backend:
    """Build the backend ``options.url`` names; ``ConfigError`` naming redis.url otherwise."""
    scheme = scheme_of(options.url)
    factory = BACKENDS.get(scheme or "")
    if factory is None:
        expected = ", ".join(f"{name}://" for name in BACKENDS)
        # Name only the scheme: the rest of the URL may hold a password.
        found = f"has the unknown scheme {scheme!r}" if scheme else "has no scheme"
        raise ConfigError(
            [Problem(f"REDIS_URL {found}; expected one of {expected}", field=SETTING)]
        )
    return factory(options)


def ttl_milliseconds(ttl: float | None) -> int | None:
    """A TTL in whole milliseconds (at least 1), as both backends round it the same way."""
    if ttl is None:
        return None
    if ttl <= 0:
        raise ValueError(f"ttl must be a positive number of seconds, got {ttl!r}")
    return max(1, round(ttl * 1000))


def deliver(callback: Callable[[str], None], channel: str, message: str) -> None:
    """Call one subscriber; its failure is logged and never ends the delivery thread."""
    try:
        callback(message)
    except Exception:  # isolation: a broken subscriber must not stop later messages
        log.exception("subscriber %r of channel %r failed", callback, channel)
