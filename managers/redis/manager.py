"""RedisManager: the app's shared key-value store (memory:// or Redis) and ``ctx.cache``.

The cache, rate limiter, token denylist and idempotency records all keep their
data in ``manager.store``, so whatever must be shared between worker processes is, as soon as
``redis.url`` points at a real server. The backend is picked by the URL's scheme from
``managers.redis.backends.BACKENDS``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, ClassVar, TypeVar, cast

from core.base.errors import ConfigError, DependencyUnavailable, Problem
from core.base.store import KeyValueStore
from core.config.settings import Setting, duration, integer, text
from core.contracts.cache import Cache
from core.manager import Health, Manager
from managers.redis.backends import SETTING, Backend, StoreOptions, open_store, scheme_of
from managers.redis.backends.memory import MemoryStore

if TYPE_CHECKING:
    from core.config.config import Config
    from core.manager import App

T = TypeVar("T")
_OWNER = "manager redis"


class RedisManager(Manager):
    """Owns the store: opened and checked at boot, closed (with its subscriptions) at stop."""

    name = "redis"
    requires = ("config",)
    provides: ClassVar[tuple[type, ...]] = (KeyValueStore,)
    facade = "cache"
    settings: ClassVar[tuple[Setting, ...]] = (
        Setting(
            "redis.url",
            text,
            "memory://",
            "memory:// (in-process, one worker only), redis://… or rediss://…",
            alias="REDIS_URL",
            secret=True,
            owner=_OWNER,
        ),
        Setting(
            "redis.prefix",
            text,
            "sb:",
            "Prefix of every key and channel Switchboard uses",
            owner=_OWNER,
        ),
        Setting(
            "redis.pool_size",
            integer,
            20,
            "Redis connections per worker process",
            minimum=1,
            owner=_OWNER,
        ),
        Setting(
            "redis.socket_timeout",
            duration,
            2.0,
            "Redis socket connect/read timeout",
            owner=_OWNER,
        ),
    )

    @classmethod
    def production_problems(cls, config: Config) -> list[Problem]:
        if scheme_of(str(config["redis.url"])) == "memory" and config["http.workers"] > 1:
            return [
                Problem(
                    "memory:// keeps limits, revocations and idempotency records "
                    "inside one process: set REDIS_URL to a Redis server, or "
                    "http.workers to 1",
                    field="redis.url",
                )
            ]
        return []

    def __init__(self) -> None:
        self._backend: Backend | None = None
        self._cache: Cache | None = None

    def use_clock(self, clock: Callable[[], float]) -> None:
        if isinstance(self._backend, MemoryStore):
            self._backend.use_clock(clock)

    def start(self, app: App) -> None:
        config = app.config
        url = str(config["redis.url"])
        workers = int(config["http.workers"])
        if scheme_of(url) == "memory" and workers > 1:
            raise ConfigError(
                [
                    Problem(
                        f"memory:// keeps data inside one process, but http.workers is {workers}: "
                        "each worker would have its own cache, rate limits and idempotency "
                        "records. Set REDIS_URL to a Redis server (redis://host:6379/0)",
                        field=SETTING,
                    )
                ]
            )
        backend = open_store(
            StoreOptions(
                url=url,
                prefix=str(config["redis.prefix"]),
                pool_size=int(config["redis.pool_size"]),
                socket_timeout=float(config["redis.socket_timeout"]),
            )
        )
        self._backend = backend
        self._cache = Cache(backend)

    @property
    def store(self) -> KeyValueStore:
        """The key-value store, for other managers (keys without the configured prefix)."""
        if self._backend is None:
            raise self.not_started()
        return self._backend

    def capability(self, kind: type[T]) -> T:
        return cast(T, self.store)

    def facade_for(self, module: str) -> Cache:
        """``ctx.cache``."""
        if self._cache is None:
            raise self.not_started()
        return self._cache

    def health(self) -> Health:
        backend = self._backend
        if backend is None:
            return Health("failed", {"error": "not started"})
        try:
            backend.ping()
        except DependencyUnavailable as exc:
            cause = exc.__cause__ or exc
            return Health("failed", {"backend": backend.name, "error": type(cause).__name__})
        return Health("ok", {"backend": backend.name})

    def stop(self) -> None:
        backend, self._backend, self._cache = self._backend, None, None
        if backend is not None:
            backend.close()
