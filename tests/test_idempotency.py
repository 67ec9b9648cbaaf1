"""Idempotent replay: one execution per key and caller, the same answer on every retry."""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from core.transports.http import extension
from managers.db.manager import DatabaseManager
from tests.conftest import MakeApp, WriteModule

ACTIONS = """
actions:
  charge:
    handler: handlers:charge
    auth: public
    idempotent: true
    params:
      amount: {type: integer, minimum: 1, required: true}
      mode: {type: string, enum: [ok, conflict, crash, wait], default: ok}
  plain:
    handler: handlers:plain
    auth: public
"""

HANDLERS = """
import threading

from core.base.errors import Conflict

GATE = threading.Event()
GATE.set()
ENTERED = threading.Event()


def charge(ctx, *, amount, mode="ok"):
    ctx.db.collection("executions").insert_one({"amount": amount, "mode": mode})
    if mode == "wait":
        ENTERED.set()
        GATE.wait(20)
    if mode == "conflict":
        raise Conflict("card declined")
    if mode == "crash":
        raise RuntimeError("processor down")
    return {"charged": amount, "run": ctx.db.collection("executions").count()}


def plain(ctx):
    ctx.db.collection("executions").insert_one({"plain": True})
    return {"ok": True}
"""

URL = "/api/v1/actions/pay.charge"


@pytest.fixture
def parent(write_module: WriteModule) -> Path:
    return write_module("pay", {"actions.yaml": ACTIONS, "handlers.py": HANDLERS})


@pytest.fixture
def app(make_app: MakeApp, parent: Path) -> Flask:
    return make_app({"MODULES_PATH": str(parent)})


def executions(app: Flask, **match: Any) -> int:
    database = extension(app).app_manager.get(DatabaseManager).documents
    return int(database.collection("executions").count(match))


def post(
    client: FlaskClient,
    key: str | None,
    params: dict[str, Any],
    ip: str = "10.0.0.1",
    url: str = URL,
) -> Any:
    headers = {"Idempotency-Key": key} if key is not None else {}
    return client.post(url, json=params, headers=headers, environ_base={"REMOTE_ADDR": ip})


def handlers() -> Any:
    return sys.modules["switchboard_modules.pay.handlers"]


def test_a_retry_replays_the_first_answer_exactly(app: Flask) -> None:
    client = app.test_client()
    first = post(client, "k-1", {"amount": 5})
    assert first.status_code == 200
    assert "Idempotent-Replayed" not in first.headers
    again = post(client, "k-1", {"amount": 5})
    assert again.status_code == 200
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.get_data() == first.get_data()  # byte for byte, request id included
    assert again.mimetype == "application/json"
    assert executions(app) == 1


def test_param_order_does_not_matter_but_values_do(app: Flask) -> None:
    client = app.test_client()
    assert post(client, "k-2", {"amount": 5, "mode": "ok"}).status_code == 200
    assert post(client, "k-2", {"mode": "ok", "amount": 5}).headers["Idempotent-Replayed"]
    mismatch = post(client, "k-2", {"amount": 6})
    assert mismatch.status_code == 422
    assert mismatch.get_json()["type"] == "/problems/idempotency-mismatch"
    assert executions(app) == 1


def test_keys_are_per_caller_and_per_key(app: Flask) -> None:
    client = app.test_client()
    post(client, "shared", {"amount": 1}, ip="10.0.0.1")
    other_caller = post(client, "shared", {"amount": 1}, ip="10.0.0.2")
    assert "Idempotent-Replayed" not in other_caller.headers
    post(client, "another", {"amount": 1}, ip="10.0.0.1")
    assert executions(app) == 3


def test_without_a_key_or_on_other_actions_nothing_is_replayed(app: Flask) -> None:
    client = app.test_client()
    post(client, None, {"amount": 1})
    post(client, None, {"amount": 1})
    plain = "/api/v1/actions/pay.plain"
    assert post(client, "p", {}, url=plain).status_code == 200
    second = post(client, "p", {}, url=plain)
    assert "Idempotent-Replayed" not in second.headers
    assert executions(app, plain={"$exists": False}) == 2
    assert executions(app, plain=True) == 2


