"""redis:// and rediss://: the key-value store on a Redis server, shared by every worker.

Imported only when one of those schemes is configured (see ``BACKENDS``). Every command runs
through ``_translated()``: a server that is down or too slow becomes ``DependencyUnavailable``
(503) for the caller, never a 500. Pub/sub is Redis's: fire-and-forget, so a message
published while a subscriber is reconnecting is lost, and subscribers must tolerate that.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Protocol, cast

import redis
from redis.backoff import NoBackoff
from redis.client import PubSub
from redis.exceptions import (
    AuthenticationError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisError,
    ResponseError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from core.base.errors import ConfigError, DependencyUnavailable, Problem
from managers.redis.backends import SETTING, StoreOptions, deliver, redacted, ttl_milliseconds
from managers.redis.backends.redis_connections import Connections, Script

log = logging.getLogger("switchboard.redis")

_UNAVAILABLE = (RedisConnectionError, RedisTimeoutError)
# A pooled connection idle this long is PINGed before use, so a restarted server or a
# dropped NAT mapping is noticed before a command is sent on a dead socket.
HEALTH_CHECK_SECONDS = 15
_POLL_SECONDS = 0.2  # how often a subscriber thread looks at its stop flag
_RECONNECT_FIRST, _RECONNECT_MAX = 0.1, 5.0
_JOIN_SECONDS = 5.0
_SCAN_COUNT = 500
_GLOB_SPECIAL = re.compile(r"([*?\[\]\\])")

# EXISTS then INCRBY in one atomic step: the TTL is set only when this call created the key,
# so a rate-limit window keeps the expiry its first hit gave it (PEXPIRE NX would also set
# one on an existing key that has none).
_INCR_WITH_TTL = """
local created = redis.call('EXISTS', KEYS[1]) == 0
local total = redis.call('INCRBY', KEYS[1], ARGV[1])
if created then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return total
"""


class _Subscriber(Protocol):
    """redis.Redis as the subscriptions use it (redis-py leaves ``pubsub`` untyped)."""

    def pubsub(self) -> PubSub: ...

    @property
    def connection_pool(self) -> redis.ConnectionPool: ...


@contextmanager
def _translated() -> Iterator[None]:
    try:
        yield
    except _UNAVAILABLE as exc:
        raise DependencyUnavailable("redis is unavailable") from exc


def glob_escape(text: str) -> str:
    """``text`` as a literal inside a SCAN MATCH pattern."""
    return _GLOB_SPECIAL.sub(r"\\\1", text)


def _text(data: Any) -> str:
    return data.decode() if isinstance(data, bytes) else str(data)


class _PubSubSubscription:
    """One subscriber: its own PubSub connection and thread, reconnecting after outages."""

    def __init__(
        self,
        pubsub: PubSub,
        channel: str,
        callback: Callable[[str], None],
        forget: Callable[[_PubSubSubscription], None],
    ) -> None:
        self._pubsub = pubsub
        self._channel = channel
        self._callback = callback
        self._forget = forget
        self._stopped = threading.Event()
        self._lock = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(
            target=self._run, name=f"sb-redis-sub:{channel}", daemon=True
        )
        self._thread.start()

    def _run(self) -> None:
        pause = _RECONNECT_FIRST
        while not self._stopped.is_set():
            try:
                message = self._pubsub.get_message(timeout=_POLL_SECONDS)
            except _UNAVAILABLE as exc:
                # redis-py reconnects (and resubscribes) on the next read; back off meanwhile.
                log.warning(
                    "subscription to %r lost Redis (%s); retrying in %.1fs",
                    self._channel,
                    type(exc).__name__,
                    pause,
                )
                self._stopped.wait(pause)
                pause = min(pause * 2, _RECONNECT_MAX)
                continue
            pause = _RECONNECT_FIRST
            if message is not None and message["type"] == "message":
                deliver(self._callback, self._channel, _text(message["data"]))

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._stopped.set()
        # A callback may close its own subscription: joining itself would deadlock.
        if threading.current_thread() is not self._thread:
            self._thread.join(_JOIN_SECONDS)
        self._forget(self)
        self._pubsub.close()  # disconnects locally; sends nothing, so it cannot fail


class RedisStore:
    """``KeyValueStore`` on a Redis server; keys and channels carry ``prefix``."""

    name = "redis"
    shared = True  # seen by other processes

    def __init__(
        self, commands: Connections, subscriber: redis.Redis, *, prefix: str, timeout: float
    ) -> None:
        self._commands = commands
        self._execute = commands.execute
        self._subscriber = cast(_Subscriber, subscriber)
        self._prefix = prefix
        self._prefix_bytes = len(prefix.encode())
        self._timeout = timeout
        self._incr_with_ttl = Script(commands, _INCR_WITH_TTL)
        self._subscriptions: set[_PubSubSubscription] = set()
        self._lock = threading.Lock()

    @classmethod
    def connect(cls, options: StoreOptions) -> RedisStore:
        """Pools for commands and for subscriptions, then PING: a dead server fails the boot."""
        where = redacted(options.url)
        common: dict[str, Any] = {
            "socket_timeout": options.socket_timeout,
            "socket_connect_timeout": options.socket_timeout,
            "health_check_interval": HEALTH_CHECK_SECONDS,
            # One immediate retry on a fresh connection covers a socket the server closed
            # (restart, idle timeout). Timeouts are not retried: a hung server would double
            # the wait before the 503, and more retries would only delay it further.
            "retry": Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
        }
        try:
            # Under a burst a call waits up to socket_timeout for a free connection instead
            # of failing at once.
            commands = Connections(
                redis.ConnectionPool.from_url(options.url, **common),
                options.pool_size,
                options.socket_timeout,
            )
            # Each subscription holds a connection for its lifetime: a separate, unbounded
            # pool keeps subscribers from starving commands of pool_size.
            subscriptions = redis.ConnectionPool.from_url(options.url, **common)
        except ValueError:  # its message may quote parts of the URL
            raise ConfigError(
                [Problem(f"REDIS_URL is not a valid Redis URL ({where})", field=SETTING)]
            ) from None
        store = cls(
            commands,
            redis.Redis(connection_pool=subscriptions),
            prefix=options.prefix,
            timeout=options.socket_timeout,
        )
        try:
            commands.execute("PING")
        except AuthenticationError as exc:
            store.close()
            raise ConfigError(
                [
                    Problem(
                        f"Redis at {where} refused the credentials in REDIS_URL "
                        f"({type(exc).__name__})",
                        field=SETTING,
                    )
                ]
            ) from exc
        except RedisError as exc:
            store.close()
            raise ConfigError(
                [
                    Problem(
                        f"Redis is unreachable at {where} ({type(exc).__name__}): start it or "
                        "point REDIS_URL at a running server",
                        field=SETTING,
                    )
                ]
            ) from exc
        return store

    # --- keys --------------------------------------------------------------------------

    def get(self, key: str) -> bytes | None:
        with _translated():
            reply: bytes | None = self._execute("GET", self._prefix + key)
        return reply

    def set(
        self, key: str, value: bytes | str, *, ttl: float | None = None, nx: bool = False
    ) -> bool:
        milliseconds = ttl_milliseconds(ttl)
        command: list[Any] = ["SET", self._prefix + key, value]
        if milliseconds is not None:
            command += ["PX", milliseconds]
        if nx:
            command.append("NX")
        with _translated():
            # One SET with PX and NX: value, expiry and the existence check are atomic.
            return self._execute(*command) is not None

    def delete(self, *keys: str) -> int:
        if not keys:
            return 0  # DEL without arguments is a Redis error
        with _translated():
            return int(self._execute("DEL", *(self._prefix + k for k in keys)))

    def incr(self, key: str, amount: int = 1, *, ttl: float | None = None) -> int:
        milliseconds = ttl_milliseconds(ttl)
        full = self._prefix + key
        try:
            with _translated():
                if milliseconds is None:
                    return int(self._execute("INCRBY", full, amount))
                return int(self._incr_with_ttl([full], [amount, milliseconds]))
        except ResponseError as exc:  # not an integer, or overflow: the memory backend's error
            raise ValueError(f"cannot increment {key!r}: {exc}") from exc

    def ttl(self, key: str) -> float | None:
        with _translated():
            milliseconds = int(self._execute("PTTL", self._prefix + key))
        return None if milliseconds < 0 else milliseconds / 1000  # -2 missing, -1 no expiry

    def scan(self, prefix: str) -> Iterator[str]:
        pattern = glob_escape(self._prefix + prefix) + "*"
        seen: set[bytes] = set()
        cursor: bytes | int = 0
        while True:
            with _translated():
                cursor, keys = self._execute("SCAN", cursor, "MATCH", pattern, "COUNT", _SCAN_COUNT)
            for key in keys:
                # SCAN may return a key twice (when the table rehashes mid-scan).
                if key not in seen:
                    seen.add(key)
                    yield key[self._prefix_bytes :].decode()
            if int(cursor) == 0:
                return

    # --- pub/sub -----------------------------------------------------------------------

    def publish(self, channel: str, message: str) -> int:
        with _translated():
            return int(self._execute("PUBLISH", self._prefix + channel, message))

    def subscribe(self, channel: str, callback: Callable[[str], None]) -> _PubSubSubscription:
        full = self._prefix + channel
        pubsub = self._subscriber.pubsub()
        try:
            with _translated():
                pubsub.subscribe(full)  # type: ignore[no-untyped-call]  # untyped in redis-py
                self._confirm(pubsub)
        except BaseException:
            pubsub.close()
            raise
        subscription = _PubSubSubscription(pubsub, full, callback, self._forget)
        with self._lock:
            self._subscriptions.add(subscription)
        return subscription

    def _confirm(self, pubsub: PubSub) -> None:
        """Wait for the server's subscribe reply, so a publish right after us reaches us."""
        deadline = time.monotonic() + self._timeout
        while (left := deadline - time.monotonic()) > 0:
            reply = pubsub.get_message(timeout=left)
            if reply is not None and reply["type"] == "subscribe":
                return
        raise RedisTimeoutError("no reply to SUBSCRIBE")

    def _forget(self, subscription: _PubSubSubscription) -> None:
        with self._lock:
            self._subscriptions.discard(subscription)

    # --- scripts -----------------------------------------------------------------------

    def script(self, source: str) -> Callable[[Sequence[str], Sequence[Any]], Any]:
        """A Lua script, run as ``run(keys, args)``: EVALSHA, loaded on first use and again
        after a server restart. Keys get the prefix. A server that is down, read-only or out
        of memory is ``DependencyUnavailable``."""
        script = Script(self._commands, source)
        prefix = self._prefix

        def run(keys: Sequence[str], args: Sequence[Any]) -> Any:
            try:
                with _translated():
                    return script([prefix + k for k in keys], args)
            except (ReadOnlyError, OutOfMemoryError) as exc:
                raise DependencyUnavailable("redis cannot run the script") from exc

        return run

    # --- the rest ----------------------------------------------------------------------

    def ping(self) -> bool:
        with _translated():
            return self._execute("PING") is not None

    def time(self) -> float:
        with _translated():
            seconds, microseconds = self._execute("TIME")
        return int(seconds) + int(microseconds) / 1_000_000

    def close(self) -> None:
        with self._lock:
            subscriptions = list(self._subscriptions)
        for subscription in subscriptions:
            subscription.close()
        self._commands.close()
        self._subscriber.connection_pool.disconnect()
