"""GET /metrics: what a scrape reads after calls, in one process and across workers."""

from __future__ import annotations

import json
import os
import random
import shutil
import string
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import socketio
from flask import Flask
from flask.testing import FlaskClient
from prometheus_client.parser import text_string_to_metric_families

from core.transports.http import extension
from managers.hooks_manager import HooksManager
from tests.conftest import MakeApp
from tests.served import production_secrets, running


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a scrape, keyed by name and sorted labels."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def value(
    scraped: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    return scraped.get((name, tuple(sorted(labels.items()))), 0.0)


def scrape(client: FlaskClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = client.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("text/plain")
    return samples(response.text)


def call(client: FlaskClient, action: str, params: Any = None, **headers: str) -> int:
    return client.post(f"/api/v1/actions/{action}", json=params or {}, headers=headers).status_code


def test_calls_are_counted_by_action_and_outcome(client: FlaskClient) -> None:
    for _ in range(3):
        assert call(client, "system.echo", {"message": "hi"}) == 200
    assert call(client, "system.echo", {"message": 5}) == 422
    assert call(client, "auth.me") == 401
    scraped = scrape(client)
    calls = "switchboard_action_calls_total"
    assert value(scraped, calls, action="system.echo", outcome="ok") == 3
    assert value(scraped, calls, action="system.echo", outcome="validation") == 1
    assert value(scraped, calls, action="auth.me", outcome="unauthenticated") == 1
    duration = "switchboard_action_duration_seconds_count"
    assert value(scraped, duration, action="system.echo") == 4
    assert value(scraped, "switchboard_auth_failures_total", reason="missing") == 1
    assert value(scraped, "switchboard_build_info", version=__import__("core").__version__) == 1
    assert value(scraped, "switchboard_manager_up", manager="db") == 1


def test_a_thousand_unknown_names_are_one_series(client: FlaskClient) -> None:
    rng = random.Random(13)
    for _ in range(1000):
        name = "".join(rng.choices(string.ascii_lowercase + ".", k=rng.randint(1, 20)))
        assert call(client, f"zz{name}") == 404
    scraped = scrape(client)
    actions = {
        dict(labels)["action"]
        for (name, labels) in scraped
        if name == "switchboard_action_calls_total"
    }
    declared = {a.spec.name for a in extension(client.application).pipeline.registry.actions()}
    assert actions <= declared | {"unknown"}
    assert (
        value(scraped, "switchboard_action_calls_total", action="unknown", outcome="not-found")
        == 1000
    )


def test_bad_credentials_are_counted_by_reason(client: FlaskClient) -> None:
    assert call(client, "auth.me", Authorization="Bearer not-a-token") == 401
    assert call(client, "auth.me", **{"X-API-Key": "sb_nope"}) == 401
    assert (
        call(client, "auth.login", {"email": "x@example.com", "password": "wrong pass 123"}) == 401
    )
    scraped = scrape(client)
    failures = "switchboard_auth_failures_total"
    assert value(scraped, failures, reason="malformed") == 2
    assert value(scraped, failures, reason="bad_login") == 1


def test_rate_limit_decisions_are_counted(make_app: MakeApp) -> None:
    limited = {"SB_RATELIMIT__ENABLED": "true", "SB_RATELIMIT__IP": "3/minute"}
    client = make_app(limited).test_client()
    statuses = [call(client, "system.echo", {"message": "hi"}) for _ in range(5)]
    assert statuses == [200, 200, 200, 429, 429]
    scraped = scrape(client)
    decisions = "switchboard_ratelimit_decisions_total"
    assert value(scraped, decisions, kind="ip", decision="allowed") == 3
    assert value(scraped, decisions, kind="ip", decision="limited") == 2
    assert (
        value(
            scraped, "switchboard_action_calls_total", action="system.echo", outcome="rate-limited"
        )
        == 2
    )


def test_hook_failures_are_counted(app: Flask) -> None:
    hooks = extension(app).app_manager.get("hooks", HooksManager)

    def explode(_event: object) -> None:
        raise RuntimeError("kaboom")

    hooks.register("action.after", explode)
    client = app.test_client()
    assert call(client, "system.echo", {"message": "hi"}) == 200
    scraped = scrape(client)
    assert value(scraped, "switchboard_hook_failures_total", event="action.after") == 1


def test_metrics_can_be_switched_off_or_moved(make_app: MakeApp) -> None:
    off = make_app({"SB_METRICS__ENABLED": "false"}).test_client()
    assert off.get("/metrics").status_code == 404
    moved = make_app({"SB_METRICS__PATH": "/internal/metrics"}).test_client()
    assert call(moved, "system.ping") == 200
    assert (
        value(
            samples(moved.get("/internal/metrics").text),
            "switchboard_action_calls_total",
            action="system.ping",
            outcome="ok",
        )
        == 1
    )


def test_production_serves_metrics_to_allowed_clients_and_the_token(
    make_app: MakeApp, tmp_path: Path
) -> None:
    token = "a-long-metrics-scrape-token"
    env = {**production_secrets(tmp_path), "SB_METRICS__TOKEN": token, "SB_HTTP__WORKERS": "1"}
    client = make_app(env).test_client()
    outside = {"REMOTE_ADDR": "203.0.113.9"}
    refused = client.get("/metrics", environ_base=outside)
    assert refused.status_code == 403
    assert refused.headers["Content-Type"] == "application/problem+json"
    assert (
        client.get(
            "/metrics", environ_base=outside, headers={"Authorization": "Bearer nope"}
        ).status_code
        == 403
    )
    allowed = client.get(
        "/metrics", environ_base=outside, headers={"Authorization": f"Bearer {token}"}
    )
    assert allowed.status_code == 200
    assert client.get("/metrics", environ_base={"REMOTE_ADDR": "127.0.0.1"}).status_code == 200
    public = make_app({**env, "SB_METRICS__PUBLIC": "true"}).test_client()
    assert public.get("/metrics", environ_base=outside).status_code == 200


def scrape_served(base_get: Any) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = base_get("/metrics")
    assert response.status == 200
    return samples(response.body.decode())


@pytest.mark.usefixtures("redis_server")
def test_workers_add_up_and_sockets_are_counted(
    tmp_path: Path, redis_url: str, redis_prefix: str
) -> None:
    shared = tmp_path / "metrics"  # an operator's own directory (else serve makes one)
    shared.mkdir()
    stale = shared / "counter_999999.db"
    stale.write_bytes(b"from an earlier run")
    env = {
        "REDIS_URL": redis_url,
        "SB_REDIS__PREFIX": redis_prefix,
        "PROMETHEUS_MULTIPROC_DIR": str(shared),
    }
    with running(tmp_path, "serve", "--workers", "2", env=env) as server:
        body = json.dumps({"message": "hi"}).encode()

        def send(_: int) -> int:
            return server.post("/api/v1/actions/system.echo", body).status

        calls = 0
        # Concurrent calls until both workers have answered some (which worker accepts a
        # connection is the kernel's choice).
        with ThreadPoolExecutor(8) as pool:
            for _ in range(20):
                assert set(pool.map(send, range(40))) == {200}
                calls += 40
                if len(list(shared.glob("counter_*.db"))) >= 2:
                    break
        totals = set()
        for _ in range(6):  # whichever worker answers, the same total
            scraped = scrape_served(server.get)
            totals.add(
                value(scraped, "switchboard_action_calls_total", action="system.echo", outcome="ok")
            )
        assert totals == {calls}
        ready = json.loads(server.get("/health/ready").body)
        assert ready["checks"]["metrics"]["mode"] == "multiprocess"
        writers = {path.stem.rsplit("_", 1)[-1] for path in shared.glob("counter_*.db")}
        assert len(writers) >= 2, writers  # both workers answered calls: the sum is theirs
        assert not stale.exists()  # an earlier run's values were cleared at start
        key = _api_key(server)
        clients = []
        for _ in range(3):
            client = socketio.Client(reconnection=False)
            client.connect(server.base, auth={"api_key": key}, transports=["websocket"])
            clients.append(client)
        assert value(scrape_served(server.get), "switchboard_realtime_sockets") == 3
        assert clients[0].call("call", {"action": "system.ping"}, timeout=10)["data"]
        for client in clients:
            client.disconnect()
        deadline = time.monotonic() + 10
        while value(scraped := scrape_served(server.get), "switchboard_realtime_sockets"):
            assert time.monotonic() < deadline, "sockets still counted after disconnecting"
            time.sleep(0.05)
        assert value(scraped, "switchboard_realtime_messages_total", event="call") == 1
        assert value(scraped, "switchboard_db_pool_in_use") == 0


def _api_key(server: Any) -> str:
    from tests.served import cli

    made = cli(server, "keys", "create", "--name", "metrics")
    assert made.returncode == 0, made.stderr
    return next(line.split()[-1] for line in made.stdout.splitlines() if line.startswith("key:"))


def test_one_worker_counts_its_sockets(tmp_path: Path) -> None:
    """One worker is serve's own process, which booted (and stopped) the app once before:
    its live gauges must still reach the scrape."""
    with running(tmp_path, "serve", env={"SB_HTTP__WORKERS": "1"}) as server:
        client = socketio.Client(reconnection=False)
        client.connect(server.base, auth={"api_key": _api_key(server)}, transports=["websocket"])
        try:
            assert value(scrape_served(server.get), "switchboard_realtime_sockets") == 1
        finally:
            client.disconnect()


def test_serve_removes_the_metrics_directories_of_killed_runs(tmp_path: Path) -> None:
    """A serve killed with SIGKILL cannot remove its directory: the next one does."""
    import subprocess
    import sys
    import tempfile

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    orphan = Path(tempfile.gettempdir()) / f"switchboard-metrics-{dead.pid}-test"
    orphan.mkdir()
    (orphan / "counter_1.db").write_bytes(b"old")
    mine = Path(tempfile.gettempdir()) / f"switchboard-metrics-{os.getpid()}-test"
    mine.mkdir(exist_ok=True)  # a live process's directory stays
    try:
        with running(tmp_path, "serve", env={"SB_HTTP__WORKERS": "1"}) as server:
            assert server.get("/health/live").status == 200
            assert not orphan.exists()
            assert mine.exists()
    finally:
        shutil.rmtree(orphan, ignore_errors=True)
        shutil.rmtree(mine, ignore_errors=True)
