"""HTTP glue: routes, request ids, the JSON envelope and problem+json errors.

The HTTP layer only translates: it parses the body, hands a ``CallRequest`` to the
pipeline and renders the ``CallResult`` or the ``ActionError`` it gets back.
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from flask import Blueprint, Flask, Response, g, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge
from werkzeug.exceptions import MethodNotAllowed as WerkzeugMethodNotAllowed

from core.calls import CallRequest
from core.client_ip import Network, client_ip, parse_networks
from core.errors import (
    ActionError,
    InternalError,
    MalformedRequest,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    UnsupportedMediaType,
)
from core.idempotency import HEADER as IDEMPOTENCY_HEADER
from core.logging import request_id_var
from core.openapi import openapi_document
from core.pipeline import Pipeline
from core.steps import may_call

if TYPE_CHECKING:
    from core.app_manager import AppManager

log = logging.getLogger("switchboard.http")

EXTENSION = "switchboard"
REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
PROBLEM_JSON = "application/problem+json"


@dataclass(frozen=True)
class SwitchboardState:
    """What ``app.extensions["switchboard"]`` holds for one Flask app."""

    app_manager: AppManager
    pipeline: Pipeline
    openapi: dict[str, Any]  # built once at boot: the registry is frozen by then
    trusted_proxies: tuple[Network, ...] = ()
    cors_origins: frozenset[str] = frozenset()


def state(flask_app: Flask | None = None) -> SwitchboardState:
    from flask import current_app

    target = flask_app if flask_app is not None else current_app
    return target.extensions[EXTENSION]  # type: ignore[no-any-return]


def _json(body: Any, status: int = 200, mimetype: str = "application/json") -> Response:
    return Response(json.dumps(body, separators=(",", ":")), status=status, mimetype=mimetype)


def problem_response(error: ActionError) -> Response:
    response = _json(error.problem(g.get("request_id")), error.status, PROBLEM_JSON)
    for name, value in error.headers.items():
        response.headers[name] = value
    return response


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def parse_json_object(raw: bytes) -> dict[str, Any]:
    """The body as a JSON object; an empty body is ``{}``; anything else is a 400."""
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError too
        raise MalformedRequest(f"the body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise MalformedRequest(f"the body must be a JSON object, not {type(body).__name__}")
    return body


def _check_content_type() -> None:
    mimetype = request.mimetype
    if mimetype and mimetype != "application/json" and not mimetype.endswith("+json"):
        raise UnsupportedMediaType(f"send application/json, not {mimetype}")


def _caller_listing(pipeline: Pipeline) -> list[dict[str, Any]]:
    caller = pipeline.caller_of(_call_request("", None))
    return [a.spec.describe() for a in pipeline.registry.actions() if may_call(caller, a.spec)]


def _call_request(name: str, params: Any) -> CallRequest:
    return CallRequest(
        action=name,
        params=params,
        request_id=g.request_id,
        client_ip=client_ip(
            request.remote_addr, request.headers.get("X-Forwarded-For"), state().trusted_proxies
        ),
        transport="http",
        headers=request.headers,  # type: ignore[arg-type]
        idempotency_key=request.headers.get(IDEMPOTENCY_HEADER),
    )


def create_blueprint() -> Blueprint:
    bp = Blueprint("switchboard", __name__)

    @bp.post("/api/v1/actions/<path:name>")
    def call_action(name: str) -> Response:
        _check_content_type()
        params = parse_json_object(request.get_data(cache=False))
        result = state().pipeline.invoke(_call_request(name, params))
        return Response(
            result.body,
            status=result.status,
            mimetype=result.content_type,
            headers=dict(result.headers),
        )

    @bp.get("/api/v1/actions")
    def list_actions() -> Response:
        return _json({"data": _caller_listing(state().pipeline)})

    @bp.get("/openapi.json")
    def openapi() -> Response:
        return _json(state().openapi)

    @bp.get("/health/live")
    def live() -> Response:
        return _json({"status": "ok"})

    @bp.get("/health/ready")
    def ready() -> Response:
        is_ready, checks = state().app_manager.health()
        statuses = {c["status"] for c in checks.values()}
        overall = (
            "failed" if not is_ready else "degraded" if statuses & {"degraded", "failed"} else "ok"
        )
        return _json({"status": overall, "checks": checks}, 200 if is_ready else 503)

    return bp


def _assign_request_id() -> None:
    incoming = request.headers.get("X-Request-ID", "")
    g.request_id = incoming if REQUEST_ID.match(incoming) else uuid.uuid4().hex
    g.request_id_token = request_id_var.set(g.request_id)


_CORS_EXPOSE = "X-Request-ID, RateLimit, RateLimit-Policy, Retry-After, Idempotent-Replayed"
_CORS_ALLOW = "Content-Type, Authorization, X-API-Key, Idempotency-Key, X-Request-ID"


def _finish(response: Response) -> Response:
    request_id = g.get("request_id")
    if request_id:
        response.headers["X-Request-ID"] = request_id
    origin = request.headers.get("Origin")
    allowed = state().cors_origins
    if origin and (origin in allowed or "*" in allowed):
        response.headers["Access-Control-Allow-Origin"] = "*" if "*" in allowed else origin
        response.headers["Access-Control-Expose-Headers"] = _CORS_EXPOSE
        response.vary.add("Origin")
        if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
            response.headers["Access-Control-Allow-Methods"] = "GET, POST"
            response.headers["Access-Control-Allow-Headers"] = _CORS_ALLOW
            response.headers["Access-Control-Max-Age"] = "600"
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


def init_http(flask_app: Flask, app_manager: AppManager, pipeline: Pipeline) -> None:
    """Install Switchboard on ``flask_app`` (routes, hooks, error handlers, body limit)."""
    flask_app.config["MAX_CONTENT_LENGTH"] = int(app_manager.config["http.max_body_bytes"])
    document = openapi_document(pipeline.registry.actions(), str(app_manager.config["app.name"]))
    trusted = parse_networks(app_manager.config["http.trusted_proxies"])
    origins = frozenset(app_manager.config["http.cors_origins"])
    flask_app.extensions[EXTENSION] = SwitchboardState(
        app_manager, pipeline, document, trusted, origins
    )
    flask_app.register_blueprint(create_blueprint())
    for route in app_manager.routes():
        flask_app.add_url_rule(
            route.path, f"switchboard_{route.endpoint}", route.view, methods=list(route.methods)
        )
    flask_app.before_request(_assign_request_id)
    flask_app.after_request(_finish)
    flask_app.teardown_request(_reset_request_id)
    flask_app.register_error_handler(ActionError, problem_response)
    flask_app.register_error_handler(HTTPException, _http_error)
    flask_app.register_error_handler(Exception, _unexpected)
