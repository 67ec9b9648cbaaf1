"""The command connections of the Redis store: redis-py's, reused without a poll.

redis-py's pools ask the socket whether it holds unread data on every checkout (one
``poll`` syscall per command) and wrap every command in retry and event machinery; on the
request path that cost about as much CPU as the round trip itself. Here a connection goes
back on the stack only after its reply was read completely, so it never holds unread data;
a connection that failed is dropped. redis-py still does the protocol (hiredis parsing,
TLS, AUTH, the health-check PING of an idle connection).
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Sequence
from typing import Any

import redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError
from redis.exceptions import TimeoutError as RedisTimeoutError


class Connections:
    """At most ``size`` connections made by ``factory``'s class and settings, LIFO."""

    def __init__(self, factory: redis.ConnectionPool, size: int, timeout: float) -> None:
        self._factory = factory
        self._idle: list[Any] = []
        self._all: set[Any] = set()
        self._size = size
        self._lock = threading.Lock()
        self._freed = threading.Condition(self._lock)  # waited on only when all are busy
        self._waiting = 0
        self._timeout = timeout

    def _take(self) -> tuple[Any, bool]:
        """(connection, whether it was used before): an idle one, or a new one while fewer
        than ``size`` exist, or the first one freed within ``timeout``."""
        deadline = time.monotonic() + self._timeout
        with self._lock:
            while True:
                if self._idle:
                    return self._idle.pop(), True
                if len(self._all) < self._size:
                    factory = self._factory
                    connection = factory.connection_class(**factory.connection_kwargs)
                    self._all.add(connection)
                    return connection, False
                left = deadline - time.monotonic()
                if left <= 0:
                    raise RedisTimeoutError("no free Redis connection")
                self._waiting += 1
                try:
                    self._freed.wait(left)
                finally:
                    self._waiting -= 1

    def _release(self, connection: Any) -> None:
        with self._lock:
            self._idle.append(connection)
            if self._waiting:
                self._freed.notify()

    def _drop(self, connection: Any) -> None:
        with self._lock:
            self._all.discard(connection)
            if self._waiting:
                self._freed.notify()  # room for a new connection
        connection.disconnect()

    def execute(self, *args: Any) -> Any:
        """Send one command and read its reply; a stale pooled connection (the server
        restarted, an idle timeout) is retried once on a new one. Timeouts are not retried:
        a hung server would only double the wait before the caller's 503."""
        connection, retry = self._take()  # a pooled socket may have gone stale: retry once
        while True:
            try:
                connection.send_command(*args)
                reply = connection.read_response()
            except RedisConnectionError:
                self._drop(connection)
                if not retry:
                    raise
                connection, _ = self._take()
                retry = False
                continue
            except RedisTimeoutError:
                self._drop(connection)
                raise
            except redis.ResponseError:
                self._release(connection)  # the whole (error) reply was read
                raise
            except BaseException:
                self._drop(connection)  # interrupted mid-reply: unusable
                raise
            self._release(connection)
            return reply

    def close(self) -> None:
        with self._lock:
            connections, self._all, self._idle = list(self._all), set(), []
        for connection in connections:
            connection.disconnect()


class Script:
    """A Lua script run by EVALSHA, loaded on first use and again after a server restart."""

    def __init__(self, connections: Connections, source: str) -> None:
        self._connections = connections
        self._source = source
        self._sha = hashlib.sha1(source.encode()).hexdigest()

    def __call__(self, keys: Sequence[str], args: Sequence[Any]) -> Any:
        command = ("EVALSHA", self._sha, len(keys), *keys, *args)
        try:
            return self._connections.execute(*command)
        except NoScriptError:
            self._connections.execute("SCRIPT", "LOAD", self._source)
            return self._connections.execute(*command)
