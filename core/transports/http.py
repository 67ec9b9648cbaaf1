"""HTTP glue on Flask: routes, request ids, the JSON envelope and problem+json errors.

The action route hands its request to ``core.transports.http_actions.ActionEndpoint`` (the same code
the ASGI server calls directly); the other routes (listing, OpenAPI, health, what managers
and modules add) are Flask views. Every answer carries ``X-Request-ID``; every error is a
problem document.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from flask import Blueprint, Flask, Response, g, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge
from werkzeug.exceptions import MethodNotAllowed as WerkzeugMethodNotAllowed

from core.base.client_ip import Network, client_ip, in_networks, parse_networks
from core.base.errors import (
    ActionError,
    InternalError,
    MalformedRequest,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
)
from core.base.headers import Headers
from core.base.logging import request_id_var
from core.base.request_ids import request_id_of
from core.contracts.calls import CallRequest
from core.contracts.context import Caller
from core.contracts.executions import FINISHED
from core.pipeline.authorize import may_call
from core.pipeline.pipeline import Pipeline
from core.transports.docs import docs_blueprint
from core.transports.http_actions import (
    PROBLEM_JSON,
    ActionEndpoint,
    Answer,
    RequestBounds,
    cors_headers,
)
from core.transports.openapi import openapi_document

if TYPE_CHECKING:
    from core.runtime.app_manager import AppManager
    from core.runtime.booted import BootedApp

log = logging.getLogger("switchboard.http")

EXTENSION = "switchboard"
# In a WSGI environ: the request's id, made by the ASGI app after it checked the request's
# bounds (so the Flask app does neither again).
CHECKED = "switchboard.request_id"


@dataclass(frozen=True)
class FlaskExtension:
    """What ``app.extensions["switchboard"]`` holds for one Flask app."""

    runtime: BootedApp
    endpoint: ActionEndpoint
    openapi: dict[str, Any]  # built once at boot: the registry is frozen by then
    trusted_proxies: tuple[Network, ...] = ()
    cors_origins: frozenset[str] = frozenset()
    bounds: RequestBounds = field(default_factory=RequestBounds)
    health_allow: tuple[Network, ...] | None = None  # None: every client sees the checks

    @property
    def app_manager(self) -> AppManager:
        return self.runtime.app_manager

    @property
    def pipeline(self) -> Pipeline:
        return self.runtime.pipeline


def extension(flask_app: Flask | None = None) -> FlaskExtension:
    """The booted app bound to ``flask_app`` (default: the current one)."""
    from flask import current_app

    target = flask_app if flask_app is not None else current_app
    return target.extensions[EXTENSION]  # type: ignore[no-any-return]


def _json(body: Any, status: int = 200, mimetype: str = "application/json") -> Response:
    return Response(json.dumps(body, separators=(",", ":")), status=status, mimetype=mimetype)


def to_response(answer: Answer) -> Response:
    response = Response(answer.body, status=answer.status)
    response.headers.clear()
    for name, value in answer.headers:
        response.headers.add(name, value)
    return response


def problem_response(error: ActionError) -> Response:
    response = Response(error.problem_json(g.get("request_id")), error.status)
    response.mimetype = PROBLEM_JSON
    for name, value in error.headers.items():
        response.headers[name] = value
    return response


def _caller(current: FlaskExtension) -> Caller:
    return current.runtime.caller_of(
        CallRequest(
            action="",
            params=None,
            request_id=g.request_id,
            client_ip=_client_ip(),
            headers=_headers(),
        )
    )


def _caller_listing(current: FlaskExtension) -> list[dict[str, Any]]:
    caller = _caller(current)
    actions = current.runtime.actions()
    return [a.spec.describe() for a in actions if may_call(caller, a.spec)]


def _may_see_checks(current: FlaskExtension) -> bool:
    """In production the checks name backends, hosts and key ids: only admins and clients
    on ``health.allow`` see them."""
    address = _client_ip()
    if address is not None and in_networks(address, current.health_allow or ()):
        return True
    try:
        return "admin" in _caller(current).roles
    except ActionError:  # a bad credential: no checks, and no 401 from a health probe
        return False


def create_blueprint() -> Blueprint:
    bp = Blueprint("switchboard", __name__)

    @bp.post("/api/v1/actions/<path:name>")
    def call_action(name: str) -> Response:
        endpoint = extension().endpoint
        body = request.get_data(cache=False)
        answer = endpoint.answer(name, _headers(), body, request.remote_addr, g.request_id)
        return to_response(answer)

    @bp.get("/api/v1/executions/<execution_id>")
    def show_execution(execution_id: str) -> Response:
        wait = wait_seconds(request.args.get("wait"))
        deadline = time.monotonic() + wait
        while True:
            answer = _forward("executions.show", {"id": execution_id})
            if answer.status != 200 or time.monotonic() >= deadline or finished(answer):
                return to_response(answer)
            time.sleep(WAIT_POLL)

    @bp.get("/api/v1/executions")
    def list_executions() -> Response:
        params: dict[str, Any] = {k: v for k, v in request.args.items() if k in LIST_FILTERS}
        limit = params.get("limit")
        if isinstance(limit, str) and limit.isascii() and limit.isdecimal():
            params["limit"] = int(limit)  # else validate says what limit takes
        return to_response(_forward("executions.list", params))

    @bp.post("/api/v1/executions/<execution_id>/cancel")
    def cancel_execution(execution_id: str) -> Response:
        answer = _forward("executions.cancel", {"id": execution_id})
        return to_response(
            dataclasses.replace(answer, status=202) if answer.status == 200 else answer
        )

    @bp.get("/api/v1/actions")
    def list_actions() -> Response:
        return _json({"data": _caller_listing(extension())})

    @bp.get("/openapi.json")
    def openapi() -> Response:
        return _json(extension().openapi)

    @bp.get("/health/live")
    def live() -> Response:
        return _json({"status": "ok"})

    @bp.get("/health/ready")
    def ready() -> Response:
        current = extension()
        is_ready, checks = current.runtime.health()
        statuses = {c["status"] for c in checks.values()}
        overall = (
            "failed" if not is_ready else "degraded" if statuses & {"degraded", "failed"} else "ok"
        )
        body: dict[str, Any] = {"status": overall}
        if current.health_allow is None or _may_see_checks(current):
            body["checks"] = checks
        return _json(body, 200 if is_ready else 503)

    return bp


# GET /api/v1/executions/<id>?wait=N holds the answer until the execution has ended or N
# seconds (at most MAX_WAIT) have passed; the ASGI app waits on its event loop instead.
MAX_WAIT = 30.0
WAIT_POLL = 0.5
LIST_FILTERS = ("action", "status", "caller", "limit", "cursor")


def wait_seconds(text: str | None) -> float:
    if text is None:
        return 0.0
    try:
        seconds = float(text)
    except ValueError:
        raise MalformedRequest("wait takes a number of seconds") from None
    if not seconds >= 0:  # NaN too
        raise MalformedRequest("wait takes a number of seconds")
    return min(seconds, MAX_WAIT)


def finished(answer: Answer) -> bool:
    try:
        status = json.loads(answer.body)["data"]["status"]
    except (ValueError, KeyError, TypeError):
        return True
    return status in FINISHED


def _forward(action: str, params: dict[str, Any]) -> Answer:
    """A route that is an action under another URL: the same chain, the same answer."""
    return extension().endpoint.call(action, params, _headers(), request.remote_addr, g.request_id)


def _assign_request_id() -> None:
    environ = request.environ
    checked = environ.get(CHECKED)
    g.request_id = checked or request_id_of(request.headers.get("X-Request-ID"))
    g.request_id_token = request_id_var.set(g.request_id)
    if checked is None:  # a WSGI server's request (or the test client's): not bounded yet
        target = environ.get("RAW_URI") or environ.get("REQUEST_URI")
        size = (
            len(target) if target else len(environ.get("PATH_INFO", "")) + len(request.query_string)
        )
        extension().bounds.check(size, request.headers.items())


def _client_ip() -> str | None:
    """The request's client address (proxies resolved), worked out once per request."""
    if "client_ip" not in g:
        g.client_ip = client_ip(
            request.remote_addr, request.headers.get("X-Forwarded-For"), extension().trusted_proxies
        )
    address: str | None = g.client_ip
    return address


