"""``ctx.cache`` and the RedisManager through real apps, on memory:// and a real redis-server."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from core.base.errors import BootError, ConfigError
from core.contracts.cache import Cache
from core.transports.http import extension
from managers.redis.backends.memory import MemoryStore
from managers.redis.manager import RedisManager
from tests.conftest import MakeApp, WriteModule
from tests.servers import RedisServer, free_port

ACTIONS = """
actions:
  price:
    summary: A price, computed once per sku and then served from the cache
    handler: handlers:price
    auth: public
    params:
      sku: {type: string, required: true}
  remember:
    summary: Store a JSON value
    handler: handlers:remember
    auth: public
    params:
      key: {type: string, required: true}
      value: {required: true}
  recall:
    summary: Read a JSON value
    handler: handlers:recall
    auth: public
    params:
      key: {type: string, required: true}
  forget:
    summary: Delete every key with a prefix
    handler: handlers:forget
    auth: public
    params:
      prefix: {type: string, required: true}
"""
HANDLERS = """
EXECUTIONS = []


def price(ctx, *, sku):
    @ctx.cache.cached(ttl=60)
    def lookup(sku):
        EXECUTIONS.append(sku)
        return {"sku": sku, "cents": 100 * len(sku)}

    return {**lookup(sku), "executions": len(EXECUTIONS)}


def remember(ctx, *, key, value):
    ctx.cache.set_json(key, value, ttl=60)
    return {"stored": key}


def recall(ctx, *, key):
    return {"value": ctx.cache.get_json(key, default="missing")}


def forget(ctx, *, prefix):
    return {"deleted": ctx.cache.delete_prefix(prefix)}
