"""memory://: the key-value store inside this process, with Redis's semantics.

For development, tests and single-process deployments: every worker process would have its
own copy, so the manager refuses it when ``http.workers`` > 1. One lock guards all data;
TTLs run on ``time.monotonic`` and an expired key is invisible at once and dropped the next
time it is touched, on ``scan``, and in a sweep every few thousand writes.
"""

from __future__ import annotations

import logging
import queue
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from managers.redis.backends import deliver, ttl_milliseconds

log = logging.getLogger("switchboard.redis")

# Redis's INCRBY accepts exactly a signed 64-bit decimal without padding or a plus sign.
_INTEGER = re.compile(rb"-?(?:0|[1-9][0-9]*)")
_INT64 = (-(2**63), 2**63 - 1)
# Keys that are never read again would otherwise stay forever (rate-limit windows of callers
# who never return): sweep expired keys once per this many writes.
_SWEEP_EVERY = 4096
_JOIN_SECONDS = 5.0


@dataclass(slots=True)
class _Entry:
    value: bytes
    expires: float | None  # self.clock() deadline


def _as_bytes(value: bytes | str) -> bytes:
    return value.encode() if isinstance(value, str) else bytes(value)


class _QueueSubscription:
    """One subscriber: its own queue and thread, so its messages arrive in publish order."""

    def __init__(
        self,
        channel: str,
        callback: Callable[[str], None],
        detach: Callable[[_QueueSubscription], None],
    ) -> None:
        self._channel = channel
        self._callback = callback
        self._detach = detach
        self._queue: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        self._closed = False
        self._lock = threading.Lock()
        self._thread = threading.Thread(
            target=self._run, name=f"sb-memory-sub:{channel}", daemon=True
        )
        self._thread.start()

    def put(self, message: str) -> None:
        self._queue.put(message)

    def _run(self) -> None:
        while (message := self._queue.get()) is not None:
            deliver(self._callback, self._channel, message)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._detach(self)  # no publish reaches the queue after this
        self._queue.put(None)
        # A callback may close its own subscription: joining itself would deadlock.
        if threading.current_thread() is not self._thread:
            self._thread.join(_JOIN_SECONDS)
            if self._thread.is_alive():
                log.warning(
                    "subscriber of %r did not finish within %ss", self._channel, _JOIN_SECONDS
                )


class MemoryStore:
    """``KeyValueStore`` in a dict; behaves like the Redis backend for the contract tests."""

    name = "memory"
    shared = False  # seen by other processes

    def __init__(self, prefix: str = "sb:") -> None:
        self._prefix = prefix
        self.clock: Callable[[], float] = time.monotonic  # TTLs
        self.wall: Callable[[], float] = time.time  # time()
        self._lock = threading.Lock()
        self._items: dict[str, _Entry] = {}
        self._channels: dict[str, list[_QueueSubscription]] = {}
        self._writes = 0

    # --- keys --------------------------------------------------------------------------

    def _live(self, key: str, now: float) -> _Entry | None:
        """The entry of a prefixed key unless expired (an expired one is dropped). Locked."""
        entry = self._items.get(key)
        if entry is not None and entry.expires is not None and entry.expires <= now:
            del self._items[key]
            return None
        return entry

    def _wrote(self, now: float) -> None:
        self._writes += 1
        if self._writes % _SWEEP_EVERY == 0:
            self._sweep(now)

    def _sweep(self, now: float) -> None:
        expired = [k for k, e in self._items.items() if e.expires is not None and e.expires <= now]
        for key in expired:
            del self._items[key]

    def get(self, key: str) -> bytes | None:
        with self._lock:
            entry = self._live(self._prefix + key, self.clock())
            return None if entry is None else entry.value

    def set(
        self, key: str, value: bytes | str, *, ttl: float | None = None, nx: bool = False
    ) -> bool:
        milliseconds = ttl_milliseconds(ttl)
        data = _as_bytes(value)
        with self._lock:
            now = self.clock()
            full = self._prefix + key
            if nx and self._live(full, now) is not None:
                return False
            expires = None if milliseconds is None else now + milliseconds / 1000
            self._items[full] = _Entry(data, expires)
            self._wrote(now)
            return True

    def delete(self, *keys: str) -> int:
        with self._lock:
            now = self.clock()
            removed = 0
            for key in keys:
                full = self._prefix + key
                if self._live(full, now) is not None:
                    del self._items[full]
                    removed += 1
            return removed

    def incr(self, key: str, amount: int = 1, *, ttl: float | None = None) -> int:
        milliseconds = ttl_milliseconds(ttl)
        with self._lock:
            now = self.clock()
            full = self._prefix + key
            entry = self._live(full, now)
            current = b"0" if entry is None else entry.value
            if not _INTEGER.fullmatch(current):
                raise ValueError(f"the value of {key!r} is not an integer")
            total = int(current) + amount
            if not _INT64[0] <= total <= _INT64[1]:
                raise ValueError(f"incrementing {key!r} would overflow a 64-bit integer")
            if entry is None:
                # Only a new key takes the TTL, so a window's expiry is fixed by its first hit.
                expires = None if milliseconds is None else now + milliseconds / 1000
                self._items[full] = _Entry(str(total).encode(), expires)
            else:
                entry.value = str(total).encode()
            self._wrote(now)
            return total

    def ttl(self, key: str) -> float | None:
        with self._lock:
            now = self.clock()
            entry = self._live(self._prefix + key, now)
            if entry is None or entry.expires is None:
                return None
            return round(entry.expires - now, 3)

    def scan(self, prefix: str) -> Iterator[str]:
        start = self._prefix + prefix
        with self._lock:
            self._sweep(self.clock())
            # A snapshot, so callers may delete while iterating (as they may with SCAN).
            found = [k[len(self._prefix) :] for k in self._items if k.startswith(start)]
        return iter(found)

    # --- pub/sub -----------------------------------------------------------------------

    def publish(self, channel: str, message: str) -> int:
        with self._lock:
            # Enqueued under the lock, so every subscriber sees concurrent publishes in the
            # same order.
            subscribers = self._channels.get(self._prefix + channel, [])
            for subscription in subscribers:
                subscription.put(message)
            return len(subscribers)

    def subscribe(self, channel: str, callback: Callable[[str], None]) -> _QueueSubscription:
        full = self._prefix + channel
        subscription = _QueueSubscription(full, callback, self._detach)
        with self._lock:
            self._channels.setdefault(full, []).append(subscription)
        return subscription

    def _detach(self, subscription: _QueueSubscription) -> None:
        with self._lock:
            for channel, subscribers in list(self._channels.items()):
                if subscription in subscribers:
                    subscribers.remove(subscription)
                    if not subscribers:
                        del self._channels[channel]

    # --- the rest ----------------------------------------------------------------------

    def ping(self) -> bool:
        return True

    def time(self) -> float:
        return self.wall()

    def use_clock(self, clock: Callable[[], float]) -> None:
        """Read time from ``clock`` from now on, for TTLs and ``time()`` (tests freeze it)."""
        self.clock = self.wall = clock

    def close(self) -> None:
        with self._lock:
            subscriptions = [s for subs in self._channels.values() for s in subs]
        for subscription in subscriptions:
            subscription.close()
        with self._lock:
            self._items.clear()
