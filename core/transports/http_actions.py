"""``POST /api/v1/actions/<name>``: from an HTTP request to a ``CallRequest`` and back.

One implementation serves both ways in: the ASGI server calls ``ActionEndpoint.answer``
directly (the hot path skips Werkzeug), and the Flask route calls it too (the test client,
a WSGI deployment). What a caller sees is decided here: the request id, the body rules
(415, 400), the client's address, the problem documents and CORS. The body arrives
bounded (413) by whoever read it: the ASGI app, or Werkzeug under a WSGI server.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from core.base.client_ip import Network, client_ip, parse_networks
from core.base.errors import (
    ActionError,
    HeadersTooLarge,
    UnsupportedMediaType,
    UriTooLong,
)
from core.base.headers import Headers
from core.base.json_input import DEFAULT_MAX_DEPTH, parse_object
from core.base.request_ids import request_id_of
from core.config.config import Config
from core.contracts.calls import CallRequest, CallResult
from core.pipeline.idempotency import HEADER as IDEMPOTENCY_HEADER

if TYPE_CHECKING:
    from core.runtime.manager import Runtime

PREFIX = "/api/v1/actions/"
PROBLEM_JSON = "application/problem+json"
CORS_EXPOSE = (
    "X-Request-ID, RateLimit, RateLimit-Policy, Retry-After, Idempotent-Replayed, Location, "
    "Preference-Applied"
)
CORS_ALLOW = "Content-Type, Authorization, X-API-Key, Idempotency-Key, X-Request-ID, Prefer"


@dataclass(frozen=True)
class Answer:
    """What to send: status, headers (in order) and the body."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes


@dataclass(frozen=True)
class RequestBounds:
    """How long a request target and how many and how large its headers may be: checked
    before the body is read, on every route (the HTTP server does not bound them)."""

    max_url_bytes: int = 2048
    max_header_bytes: int = 16384
    max_headers: int = 100

    @classmethod
    def from_config(cls, config: Config) -> RequestBounds:
        return cls(
            int(config["http.max_url_bytes"]),
            int(config["http.max_header_bytes"]),
            int(config["http.max_headers"]),
        )

    def check(self, target_bytes: int, headers: Iterable[tuple[Any, Any]]) -> None:
        """414 or 431 for a request beyond the limits; ``headers`` as (name, value) pairs."""
        if target_bytes > self.max_url_bytes:
            raise UriTooLong(f"the request target exceeds {self.max_url_bytes} bytes")
        count = size = 0
        for name, value in headers:
            count += 1
            size += len(name) + len(value)
        if count > self.max_headers:
            raise HeadersTooLarge(f"the request has more than {self.max_headers} header fields")
        if size > self.max_header_bytes:
            raise HeadersTooLarge(f"the request headers exceed {self.max_header_bytes} bytes")


def prefers_async(prefer: str | None) -> bool:
    """Whether a ``Prefer`` field (RFC 7240) asks for ``respond-async``."""
    if not prefer:
        return False
    return any(
        part.split(";", 1)[0].split("=", 1)[0].strip().lower() == "respond-async"
        for part in prefer.split(",")
    )


def cors_headers(
    allowed: frozenset[str], origin: str | None, method: str, preflight: bool
) -> list[tuple[str, str]]:
    """The CORS fields for ``origin`` (none when it is not allowed)."""
    if not origin or not (origin in allowed or "*" in allowed):
        return []
    found = [
        ("Access-Control-Allow-Origin", "*" if "*" in allowed else origin),
        ("Access-Control-Expose-Headers", CORS_EXPOSE),
        ("Vary", "Origin"),
    ]
    if method == "OPTIONS" and preflight:
        found += [
            ("Access-Control-Allow-Methods", "GET, POST"),
            ("Access-Control-Allow-Headers", CORS_ALLOW),
            ("Access-Control-Max-Age", "600"),
        ]
    return found


class ActionEndpoint:
    """Answers action calls for one app (its pipeline, proxies, CORS and body limit)."""

    def __init__(
        self,
        invoke: Callable[[CallRequest], CallResult],
        *,
        trusted_proxies: tuple[Network, ...],
        cors_origins: frozenset[str],
        max_json_depth: int = DEFAULT_MAX_DEPTH,
    ) -> None:
        self._invoke = invoke
        self._trusted = trusted_proxies
        self._origins = cors_origins
        self.max_json_depth = max_json_depth

    @classmethod
    def for_runtime(cls, runtime: Runtime) -> ActionEndpoint:
        config = runtime.config
        return cls(
            runtime.invoke,
            trusted_proxies=parse_networks(config["http.trusted_proxies"]),
            cors_origins=frozenset(config["http.cors_origins"]),
            max_json_depth=int(config["http.max_json_depth"]),
        )

    def answer(
        self,
        name: str,
        headers: Headers,
        body: bytes,
        peer: str | None,
        request_id: str | None = None,
    ) -> Answer:
        """The answer to ``POST /api/v1/actions/<name>``; never raises for bad input."""
        request_id = request_id or request_id_of(headers.get("X-Request-ID"))
        try:
            content_type = (headers.get("Content-Type") or "").split(";", 1)[0].strip().lower()
            if content_type not in ("", "application/json") and not content_type.endswith("+json"):
                raise UnsupportedMediaType(f"send application/json, not {content_type}")
            params = parse_object(body, self.max_json_depth)
        except ActionError as error:
            extra = cors_headers(self._origins, headers.get("Origin"), "POST", False)
            return self.problem(error, request_id, extra)
        return self.call(name, params, headers, peer, request_id)

    def call(
        self, name: str, params: Any, headers: Headers, peer: str | None, request_id: str
    ) -> Answer:
        """``name`` called with ``params`` as this HTTP request (its credential, address,
        Idempotency-Key and Prefer); the answer to send."""
        extra = cors_headers(self._origins, headers.get("Origin"), "POST", False)
        try:
            result = self._invoke(
                CallRequest(
                    action=name,
                    params=params,
                    request_id=request_id,
                    client_ip=client_ip(peer, headers.get("X-Forwarded-For"), self._trusted),
                    transport="http",
                    headers=headers,
                    idempotency_key=headers.get(IDEMPOTENCY_HEADER),
                    respond_async=prefers_async(headers.get("Prefer")),
                )
            )
        except ActionError as error:
            return self.problem(error, request_id, extra)
        sent = [("Content-Type", result.content_type), *result.headers.items()]
        sent += [("X-Request-ID", request_id), *extra]
        return Answer(result.status, sent, result.body.encode())

    @staticmethod
    def problem(
        error: ActionError, request_id: str | None, extra: list[tuple[str, str]] | None = None
    ) -> Answer:
        headers = [("Content-Type", PROBLEM_JSON), *error.headers.items()]
        if request_id is not None:
            headers.append(("X-Request-ID", request_id))
        return Answer(
            error.status, headers + (extra or []), error.problem_json(request_id).encode()
        )
