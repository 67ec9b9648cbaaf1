"""``/openapi.json``: an OpenAPI 3.1 document generated from the action declarations."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import core
from core.actions.actions import Action
from core.actions.params import object_schema
from core.contracts.executions import STATUSES

_PROBLEM = {"$ref": "#/components/schemas/Problem"}
_PROBLEM_RESPONSE = {
    "description": "problem+json (RFC 9457)",
    "content": {"application/problem+json": {"schema": _PROBLEM}},
}
_HEALTH = {
    "type": "object",
    "required": ["status"],
    "properties": {
        "status": {"enum": ["ok", "degraded", "failed"]},
        "checks": {"type": "object", "additionalProperties": {"type": "object"}},
    },
}
_LISTING = {
    "type": "object",
    "required": ["data"],
    "properties": {
        "data": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["name", "summary", "auth", "params"],
                "properties": {"name": {"type": "string"}, "auth": {"type": "string"}},
            },
        }
    },
}
_SECURITY: dict[str, list[dict[str, list[str]]]] = {
    "public": [],
    "user": [{"bearer": []}],
    "api_key": [{"apiKey": []}],
    "any": [{"bearer": []}, {"apiKey": []}],
}


def _operation(action: Action) -> dict[str, Any]:
    spec = action.spec
    envelope = {
        "type": "object",
        "required": ["data", "meta"],
        "properties": {"data": spec.returns or {}, "meta": {"$ref": "#/components/schemas/Meta"}},
    }
    operation: dict[str, Any] = {
        "operationId": spec.name,
        "summary": spec.summary or spec.name,
        "tags": [spec.module],
        "requestBody": {
            # An empty body is {}: optional unless a param is required.
            "required": any(p.required for p in spec.params.values()),
            "content": {
                "application/json": {"schema": object_schema(spec.params, spec.path_params)}
            },
        },
        "responses": {
            "200": {
                "description": "the action's result",
                "content": {"application/json": {"schema": envelope}},
            },
            "default": _PROBLEM_RESPONSE,
        },
        "security": _SECURITY[spec.auth],
    }
    operation["description"] = "\n\n".join(filter(None, [spec.description, _access(action)]))
    if spec.deprecated:
        operation["deprecated"] = True
    examples = [_example_params(e) for e in spec.examples]
    if examples:
        content = operation["requestBody"]["content"]["application/json"]
        content["examples"] = {f"example{n}": {"value": e} for n, e in enumerate(examples, 1)}
    if spec.idempotent:
        operation["parameters"] = [
            {
                "name": "Idempotency-Key",
                "in": "header",
                "required": False,
                "description": "a retry with the same key and params is answered once",
                "schema": {"type": "string", "pattern": "^[\\x21-\\x7e]{1,255}$"},
            }
        ]
    if spec.run != "inline":
        _background(operation, spec.run)
    operation["responses"].update(
        {str(status): _PROBLEM_RESPONSE for status in _problem_statuses(action)}
    )
    operation["x-switchboard"] = {
        "auth": spec.auth,
        "roles": sorted(spec.roles),
        "scopes": sorted(spec.scopes),
        "rate_limit": [limit.text for limit in spec.rate_limit],
        "idempotent": spec.idempotent,
    }
    if spec.cache is not None:
        operation["x-switchboard"]["cache"] = spec.cache
    return operation


_EXECUTION = {"$ref": "#/components/schemas/Execution"}
_ACCEPTED = {
    "description": "queued: the execution's record; follow Location (or data.url)",
    "headers": {
        "Location": {"description": "the execution's URL", "schema": {"type": "string"}},
    },
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "required": ["data", "meta"],
                "properties": {"data": _EXECUTION, "meta": {"$ref": "#/components/schemas/Meta"}},
            }
        }
    },
}


def _background(operation: dict[str, Any], run: str) -> None:
    """A background action answers 202 with its execution; an ``either`` one too when
    asked with ``Prefer: respond-async``."""
    accepted: dict[str, Any] = copy.deepcopy(_ACCEPTED)
    if run == "background":
        del operation["responses"]["200"]
    else:
        accepted["headers"]["Preference-Applied"] = {
            "description": "respond-async, when the Prefer header asked for it",
            "schema": {"type": "string"},
        }
        operation.setdefault("parameters", []).append(
            {
                "name": "Prefer",
                "in": "header",
                "required": False,
                "description": "respond-async: run it in the background (202)",
                "schema": {"type": "string"},
            }
        )
    operation["responses"]["202"] = accepted


def _executions_paths() -> dict[str, Any]:
    """The executions routes (the executions module's actions under their own URLs)."""
    one = {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}
    record = {
        "description": "the execution",
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["data"],
                    "properties": {"data": _EXECUTION},
                }
            }
        },
    }
    secured: list[dict[str, list[str]]] = [{"bearer": []}, {"apiKey": []}]
    query = [
        {"name": name, "in": "query", "required": False, "schema": schema}
        for name, schema in (
            ("action", {"type": "string"}),
            ("status", {"enum": list(STATUSES)}),
            ("caller", {"type": "string"}),
            ("limit", {"type": "integer", "minimum": 1, "maximum": 100}),
            ("cursor", {"type": "string"}),
        )
    ]
    return {
        "/api/v1/executions/{id}": {
            "get": {
                "summary": "One execution of the caller's (admins: any); another's is 404",
                "operationId": "executions.get",
                "security": secured,
                "parameters": [
                    one,
                    {
                        "name": "wait",
                        "in": "query",
                        "required": False,
                        "description": "seconds (at most 30) to wait for the execution to end",
                        "schema": {"type": "number", "minimum": 0},
                    },
                ],
                "responses": {"200": record, "default": _PROBLEM_RESPONSE},
            }
        },
        "/api/v1/executions/{id}/cancel": {
            "post": {
                "summary": "Cancel a queued or running execution (409 once it has ended)",
                "operationId": "executions.post_cancel",
                "security": secured,
                "parameters": [one],
                "responses": {"202": record, "default": _PROBLEM_RESPONSE},
            }
        },
        "/api/v1/executions": {
            "get": {
                "summary": "The caller's executions, newest first (meta.next_cursor pages on)",
                "operationId": "executions.get_list",
                "security": secured,
                "parameters": query,
                "responses": {
                    "200": {
                        "description": "a page of executions",
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "required": ["data", "meta"],
                                    "properties": {
                                        "data": {"type": "array", "items": _EXECUTION},
                                        "meta": {"type": "object"},
                                    },
                                }
                            }
                        },
                    },
                    "default": _PROBLEM_RESPONSE,
                },
            }
        },
    }