def _headers() -> Headers:
    if "headers" not in g:
        g.headers = Headers.of(request.headers.items())
    found: Headers = g.headers
    return found


def _finish(response: Response) -> Response:
    request_id = g.get("request_id")
    if request_id and "X-Request-ID" not in response.headers:
        response.headers["X-Request-ID"] = request_id
    if "Access-Control-Allow-Origin" not in response.headers:
        preflight = "Access-Control-Request-Method" in request.headers
        for name, value in cors_headers(
            extension().cors_origins, request.headers.get("Origin"), request.method, preflight
        ):
            if name == "Vary":
                response.vary.add(value)
            else:
                response.headers[name] = value
    return response


def _reset_request_id(_exc: BaseException | None) -> None:
    token = g.pop("request_id_token", None)
    if token is not None:
        request_id_var.reset(token)


def _http_error(exc: HTTPException) -> Response:
    """Werkzeug's own errors (routing, body limit) rendered as problem documents too."""
    error: ActionError
    if isinstance(exc, RequestEntityTooLarge):
        error = PayloadTooLarge(f"the body exceeds {request.max_content_length} bytes")
    elif isinstance(exc, WerkzeugMethodNotAllowed):
        allowed = ", ".join(exc.valid_methods or ())
        error = MethodNotAllowed(
            f"{request.method} is not allowed on {request.path}",
            headers={"Allow": allowed} if allowed else {},
        )
    elif exc.code == 404:
        error = NotFound(f"no route for {request.path}")
    elif exc.code is not None and exc.code < 500:
        error = MalformedRequest(exc.description or "malformed request")
    else:
        log.error("HTTP error %s serving %s %s", exc.code, request.method, request.path)
        error = InternalError(f"an unexpected error occurred; quote request id {g.request_id}")
    return problem_response(error)


