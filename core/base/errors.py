"""The one exception tree of Switchboard.

Every error a caller can see carries its HTTP status and problem slug; the HTTP and
transports only translate (``core.http`` renders RFC 9457 problem documents).
Boot-time errors (``ConfigError``, ``ModuleError``, ``DeclarationError``) carry the
place that is wrong so that ``python app.py check`` can print each one.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar


class SwitchboardError(Exception):
    """Root of every error Switchboard raises on purpose."""


# --- boot-time errors -----------------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the configuration, a module or an action declaration."""

    message: str
    file: str | None = None
    module: str | None = None
    action: str | None = None
    field: str | None = None
    line: int | None = None  # in ``file``, when known

    def __str__(self) -> str:
        where = [
            f"{label}={value}"
            for label, value in (
                ("file", f"{self.file}:{self.line}" if self.file and self.line else self.file),
                ("module", self.module),
                ("action", self.action),
                ("field", self.field),
            )
            if value
        ]
        return f"{' '.join(where)}: {self.message}" if where else self.message


class BootError(SwitchboardError):
    """The app cannot start; ``problems`` lists every place that is wrong."""

    def __init__(self, problems: Sequence[Problem] | str) -> None:
        if isinstance(problems, str):
            problems = [Problem(problems)]
        # One problem once: a file that does not import is named by every reference to it.
        self.problems: tuple[Problem, ...] = tuple(dict.fromkeys(problems))
        super().__init__("\n".join(str(p) for p in self.problems))


class ConfigError(BootError):
    """A setting is unknown, has the wrong type, or has no usable value."""


class ModuleError(BootError):
    """A module cannot be discovered, ordered or initialized."""


class DeclarationError(BootError):
    """An action declaration is invalid."""


class RegistryFrozen(SwitchboardError):
    """Raised when something is registered after the app finished booting."""


class ManagerStopError(SwitchboardError):
    """One or more managers failed to stop; every stop still ran."""

    def __init__(self, errors: Mapping[str, BaseException]) -> None:
        self.errors = dict(errors)
        detail = "; ".join(f"{name}: {exc!r}" for name, exc in self.errors.items())
        super().__init__(f"managers failed to stop: {detail}")


# --- errors a caller sees -------------------------------------------------------------


def pointer(parts: Any) -> str:
    """RFC 6901 JSON pointer of a path (``["a", 0, "b/c"]`` → ``/a/0/b~1c``)."""
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in parts)


@dataclass(frozen=True)
class FieldError:
    """One bad field of a request, as a JSON pointer and a message."""

    path: str
    message: str

    def as_dict(self) -> dict[str, str]:
        return {"path": self.path, "message": self.message}


@dataclass(eq=False)
class ActionError(SwitchboardError):
    """An error that ends an action call with a problem document."""

    detail: str = ""
    errors: Sequence[FieldError] = field(default_factory=tuple)
    headers: Mapping[str, str] = field(default_factory=dict)
    extra: Mapping[str, Any] = field(default_factory=dict)

    status: ClassVar[int] = 400
    slug: ClassVar[str] = "malformed-request"
    title: ClassVar[str] = "Bad request"

    def __post_init__(self) -> None:
        super().__init__(self.detail or self.title)

    def __str__(self) -> str:
        return self.detail or self.title

    def problem(self, request_id: str | None) -> dict[str, Any]:
        """The RFC 9457 body for this error."""
        body: dict[str, Any] = {
            "type": f"/problems/{self.slug}",
            "title": self.title,
            "status": self.status,
            "detail": self.detail or self.title,
        }
        if self.errors:
            body["errors"] = [e.as_dict() for e in self.errors]
        body.update(self.extra)
        if request_id is not None:
            body["request_id"] = request_id
        return body

    def problem_json(self, request_id: str | None) -> str:
        """``problem`` as the JSON text every transport sends and idempotency stores."""
        return json.dumps(self.problem(request_id), separators=(",", ":"))


class MalformedRequest(ActionError):
    status, slug, title = 400, "malformed-request", "Malformed request"


# Why a caller was not identified: the only values switchboard_auth_failures_total's
# ``reason`` label takes.
AUTH_FAILURE_REASONS = ("missing", "malformed", "invalid", "expired", "revoked", "bad_login")


@dataclass(eq=False)
class Unauthorized(ActionError):
    status, slug, title = 401, "unauthenticated", "Authentication required"

    reason: str = "invalid"  # one of AUTH_FAILURE_REASONS


class Forbidden(ActionError):
    status, slug, title = 403, "forbidden", "Forbidden"


class Banned(ActionError):
    status, slug, title = 403, "banned", "Banned"


class NotFound(ActionError):
    status, slug, title = 404, "not-found", "Not found"


class MethodNotAllowed(ActionError):
    status, slug, title = 405, "method-not-allowed", "Method not allowed"


class RequestTimeout(ActionError):
    status, slug, title = 408, "request-timeout", "Request timeout"


class Conflict(ActionError):
    status, slug, title = 409, "conflict", "Conflict"


class Cancelled(Conflict):
    """A background execution was cancelled (``ctx.check_cancelled()`` raises it)."""

    status, slug, title = 409, "cancelled", "Cancelled"


class TransactionConflict(Conflict):
    """A transaction lost a race (deadlock, serialization failure): running it again may
    succeed. ``Database.run_transaction`` retries it."""


class IdempotencyInProgress(ActionError):
    status, slug, title = 409, "idempotency-in-progress", "Request with this key is in progress"


class PayloadTooLarge(ActionError):
    status, slug, title = 413, "payload-too-large", "Payload too large"


class UriTooLong(ActionError):
    status, slug, title = 414, "uri-too-long", "URI too long"


class HeadersTooLarge(ActionError):
    status, slug, title = 431, "headers-too-large", "Request header fields too large"


class UnsupportedMediaType(ActionError):
    status, slug, title = 415, "unsupported-media-type", "Unsupported media type"


class ValidationError(ActionError):
    status, slug, title = 422, "validation", "Invalid parameters"


class IdempotencyMismatch(ActionError):
    status, slug, title = 422, "idempotency-mismatch", "Idempotency key reused with other params"


class RateLimited(ActionError):
    status, slug, title = 429, "rate-limited", "Too many requests"


class InternalError(ActionError):
    status, slug, title = 500, "internal", "Internal server error"


class DependencyUnavailable(ActionError):
    status, slug, title = 503, "dependency-unavailable", "Dependency unavailable"


class Timeout(ActionError):
    status, slug, title = 504, "timeout", "Timed out"


# --- an upstream service (ctx.services, code-free http actions) --------------------------


class UpstreamError(ActionError):
    """The upstream answered with an error, or with something that cannot be read."""

    status, slug, title = 502, "upstream-error", "Upstream error"


class UpstreamUnavailable(ActionError):
    """The upstream could not be reached (refused, breaker open)."""

    status, slug, title = 503, "upstream-unavailable", "Upstream unavailable"


class UpstreamTimeout(ActionError):
    """The upstream did not answer in time."""

    status, slug, title = 504, "upstream-timeout", "Upstream timed out"