def _access(action: Action) -> str:
    """Who may call, the limits and idempotency, as a line a reader of /docs sees."""
    spec = action.spec
    parts = [f"**Auth:** {spec.auth}"]
    if spec.roles:
        parts.append("**roles:** " + ", ".join(sorted(spec.roles)))
    if spec.scopes:
        parts.append("**API key scopes:** " + ", ".join(sorted(spec.scopes)))
    if spec.rate_limit:
        parts.append("**rate limit:** " + ", ".join(limit.text for limit in spec.rate_limit))
    if spec.idempotent:
        parts.append("**idempotent:** send `Idempotency-Key`")
    if spec.cache is not None:
        parts.append(f"**cached:** {spec.cache:g}s")
    if spec.run == "background":
        parts.append("**runs in the background:** 202 with the execution")
    elif spec.run == "either":
        parts.append("**background on request:** `Prefer: respond-async` → 202")
    return " · ".join(parts)


def _problem_statuses(action: Action) -> list[int]:
    """The problems this action can answer, besides the default."""
    spec = action.spec
    statuses = [400, 413, 429, 503]
    if spec.auth != "public":
        statuses.append(401)
    if spec.roles or spec.scopes or spec.auth in ("user", "api_key"):
        statuses.append(403)
    if spec.params:
        statuses.append(422)
    if spec.idempotent:
        statuses.append(409)
    if spec.handler.startswith(("http:", "external_api:")):  # code-free upstream calls
        statuses.extend((404, 502, 504))
    elif spec.handler.startswith(("database:find_one", "database:update", "database:delete")):
        statuses.append(404)
    return sorted(statuses)


def _example_params(example: Any) -> Any:
    """The seed format's examples are params objects; ``{params: …}`` is accepted too."""
    if isinstance(example, dict) and set(example) == {"params"}:
        return example["params"]
    return example


def openapi_document(actions: Sequence[Action], title: str) -> dict[str, Any]:
    """The document for ``actions`` (all of them: the listing filters, the spec does not)."""
    paths: dict[str, Any] = {
        f"/api/v1/actions/{a.spec.name}": {"post": _operation(a)} for a in actions
    }
    health = {"description": "the status", "content": {"application/json": {"schema": _HEALTH}}}
    paths["/health/live"] = {
        "get": {
            "summary": "Liveness: 200 while the process serves",
            "operationId": "health.live",
            "security": [],
            "responses": {"200": health, "default": _PROBLEM_RESPONSE},
        }
    }
    paths["/health/ready"] = {
        "get": {
            "summary": "Readiness (in production the checks are shown to admins and "
            "health.allow clients only)",
            "operationId": "health.ready",
            "security": [],
            "responses": {"200": health, "503": health, "default": _PROBLEM_RESPONSE},
        }
    }
    if any(a.spec.name == "executions.show" for a in actions):
        paths.update(_executions_paths())
    paths["/api/v1/actions"] = {
        "get": {
            "summary": "The actions the caller may call",
            "operationId": "actions.list",
            "security": [{}, {"bearer": []}, {"apiKey": []}],
            "responses": {
                "200": {
                    "description": "one entry per action",
                    "content": {"application/json": {"schema": _LISTING}},
                },
                "default": _PROBLEM_RESPONSE,
            },
        }
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": core.__version__},
        "paths": paths,
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
            },
            "schemas": {
                "Execution": {
                    "type": "object",
                    "required": ["id", "action", "status", "url", "created_at"],
                    "properties": {
                        "id": {"type": "string"},
                        "action": {"type": "string"},
                        "status": {"enum": list(STATUSES)},
                        "url": {"type": "string"},
                        "params": {"type": "object"},
                        "progress": {
                            "type": ["object", "null"],
                            "properties": {
                                "done": {"type": "number"},
                                "message": {"type": ["string", "null"]},
                            },
                        },
                        "attempts": {"type": "integer"},
                        "result": {},
                        "error": _PROBLEM,
                        "created_at": {"type": "string"},
                        "started_at": {"type": ["string", "null"]},
                        "finished_at": {"type": ["string", "null"]},
                        "caller": {"type": "object"},
                    },
                },
                "Meta": {
                    "type": "object",
                    "properties": {
                        "action": {"type": "string"},
                        "request_id": {"type": "string"},
                        "duration_ms": {"type": "number"},
                    },
                },
                "Problem": {
                    "type": "object",
                    "required": ["type", "title", "status"],
                    "properties": {
                        "type": {"type": "string"},
                        "title": {"type": "string"},
                        "status": {"type": "integer"},
                        "detail": {"type": "string"},
                        "request_id": {"type": "string"},
                        "errors_omitted": {"type": "integer", "minimum": 1},
                        "errors": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "properties": {
                                    "path": {"type": "string"},
                                    "message": {"type": "string"},
                                },
                            },
                        },
                    },
                },
            },
        },
    }
