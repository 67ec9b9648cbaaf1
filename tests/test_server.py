"""``python app.py serve`` as a real process, spoken to over real HTTP."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from app import ROOT
from tests.served import Server, environment, running
from tests.servers import free_port


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running(tmp_path_factory.mktemp("serve"), "serve") as started:
        yield started


# --- one server, several requests -----------------------------------------------------


def test_echo_returns_the_envelope(server: Server) -> None:
    response = server.post("/api/v1/actions/system.echo", b'{"message":"hi"}')
    assert response.status == 200
    assert response.headers["Content-Type"] == "application/json"
    body = response.json()
    assert body["data"] == {"message": "hi"}
    assert body["meta"]["action"] == "system.echo"
    assert body["meta"]["request_id"] == response.headers["X-Request-ID"]
    assert isinstance(body["meta"]["duration_ms"], float | int)


def test_a_valid_request_id_is_kept(server: Server) -> None:
    response = server.post(
        "/api/v1/actions/system.echo", b'{"message":"hi"}', {"X-Request-ID": "trace-42.a:b"}
    )
    assert response.status == 200
    assert response.headers["X-Request-ID"] == "trace-42.a:b"
    assert response.json()["meta"]["request_id"] == "trace-42.a:b"


def test_malformed_json_is_a_400_problem(server: Server) -> None:
    response = server.post("/api/v1/actions/system.echo", b"{bad")
    assert response.status == 400
    assert response.headers["Content-Type"] == "application/problem+json"
    problem = response.json()
    assert problem["type"] == "/problems/malformed-request"
    assert problem["status"] == 400
    assert problem["request_id"] == response.headers["X-Request-ID"]
    assert "Traceback" not in response.body.decode()


def test_invalid_params_are_a_422_problem(server: Server) -> None:
    response = server.post("/api/v1/actions/system.echo", b'{"message": 5}')
    assert response.status == 422
    assert response.headers["Content-Type"] == "application/problem+json"
    assert [e["path"] for e in response.json()["errors"]] == ["/message"]


def test_unknown_action_is_a_404_problem(server: Server) -> None:
    response = server.post("/api/v1/actions/system.nope", b"{}")
    assert response.status == 404
    assert response.json()["type"] == "/problems/not-found"


def test_health(server: Server) -> None:
    live = server.get("/health/live")
    assert live.status == 200
    assert live.json() == {"status": "ok"}
    ready = server.get("/health/ready")
    assert ready.status == 200
    body = ready.json()
    assert body["status"] in ("ok", "degraded")
    assert body["checks"]["modules"]["status"] == "ok"


def test_action_listing(server: Server) -> None:
    response = server.get("/api/v1/actions")
    assert response.status == 200
    names = {entry["name"] for entry in response.json()["data"]}
    assert {"system.echo", "system.info", "system.ping"} <= names


# --- bodies are read before a thread is taken -----------------------------------------


def _raw(port: int, data: bytes) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(data)
    return sock


def _answer(sock: socket.socket) -> tuple[int, dict[str, str], Any]:
    """Status, headers (lower-case names) and JSON body of one HTTP/1.1 answer."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before an answer: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    headers = {k.lower(): v for k, v in headers.items()}
    while len(body) < int(headers["content-length"]):
        body += sock.recv(65536)
    return int(lines[0].split()[1]), headers, json.loads(body)


def test_a_body_that_trickles_is_cut_off_and_holds_no_thread(tmp_path: Path) -> None:
    # One call thread, one second to send a body: eight slow clients, and the server still
    # answers everyone else at once.
    env = {"SB_HTTP__THREADS": "1", "SB_HTTP__READ_TIMEOUT": "1s"}
    with running(tmp_path, "serve", env=env) as server:
        port = int(server.base.rsplit(":", 1)[1])
        head = (
            b"POST /api/v1/actions/system.echo HTTP/1.1\r\nHost: t\r\n"
            b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"
        )
        slow = [_raw(port, head) for _ in range(8)]
        started = time.monotonic()
        assert server.get("/health/live").status == 200
        answered = server.post("/api/v1/actions/system.echo", b'{"message":"hi"}')
        assert answered.status == 200
        assert time.monotonic() - started < 1.0  # before any slow client was cut off
        for sock in slow:
            status, headers, problem = _answer(sock)
            assert status == 408
            assert headers["content-type"] == "application/problem+json"
            assert problem["type"] == "/problems/request-timeout"
            assert problem["request_id"] == headers["x-request-id"]
            sock.close()
        assert time.monotonic() - started < 5.0


