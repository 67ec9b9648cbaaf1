"""One contract for every key-value store backend: memory:// and a real redis-server.

Every test takes the parametrised ``store`` fixture, so both backends answer the same
questions; a difference between them is a failure here, not a surprise in production.
"""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from core.base.errors import DependencyUnavailable
from managers.redis.backends import Backend, StoreOptions, open_store
from tests.servers import RedisServer

MakeStore = Callable[[str], Backend]
WAIT_SECONDS = 10.0


def eventually(predicate: Callable[[], bool], timeout: float = WAIT_SECONDS) -> bool:
    """Poll ``predicate`` until it holds or ``timeout`` passes; its last answer."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


@pytest.fixture(params=["memory", "redis"])
def make_store(request: pytest.FixtureRequest) -> Iterator[MakeStore]:
    """Open stores of one backend; each call gets ``prefix`` (unique per test for Redis)."""
    opened: list[Backend] = []
    if request.param == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")
        base = request.getfixturevalue("redis_prefix")
        url = server.url()
    else:
        base, url = "t:", "memory://"

    def make(prefix: str = "") -> Backend:
        store = open_store(StoreOptions(url=url, prefix=base + prefix, socket_timeout=2.0))
        opened.append(store)
        return store

    yield make
    for store in opened:
        store.close()


@pytest.fixture
def store(make_store: MakeStore) -> Backend:
    return make_store("")


class Collector:
    """A subscriber callback that records what it receives."""

    def __init__(self) -> None:
        self.messages: list[str] = []
        self._lock = threading.Lock()

    def __call__(self, message: str) -> None:
        with self._lock:
            self.messages.append(message)

    def got(self, expected: list[str]) -> Callable[[], bool]:
        return lambda: self.messages == expected


# --- values -----------------------------------------------------------------------------


def test_get_set_and_overwrite(store: Backend) -> None:
    assert store.get("k") is None
    assert store.set("k", b"one") is True
    assert store.get("k") == b"one"
    assert store.set("k", "twö") is True  # str is stored as UTF-8
    assert store.get("k") == "twö".encode()
    assert store.set("k", b"") is True
    assert store.get("k") == b""


def test_nx_stores_only_when_absent(store: Backend) -> None:
    assert store.set("lock", b"first", nx=True) is True
    assert store.set("lock", b"second", nx=True) is False
    assert store.get("lock") == b"first"
    assert store.delete("lock") == 1
    assert store.set("lock", b"third", nx=True, ttl=60) is True
    assert store.get("lock") == b"third"


def test_keys_expire_after_their_ttl(store: Backend) -> None:
    assert store.set("short", b"x", ttl=0.2) is True
    assert store.set("long", b"y", ttl=60) is True
    assert eventually(lambda: store.get("short") is None)
    assert store.get("long") == b"y"
    assert store.ttl("short") is None
    assert list(store.scan("short")) == []
    assert store.delete("short") == 0
    # An expired key is free again for nx and starts from zero for incr.
    assert store.set("short", b"again", nx=True) is True
    assert store.set("counter", b"41", ttl=0.2)
    assert eventually(lambda: store.get("counter") is None)
    assert store.incr("counter") == 1


def test_ttl_reports_seconds_left(store: Backend) -> None:
    assert store.ttl("missing") is None
    store.set("forever", b"1")
    assert store.ttl("forever") is None
    store.set("hundred", b"1", ttl=100)
    left = store.ttl("hundred")
    assert left is not None
    assert 90 < left <= 100


def test_set_without_ttl_removes_the_expiry(store: Backend) -> None:
    store.set("k", b"1", ttl=100)
    store.set("k", b"2")
    assert store.ttl("k") is None


@pytest.mark.parametrize("ttl", [0, -1, -0.5])
def test_a_ttl_must_be_positive(store: Backend, ttl: float) -> None:
    with pytest.raises(ValueError, match="ttl"):
        store.set("k", b"1", ttl=ttl)
    with pytest.raises(ValueError, match="ttl"):
        store.incr("k", ttl=ttl)
    assert store.get("k") is None


def test_delete_counts_the_keys_that_existed(store: Backend) -> None:
    store.set("a", b"1")
    store.set("b", b"2")
    assert store.delete("a", "b", "missing") == 2
    assert store.get("a") is None
    assert store.get("b") is None
    assert store.delete("a") == 0
    assert store.delete() == 0


# --- counters ---------------------------------------------------------------------------


def test_incr_counts_from_zero(store: Backend) -> None:
    assert store.incr("n") == 1
    assert store.incr("n", 5) == 6
    assert store.incr("n", -10) == -4
    assert store.get("n") == b"-4"
    assert store.ttl("n") is None


def test_incr_sets_the_ttl_only_when_it_creates_the_key(store: Backend) -> None:
    assert store.incr("window", ttl=100) == 1
    first = store.ttl("window")
    assert first is not None
    assert 90 < first <= 100
    assert store.incr("window", ttl=1000) == 2
    later = store.ttl("window")
    assert later is not None
    assert later <= 100  # kept, not reset to 1000
    store.set("plain", b"7")
    assert store.incr("plain", ttl=100) == 8
    assert store.ttl("plain") is None  # existed: no TTL given to it


def test_incr_of_a_non_integer_is_a_value_error(store: Backend) -> None:
    store.set("text", b"abc")
    with pytest.raises(ValueError):
        store.incr("text")
    with pytest.raises(ValueError):
        store.incr("text", ttl=10)
    assert store.get("text") == b"abc"


def test_incr_is_atomic_across_threads(store: Backend) -> None:
    threads = [
        threading.Thread(target=lambda: [store.incr("hits", ttl=60) for _ in range(200)])
        for _ in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert store.get("hits") == b"1600"


# --- scan -------------------------------------------------------------------------------


def test_scan_returns_exactly_the_keys_with_the_prefix(store: Backend) -> None:
    wanted = {f"user:1:{n}" for n in range(1200)}  # more than one SCAN page (count=500)
    for key in wanted:
        store.set(key, b"1")
    for key in ("user:10:0", "user:2:0", "user:1", "other:user:1:0"):
        store.set(key, b"1")
    found = list(store.scan("user:1:"))
    assert len(found) == len(set(found))
    assert set(found) == wanted


def test_scan_treats_glob_characters_in_the_prefix_literally(store: Backend) -> None:
    store.set("a*[b]?\\c:1", b"1")
    store.set("a*[b]?\\c:2", b"1")
    store.set("aX[b]?\\c:3", b"1")  # matched by the unescaped pattern
    store.set("ab?\\c:4", b"1")  # `[b]` as a class would match "b"
    assert sorted(store.scan("a*[b]?\\c:")) == ["a*[b]?\\c:1", "a*[b]?\\c:2"]


def test_scan_does_not_see_other_prefixes(make_store: MakeStore) -> None:
    mine, theirs = make_store("mine:"), make_store("theirs:")
    mine.set("k1", b"1")
    theirs.set("k1", b"1")
    theirs.set("k2", b"1")
    assert list(mine.scan("")) == ["k1"]
    assert sorted(theirs.scan("k")) == ["k1", "k2"]
    assert mine.get("k2") is None


# --- pub/sub ----------------------------------------------------------------------------


def test_publish_reaches_every_subscriber_in_order(store: Backend) -> None:
    first, second = Collector(), Collector()
    one = store.subscribe("news", first)
    two = store.subscribe("news", second)
    try:
        sent = [f"message {n} ✓" for n in range(50)]
        for message in sent:
            assert store.publish("news", message) == 2
        assert eventually(first.got(sent))
        assert eventually(second.got(sent))
        assert store.publish("elsewhere", "x") == 0
    finally:
        one.close()
        two.close()


def test_a_closed_subscription_receives_nothing(store: Backend) -> None:
    closed, open_ = Collector(), Collector()
    subscription = store.subscribe("news", closed)
    store.publish("news", "before")
    assert eventually(closed.got(["before"]))
    subscription.close()
    subscription.close()  # idempotent
    barrier = store.subscribe("news", open_)
    try:
        assert store.publish("news", "after") == 1
        # `open_` got "after", so a delivery to the closed one would have happened by now.
        assert eventually(open_.got(["after"]))
        assert closed.messages == ["before"]
    finally:
        barrier.close()


def test_a_failing_subscriber_keeps_receiving(store: Backend) -> None:
    seen = Collector()

    def flaky(message: str) -> None:
        seen(message)
        if message == "boom":
            raise RuntimeError("subscriber bug")

    subscription = store.subscribe("c", flaky)
    try:
        store.publish("c", "boom")
        store.publish("c", "fine")
        assert eventually(seen.got(["boom", "fine"]))
    finally:
        subscription.close()


def test_channels_are_prefixed_too(make_store: MakeStore) -> None:
    mine, theirs = make_store("mine:"), make_store("theirs:")
    foreign, own = Collector(), Collector()
    subscriptions = [theirs.subscribe("c", foreign), mine.subscribe("c", own)]
    try:
        assert mine.publish("c", "hello") == 1
        assert eventually(own.got(["hello"]))
        assert foreign.messages == []
    finally:
        for subscription in subscriptions:
            subscription.close()


# --- the rest ---------------------------------------------------------------------------


def test_ping_and_time(store: Backend) -> None:
    assert store.ping() is True
    assert abs(store.time() - time.time()) < 5


def test_close_ends_every_subscription(make_store: MakeStore) -> None:
    store = make_store("closing:")
    received = Collector()
    store.subscribe("c", received)
    store.subscribe("c", received)
    store.close()
    names = {t.name for t in threading.enumerate()}
    assert not any(
        name.startswith(("sb-memory-sub:", "sb-redis-sub:")) and "closing:" in name
        for name in names
    )


# --- memory behaves like Redis ----------------------------------------------------------

KEYS = st.sampled_from(["a", "a:1", "a:2", "b", "ab"])
OPERATIONS = st.lists(
    st.one_of(
        st.tuples(st.just("set"), KEYS, st.sampled_from([b"1", b"x", b"-3"]), st.booleans()),
        st.tuples(st.just("get"), KEYS),
        st.tuples(st.just("delete"), st.lists(KEYS, max_size=3)),
        st.tuples(st.just("incr"), KEYS, st.integers(-5, 5)),
        st.tuples(st.just("scan"), st.sampled_from(["", "a", "a:", "b"])),
    ),
    max_size=30,
)


def _apply(store: Backend, operations: list[tuple[Any, ...]]) -> list[object]:
    results: list[object] = []
    for operation in operations:
        try:
            match operation:
                case ("set", key, value, nx):
                    results.append(store.set(key, value, nx=nx))
                case ("get", key):
                    results.append(store.get(key))
                case ("delete", keys):
                    results.append(store.delete(*keys))
                case ("incr", key, amount):
                    results.append(store.incr(key, amount))
                case ("scan", prefix):
                    results.append(sorted(store.scan(prefix)))
        except ValueError:
            results.append("ValueError")
    return results


@settings(max_examples=60)
@given(operations=OPERATIONS)
def test_memory_and_redis_answer_every_sequence_alike(
    redis_server: RedisServer, operations: list[tuple[Any, ...]]
) -> None:
    prefix = f"prop:{uuid.uuid4().hex}:"
    memory = open_store(StoreOptions(url="memory://", prefix=prefix))
    real = open_store(StoreOptions(url=redis_server.url(), prefix=prefix))
    try:
        assert _apply(memory, operations) == _apply(real, operations)
    finally:
        memory.close()
        real.close()


# --- outages ----------------------------------------------------------------------------


def test_a_stopped_server_is_dependency_unavailable_until_it_returns(
    redis_server: RedisServer, redis_prefix: str
) -> None:
    store = open_store(StoreOptions(url=redis_server.url(), prefix=redis_prefix))
    received = Collector()
    subscription = store.subscribe("c", received)
    try:
        store.set("k", b"1")
        redis_server.stop()
        calls: list[Callable[[], object]] = [
            lambda: store.get("k"),
            lambda: store.set("k", b"2"),
            lambda: store.incr("n", ttl=5),
            lambda: store.delete("k"),
            lambda: list(store.scan("")),
            lambda: store.publish("c", "lost"),
            lambda: store.subscribe("c", received),
            store.ping,
            store.time,
        ]
        for call in calls:
            with pytest.raises(DependencyUnavailable) as caught:
                call()
            assert isinstance(caught.value.__cause__, RedisConnectionError)
            assert caught.value.status == 503
        redis_server.start()
        assert store.ping() is True
        assert store.set("k", b"3") is True  # the server kept nothing (no persistence)
        assert store.get("k") == b"3"

        # The old subscription reconnects and resubscribes by itself.
        def delivered() -> bool:
            store.publish("c", "back")
            return "back" in received.messages

        assert eventually(delivered, timeout=20)
    finally:
        subscription.close()
        store.close()
        if redis_server.process is None:
            redis_server.start()


def test_a_hung_server_is_dependency_unavailable_after_the_socket_timeout(
    redis_server: RedisServer, redis_prefix: str
) -> None:
    store = open_store(
        StoreOptions(url=redis_server.url(), prefix=redis_prefix, socket_timeout=0.3)
    )
    assert redis_server.process is not None
    pid = redis_server.process.pid
    os.kill(pid, signal.SIGSTOP)  # accepts connections (kernel backlog), answers nothing
    try:
        with pytest.raises(DependencyUnavailable) as caught:
            store.get("k")
        assert isinstance(caught.value.__cause__, RedisTimeoutError)
    finally:
        os.kill(pid, signal.SIGCONT)
    try:
        assert eventually(store.ping)
    finally:
        store.close()
