"""The HTTP contract: envelope, request ids, problem+json for every kind of bad input."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient

from tests.conftest import MakeApp, WriteModule

ECHO = "/api/v1/actions/system.echo"
PROBLEM = "application/problem+json"


def problem(response: Any, status: int, slug: str) -> dict[str, Any]:
    """Assert ``response`` is the problem ``slug`` with ``status``; return its body."""
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == PROBLEM
    body = response.get_json()
    assert body["type"] == f"/problems/{slug}"
    assert body["status"] == status
    assert body["request_id"] == response.headers["X-Request-ID"]
    return body  # type: ignore[no-any-return]


# A module whose actions exercise the error paths of the pipeline.
TRICKY_ACTIONS = """
actions:
  boom:
    handler: handlers:boom
    auth: public
  conflict:
    handler: handlers:conflict
    auth: public
  private:
    summary: Needs a user
    handler: handlers:private
  bad_return:
    handler: handlers:bad_return
    auth: public
    returns: {type: object, required: [ok]}
  slow:
    handler: handlers:slow
    auth: public
    timeout: 200ms
  unserializable:
    handler: handlers:unserializable
    auth: public
"""

TRICKY_HANDLERS = """
import threading

from core.base.errors import Conflict

RELEASE = threading.Event()


def boom(ctx):
    raise RuntimeError("database password is hunter2")


def conflict(ctx):
    raise Conflict("wallet moved on")


def private(ctx):
    return {"secret": True}


def bad_return(ctx):
    return {"nope": 1}


def slow(ctx):
    RELEASE.wait(10)
    return {"late": True}


def unserializable(ctx):
    return {"value": object()}
