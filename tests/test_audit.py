"""The audit trail: records in the database, audit.search, retention, and nothing lost."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

from flask import Flask
from flask.testing import FlaskClient

from core.base.errors import DependencyUnavailable
from core.transports.http import extension
from managers.audit_manager import AuditManager
from managers.db.manager import DatabaseManager
from tests.conftest import MakeApp
from tests.served import Server, running
from tests.test_auth import make_admin

FAST = {"SB_AUDIT__FLUSH_INTERVAL": "50ms"}


def post(client: FlaskClient, action: str, params: Any = None, token: str | None = None) -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return client.post(f"/api/v1/actions/{action}", json=params or {}, headers=headers)


def stored(app: Flask, count: int) -> list[dict[str, Any]]:
    """The audit collection once it holds ``count`` records (the writer runs in batches)."""
    db = extension(app).app_manager.get(DatabaseManager).documents
    deadline = time.monotonic() + 10
    while True:
        found = db.collection("sb_audit").find({}, sort=[("_id", -1)])
        if len(found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(0.02)


def test_every_call_is_stored_with_param_names_only(make_app: MakeApp) -> None:
    app = make_app(FAST)
    client = app.test_client()
    assert post(client, "system.echo", {"message": "a secret-ish value"}).status_code == 200
    assert post(client, "system.echo", {"message": 5}).status_code == 422
    assert post(client, "no.such\x01action").status_code == 404
    records = stored(app, 3)
    newest, invalid, ok = records[:3]
    assert ok["action"] == "system.echo" and ok["outcome"] == "ok" and ok["status"] == 200
    assert ok["param_names"] == ["message"] and ok["caller_kind"] == "anonymous"
    assert ok["client_ip"] and ok["request_id"] and ok["duration_ms"] >= 0
    assert ok["time"].endswith("Z") and ok["replayed"] is False
    assert invalid["outcome"] == "validation" and invalid["status"] == 422
    assert newest["action"] == "no.such?action" and newest["outcome"] == "not-found"
    assert "a secret-ish value" not in json.dumps(records)


def test_audit_search_filters_and_pages_newest_first(make_app: MakeApp) -> None:
    app = make_app(FAST)
    client = app.test_client()
    admin = make_admin(app, client, "boss@example.com")
    for n in range(7):
        assert post(client, "system.echo", {"message": f"m{n}"}).status_code == 200
    assert post(client, "system.echo", {"message": 1}).status_code == 422
    stored(app, 10)  # register, login, 7 echoes, 1 invalid
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"action": "system.echo", "outcome": "ok", "limit": 3}
        if cursor:
            params["cursor"] = cursor
        page = post(client, "audit.search", params, admin)
        assert page.status_code == 200, page.get_json()
        body = page.get_json()
        assert all(r["action"] == "system.echo" and r["outcome"] == "ok" for r in body["data"])
        seen += [r["request_id"] for r in body["data"]]
        cursor = body["meta"]["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == len(set(seen)) == 7
    times = [
        r["time"] for r in post(client, "audit.search", {"limit": 50}, admin).get_json()["data"]
    ]
    assert times == sorted(times, reverse=True)
    failed = post(client, "audit.search", {"outcome": "validation"}, admin).get_json()["data"]
    assert [r["status"] for r in failed] == [422]
    me = _user_id(client, admin)
    stored(app, 16)  # and 3 pages, 2 searches and auth.me of the admin, written
    mine = post(client, "audit.search", {"caller": me}, admin).get_json()["data"]
    assert mine and all(r["caller_id"] == me and r["caller_kind"] == "user" for r in mine)
    assert "system.echo" not in {r["action"] for r in mine}  # those were anonymous
    later = post(client, "audit.search", {"since": "2999-01-01T00:00:00Z"}, admin).get_json()
    assert later["data"] == [] and later["meta"]["next_cursor"] is None
    earlier = post(client, "audit.search", {"until": "2000-01-01T00:00:00Z"}, admin)
    assert earlier.get_json()["data"] == []


def _user_id(client: FlaskClient, token: str) -> str:
    return str(post(client, "auth.me", None, token).get_json()["data"]["id"])


def test_audit_search_is_for_admins_and_checks_its_params(make_app: MakeApp) -> None:
    app = make_app(FAST)
    client = app.test_client()
    admin = make_admin(app, client, "root@example.com")
    assert post(client, "audit.search").status_code == 401
    bad_time = post(client, "audit.search", {"since": "yesterday-ish"}, admin)
    assert bad_time.status_code == 422
    assert bad_time.get_json()["errors"][0]["path"] == "/since"
    bad_cursor = post(client, "audit.search", {"cursor": "' OR 1=1 --"}, admin)
    assert bad_cursor.status_code == 422
    assert post(client, "audit.search", {"limit": 501}, admin).status_code == 422


def test_old_records_are_pruned(make_app: MakeApp) -> None:
    app = make_app(FAST)
    db = extension(app).app_manager.get(DatabaseManager).documents
    now = time.time()
    audit = db.collection("sb_audit")
    audit.insert_one({"_id": "00000000000000000001-00000000", "at": now - 40 * 86400})
    audit.insert_one({"_id": "00000000000000000002-00000000", "at": now - 86400})
    manager = extension(app).app_manager.get(AuditManager)
    manager._pruned = -1e9  # the next pass of the writer prunes
    post(app.test_client(), "system.ping")
    deadline = time.monotonic() + 10
    while audit.find_one({"_id": "00000000000000000001-00000000"}) is not None:
        assert time.monotonic() < deadline, "the old record was not pruned"
        time.sleep(0.02)
    assert audit.find_one({"_id": "00000000000000000002-00000000"}) is not None


class _Flaky:
    """Documents whose batch inserts fail ``failures`` times, then work."""

    def __init__(self, real: Any, failures: int) -> None:
        self.real, self.failures = real, failures

    def collection(self, name: str) -> Any:
        return self

    def insert_many(self, docs: Any) -> list[str]:
        if self.failures > 0:
            self.failures -= 1
            raise DependencyUnavailable("database unreachable")
        return list(self.real.collection("sb_audit").insert_many(docs))


def test_records_wait_out_a_database_outage(make_app: MakeApp) -> None:
    app = make_app(FAST)
    manager = extension(app).app_manager.get(AuditManager)
    real = extension(app).app_manager.get(DatabaseManager).documents
    manager._db = _Flaky(real, failures=2)  # type: ignore[assignment]
    client = app.test_client()
    for n in range(5):
        assert post(client, "system.echo", {"message": f"m{n}"}).status_code == 200
    records = stored(app, 5)
    assert len(records) == 5
    assert extension(app).app_manager.get(AuditManager).health().status == "ok"


def _echo_load(
    server: Server, answered: dict[str, float], stop: threading.Event
) -> list[threading.Thread]:
    """Four clients calling ``system.echo`` until ``stop`` or the server is gone; each
    answered request id with the time its answer was read."""

    def load() -> None:
        body = json.dumps({"message": "hi"}).encode()
        while not stop.is_set():
            try:
                response = server.post("/api/v1/actions/system.echo", body)
            except OSError:
                return  # the server stopped listening
            if response.status == 200:
                answered[response.headers["X-Request-ID"]] = time.monotonic()

    workers = [threading.Thread(target=load) for _ in range(4)]
    for worker in workers:
        worker.start()
    return workers


def test_sigterm_under_load_loses_no_record(tmp_path: Path) -> None:
    database = tmp_path / "app.db"
    answered: dict[str, float] = {}
    stop = threading.Event()

    with running(tmp_path, "serve", env={"DATABASE_URL": f"sqlite:///{database}"}) as server:
        workers = _echo_load(server, answered, stop)
        time.sleep(1.5)
        assert server.stop() == 0
        stop.set()
        for worker in workers:
            worker.join()
    assert len(answered) > 20
    missing = set(answered) - _recorded(database)
    assert not missing, f"{len(missing)} of {len(answered)} answered calls were not recorded"


def _recorded(database: Path) -> set[str]:
    from app import create_app
    from core.transports.flask_app import shutdown_app

    app = create_app({"APP_ENV": "test", "DATABASE_URL": f"sqlite:///{database}"})
    try:
        db = extension(app).app_manager.get(DatabaseManager).documents
        return {r["request_id"] for r in db.collection("sb_audit").find({"action": "system.echo"})}
    finally:
        shutdown_app(app)


def test_kill_9_under_load_loses_at_most_one_interval_and_one_batch(tmp_path: Path) -> None:
    """A killed worker loses what its writer had not written yet: at most the records
    answered within the last ``audit.flush_interval`` plus one ``audit.batch_size``."""
    database = tmp_path / "app.db"
    interval, batch = 0.5, 200
    env = {
        "DATABASE_URL": f"sqlite:///{database}",
        "SB_AUDIT__FLUSH_INTERVAL": f"{interval}s",
        "SB_AUDIT__BATCH_SIZE": str(batch),
    }
    answered: dict[str, float] = {}  # request id -> when its answer was read
    stop = threading.Event()
    with running(tmp_path, "serve", env=env) as server:
        workers = _echo_load(server, answered, stop)
        time.sleep(2.0)
        os.killpg(server.process.pid, signal.SIGKILL)
        killed = time.monotonic()
        stop.set()
        for worker in workers:
            worker.join()
        server.process.wait(timeout=10)
    assert len(answered) > 100
    missing = set(answered) - _recorded(database)
    # The rate of the last second: the load is faster at the end than at the start.
    rate = sum(1 for at in answered.values() if at > killed - 1.0)
    assert len(missing) <= rate * interval + batch, (len(missing), rate)
    older = [m for m in missing if answered[m] < killed - interval]
    assert len(older) <= batch, len(older)


def test_a_record_the_store_refuses_does_not_hold_up_the_others(make_app: MakeApp) -> None:
    app = make_app(FAST)
    manager = extension(app).app_manager.get(AuditManager)
    manager.record(
        {
            "at": time.time(),
            "request_id": "bad",
            "action": "x.y",
            "known": True,
            "caller_id": "a\x00b",
        }
    )
    client = app.test_client()
    for n in range(3):
        assert post(client, "system.echo", {"message": f"m{n}"}).status_code == 200
    records = stored(app, 3)
    assert [r["action"] for r in records] == ["system.echo"] * 3
    assert manager.health().details["dropped"] == 1