"""


@pytest.fixture(params=["memory", "redis"])
def cache_env(request: pytest.FixtureRequest) -> dict[str, str]:
    """Environment selecting one backend (Redis: the session server, a prefix of our own)."""
    if request.param == "memory":
        return {"REDIS_URL": "memory://"}
    url: str = request.getfixturevalue("redis_url")
    prefix: str = request.getfixturevalue("redis_prefix")
    return {"REDIS_URL": url, "SB_REDIS__PREFIX": prefix}


@pytest.fixture
def shop(write_module: WriteModule) -> Path:
    return write_module("shop", {"actions.yaml": ACTIONS, "handlers.py": HANDLERS})


def call(app: Flask, name: str, **params: Any) -> tuple[int, Any]:
    response = app.test_client().post(f"/api/v1/actions/{name}", json=params)
    body = response.get_json()
    return response.status_code, body["data"] if response.status_code == 200 else body


def manager(app: Flask) -> RedisManager:
    return extension(app).app_manager.get(RedisManager)


# --- handlers -------------------------------------------------------------------------


def test_cached_serves_the_second_call_from_the_cache(
    make_app: MakeApp, shop: Path, cache_env: dict[str, str]
) -> None:
    app = make_app({"MODULES_PATH": str(shop), **cache_env})
    assert call(app, "shop.price", sku="abc") == (
        200,
        {"sku": "abc", "cents": 300, "executions": 1},
    )
    assert call(app, "shop.price", sku="abc") == (
        200,
        {"sku": "abc", "cents": 300, "executions": 1},
    )
    assert call(app, "shop.price", sku="de") == (200, {"sku": "de", "cents": 200, "executions": 2})


def test_json_values_and_delete_prefix(
    make_app: MakeApp, shop: Path, cache_env: dict[str, str]
) -> None:
    app = make_app({"MODULES_PATH": str(shop), **cache_env})
    for key in ("user:1:a", "user:1:b", "user:10:a", "user:2:a"):
        assert call(app, "shop.remember", key=key, value={"k": key, "n": [1, 2.5, None]})[0] == 200
    assert call(app, "shop.recall", key="user:1:a") == (
        200,
        {"value": {"k": "user:1:a", "n": [1, 2.5, None]}},
    )
    assert call(app, "shop.forget", prefix="user:1:") == (200, {"deleted": 2})
    assert call(app, "shop.recall", key="user:1:b") == (200, {"value": "missing"})
    assert call(app, "shop.recall", key="user:10:a")[1]["value"]["k"] == "user:10:a"
    assert call(app, "shop.forget", prefix="nothing:") == (200, {"deleted": 0})


def test_delete_prefix_stays_inside_the_cache_namespace(
    make_app: MakeApp, shop: Path, cache_env: dict[str, str]
) -> None:
    app = make_app({"MODULES_PATH": str(shop), **cache_env})
    store = manager(app).store
    store.set("idempotency:abc", b"{}")  # what another manager keeps in the same store
    call(app, "shop.remember", key="x", value=1)
    assert call(app, "shop.forget", prefix="") == (200, {"deleted": 1})
    assert store.get("idempotency:abc") == b"{}"


def test_apps_on_one_redis_share_the_cache_and_memory_apps_do_not(
    make_app: MakeApp, shop: Path, cache_env: dict[str, str]
) -> None:
    first = make_app({"MODULES_PATH": str(shop), **cache_env})
    second = make_app({"MODULES_PATH": str(shop), **cache_env})
    call(first, "shop.remember", key="shared", value="hello")
    expected = "missing" if cache_env["REDIS_URL"] == "memory://" else "hello"
    assert call(second, "shop.recall", key="shared") == (200, {"value": expected})


def test_health_reports_the_backend(make_app: MakeApp, cache_env: dict[str, str]) -> None:
    app = make_app(cache_env)
    response = app.test_client().get("/health/ready")
    assert response.status_code == 200
    backend = "memory" if cache_env["REDIS_URL"] == "memory://" else "redis"
    assert response.get_json()["checks"]["redis"] == {"status": "ok", "backend": backend}


def test_redis_down_is_503_and_failed_health_until_it_returns(
    make_app: MakeApp, shop: Path, redis_server: RedisServer, redis_url: str, redis_prefix: str
) -> None:
    app = make_app({"MODULES_PATH": str(shop), "REDIS_URL": redis_url,
                    "SB_REDIS__PREFIX": redis_prefix})  # fmt: skip
    try:
        redis_server.stop()
        status, body = call(app, "shop.recall", key="k")
        assert status == 503
        assert body["type"] == "/problems/dependency-unavailable"
        assert body["detail"] == "redis is unavailable"
        ready = app.test_client().get("/health/ready")
        assert ready.status_code == 503
        assert ready.get_json()["checks"]["redis"] == {
            "status": "failed",
            "backend": "redis",
            "error": "ConnectionError",
        }
        redis_server.start()
        assert call(app, "shop.recall", key="k") == (200, {"value": "missing"})
        assert app.test_client().get("/health/ready").status_code == 200
    finally:
        if redis_server.process is None:
            redis_server.start()


# --- boot -----------------------------------------------------------------------------


def test_an_unreachable_server_fails_the_boot_without_the_password(
    make_app: MakeApp, caplog: pytest.LogCaptureFixture
) -> None:
    port = free_port()  # nobody listens there
    caplog.set_level(logging.DEBUG)
    with pytest.raises(ConfigError) as caught:
        make_app({"REDIS_URL": f"redis://:s3cretpw@127.0.0.1:{port}/0"})
    text = str(caught.value)
    assert "unreachable" in text
    assert f"127.0.0.1:{port}" in text
    assert "redis.url" in text
    assert "s3cretpw" not in text
    assert "s3cretpw" not in caplog.text


def test_refused_credentials_fail_the_boot_without_the_password(
    make_app: MakeApp, redis_server: RedisServer
) -> None:
    url = f"redis://nobody:s3cretpw@127.0.0.1:{redis_server.port}/0"  # no such ACL user
    with pytest.raises(ConfigError) as caught:
        make_app({"REDIS_URL": url})
    text = str(caught.value)
    assert "refused the credentials" in text
    assert "s3cretpw" not in text


def test_a_malformed_redis_url_fails_the_boot_without_echoing_it(make_app: MakeApp) -> None:
    with pytest.raises(ConfigError) as caught:
        make_app({"REDIS_URL": "redis://:s3cretpw@127.0.0.1:notaport/0"})
    text = str(caught.value)
    assert "not a valid Redis URL" in text
    assert "s3cretpw" not in text


def test_memory_with_several_workers_is_refused(make_app: MakeApp) -> None:
    with pytest.raises(BootError) as caught:
        make_app({"REDIS_URL": "memory://", "SB_HTTP__WORKERS": "2"})
    assert "REDIS_URL" in str(caught.value)
    assert "http.workers is 2" in str(caught.value)


def test_redis_with_several_workers_is_accepted(make_app: MakeApp, redis_url: str) -> None:
    app = make_app({"REDIS_URL": redis_url, "SB_HTTP__WORKERS": "2"})
    assert manager(app).store.ping() is True


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("memcached://admin:hunter2@cache:11211", "unknown scheme 'memcached'"),
        ("admin:hunter2@cache:6379", "has no scheme"),
    ],
)
def test_an_unknown_scheme_fails_the_boot_naming_only_the_scheme(
    make_app: MakeApp, url: str, expected: str
) -> None:
    with pytest.raises(BootError) as caught:
        make_app({"REDIS_URL": url})
    text = str(caught.value)
    assert expected in text
    assert "redis.url" in text
    assert "hunter2" not in text


# --- the Cache facade on its own ------------------------------------------------------


@pytest.fixture
def cache() -> Cache:
    return Cache(MemoryStore(prefix="unit:"))


def test_cached_with_a_key_function_and_a_cached_none(cache: Cache) -> None:
    calls: list[tuple[int, str]] = []

    @cache.cached(ttl=60, key=lambda user, lang: f"user:{user}")
    def greeting(user: int, lang: str) -> str | None:
        calls.append((user, lang))
        return None if user == 0 else f"{lang}:{user}"

    assert greeting(7, "en") == "en:7"
    assert greeting(7, "fr") == "en:7"  # the key ignores lang, by choice of the key function
    assert greeting(0, "en") is None
    assert greeting(0, "en") is None  # None is a value too
    assert calls == [(7, "en"), (0, "en")]
    assert cache.delete_prefix(f"{greeting.__module__}.") == 2


def test_cached_keys_ignore_keyword_order_and_results_go_through_json(cache: Cache) -> None:
    calls: list[dict[str, int]] = []

    @cache.cached(ttl=60)
    def pair(a: int, b: int) -> Any:  # a tuple, typed loosely: it comes back a list
        calls.append({"a": a, "b": b})
        return (a, b)

    assert pair(a=1, b=2) == [1, 2]  # the same value a cache hit (or another worker) gives
    assert pair(b=2, a=1) == [1, 2]
    assert pair(1, 2) == [1, 2]  # positional: another call signature, another key
    assert len(calls) == 2


def test_cached_entries_expire(cache: Cache) -> None:
    calls: list[int] = []

    @cache.cached(ttl=0.2)
    def now() -> int:
        calls.append(1)
        return len(calls)

    assert now() == 1
    deadline = time.monotonic() + 10
    while now() == 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert now() == 2


def test_cached_needs_json_arguments_or_a_key(cache: Cache) -> None:
    @cache.cached(ttl=60)
    def describe(thing: object) -> str:
        return repr(thing)

    with pytest.raises(TypeError, match="key="):
        describe(object())
    with pytest.raises(ValueError, match="positive"):
        cache.cached(ttl=0)


def test_values_live_under_the_cache_namespace() -> None:
    store = MemoryStore(prefix="ns:")
    cache = Cache(store)
    cache.set_json("k", {"a": 1})
    assert store.get("cache:k") == b'{"a":1}'
    assert cache.get_json("missing", default=[]) == []
    assert cache.add_json("k", 2) is False
    assert cache.incr("n", 2, ttl=60) == 2
    assert cache.get_json("n") == 2
    assert cache.delete("k", "n", "missing") == 2


def test_publish_sends_mappings_as_json(cache: Cache) -> None:
    received: list[str] = []
    subscription = cache.subscribe("events", received.append)
    try:
        assert cache.publish("events", {"id": 1, "name": "é"}) == 1
        assert cache.publish("events", "plain") == 1
        deadline = time.monotonic() + 10
        while len(received) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert received == ['{"id":1,"name":"é"}', "plain"]
    finally:
        subscription.close()


def test_two_caches_do_not_share_a_decorated_function(cache: Cache) -> None:
    other = Cache(MemoryStore(prefix="unit:"))
    counts: list[str] = []

    def compute(x: int) -> int:
        counts.append("run")
        return x * 2

    first: Callable[[int], int] = cache.cached(ttl=60)(compute)
    second: Callable[[int], int] = other.cached(ttl=60)(compute)
    assert first(2) == second(2) == 4
    assert counts == ["run", "run"]  # no module-level cache behind the decorator