def test_client_errors_are_replayed_invalid_params_and_server_errors_are_not(
    app: Flask,
) -> None:
    client = app.test_client()
    declined = post(client, "k-4xx", {"amount": 2, "mode": "conflict"})
    assert declined.status_code == 409
    replay = post(client, "k-4xx", {"amount": 2, "mode": "conflict"})
    assert replay.status_code == 409 and replay.headers["Idempotent-Replayed"] == "true"
    assert replay.get_data() == declined.get_data()
    assert replay.mimetype == "application/problem+json"
    invalid = post(client, "k-422", {"amount": 0})
    assert invalid.status_code == 422
    again = post(client, "k-422", {"amount": 0})  # validated before the key is claimed
    assert again.status_code == 422 and "Idempotent-Replayed" not in again.headers
    assert executions(app) == 1  # the 422s never reached the handler
    fixed = post(client, "k-422", {"amount": 4})  # the key is still free for the real call
    assert fixed.status_code == 200 and "Idempotent-Replayed" not in fixed.headers
    assert executions(app) == 2

    crashed = post(client, "k-5xx", {"amount": 3, "mode": "crash"})
    assert crashed.status_code == 500
    retried = post(client, "k-5xx", {"amount": 3, "mode": "crash"})
    assert retried.status_code == 500 and "Idempotent-Replayed" not in retried.headers
    assert executions(app, mode="crash") == 2  # a retry after a 5xx runs again


@pytest.mark.parametrize("key", ["", "x" * 256, "has space", "tab\there", "ünïcode"])
def test_a_malformed_key_is_400(app: Flask, key: str) -> None:
    response = post(app.test_client(), key, {"amount": 1})
    assert response.status_code == 400
    assert "Idempotency-Key" in response.get_json()["detail"]
    assert executions(app) == 0


def test_a_retry_while_the_first_runs_gets_409_with_retry_after(app: Flask) -> None:
    module = handlers()
    module.GATE.clear()
    module.ENTERED.clear()
    client = app.test_client()
    results: list[Any] = []
    first = threading.Thread(
        target=lambda: results.append(
            post(app.test_client(), "slow", {"amount": 1, "mode": "wait"})
        )
    )
    first.start()
    try:
        assert module.ENTERED.wait(10)
        busy = post(client, "slow", {"amount": 1, "mode": "wait"})
        assert busy.status_code == 409
        assert busy.get_json()["type"] == "/problems/idempotency-in-progress"
        assert busy.headers["Retry-After"] == "1"
    finally:
        module.GATE.set()
        first.join(20)
    assert results[0].status_code == 200
    assert post(client, "slow", {"amount": 1, "mode": "wait"}).headers["Idempotent-Replayed"]
    assert executions(app) == 1


def concurrent_calls(clients: list[FlaskClient], key: str) -> list[Any]:
    """8 calls with one key, released together, spread over ``clients``."""
    barrier = threading.Barrier(8)
    responses: list[Any] = [None] * 8

    def call(index: int) -> None:
        barrier.wait(10)
        responses[index] = post(clients[index % len(clients)], key, {"amount": 7})

    threads = [threading.Thread(target=call, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    return responses


def check_once(responses: list[Any], count: Callable[[], int]) -> None:
    assert count() == 1
    statuses = sorted(r.status_code for r in responses)
    assert set(statuses) <= {200, 409}
    fresh = [
        r for r in responses if r.status_code == 200 and "Idempotent-Replayed" not in r.headers
    ]
    assert len(fresh) == 1
    for response in responses:
        if response.status_code == 200:
            assert response.get_data() == fresh[0].get_data()


def test_eight_concurrent_calls_with_one_key_run_once(app: Flask) -> None:
    responses = concurrent_calls([app.test_client() for _ in range(8)], "burst")
    check_once(responses, lambda: executions(app))


def test_eight_concurrent_calls_across_two_workers_run_once(
    make_app: MakeApp, parent: Path, redis_url: str, redis_prefix: str, tmp_path: Path
) -> None:
    # Two app instances sharing a real Redis and one database stand in for two workers.
    shared = {
        "MODULES_PATH": str(parent),
        "REDIS_URL": redis_url,
        "SB_REDIS__PREFIX": redis_prefix,
        "DATABASE_URL": f"sqlite:///{tmp_path}/both.db",
    }
    first, second = make_app(shared), make_app(shared)
    responses = concurrent_calls([first.test_client(), second.test_client()], "burst-2")
    check_once(responses, lambda: executions(first))
    replay = post(second.test_client(), "burst-2", {"amount": 7})
    assert replay.headers["Idempotent-Replayed"] == "true"
