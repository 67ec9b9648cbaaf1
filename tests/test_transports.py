"""Transports over the runtime object: a toy one written as README "Writing a transport"
says, and the ASGI edge's request checked and numbered once on its way to Flask."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import app as app_module
from core.base.errors import ActionError
from core.base.headers import Headers
from core.base.request_ids import new_request_id, request_id_of
from core.contracts.calls import CallRequest
from core.contracts.facades import Documents
from core.manager import Runtime
from core.runtime.booted import BootedApp
from core.transports import asgi as asgi_module
from core.transports import http as http_module
from core.transports import http_actions

# --- a toy transport ----------------------------------------------------------------------


class LineTransport:
    """A transport of one text line per call: ``<action>\t<params as JSON>[\t<token>]``,
    answered with one JSON document (the envelope, or ``{"error": problem}``)."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def answer(self, line: str, peer: str = "203.0.113.7") -> dict[str, Any]:
        action, text, token = [*line.split("\t"), "", ""][:3]
        request = CallRequest(
            action=action,
            params=json.loads(text or "{}"),
            request_id=new_request_id(),
            client_ip=peer,
            transport="line",
            headers=Headers.of([("authorization", f"Bearer {token}")] if token else []),
        )
        try:
            return dict(self.runtime.invoke(request).envelope)
        except ActionError as error:
            return {"error": error.problem(request.request_id)}


@pytest.fixture
def runtime(tmp_path: Path) -> Iterator[BootedApp]:
    booted = app_module.boot(
        {
            "APP_ENV": "test",
            "DATABASE_URL": f"sqlite:///{tmp_path}/app.db",
            "SB_AUDIT__FLUSH_INTERVAL": "0.05",
        }
    )
    yield booted
    booted.close()


def test_a_toy_transport_calls_actions_through_the_runtime_object(runtime: BootedApp) -> None:
    line = LineTransport(runtime)
    echoed = line.answer('system.echo\t{"message": "hi"}')
    assert echoed["data"] == {"message": "hi"} and "request_id" in echoed["meta"]

    refused = line.answer('system.echo\t{"message": 3}')["error"]
    assert refused["status"] == 422 and refused["errors"][0]["path"] == "/message"
    assert line.answer("no.such\t{}")["error"]["status"] == 404

    password = "correct horse battery staple"
    registered = line.answer(
        f'auth.register\t{{"email": "ann@example.com", "password": "{password}"}}'
    )
    assert registered["data"]["email"] == "ann@example.com"
    pair = line.answer(f'auth.login\t{{"email": "ann@example.com", "password": "{password}"}}')
    token = pair["data"]["access_token"]
    # identified from the header as HTTP would, whatever case the transport spells it in
    me = line.answer(f"auth.me\t{{}}\t{token}")
    assert me["data"]["email"] == "ann@example.com"
    assert line.answer("auth.me\t{}\tnot-a-token")["error"]["status"] == 401
    assert (
        runtime.caller_of(
            CallRequest(
                "", None, new_request_id(), headers=Headers.of({"AUTHORIZATION": f"Bearer {token}"})
            )
        ).id
        == registered["data"]["id"]
    )

    # the audit trail names the transport and the client address it handed in
    documents = runtime.capability(Documents)
    assert documents is not None
    deadline = time.monotonic() + 10
    while True:
        records = documents.collection("sb_audit").find({"transport": "line"})
        if len(records) >= 7 or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    assert {r["action"] for r in records} >= {"system.echo", "auth.me", "no.such"}
    assert {r["client_ip"] for r in records} == {"203.0.113.7"}
    ready, checks = runtime.health()
    assert ready and "db" in checks


# --- the ASGI edge: each guard once per request ------------------------------------------


