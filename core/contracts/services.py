"""Upstream HTTP services as the kernel sees them: ``ctx.services.<name>`` and the directory
code-free ``http`` / ``external_api`` actions are built against.

The services manager implements both: one pooled client per declared service, with the
destination check, timeouts, retries of idempotent methods, a circuit breaker and a size cap
(README "Code-free actions" and "Services").
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from core.base.errors import UpstreamError

IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
# Names under ``services.`` that are settings of the manager, never service names.
RESERVED_NAMES = frozenset({"allow_networks", "max_response_bytes", "defaults"})


@dataclass(frozen=True)
class UpstreamResponse:
    """A non-5xx answer of an upstream (5xx answers, timeouts and unreachable upstreams
    raise ``UpstreamError`` / ``UpstreamTimeout`` / ``UpstreamUnavailable``)."""

    status: int
    content: bytes
    headers: Mapping[str, str] = field(default_factory=dict)
    service: str = ""

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", errors="replace")

    def json(self) -> Any:
        """The body as JSON; ``UpstreamError`` (502) when it is not JSON."""
        try:
            return json.loads(self.content)
        except ValueError:
            raise UpstreamError(
                f"service {self.service!r} answered something that is not JSON"
            ) from None


class Service(Protocol):
    """One upstream: ``ctx.services.<name>`` (paths are relative to its base URL)."""

    name: str
    base_url: str

    def request(
        self,
        method: str,
        path: str = "",
        *,
        json: Any = None,
        params: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        deadline: float | None = None,
    ) -> UpstreamResponse: ...

    def get(self, path: str = "", **kwargs: Any) -> UpstreamResponse: ...

    def post(self, path: str = "", **kwargs: Any) -> UpstreamResponse: ...

    def put(self, path: str = "", **kwargs: Any) -> UpstreamResponse: ...

    def patch(self, path: str = "", **kwargs: Any) -> UpstreamResponse: ...

    def delete(self, path: str = "", **kwargs: Any) -> UpstreamResponse: ...


class ServiceDirectory(Protocol):
    """What the action loader asks of the services manager."""

    def service(self, module: str, name: str) -> Service | None:
        """The service ``name`` declared in ``module``'s module.yaml, or None."""
        ...

    def declared(self, module: str) -> list[str]:
        """The names of the services ``module`` declares."""
        ...

    def endpoint(
        self, action: str, url: str, *, timeout: float | None, retries: int | None
    ) -> Service:
        """A one-URL service for a seed ``external_api`` action (None: the services'
        defaults); ``ValueError`` saying why when the URL is not usable (not http(s), a
        forbidden literal address)."""
        ...
