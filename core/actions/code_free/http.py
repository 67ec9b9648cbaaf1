"""``type: http`` (typed: a request to a service the module declares in module.yaml) and
the seed's ``type: external_api`` (a request to a URL), through the services manager.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from core.actions.actions import Invoker
from core.actions.code_free.registry import (
    Build,
    CodeFree,
    CodeFreeError,
    CodeFreeType,
    refuse_public_caller,
    register,
    template,
)
from core.actions.declaration_schema import (
    IDENTIFIER,
    SEED_PARAMS,
    TYPED_PARAMS,
    code_free_schema,
)
from core.actions.params import ParamSpec
from core.actions.templates import Template, compile_template
from core.base.durations import parse_duration
from core.base.errors import FieldError, NotFound, UpstreamError, ValidationError
from core.contracts.services import UpstreamResponse

if TYPE_CHECKING:
    from core.contracts.context import Context

_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
HTTP_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE"]
_METHOD = {"enum": HTTP_METHODS + [m.lower() for m in HTTP_METHODS]}


def build(given: Build) -> CodeFree:
    """A seed ``type: external_api`` or a typed ``type: http`` action."""
    decl, params, services, module = given.decl, given.params, given.services, given.module
    declared_timeout = decl.get("timeout", given.defaults.get("default_timeout"))
    timeout = None if declared_timeout is None else parse_duration(declared_timeout)
    retries = given.defaults.get("max_retries")
    if services is None:
        raise CodeFreeError("this app runs no services manager, which http actions need", "type")
    method = str(decl.get("method", "GET")).upper()
    if given.seed:
        try:
            service = services.endpoint(given.action, decl["url"], timeout=timeout, retries=retries)
        except ValueError as exc:
            raise CodeFreeError(str(exc), "url") from None
        in_body = method in ("POST", "PUT", "PATCH")
        every = {name: f"$params.{name}" for name in params}
        query = None if in_body else compile_template(every, params, "query")
        body = compile_template(every, params, "body") if in_body else None
        invoke = _http_invoke(service, method, path="", placeholders={}, query=query, body=body)
        return CodeFree(invoke, f"external_api:{method} {decl['url']}", method == "GET", False)
    name = decl["service"]
    declared_service = services.service(module, name)
    if declared_service is None:
        declared = ", ".join(services.declared(module)) or "none"
        raise CodeFreeError(
            f"module {module!r} declares no service {name!r} in module.yaml services "
            f"(it declares: {declared})",
            "service",
        )
    path = decl.get("path", "")
    placeholders = _PLACEHOLDER.findall(path)
    for placeholder in placeholders:
        spec = params.get(placeholder)
        if spec is None:
            raise CodeFreeError(
                f"path {{{placeholder}}}: no param {placeholder!r} is declared", "path"
            )
        if not spec.required and not spec.has_default:
            raise CodeFreeError(
                f"path {{{placeholder}}}: the param must be required (or have a default)", "path"
            )
    if "{" in _PLACEHOLDER.sub("", path) or "}" in _PLACEHOLDER.sub("", path):
        raise CodeFreeError("path: write placeholders as {name}", "path")
    rest = {n: f"$params.{n}" for n in params if n not in placeholders}
    in_body = method in ("POST", "PUT", "PATCH")
    query_decl = decl.get("query", None if in_body else rest)
    body_decl = decl.get("body", rest if in_body else None)
    if body_decl is not None and not in_body:
        raise CodeFreeError(f"{method} requests carry no body", "body")
    query = None if query_decl is None else template(query_decl, params, "query")
    body = None if body_decl is None else template(body_decl, params, "body")
    uses_caller = any(t is not None and t.uses_caller for t in (query, body))
    refuse_public_caller(uses_caller, given.public)
    invoke = _http_invoke(
        declared_service,
        method,
        path=path,
        placeholders={p: params[p] for p in placeholders},
        query=query,
        body=body,
    )
    return CodeFree(
        invoke,
        f"http:{method} {name}{path}",
        method == "GET",
        uses_caller,
        path_params=tuple(dict.fromkeys(placeholders)),
    )


def _segment(name: str, value: Any) -> str:
    text = (
        json.dumps(value) if isinstance(value, bool | dict | list) or value is None else str(value)
    )
    if text in ("", ".", ".."):
        raise ValidationError(
            f"{name}: {text!r} cannot be a path segment",
            errors=[FieldError(f"/{name}", "cannot be empty, '.' or '..'")],
        )
    return quote(text, safe="")


def _query_value(value: Any) -> Any:
    if isinstance(value, dict):
        return json.dumps(value, separators=(",", ":"))
    if isinstance(value, list):
        return [_query_value(v) for v in value]
    return value


def _http_invoke(
    service: Any,
    method: str,
    *,
    path: str,
    placeholders: Mapping[str, ParamSpec],
    query: Template | None,
    body: Template | None,
) -> Invoker:
    def invoke(ctx: Context, values: dict[str, Any]) -> Any:
        url_path = (
            _PLACEHOLDER.sub(lambda m: _segment(m.group(1), values[m.group(1)]), path)
            if placeholders
            else path
        )
        params = None
        if query is not None:
            rendered = query.render(values, ctx.caller)
            params = {k: _query_value(v) for k, v in rendered.items() if v is not None} or None
        payload = None if body is None else body.render(values, ctx.caller)
        response = service.request(
            method, url_path, json=payload, params=params, deadline=ctx.deadline
        )
        return answer(response)

    return invoke


def answer(response: UpstreamResponse) -> Any:
    """What a code-free http action returns for an upstream's answer below 500."""
    if response.status == 404:
        raise NotFound(f"service {response.service!r} has no such resource")
    if 300 <= response.status < 400:
        raise UpstreamError(
            f"service {response.service!r} answered a redirect ({response.status}), "
            "which is not followed"
        )
    if response.status >= 400:
        raise UpstreamError(f"service {response.service!r} refused the request ({response.status})")
    if not response.content:
        return {"status": response.status, "text": ""}
    try:
        return json.loads(response.content)
    except ValueError:
        return {"status": response.status, "text": response.text}


register(
    CodeFreeType(
        "http",
        build,
        typed=code_free_schema(
            ["service", "method"],
            {
                "type": {"const": "http"},
                "service": {"type": "string", "pattern": IDENTIFIER},
                "method": _METHOD,
                "path": {"type": "string", "pattern": "^(/([^/?#][^?#]*)?)?$"},
                "query": {"type": "object"},
                "body": {},
                "params": TYPED_PARAMS,
            },
        ),
    )
)
register(
    CodeFreeType(
        "external_api",
        build,
        seed=code_free_schema(
            ["url"],
            {
                "type": {"const": "external_api"},
                "url": {"type": "string", "minLength": 1},
                "method": _METHOD,
                **SEED_PARAMS,
            },
        ),
        is_seed=lambda decl: True,
    )
)
