"""Background executions (embedded runner): the 202 and its record, progress, cancel, the
time limit, who may see what, replays, secrets, restarts; over HTTP, Socket.IO and a served
process."""

from __future__ import annotations

import json
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import app as app_module
from core.base.errors import DeclarationError
from core.contracts.facades import Documents
from core.runtime.booted import BootedApp
from managers.executions import ExecutionsManager
from tests.conftest import WriteModule
from tests.served import Server, running

ACTIONS = """
actions:
  build:
    summary: Build a report
    handler: handlers:build
    auth: any
    run: background
    keep: 1d
    params:
      customer_id: {type: string, required: true}
      steps: {type: integer, minimum: 1, default: 4}
      token: {type: string, secret: true}
  slow:
    handler: handlers:slow
    auth: user
    run: background
    timeout: 0.5s
  patient:
    handler: handlers:patient
    auth: user
    run: background
  maybe:
    handler: handlers:maybe
    auth: user
    run: either
    idempotent: true
    params:
      n: {type: integer, required: true}
  boom:
    handler: handlers:boom
    auth: user
    run: background
"""
HANDLERS = """
import time

started = []

def build(ctx, *, customer_id, steps=4, token=None):
    for i in range(steps):
        ctx.progress((i + 1) / steps, f"step {i + 1} of {steps}")
    return {"customer": customer_id, "had_token": token, "execution": ctx.execution.id,
            "attempt": ctx.execution.attempt, "key": ctx.idempotency_key}

def slow(ctx):
    while True:           # never checks: the time limit must interrupt it
        time.sleep(0.01)

def patient(ctx):
    started.append(ctx.execution.id)
    while True:
        ctx.check_cancelled()
        time.sleep(0.01)

def maybe(ctx, *, n):
    return {"n": n, "background": ctx.execution is not None}

def boom(ctx):
    raise ValueError("the report broke")
"""
PASSWORD = "correct horse battery staple"


def post(booted: BootedApp, action: str, params: Any = None, **headers: str) -> Any:
    assert booted.http is not None
    return booted.http.test_client().post(
        f"/api/v1/actions/{action}", json=params or {}, headers=headers
    )


def login(booted: BootedApp, email: str) -> dict[str, str]:
    post(booted, "auth.register", {"email": email, "password": PASSWORD})
    pair = post(booted, "auth.login", {"email": email, "password": PASSWORD}).get_json()
    return {"Authorization": f"Bearer {pair['data']['access_token']}"}


def executions(booted: BootedApp) -> ExecutionsManager:
    return booted.app_manager.get(ExecutionsManager)


@pytest.fixture(params=["sqlite", "postgres+redis"])
def booted(
    request: pytest.FixtureRequest, tmp_path: Path, write_module: WriteModule
) -> Iterator[BootedApp]:
    """The app with the reports module, on SQLite and memory://, and on PostgreSQL and
    Redis (each test's own database and key prefix)."""
    parent = write_module("reports", {"actions.yaml": ACTIONS, "handlers.py": HANDLERS})
    backends = {"DATABASE_URL": f"sqlite:///{tmp_path}/app.db"}
    if request.param != "sqlite":
        backends = {
            "DATABASE_URL": request.getfixturevalue("postgres_url"),
            "REDIS_URL": request.getfixturevalue("redis_url"),
            "SB_REDIS__PREFIX": request.getfixturevalue("redis_prefix"),
        }
    runtime = app_module.boot(
        {
            "APP_ENV": "test",
            **backends,
            "MODULES_PATH": str(parent),
            "SB_EXECUTIONS__PROGRESS_INTERVAL": "0",
        }
    )
    yield runtime
    runtime.close()


def get(booted: BootedApp, path: str, headers: dict[str, str]) -> Any:
    assert booted.http is not None
    return booted.http.test_client().get(path, headers=headers)