"""


@pytest.fixture
def tricky(make_app: MakeApp, write_module: WriteModule) -> FlaskClient:
    parent = write_module(
        "tricky", {"actions.yaml": TRICKY_ACTIONS, "handlers.py": TRICKY_HANDLERS}
    )
    return make_app({"MODULES_PATH": str(parent)}).test_client()


def test_echo_returns_the_envelope(client: FlaskClient) -> None:
    response = client.post(ECHO, json={"message": "hi"})
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert body["data"] == {"message": "hi"}
    meta = body["meta"]
    assert meta["action"] == "system.echo"
    assert meta["request_id"] == response.headers["X-Request-ID"]
    assert isinstance(meta["duration_ms"], float) and meta["duration_ms"] >= 0


def test_a_valid_request_id_is_kept_and_a_bad_one_replaced(client: FlaskClient) -> None:
    kept = client.post(ECHO, json={"message": "x"}, headers={"X-Request-ID": "req-1.2:3_x"})
    assert kept.headers["X-Request-ID"] == "req-1.2:3_x"
    assert kept.get_json()["meta"]["request_id"] == "req-1.2:3_x"
    for bad in ("has space", "x" * 129, "semi;colon", ""):
        replaced = client.post(ECHO, json={"message": "x"}, headers={"X-Request-ID": bad})
        generated = replaced.headers["X-Request-ID"]
        assert generated != bad and len(generated) == 32
        assert replaced.get_json()["meta"]["request_id"] == generated


def test_every_response_has_a_request_id(client: FlaskClient) -> None:
    for response in (client.get("/health/live"), client.get("/nowhere"), client.post(ECHO)):
        assert response.headers["X-Request-ID"]


def test_empty_body_means_no_params(client: FlaskClient) -> None:
    assert client.post("/api/v1/actions/system.ping").get_json()["data"] == {"pong": True}
    body = problem(client.post(ECHO), 422, "validation")
    assert body["errors"] == [{"path": "/message", "message": "is required"}]


@pytest.mark.parametrize(
    "raw",
    [b"{bad", b'{"message": "hi"', b"{'message': 'hi'}", b'{"message": NaN}', b"\xff\xfe{}"],
)
def test_malformed_json_is_400(client: FlaskClient, raw: bytes) -> None:
    body = problem(
        client.post(ECHO, data=raw, content_type="application/json"), 400, "malformed-request"
    )
    assert "JSON" in body["detail"]


@pytest.mark.parametrize("raw", [b"[1, 2]", b'"text"', b"42", b"null", b"true"])
def test_a_body_that_is_not_an_object_is_400(client: FlaskClient, raw: bytes) -> None:
    body = problem(
        client.post(ECHO, data=raw, content_type="application/json"), 400, "malformed-request"
    )
    assert "JSON object" in body["detail"]


def test_deeply_nested_json_is_400_not_500(client: FlaskClient) -> None:
    raw = b'{"message": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    problem(client.post(ECHO, data=raw, content_type="application/json"), 400, "malformed-request")


def test_a_non_json_content_type_is_415(client: FlaskClient) -> None:
    response = client.post(
        ECHO, data="message=hi", content_type="application/x-www-form-urlencoded"
    )
    problem(response, 415, "unsupported-media-type")


@pytest.mark.parametrize(
    "name", ["system.ech", "system.echoo", "SYSTEM.ECHO", "echo", "system", "system.echo.x"]
)
def test_unknown_action_is_404_never_a_fuzzy_match(client: FlaskClient, name: str) -> None:
    body = problem(client.post(f"/api/v1/actions/{name}", json={"message": "hi"}), 404, "not-found")
    assert name in body["detail"]


def test_unknown_and_mistyped_params_are_422_naming_each_field(client: FlaskClient) -> None:
    body = problem(
        client.post(ECHO, json={"message": 5, "loud": True, "to": "x"}), 422, "validation"
    )
    paths = {e["path"]: e["message"] for e in body["errors"]}
    assert paths["/loud"] == "unknown parameter"
    assert paths["/to"] == "unknown parameter"
    assert "string" in paths["/message"]
    assert len(body["errors"]) == 3


def test_body_over_the_limit_is_413(make_app: MakeApp) -> None:
    client = make_app({"SB_HTTP__MAX_BODY_BYTES": "200"}).test_client()
    small = client.post(ECHO, json={"message": "x" * 100})
    assert small.status_code == 200
    body = problem(client.post(ECHO, json={"message": "x" * 300}), 413, "payload-too-large")
    assert "200 bytes" in body["detail"]


def test_a_handler_crash_is_a_500_without_traceback(
    tricky: FlaskClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="switchboard.pipeline"):
        response = tricky.post("/api/v1/actions/tricky.boom", headers={"X-Request-ID": "crash-1"})
    body = problem(response, 500, "internal")
    text = response.get_data(as_text=True)
    # Outside production the detail says what went wrong (never the traceback); production
    # says only the request id (tests/test_authoring.py).
    assert "Traceback" not in text and "RuntimeError: database password is" in body["detail"]
    assert "crash-1" in body["detail"]
    logged = [r for r in caplog.records if r.name == "switchboard.pipeline"]
    assert logged and logged[0].exc_info is not None  # the operator gets the traceback


def test_an_expected_handler_error_keeps_its_status(tricky: FlaskClient) -> None:
    body = problem(tricky.post("/api/v1/actions/tricky.conflict"), 409, "conflict")
    assert body["detail"] == "wallet moved on"


def test_a_non_public_action_answers_401_to_an_anonymous_caller(tricky: FlaskClient) -> None:
    body = problem(tricky.post("/api/v1/actions/tricky.private"), 401, "unauthenticated")
    assert "auth: user" in body["detail"]


def test_the_listing_shows_only_what_the_caller_may_call(tricky: FlaskClient) -> None:
    response = tricky.get("/api/v1/actions")
    assert response.status_code == 200
    listed = {a["name"]: a for a in response.get_json()["data"]}
    assert "tricky.private" not in listed
    assert {"system.echo", "system.ping", "system.info", "tricky.boom"} <= set(listed)
    echo = listed["system.echo"]
    assert echo["auth"] == "public"
    assert echo["summary"] == "Return the message it is given"
    assert echo["params"]["required"] == ["message"]
    assert echo["params"]["additionalProperties"] is False
    assert echo["params"]["properties"]["message"]["type"] == "string"
    assert echo["returns"]["type"] == "object"


def test_a_result_that_breaks_returns_is_a_500_outside_production(tricky: FlaskClient) -> None:
    problem(tricky.post("/api/v1/actions/tricky.bad_return"), 500, "internal")


def test_an_unserializable_result_is_a_clean_500_and_audited_as_one(
    tricky: FlaskClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="switchboard.audit"):
        response = tricky.post("/api/v1/actions/tricky.unserializable")
    problem(response, 500, "internal")
    assert "object at 0x" not in response.get_data(as_text=True)
    audits = [r.audit for r in caplog.records if r.name == "switchboard.audit"]  # type: ignore[attr-defined]
    assert [(a["action"], a["status"]) for a in audits] == [("tricky.unserializable", 500)]


def test_past_its_timeout_an_action_answers_504(tricky: FlaskClient) -> None:
    handlers = sys.modules["switchboard_modules.tricky.handlers"]
    try:
        body = problem(tricky.post("/api/v1/actions/tricky.slow"), 504, "timeout")
        assert "0.2s" in body["detail"]
    finally:
        handlers.RELEASE.set()


def test_other_methods_and_routes_are_problems_too(client: FlaskClient) -> None:
    response = client.get(ECHO)
    problem(response, 405, "method-not-allowed")
    assert "POST" in response.headers["Allow"]
    problem(client.get("/api/v2/nothing"), 404, "not-found")


def test_health_endpoints(client: FlaskClient) -> None:
    live = client.get("/health/live")
    assert live.status_code == 200 and live.get_json() == {"status": "ok"}
    ready = client.get("/health/ready")
    assert ready.status_code == 200
    body = ready.get_json()
    assert body["status"] == "ok"
    assert {"config", "hooks", "modules", "actions"} <= set(body["checks"])
    assert body["checks"]["modules"]["modules"]["system"]["status"] == "ok"


def test_secret_params_never_reach_the_audit_log(
    make_app: MakeApp, write_module: WriteModule, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    parent = write_module(
        "vault_ish",
        {
            "actions.yaml": """
            actions:
              unlock:
                handler: handlers:unlock
                auth: public
                params:
                  pin: {type: string, maxLength: 4, secret: true, required: true}
            """,
            "handlers.py": "def unlock(ctx, *, pin):\n    return {'ok': True}\n",
        },
    )
    client = make_app({"MODULES_PATH": str(parent)}).test_client()
    with caplog.at_level(logging.DEBUG):
        ok = client.post("/api/v1/actions/vault_ish.unlock", json={"pin": "qzxw"})
        bad = client.post("/api/v1/actions/vault_ish.unlock", json={"pin": "supersecret"})
    assert ok.status_code == 200
    assert "supersecret" not in bad.get_data(as_text=True)
    logged = "\n".join(f"{r.getMessage()} {vars(r)}" for r in caplog.records)
    assert "qzxw" not in logged and "supersecret" not in logged
    audits = [r for r in caplog.records if r.name == "switchboard.audit"]
    assert [a.audit["status"] for a in audits] == [200, 422]  # type: ignore[attr-defined]
    assert audits[0].audit["param_names"] == ["pin"]  # type: ignore[attr-defined]
