"""Hostile input through a served process: never a 500, never HTML, nothing said twice.

Each case here was once a 500, a stall or an answer that said too much; every one is asked
of a real ``python app.py serve`` over a real socket.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from core.actions.params import MAX_ERRORS
from tests.conftest import MakeApp
from tests.helpers import module_object
from tests.served import Response, Server, production_secrets, running

ECHO = "/api/v1/actions/system.echo"
PASSWORD = "correct horse battery staple"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    env = {"SB_LOGGING__FORMAT": "text", "SB_LOGGING__LEVEL": "INFO"}
    with running(tmp_path_factory.mktemp("hostile"), "serve", env=env) as started:
        yield started


def nested(depth: int) -> bytes:
    """``{"message": [[…]]}`` whose whole document nests ``depth`` levels."""
    return b'{"message": ' + b"[" * (depth - 1) + b"]" * (depth - 1) + b"}"


def assert_problem(response: Response, status: int, slug: str) -> dict[str, Any]:
    assert response.status == status, response.body[:500]
    assert response.headers["Content-Type"] == "application/problem+json"
    problem: dict[str, Any] = response.json()
    assert problem["type"] == f"/problems/{slug}"
    assert problem["request_id"] == response.headers["X-Request-ID"]
    return problem


# --- what a body may hold --------------------------------------------------------------

MALFORMED = {
    "a lone surrogate in a key": (ECHO, rb'{"\ud800": 1}'),
    "a lone surrogate in a value": (ECHO, rb'{"message": "a\udfffb"}'),
    "a lone surrogate in an email": (
        "/api/v1/actions/auth.register",
        rb'{"email": "c\ud800@example.com", "password": "long enough password"}',
    ),
    "a lone surrogate that also fails maxLength": (
        ECHO,
        b'{"message": "' + b"x" * 10001 + rb'\ud800"}',
    ),
    "a password ending in a lone surrogate (register)": (
        "/api/v1/actions/auth.register",
        rb'{"email": "s@example.com", "password": "long enough password\ud800"}',
    ),
    "a password ending in a lone surrogate (login)": (
        "/api/v1/actions/auth.login",
        rb'{"email": "s@example.com", "password": "long enough password\ud800"}',
    ),
    "NaN": (ECHO, b'{"message": NaN}'),
    "Infinity": (ECHO, b'{"message": Infinity}'),
    "-Infinity": (ECHO, b'{"message": -Infinity}'),
    "a number past a double": (ECHO, b'{"message": 1e99999}'),
    "a negative number past a double": (ECHO, b'{"message": [-1e99999]}'),
    "65 levels": (ECHO, nested(65)),
    "300 levels": (ECHO, nested(300)),
    "989 levels": (ECHO, nested(989)),
    "5000 levels": (ECHO, nested(5000)),
    "an integer of 5000 digits": (ECHO, b'{"message": ' + b"9" * 5000 + b"}"),
    "bytes that are not UTF-8": (ECHO, b'{"message": "\xff\xfe"}'),
    "an array": (ECHO, b"[1, 2]"),
}


@pytest.mark.parametrize("case", MALFORMED)
def test_what_no_layer_can_hold_is_a_400_at_the_door(server: Server, case: str) -> None:
    path, body = MALFORMED[case]
    problem = assert_problem(server.post(path, body), 400, "malformed-request")
    assert "sys." not in problem["detail"] and "Traceback" not in problem["detail"]


def test_nesting_up_to_the_limit_reaches_validation(server: Server) -> None:
    problem = assert_problem(server.post(ECHO, nested(64)), 422, "validation")
    assert [e["path"] for e in problem["errors"]] == ["/message"]


def test_the_server_keeps_serving_after_all_of_it(server: Server) -> None:
    response = server.post(ECHO, json.dumps({"message": "still here \u00e9"}).encode())
    assert response.status == 200
    assert response.json()["data"] == {"message": "still here \u00e9"}
    assert "Traceback" not in server.output()


def test_a_422_names_at_most_fifty_errors_and_counts_the_rest(server: Server) -> None:
    body = json.dumps({f"k{i}": 1 for i in range(80_000)}).encode()
    assert len(body) < 1024 * 1024
    response = server.post(ECHO, body)
    problem = assert_problem(response, 422, "validation")
    assert len(problem["errors"]) == MAX_ERRORS
    # 80,000 unknown parameters and the missing "message"
    assert problem["errors_omitted"] == 80_001 - MAX_ERRORS
    assert len(response.body) < 10_000


# --- what the request line and headers may be ----------------------------------------


def raw_request(server: Server, data: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send ``data`` as it is; the status, headers (lower-case) and body of the answer."""
    host, port = server.base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(data)
        received = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            received += chunk
            head, sep, body = received.partition(b"\r\n\r\n")
            if sep:
                fields = dict(
                    line.split(": ", 1) for line in head.decode("latin-1").split("\r\n")[1:]
                )
                headers = {k.lower(): v for k, v in fields.items()}
                if len(body) >= int(headers.get("content-length", "0")):
                    break
    status_line, _, _ = received.partition(b"\r\n")
    return int(status_line.split()[1]), headers, body