def test_a_body_over_the_limit_is_refused_before_it_is_read(tmp_path: Path) -> None:
    env = {"SB_HTTP__MAX_BODY_BYTES": "1000"}
    with running(tmp_path, "serve", env=env) as server:
        port = int(server.base.rsplit(":", 1)[1])
        sock = _raw(
            port,
            b"POST /api/v1/actions/system.echo HTTP/1.1\r\nHost: t\r\n"
            b"Content-Type: application/json\r\nContent-Length: 5000000\r\n\r\n",
        )
        status, _, problem = _answer(sock)  # without sending the body
        sock.close()
        assert status == 413 and problem["type"] == "/problems/payload-too-large"
        too_big = server.post("/api/v1/actions/system.echo", b'{"message":"' + b"x" * 2000 + b'"}')
        assert too_big.status == 413
        assert too_big.json()["type"] == "/problems/payload-too-large"


def test_routes_other_than_calls_are_served_too(server: Server) -> None:
    listing = server.get("/api/v1/actions")
    assert listing.status == 200 and listing.headers["X-Request-ID"]
    assert server.get("/openapi.json").json()["openapi"].startswith("3.1")
    missing = server.get("/no/such/route")
    assert missing.status == 404
    assert missing.headers["Content-Type"] == "application/problem+json"
    wrong = server.get("/api/v1/actions/system.echo")
    assert wrong.status == 405


# --- lifecycle ------------------------------------------------------------------------


def test_sigterm_stops_the_server_cleanly(tmp_path: Path) -> None:
    with running(tmp_path, "serve") as server:
        assert server.post("/api/v1/actions/system.ping", b"").status == 200
        assert server.stop() == 0
        assert "Traceback" not in server.output()


def test_serve_is_the_default_command(tmp_path: Path) -> None:
    with running(tmp_path) as server:
        assert server.get("/health/live").status == 200
        assert server.stop() == 0


def test_two_workers_answer_requests(tmp_path: Path, redis_url: str, redis_prefix: str) -> None:
    # Several workers need a shared store: memory:// would be refused.
    shared = {"REDIS_URL": redis_url, "SB_REDIS__PREFIX": redis_prefix}
    with running(tmp_path, "serve", "--workers", "2", env=shared) as server:
        for n in range(20):
            message = f"hi {n}"
            response = server.post(
                "/api/v1/actions/system.echo", json.dumps({"message": message}).encode()
            )
            assert response.status == 200, response.body
            assert response.json()["data"] == {"message": message}
        assert server.get("/health/ready").status == 200
        assert server.stop() == 0
        assert "Traceback" not in server.output()


def test_serve_refuses_memory_store_with_several_workers() -> None:
    done = subprocess.run(
        [sys.executable, "app.py", "serve", "--workers", "2", "--port", str(free_port())],
        cwd=ROOT,
        env=environment({"REDIS_URL": "memory://"}),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    assert "REDIS_URL" in done.stderr and "memory://" in done.stderr


def test_serve_with_a_broken_module_exits_with_the_problem(tmp_path: Path) -> None:
    module = tmp_path / "extra" / "broken"
    module.mkdir(parents=True)
    (module / "__init__.py").write_text("")
    (module / "actions.yaml").write_text("actions:\n  one:\n    handler: handlers:missing\n")
    port = free_port()
    result = subprocess.run(
        [sys.executable, "app.py", "serve", "--port", str(port), "--host", "127.0.0.1"],
        cwd=ROOT,
        env=environment({"MODULES_PATH": str(tmp_path / "extra")}),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    assert "broken.one" in result.stderr
    assert "handler" in result.stderr
    assert "Traceback" not in result.stderr
    assert "Booting worker" not in result.stderr