def _unexpected(exc: Exception) -> Response:
    log.exception("unhandled error serving %s %s", request.method, request.path)
    return problem_response(
        InternalError(f"an unexpected error occurred; quote request id {g.get('request_id')}")
    )


def init_http(flask_app: Flask, runtime: BootedApp) -> None:
    """Install Switchboard on ``flask_app`` (routes, hooks, error handlers, body limit)."""
    config = runtime.config
    max_body = int(config["http.max_body_bytes"])
    flask_app.config["MAX_CONTENT_LENGTH"] = max_body
    document = openapi_document(runtime.actions(), str(config["app.name"]))
    trusted = parse_networks(config["http.trusted_proxies"])
    origins = frozenset(config["http.cors_origins"])
    endpoint = ActionEndpoint.for_runtime(runtime)
    flask_app.extensions[EXTENSION] = FlaskExtension(
        runtime,
        endpoint,
        document,
        trusted,
        origins,
        RequestBounds.from_config(config),
        parse_networks(config["health.allow"], "health.allow") if config.is_production else None,
    )
    flask_app.register_blueprint(create_blueprint())
    flask_app.register_blueprint(
        docs_blueprint(
            str(config["app.name"]),
            lambda: extension().openapi,
            lambda: {entry["name"] for entry in _caller_listing(extension())},
        )
    )
    for route in runtime.app_manager.routes():
        flask_app.add_url_rule(
            route.path, f"switchboard_{route.endpoint}", route.view, methods=list(route.methods)
        )
    flask_app.before_request(_assign_request_id)
    flask_app.after_request(_finish)
    flask_app.teardown_request(_reset_request_id)
    flask_app.register_error_handler(ActionError, problem_response)
    flask_app.register_error_handler(HTTPException, _http_error)
    flask_app.register_error_handler(Exception, _unexpected)
