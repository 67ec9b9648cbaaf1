"""One Redis round trip before the handler, whatever the credential: counted with MONITOR.

MONITOR shows every command a client sends, and marks the commands a Lua script runs with
``[0 lua]``: what is left are the client's round trips.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient

from core.transports.http import extension
from managers.api_keys.manager import ApiKeyManager
from managers.jwt.manager import JWTManager
from tests.conftest import MakeApp, WriteModule

ACTIONS = """
actions:
  echo:
    handler: handlers:echo
    auth: any
    rate_limit: [1000/minute]
    params:
      message: {type: string, required: true}
  open:
    handler: handlers:echo
    auth: public
    rate_limit: [1000/minute]
    params:
      message: {type: string, required: true}
  pay:
    handler: handlers:echo
    auth: public
    idempotent: true
    params:
      message: {type: string, required: true}
"""
HANDLERS = "def echo(ctx, *, message):\n    return {'message': message}\n"


class Monitor:
    """The commands clients send while it runs (a background MONITOR connection)."""

    def __init__(self, url: str) -> None:
        self._client = redis.Redis.from_url(url)
        self._marker = redis.Redis.from_url(url)
        self._lines: list[dict[str, Any]] = []
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        assert self._ready.wait(5)

    def _run(self) -> None:
        with self._client.monitor() as monitor:  # type: ignore[no-untyped-call]
            self._ready.set()
            for command in monitor.listen():
                self._lines.append(command)
                if command["command"].startswith("ECHO stop-"):
                    return

    def client_commands(self, prefix: str, during: Any) -> list[str]:
        """The commands clients sent on ``prefix``'s keys while ``during()`` ran."""
        start = f"start-{uuid.uuid4().hex}"
        self._marker.echo(start)
        during()
        self._marker.echo(f"stop-{uuid.uuid4().hex}")
        self._thread.join(5)
        commands = [line["command"] for line in self._lines]
        begin = next(i for i, c in enumerate(commands) if c == f"ECHO {start}")
        return [
            line["command"].split()[0]
            for line in self._lines[begin + 1 :]
            if line.get("client_type") != "lua" and prefix in line["command"]
        ]

    def close(self) -> None:
        self._client.close()
        self._marker.close()


@pytest.fixture
def app(make_app: MakeApp, write_module: WriteModule, redis_url: str, redis_prefix: str) -> Flask:
    parent = write_module("trips", {"actions.yaml": ACTIONS, "handlers.py": HANDLERS})
    return make_app(
        {
            "MODULES_PATH": str(parent),
            "REDIS_URL": redis_url,
            "SB_REDIS__PREFIX": redis_prefix,
            "SB_RATELIMIT__ENABLED": "true",
        }
    )


@pytest.fixture
def monitor(redis_url: str) -> Iterator[Monitor]:
    watching = Monitor(redis_url)
    yield watching
    watching.close()


def round_trips(
    monitor: Monitor, prefix: str, client: FlaskClient, path: str, **headers: str
) -> list[str]:
    def call() -> None:
        response = client.post(path, json={"message": "hi"}, headers=headers)
        assert response.status_code == 200, response.get_json()

    call()  # warm: the script is loaded, the token verified, the key record read
    return monitor.client_commands(prefix, call)


def credentials(app: Flask) -> tuple[str, str]:
    managers = extension(app).app_manager
    token = managers.get(JWTManager).issue_pair("trip-user", [])["access_token"]
    _, key = managers.get(ApiKeyManager).create(name="trips", owner=None, scopes=[])
    return token, key


def test_a_public_call_is_one_round_trip(app: Flask, monitor: Monitor, redis_prefix: str) -> None:
    trips = round_trips(monitor, redis_prefix, app.test_client(), "/api/v1/actions/trips.open")
    assert trips == ["EVALSHA"]


def test_a_call_with_a_token_is_one_round_trip(
    app: Flask, monitor: Monitor, redis_prefix: str
) -> None:
    token, _ = credentials(app)
    trips = round_trips(
        monitor,
        redis_prefix,
        app.test_client(),
        "/api/v1/actions/trips.echo",
        Authorization=f"Bearer {token}",
    )
    assert trips == ["EVALSHA"]


def test_a_call_with_an_api_key_is_one_round_trip(
    app: Flask, monitor: Monitor, redis_prefix: str
) -> None:
    _, key = credentials(app)
    trips = round_trips(
        monitor, redis_prefix, app.test_client(), "/api/v1/actions/trips.echo", **{"X-API-Key": key}
    )
    assert trips == ["EVALSHA"]


def test_an_idempotent_call_adds_exactly_the_settle(
    app: Flask, monitor: Monitor, redis_prefix: str
) -> None:
    client = app.test_client()
    client.post(
        "/api/v1/actions/trips.pay", json={"message": "warm"}, headers={"Idempotency-Key": "w"}
    )
    trips = monitor.client_commands(
        redis_prefix,
        lambda: client.post(
            "/api/v1/actions/trips.pay", json={"message": "hi"}, headers={"Idempotency-Key": "k1"}
        ),
    )
    assert trips == ["EVALSHA", "SET"]