def test_a_background_call_answers_202_and_its_record_moves_to_succeeded(
    booted: BootedApp,
) -> None:
    ann = login(booted, "ann@example.com")
    answer = post(booted, "reports.build", {"customer_id": "c1", "token": "s3cr3t"}, **ann)
    assert answer.status_code == 202
    record = answer.get_json()["data"]
    location = answer.headers["Location"]
    assert location == f"/api/v1/executions/{record['id']}" == record["url"]
    assert record["status"] == "queued" and record["action"] == "reports.build"
    assert record["params"] == {"customer_id": "c1", "steps": 4, "token": "***"}
    stored = executions(booted).store.get(record["id"])  # type: ignore[union-attr]
    assert stored is not None and "s3cr3t" not in json.dumps(stored)  # sealed, not stored

    shown = get(booted, location, ann).get_json()["data"]
    assert shown["status"] == "queued" and shown["caller"]["kind"] == "user"

    finished = executions(booted).run_queued(booted)
    assert [f["id"] for f in finished] == [record["id"]]
    done = get(booted, location, ann).get_json()["data"]
    assert done["status"] == "succeeded" and done["attempts"] == 1
    assert done["progress"] == {"done": 1.0, "message": "step 4 of 4"}
    assert done["result"] == {
        "customer": "c1",
        "had_token": "s3cr3t",  # the job got the secret back
        "execution": record["id"],
        "attempt": 1,
        "key": record["id"],  # a stable idempotency key: the execution id
    }
    assert done["params"]["token"] == "***"
    assert done["started_at"] <= done["finished_at"]
    after = executions(booted).store.get(record["id"])  # type: ignore[union-attr]
    assert after is not None and after["sealed"] is None  # the secret is dropped at the end
    documents = booted.capability(Documents)
    assert documents is not None

    def audited() -> list[dict[str, Any]]:
        return documents.collection("sb_audit").find({"action": "reports.build"})

    _until(lambda: len(audited()) >= 2)  # the call (http) and the job (worker)
    assert sorted(r["transport"] for r in audited()) == ["http", "worker"]
    assert all("s3cr3t" not in json.dumps(r) for r in audited())


def test_finished_records_past_their_keep_are_pruned(booted: BootedApp) -> None:
    ann = login(booted, "ann@example.com")
    kept = post(booted, "reports.build", {"customer_id": "a"}, **ann).get_json()["data"]
    waiting = post(booted, "reports.patient", {}, **ann).get_json()["data"]
    store = executions(booted).store
    assert store is not None
    store.cancel(waiting["id"])  # ended now: cancelled
    now = store.clock
    store.clock = lambda: now() + 2 * 86400  # two days on: past build's keep of 1d
    try:
        assert store.prune() == 0  # the cancelled one keeps 7 days; a queued one is kept
        assert store.get(kept["id"]) is not None
        executions(booted).run_queued(booted)
        store.clock = lambda: now() + 4 * 86400
        assert store.prune() == 1 and store.get(kept["id"]) is None  # finished, past 1d
        assert store.get(waiting["id"]) is not None
    finally:
        store.clock = now


def test_a_422_enqueues_nothing_and_load_errors_name_the_field(
    booted: BootedApp, make_app: Any, write_module: WriteModule
) -> None:
    ann = login(booted, "ann@example.com")
    assert post(booted, "reports.build", {"steps": 0}, **ann).status_code == 422
    assert executions(booted).run_queued(booted) == []
    for declaration, field in (
        ("run: later", "run"),
        ("run: background\n    keep: forever", "keep"),
        ("keep: 1d", "keep"),
        ("run: background\n    auth: public", "auth"),
    ):
        parent = write_module(
            "bad",
            {
                "actions.yaml": f"actions:\n  x:\n    handler: handlers:x\n    {declaration}\n",
                "handlers.py": "def x(ctx):\n    return 1\n",
            },
            parent="bad",
        )
        with pytest.raises(DeclarationError) as caught:
            make_app({"MODULES_PATH": str(parent)})
        assert [p.field for p in caught.value.problems] == [field], declaration


def test_another_caller_gets_404_and_lists_only_their_own(booted: BootedApp) -> None:
    ann, bob = login(booted, "ann@example.com"), login(booted, "bob@example.com")
    mine = post(booted, "reports.build", {"customer_id": "a"}, **ann).get_json()["data"]
    post(booted, "reports.build", {"customer_id": "b"}, **bob)
    url = mine["url"]
    assert get(booted, url, bob).status_code == 404
    assert booted.http is not None
    client = booted.http.test_client()
    assert client.post(f"{url}/cancel", headers=bob).status_code == 404
    assert client.get(url).status_code == 401
    listed = get(booted, "/api/v1/executions", ann).get_json()
    assert [e["id"] for e in listed["data"]] == [mine["id"]]
    assert get(booted, "/api/v1/executions?caller=user:x", ann).status_code == 403
    assert get(booted, "/api/v1/executions/nope", ann).status_code == 404