def _serve_one(
    application: asgi_module.AsgiApp, method: str, path: str, headers: list[tuple[str, str]]
) -> tuple[int, dict[str, str], bytes]:
    """One request through the ASGI app in this process, between its lifespan events."""

    async def run() -> tuple[int, dict[str, str], bytes]:
        lifespan: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        said: list[dict[str, Any]] = []

        async def life_send(message: dict[str, Any]) -> None:
            said.append(message)

        await lifespan.put({"type": "lifespan.startup"})
        task = asyncio.create_task(
            application({"type": "lifespan"}, lifespan.get, life_send)  # type: ignore[arg-type]
        )
        while not said:
            await asyncio.sleep(0.01)
        assert said[0]["type"] == "lifespan.startup.complete", said
        sent: list[dict[str, Any]] = []
        requests = [{"type": "http.request", "body": b"", "more_body": False}]

        async def receive() -> dict[str, Any]:
            return requests.pop(0) if requests else {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        scope = {
            "type": "http",
            "method": method,
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"",
            "headers": [(k.lower().encode(), v.encode()) for k, v in headers],
            "client": ("127.0.0.1", 50000),
            "server": ("127.0.0.1", 8000),
        }
        await application(scope, receive, send)  # type: ignore[arg-type]
        await lifespan.put({"type": "lifespan.shutdown"})
        await task
        start = sent[0]
        answer_headers = {k.decode(): v.decode() for k, v in start["headers"]}
        return start["status"], answer_headers, b"".join(m.get("body", b"") for m in sent[1:])

    return asyncio.run(run())


def test_a_flask_route_behind_the_asgi_app_is_bounded_and_numbered_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    checks: list[int] = []
    numbered: list[str | None] = []
    real_check = http_actions.RequestBounds.check
    real_id = request_id_of

    def counted_check(self: Any, target: int, headers: Any) -> None:
        checks.append(target)
        real_check(self, target, headers)

    def counted_id(given: str | None) -> str:
        numbered.append(given)
        return real_id(given)

    monkeypatch.setattr(http_actions.RequestBounds, "check", counted_check)
    monkeypatch.setattr(http_module, "request_id_of", counted_id)

    def factory() -> BootedApp:
        return app_module.boot({"APP_ENV": "test", "DATABASE_URL": f"sqlite:///{tmp_path}/app.db"})

    application = asgi_module.AsgiApp(factory)
    status, headers, body = _serve_one(
        application, "GET", "/api/v1/actions", [("X-Request-ID", "probe-1")]
    )
    assert status == 200 and "system.echo" in {a["name"] for a in json.loads(body)["data"]}
    assert headers["x-request-id"] == "probe-1"
    assert len(checks) == 1  # the ASGI app's check; Flask took it as done
    assert numbered == []  # Flask took the ASGI app's id as it was

    # a WSGI server's request (Flask's test client here) is still checked, by Flask
    checks.clear()
    flask_app = app_module.create_app(
        {"APP_ENV": "test", "DATABASE_URL": f"sqlite:///{tmp_path}/other.db"}
    )
    try:
        response = flask_app.test_client().get("/api/v1/actions", headers={"X-Request-ID": "w-1"})
        assert response.status_code == 200 and response.headers["X-Request-ID"] == "w-1"
        assert len(checks) == 1 and numbered == ["w-1"]
        too_long = flask_app.test_client().get("/api/v1/actions?q=" + "x" * 9000)
        assert too_long.status_code == 414
    finally:
        extension = http_module.extension(flask_app)
        extension.runtime.close()


def test_headers_are_one_view_in_any_case() -> None:
    headers = Headers.of([("Accept", "a"), ("accept", "b"), ("X-API-Key", "s3cr3t-value")])
    assert headers["ACCEPT"] == "a, b" and headers.get("x-api-key") == "s3cr3t-value"
    assert "X-Api-Key" in headers and "missing" not in headers
    assert sorted(headers) == ["accept", "x-api-key"] and len(headers) == 2
    assert dict(headers.items()) == {"accept": "a, b", "x-api-key": "s3cr3t-value"}
    assert "s3cr3t" not in repr(headers)  # a credential never shows in a log line
    raw = Headers.from_asgi([(b"authorization", b"Bearer t"), (b"via", b"1"), (b"via", b"2")])
    assert raw.get("Authorization") == "Bearer t" and raw["Via"] == "1, 2"