def test_a_long_action_name_is_414(server: Server) -> None:
    response = server.post("/api/v1/actions/" + "x" * 4000, b"{}")
    assert_problem(response, 414, "uri-too-long")
    assert len(response.body) < 1000  # the name is not echoed back


def test_a_long_query_on_any_route_is_414(server: Server) -> None:
    assert_problem(server.get("/health/live?pad=" + "x" * 3000), 414, "uri-too-long")


@pytest.mark.parametrize(
    "headers",
    [
        b"X-Big: " + b"a" * 65_000 + b"\r\n",
        b"".join(b"X-H%d: a\r\n" % i for i in range(500)),
    ],
    ids=["one 64 KB header", "500 headers"],
)
def test_too_much_header_is_431(server: Server, headers: bytes) -> None:
    status, fields, body = raw_request(
        server, b"GET /health/live HTTP/1.1\r\nHost: t\r\n" + headers + b"Connection: close\r\n\r\n"
    )
    assert status == 431
    assert fields["content-type"] == "application/problem+json"
    assert json.loads(body)["type"] == "/problems/headers-too-large"
    assert fields["x-request-id"]


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET /health/live HTTP/1.1\r\nHost: t\r\nX-A: a\r\n folded\r\nConnection: close\r\n\r\n",
        b"POST /api/v1/actions/system.echo HTTP/1.1\r\nHost: t\r\nContent-Length: -5\r\n\r\n",
        b"GARBAGE\r\n\r\n",
    ],
    ids=["obs-fold", "negative Content-Length", "no request line"],
)
def test_what_the_http_server_refuses_itself_is_400_without_html(
    server: Server, request_bytes: bytes
) -> None:
    status, fields, body = raw_request(server, request_bytes)
    assert status == 400
    assert "html" not in fields.get("content-type", "")
    assert b"<" not in body


# --- logs ----------------------------------------------------------------------------


def test_control_characters_never_reach_a_text_log_raw(server: Server) -> None:
    response = server.post("/api/v1/actions/x%1b%5b31mRED%00%07", b"{}")
    assert_problem(response, 404, "not-found")
    deadline = time.monotonic() + 5
    while "RED" not in server.output() and time.monotonic() < deadline:
        time.sleep(0.05)  # the log writer flushes every 50 ms
    output = server.output()
    assert "x\\x1b[31mRED\\x00\\x07" in output
    assert "\x1b" not in output and "\x00" not in output and "\x07" not in output


# --- numbers -------------------------------------------------------------------------


def _account(server: Server, email: str) -> tuple[str, str]:
    """(user id, access token) of a new account."""
    account = json.dumps({"email": email, "password": PASSWORD}).encode()
    registered = server.post("/api/v1/actions/auth.register", account)
    assert registered.status == 200, registered.body
    login = server.post("/api/v1/actions/auth.login", account)
    assert login.status == 200, login.body
    return registered.json()["data"]["id"], login.json()["data"]["access_token"]