def test_cancel_a_queued_one_and_a_running_one_and_409_after(booted: BootedApp) -> None:
    ann = login(booted, "ann@example.com")
    assert booted.http is not None
    client = booted.http.test_client()
    queued = post(booted, "reports.build", {"customer_id": "a"}, **ann).get_json()["data"]
    cancelled = client.post(f"{queued['url']}/cancel", headers=ann)
    assert cancelled.status_code == 202 and cancelled.get_json()["data"]["status"] == "cancelled"
    assert executions(booted).run_queued(booted) == []  # it never runs
    assert client.post(f"{queued['url']}/cancel", headers=ann).status_code == 409

    executions(booted).start_runner(booted)  # from now on each call is run on its pool
    running_one = post(booted, "reports.patient", {}, **ann).get_json()["data"]

    def status() -> str:
        return str(get(booted, running_one["url"], ann).get_json()["data"]["status"])

    _until(lambda: status() == "running")
    assert client.post(f"{running_one['url']}/cancel", headers=ann).status_code == 202
    _until(lambda: status() != "running")
    ended = get(booted, running_one["url"], ann).get_json()["data"]
    assert ended["status"] == "cancelled" and ended["error"]["status"] == 409
    assert client.post(f"{running_one['url']}/cancel", headers=ann).status_code == 409


def test_the_time_limit_interrupts_a_job_that_never_checks(booted: BootedApp) -> None:
    ann = login(booted, "ann@example.com")
    record = post(booted, "reports.slow", {}, **ann).get_json()["data"]
    started = time.monotonic()
    (finished,) = executions(booted).run_queued(booted)
    assert time.monotonic() - started < 5
    assert finished["status"] == "timed_out" and finished["error"]["status"] == 504
    assert "0.5s" in finished["error"]["detail"] and finished["id"] == record["id"]


def test_a_failing_job_is_failed_with_the_problem_a_call_would_get(booted: BootedApp) -> None:
    ann = login(booted, "ann@example.com")
    post(booted, "reports.boom", {}, **ann)
    (finished,) = executions(booted).run_queued(booted)
    assert finished["status"] == "failed" and finished["error"]["status"] == 500
    error = finished["error"]
    assert error["type"] == "/problems/internal" and error["request_id"] in error["detail"]


def test_prefer_respond_async_on_either_and_the_same_execution_on_a_retry(
    booted: BootedApp,
) -> None:
    ann = login(booted, "ann@example.com")
    inline = post(booted, "reports.maybe", {"n": 1}, **ann)
    assert inline.status_code == 200 and inline.get_json()["data"] == {
        "n": 1,
        "background": False,
    }
    asked = {**ann, "Prefer": "respond-async, wait=5", "Idempotency-Key": "k-1"}
    first = post(booted, "reports.maybe", {"n": 2}, **asked)
    assert first.status_code == 202 and first.headers["Preference-Applied"] == "respond-async"
    again = post(booted, "reports.maybe", {"n": 2}, **asked)
    assert again.status_code == 202 and again.headers["Idempotent-Replayed"] == "true"
    assert again.headers["Location"] == first.headers["Location"]
    assert again.get_json()["data"]["id"] == first.get_json()["data"]["id"]
    (finished,) = executions(booted).run_queued(booted)  # enqueued once
    assert finished["result"] == {"n": 2, "background": True}


def test_a_disabled_users_queued_job_fails_unauthenticated(booted: BootedApp) -> None:
    ann = login(booted, "ann@example.com")
    post(booted, "reports.build", {"customer_id": "a"}, **ann)
    from core.base.request_ids import new_request_id
    from core.contracts.calls import CallRequest
    from core.contracts.context import SYSTEM

    booted.invoke(
        CallRequest(
            "auth.users.disable", {"email": "ann@example.com"}, new_request_id(), caller=SYSTEM
        )
    )
    (finished,) = executions(booted).run_queued(booted)
    assert finished["status"] == "failed" and finished["error"]["status"] == 401


