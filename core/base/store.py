"""The key-value store behind the ``redis`` manager: memory:// or a real Redis server.

Everything that must be shared between worker processes (cache, idempotency records,
state cache and invalidations, token denylist, rate-limit counters) goes through this
interface, so the in-process backend and Redis behave the same to their callers. Keys and
channels are given without the configured prefix; backends add it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Protocol


class Subscription(Protocol):
    """A live subscription; ``close()`` stops delivery (idempotent)."""

    def close(self) -> None: ...


class KeyValueStore(Protocol):
    """Bytes in, bytes out; TTLs in seconds (floats allowed, millisecond precision)."""

    shared: bool  # whether other processes (workers, the CLI) see what it holds

    def get(self, key: str) -> bytes | None: ...

    def set(
        self, key: str, value: bytes | str, *, ttl: float | None = None, nx: bool = False
    ) -> bool:
        """Store ``value``; with ``nx`` only when the key is absent. True when stored."""
        ...

    def delete(self, *keys: str) -> int:
        """Remove keys; the number that existed."""
        ...

    def incr(self, key: str, amount: int = 1, *, ttl: float | None = None) -> int:
        """Add ``amount`` (a missing key counts as 0); ``ttl`` is set when the key is new."""
        ...

    def ttl(self, key: str) -> float | None:
        """Seconds left; None when the key is missing or has no expiry."""
        ...

    def scan(self, prefix: str) -> Iterator[str]:
        """Keys starting with ``prefix`` (without the store prefix), by SCAN, never KEYS."""
        ...

    def publish(self, channel: str, message: str) -> int: ...

    def subscribe(self, channel: str, callback: Callable[[str], None]) -> Subscription:
        """Call ``callback(message)`` on a background thread for each message."""
        ...

    def ping(self) -> bool: ...

    def time(self) -> float:
        """The store's clock in seconds (Redis: TIME), for limits shared across workers."""
        ...