def test_three_and_three_point_zero_are_the_same_idempotent_call(server: Server) -> None:
    _, sender = _account(server, "sender@example.com")
    receiver, _ = _account(server, "receiver@example.com")
    headers = {"Authorization": f"Bearer {sender}", "Idempotency-Key": "pay-3"}
    path = "/api/v1/actions/credits.transfer"
    first = server.post(path, json.dumps({"to": receiver, "amount": 3}).encode(), headers)
    assert_problem(
        first, 409, "conflict"
    )  # a new wallet is empty: the answer is stored all the same
    again = server.post(path, json.dumps({"to": receiver, "amount": 3.0}).encode(), headers)
    assert again.status == 409
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.body == first.body
    other = server.post(path, json.dumps({"to": receiver, "amount": 4}).encode(), headers)
    assert_problem(other, 422, "idempotency-mismatch")


# --- what production tells an anonymous caller -------------------------------------------


@pytest.fixture(scope="module")
def production(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    work = tmp_path_factory.mktemp("production")
    env = {
        **production_secrets(work),
        "DATABASE_URL": f"sqlite:///{work}/app.db",
        "SB_HTTP__WORKERS": "1",  # memory:// serves one worker
        "SB_HEALTH__ALLOW": "10.9.9.9/32",  # not this test's loopback address
    }
    with running(work, "serve", env=env) as started:
        yield started


def test_production_readiness_says_only_the_status_to_strangers(production: Server) -> None:
    ready = production.get("/health/ready")
    assert ready.status == 200
    assert ready.json() == {"status": ready.json()["status"]}
    assert ready.json()["status"] in ("ok", "degraded")


def test_production_system_info_leaves_out_the_environment(production: Server) -> None:
    info = production.post("/api/v1/actions/system.info", b"")
    assert info.status == 200
    assert "env" not in info.json()["data"]
    assert {"name", "version", "uptime_seconds", "modules"} <= set(info.json()["data"])


PRODUCTION_ENV = {"SB_HTTP__WORKERS": "1", "REDIS_URL": "memory://"}


@pytest.mark.parametrize(
    ("allow", "address", "shown"),
    [
        (None, "127.0.0.1", True),  # the default: loopback sees the checks
        (None, "203.0.113.5", False),
        ("203.0.113.0/24", "203.0.113.5", True),
        ("203.0.113.0/24", "127.0.0.1", False),
    ],
)
def test_production_readiness_checks_follow_health_allow(
    make_app: MakeApp, tmp_path: Path, allow: str | None, address: str, shown: bool
) -> None:
    env = {**production_secrets(tmp_path), **PRODUCTION_ENV}
    if allow is not None:
        env["SB_HEALTH__ALLOW"] = allow
    client = make_app(env).test_client()
    body = client.get("/health/ready", environ_base={"REMOTE_ADDR": address}).get_json()
    assert ("checks" in body) is shown
    assert body["status"] in ("ok", "degraded")


def test_production_readiness_checks_are_shown_to_admins_only(
    make_app: MakeApp, tmp_path: Path
) -> None:
    env = {**production_secrets(tmp_path), **PRODUCTION_ENV, "SB_HEALTH__ALLOW": "10.9.9.9/32"}
    app = make_app(env)
    client = app.test_client()
    account = {"email": "root@example.com", "password": PASSWORD}
    assert client.post("/api/v1/actions/auth.register", json=account).status_code == 200

    def ready_with(token: str) -> dict[str, Any]:
        response = client.get("/health/ready", headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 200  # a bad credential is no reason for a 401 here
        body: dict[str, Any] = response.get_json()
        return body

    user = client.post("/api/v1/actions/auth.login", json=account).get_json()["data"]
    assert "checks" not in ready_with(user["access_token"])
    assert "checks" not in ready_with("not-a-token")
    promoted = module_object(app, "auth")
    promoted.ctx.db.collection("sb_users").update_one(
        {"email": account["email"]}, {"$set": {"roles": ["admin"]}}
    )
    admin = client.post("/api/v1/actions/auth.login", json=account).get_json()["data"]
    assert "checks" in ready_with(admin["access_token"])