def test_progress_and_status_are_pushed_to_the_users_room(booted: BootedApp) -> None:
    pushes: list[tuple[str, Any, str]] = []
    from core.contracts.facades import Pushes

    watcher = booted.capability(Pushes)
    assert watcher is not None
    watcher.watch(lambda event, data, target: pushes.append((event, data, target)))
    ann = login(booted, "ann@example.com")
    record = post(booted, "reports.build", {"customer_id": "a", "steps": 2}, **ann).get_json()
    executions(booted).run_queued(booted)
    mine = [
        (d["status"], (d["progress"] or {}).get("done")) for e, d, _ in pushes if e == "execution"
    ]
    assert mine == [
        ("queued", None),
        ("running", None),
        ("running", 0.5),
        ("running", 1.0),
        ("succeeded", 1.0),
    ]
    user_id = record["data"]["caller"]["id"]
    assert {target for e, _, target in pushes if e == "execution"} == {f"user:{user_id}"}


def _until(check: Any, seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.02)


# --- served: the embedded runner in serve, ?wait, a restart --------------------------------


def _module(tmp_path: Path) -> Path:
    folder = tmp_path / "mods" / "reports"
    folder.mkdir(parents=True)
    (folder / "actions.yaml").write_text(textwrap.dedent(ACTIONS))
    (folder / "handlers.py").write_text(textwrap.dedent(HANDLERS))
    return tmp_path / "mods"


def _served_login(server: Server, email: str) -> dict[str, str]:
    body = json.dumps({"email": email, "password": PASSWORD}).encode()
    server.post("/api/v1/actions/auth.register", body)
    token = server.post("/api/v1/actions/auth.login", body).json()["data"]["access_token"]
    return {"Authorization": f"Bearer {token}"}


def test_serve_runs_jobs_and_wait_answers_when_the_job_ends(tmp_path: Path) -> None:
    from tests.served import http

    env = {"MODULES_PATH": str(_module(tmp_path)), "SB_HTTP__WORKERS": "1"}
    with running(tmp_path, "serve", env=env) as server:
        ann = _served_login(server, "ann@example.com")
        answer = server.post(
            "/api/v1/actions/reports.build", b'{"customer_id": "c9", "steps": 3}', ann
        )
        assert answer.status == 202
        url = server.base + answer.headers["Location"]
        started = time.monotonic()
        waited = http("GET", url + "?wait=20", headers=ann)
        assert time.monotonic() - started < 10
        assert waited.status == 200 and waited.json()["data"]["status"] == "succeeded"
        assert waited.json()["data"]["result"]["customer"] == "c9"
        short = http("GET", url + "?wait=abc", headers=ann)
        assert short.status == 400


def test_a_restart_runs_a_job_its_stop_left_queued(tmp_path: Path) -> None:
    from tests.served import http

    database = f"sqlite:///{tmp_path}/kept.db"
    env = {
        "MODULES_PATH": str(_module(tmp_path)),
        "SB_HTTP__WORKERS": "1",
        "DATABASE_URL": database,
        "SB_EXECUTIONS__THREADS": "1",
    }
    with running(tmp_path, "serve", env=env) as server:
        ann = _served_login(server, "ann@example.com")
        # the only runner thread is held by a job that never ends on its own
        server.post("/api/v1/actions/reports.patient", b"{}", ann)
        queued = server.post("/api/v1/actions/reports.build", b'{"customer_id": "c1"}', ann)
        url = queued.headers["Location"]
        assert http("GET", server.base + url, headers=ann).json()["data"]["status"] == "queued"
        assert server.stop() == 0  # the held job is interrupted and queued again
    del env["SB_EXECUTIONS__THREADS"]
    with running(tmp_path, "serve", env=env) as server:
        done = http("GET", server.base + url + "?wait=20", headers=ann)
        assert done.json()["data"]["status"] == "succeeded", done.json()


def test_openapi_documents_the_202_location_prefer_and_the_routes(booted: BootedApp) -> None:
    assert booted.http is not None
    document = booted.http.test_client().get("/openapi.json").get_json()
    build = document["paths"]["/api/v1/actions/reports.build"]["post"]
    assert "200" not in build["responses"] and "Location" in build["responses"]["202"]["headers"]
    maybe = document["paths"]["/api/v1/actions/reports.maybe"]["post"]
    assert {"200", "202"} <= set(maybe["responses"])
    assert any(p["name"] == "Prefer" for p in maybe["parameters"])
    assert "Preference-Applied" in maybe["responses"]["202"]["headers"]
    assert {
        "/api/v1/executions/{id}",
        "/api/v1/executions/{id}/cancel",
        "/api/v1/executions",
    } <= set(document["paths"])
    from openapi_spec_validator import validate

    validate(document)


def test_the_cli_enqueues_runs_and_lists_executions(tmp_path: Path) -> None:
    from tests.served import cli

    env = {"MODULES_PATH": str(_module(tmp_path)), "SB_HTTP__WORKERS": "1"}
    with running(tmp_path, "serve", env=env) as server:
        ann = _served_login(server, "ann@example.com")
        made = cli(server, "call", "reports.maybe", "--json", '{"n": 5}', "--background", "--wait")
        assert made.returncode == 0, made.stderr
        finished = json.loads(made.stdout)["data"]
        assert finished["status"] == "succeeded" and finished["result"]["background"] is True
        built = cli(server, "call", "reports.build", "--json", '{"customer_id": "c"}', "--wait")
        assert json.loads(built.stdout)["data"]["progress"]["done"] == 1.0
        assert "100% step 4 of 4" in built.stderr  # the progress, drawn on stderr
        # queued by the CLI without waiting: the server's runner takes it up
        queued = cli(server, "call", "reports.maybe", "--json", '{"n": 6}', "--background")
        record = json.loads(queued.stdout)["data"]
        assert record["status"] == "queued"
        from tests.served import http

        _until(
            lambda: (
                json.loads(cli(server, "executions", "show", record["id"]).stdout)["status"]
                == "succeeded"
            )
        )
        listed = cli(server, "executions", "list", "--action", "reports.maybe")
        assert listed.returncode == 0 and record["id"] in listed.stdout
        assert finished["id"] in listed.stdout and "succeeded" in listed.stdout
        gone = cli(server, "executions", "cancel", record["id"])
        assert gone.returncode == 1 and "already ended" in gone.stderr
        # the system caller enqueued these: a user does not see them
        mine = http("GET", server.base + "/api/v1/executions", headers=ann).json()["data"]
        assert mine == []


def test_socketio_calls_answer_the_execution_and_pushes_arrive_in_order(tmp_path: Path) -> None:
    from tests.test_realtime import connect

    env = {
        "MODULES_PATH": str(_module(tmp_path)),
        "SB_HTTP__WORKERS": "1",
        "SB_EXECUTIONS__PROGRESS_INTERVAL": "0",
    }
    with running(tmp_path, "serve", env=env) as server:
        token = _served_login(server, "ann@example.com")["Authorization"].split()[1]
        sock = connect(server.base, {"token": token})
        try:
            ack = sock.call("reports.build", {"customer_id": "s1", "steps": 3})
            record = ack["data"]
            assert record["status"] == "queued" and record["action"] == "reports.build"
            sock.wait_for("execution", lambda e: e["status"] == "succeeded")
            seen = [e for e in sock.got("execution") if e["id"] == record["id"]]
            statuses = [e["status"] for e in seen]
            assert statuses[-1] == "succeeded" and "running" in statuses
            order = ["queued", "running", "succeeded"]
            assert [order.index(s) for s in statuses] == sorted(order.index(s) for s in statuses)
            done = [e["progress"]["done"] for e in seen if e["progress"]]
            assert done == sorted(done) and done[-1] == 1.0 and len(done) >= 3
            # an either action runs inline over Socket.IO unless asked
            inline = sock.call("reports.maybe", {"n": 1})
            assert inline["data"] == {"n": 1, "background": False}
            asked = sock.call("reports.maybe", {"n": 2}, respond_async=True)
            assert asked["data"]["status"] == "queued"
            shown = sock.call("executions.show", {"id": record["id"]})
            assert shown["data"]["result"]["customer"] == "s1"
        finally:
            sock.client.disconnect()


def test_the_harness_runs_executions_only_when_told_in_order(tmp_path: Path) -> None:
    from core.testing import Harness, user

    folder = _module(tmp_path) / "reports"
    with Harness.boot(app_module.boot, folder, tmp_path=tmp_path) as harness:
        ann = user("u1")
        first = harness.call("reports.build", {"customer_id": "a", "steps": 2}, as_=ann)
        second = harness.call("reports.maybe", {"n": 3}, as_=ann)
        assert first.status == 202 and first.data["status"] == "queued"
        assert second.status == 200  # either, not asked: inline
        third = harness.call("reports.build", {"customer_id": "b"}, as_=ann)
        time.sleep(0.3)  # nothing runs behind the test's back
        shown = harness.call("executions.show", {"id": first.data["id"]}, as_=ann)
        assert shown.data["status"] == "queued"
        finished = harness.run_executions()
        assert [f["id"] for f in finished] == [first.data["id"], third.data["id"]]
        assert [f["result"]["customer"] for f in finished] == ["a", "b"]
        pushed = [d["status"] for e, d, _ in harness.pushes if e == "execution"]
        assert pushed.count("succeeded") == 2 and pushed[0] == "queued"
        assert harness.run_executions() == []


def test_a_revoked_keys_queued_job_fails_even_after_its_marker_expired(
    booted: BootedApp,
) -> None:
    from core.base.store import KeyValueStore
    from managers.api_keys import ApiKeyManager

    keys = booted.app_manager.get(ApiKeyManager)
    record, raw = keys.create(name="jobs", owner=None, scopes=[])
    queued = post(booted, "reports.build", {"customer_id": "k"}, **{"X-API-Key": raw})
    assert queued.status_code == 202
    keys.revoke(record["id"])
    store = booted.capability(KeyValueStore)
    assert store is not None
    stored = executions(booted).store.get(queued.get_json()["data"]["id"])  # type: ignore[union-attr]
    assert stored is not None and stored["revocations"]
    for marker in stored["revocations"]:
        store.delete(marker)  # the marker lives a minute; the job may start later
    (finished,) = executions(booted).run_queued(booted)
    assert finished["status"] == "failed" and finished["error"]["status"] == 401


def test_an_attempt_whose_lease_was_taken_over_cannot_end_the_record(booted: BootedApp) -> None:
    ann = login(booted, "ann@example.com")
    record = post(booted, "reports.build", {"customer_id": "a"}, **ann).get_json()["data"]
    store = executions(booted).store
    assert store is not None
    first = store.claim(record["id"], lease=30)
    assert first is not None and first["attempts"] == 1
    assert not store.requeue_stale(record["id"])  # its lease holds
    now = store.clock
    store.clock = lambda: now() + 60  # the first runner lost the database past its lease
    try:
        assert store.requeue_stale(record["id"])
        second = store.claim(record["id"], lease=30)
        assert second is not None and second["attempts"] == 2
        assert not store.renew(record["id"], 1, 30)  # the first learns it lost the lease
        assert store.finish(record["id"], 1, "succeeded", keep=60) is None
        assert store.get(record["id"])["status"] == "running"  # type: ignore[index]
        assert store.finish(record["id"], 2, "succeeded", keep=60) is not None
    finally:
        store.clock = now


def test_keep_counts_from_the_end_and_bad_list_filters_are_422(booted: BootedApp) -> None:
    ann = login(booted, "ann@example.com")
    record = post(booted, "reports.build", {"customer_id": "a"}, **ann).get_json()["data"]
    store = executions(booted).store
    assert store is not None
    now = store.clock
    store.clock = lambda: now() + 3 * 86400  # it waited three days, longer than its keep
    try:
        executions(booted).run_queued(booted)
        assert store.prune() == 0 and store.get(record["id"]) is not None
    finally:
        store.clock = now
    for query in ("limit=²", "limit=0", "limit=x", "status=done"):
        answer = get(booted, f"/api/v1/executions?{query}", ann)
        assert answer.status_code == 422, (query, answer.get_json())
