"""Code-free actions: ``type: database`` and ``type: external_api`` / ``http`` declarations
turned into the function the pipeline runs, and the result cache of read-only actions.

Both of the seed's forms and the typed ones are built here (README "Code-free actions");
``core.declarations`` checks the declaration against its meta-schema first.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from core.actions.actions import Invoker
from core.actions.params import ParamSpec
from core.actions.templates import MISSING, Template, TemplateError, compile_template
from core.base.errors import (
    FieldError,
    NotFound,
    UpstreamError,
    ValidationError,
)
from core.contracts.cache import call_key
from core.contracts.calls import WithMeta
from core.contracts.documents import (
    COLLECTION,
    RESERVED_PREFIX,
    parse_changes,
    parse_filter,
    parse_sort,
)
from core.contracts.services import ServiceDirectory, UpstreamResponse

if TYPE_CHECKING:
    from core.contracts.context import Context

log = logging.getLogger("switchboard.actions")

READS = frozenset({"find", "find_one", "count"})
DEFAULT_LIMIT, MAX_LIMIT = 100, 1000
_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


class CodeFreeError(ValueError):
    """A declaration that cannot be built; ``field`` is where, inside the declaration."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class CodeFree:
    """What a code-free declaration runs as."""

    invoke: Invoker
    handler: str  # how docs and errors name it: "database:find books", "http:GET supplier"
    read_only: bool
    uses_caller: bool
    collection: str | None = None
    path_params: tuple[str, ...] = ()  # each becomes one URL path segment


def _template(value: Any, params: Mapping[str, ParamSpec], field: str) -> Template:
    try:
        return compile_template(value, params, field)
    except TemplateError as exc:
        raise CodeFreeError(str(exc), exc.path) from None


def _sample(spec: ParamSpec) -> Any:
    """A value of the param's declared type, to check a template's shape at load time."""
    kind = spec.schema.get("type")
    kind = next((k for k in kind if k != "null"), None) if isinstance(kind, list) else kind
    return {"integer": 1, "number": 1.5, "boolean": True, "array": ["x"], "object": {}}.get(
        str(kind), "x"
    )


def _check_shape(
    check: Callable[[Any], Any],
    template: Template,
    params: Mapping[str, ParamSpec],
    field: str,
    *,
    filter: bool,
) -> None:
    from core.contracts.context import Caller

    samples = {name: _sample(spec) for name, spec in params.items()}
    try:
        check(template.render(samples, Caller("user", id="u"), filter=filter))
    except ValidationError as exc:
        raise CodeFreeError(exc.detail, field) from None


# --- type: database ---------------------------------------------------------------------


def build_database(
    decl: Mapping[str, Any], params: dict[str, ParamSpec], *, seed: bool, public: bool
) -> CodeFree:
    """A ``type: database`` action; ``params`` may gain ``_id`` (seed update and delete)."""
    operation, collection = decl["operation"], decl["collection"]
    if not COLLECTION.match(collection):
        raise CodeFreeError(
            f"collection name {collection!r} must match {COLLECTION.pattern}", "collection"
        )
    if collection.startswith(RESERVED_PREFIX):
        raise CodeFreeError(
            f"collection {collection!r}: names starting with {RESERVED_PREFIX!r} are the "
            "runtime's own (users, API keys, audit, states)",
            "collection",
        )
    templates: dict[str, Template] = {}
    if seed:
        if operation in ("update", "delete"):
            declared = params.get("_id")
            if declared is not None and not declared.required:
                raise CodeFreeError(f"{operation} needs _id as a required param", "optional_params")
            params.setdefault(
                "_id", ParamSpec("_id", {"type": "string", "minLength": 1}, required=True)
            )
        templates = _seed_templates(operation, params)
    else:
        for key in ("filter", "changes", "document"):
            if key in decl:
                templates[key] = _template(decl[key], params, key)
        templates = {**_seed_templates(operation, params), **templates}
        _check_typed(operation, decl, templates, params)
    uses_caller = any(t.uses_caller for t in templates.values())
    if uses_caller and public:
        raise CodeFreeError(
            "$caller is empty for anonymous callers: a public action cannot use it", "auth"
        )
    sort = _sort(decl.get("sort"))
    limit = decl.get("limit", DEFAULT_LIMIT)
    invoke = _database_invoke(operation, collection, templates, sort, limit)
    return CodeFree(
        invoke, f"database:{operation} {collection}", operation in READS, uses_caller, collection
    )


def _seed_templates(operation: str, params: Mapping[str, ParamSpec]) -> dict[str, Template]:
    """The seed's meaning: the params are the document, the equality filter, or ``_id``
    plus the fields to ``$set``."""
    every = {name: f"$params.{name}" for name in params}
    if operation == "insert":
        return {"document": compile_template(every, params, "document")}
    if operation in READS:
        return {"filter": compile_template(every, params, "filter")}
    others = {name: ref for name, ref in every.items() if name != "_id"}
    templates = {
        "filter": compile_template(
            {"_id": "$params._id"} if "_id" in params else {}, params, "filter"
        )
    }
    if operation == "update":
        templates["changes"] = compile_template({"$set": others}, params, "changes")
    return templates


def _check_typed(
    operation: str,
    decl: Mapping[str, Any],
    templates: Mapping[str, Template],
    params: Mapping[str, ParamSpec],
) -> None:
    allowed = {
        "insert": {"document"},
        "find": {"filter", "sort", "limit"},
        "find_one": {"filter"},
        "count": {"filter"},
        "update": {"filter", "changes"},
        "delete": {"filter"},
    }[operation]
    for key in ("filter", "changes", "document", "sort", "limit"):
        if key in decl and key not in allowed:
            raise CodeFreeError(
                f"operation {operation} takes no {key!r} (it takes: {', '.join(sorted(allowed))})",
                key,
            )
    if operation in ("update", "delete"):
        if "filter" not in decl:
            raise CodeFreeError(f"operation {operation} needs a filter (which record)", "filter")
        loose = sorted(
            name
            for name in templates["filter"].params()
            if not params[name].required and not params[name].has_default
        )
        if loose:
            raise CodeFreeError(
                f"the filter of a {operation} may only use required params (or ones with a "
                f"default): {', '.join(loose)} may be missing, which would widen the match",
                "filter",
            )
    if operation == "update" and "changes" not in decl:
        raise CodeFreeError(
            "operation update needs changes (e.g. {$set: {field: $params.x}})", "changes"
        )
    if "filter" in decl:
        _check_shape(parse_filter, templates["filter"], params, "filter", filter=True)
    if "changes" in decl:
        _check_shape(parse_changes, templates["changes"], params, "changes", filter=False)
    limit = decl.get("limit")
    if limit is not None and (
        isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT
    ):
        raise CodeFreeError(f"limit must be an integer from 1 to {MAX_LIMIT}", "limit")


def _sort(value: Any) -> list[tuple[str, int]] | None:
    if value is None:
        return None
    if not isinstance(value, dict) or not all(v in (1, -1) for v in value.values()):
        raise CodeFreeError("sort maps field names to 1 (ascending) or -1 (descending)", "sort")
    pairs = [(str(k), int(v)) for k, v in value.items()]
    try:
        parse_sort(pairs)
    except ValidationError as exc:
        raise CodeFreeError(exc.detail, "sort") from None
    return pairs


def _database_invoke(
    operation: str,
    name: str,
    templates: Mapping[str, Template],
    sort: list[tuple[str, int]] | None,
    limit: int,
) -> Invoker:
    filter_t, changes_t, document_t = (templates.get(k) for k in ("filter", "changes", "document"))

    def where(ctx: Context, values: dict[str, Any]) -> dict[str, Any]:
        assert filter_t is not None
        rendered: dict[str, Any] = filter_t.render(values, ctx.caller, filter=True)
        return rendered

    def invoke(ctx: Context, values: dict[str, Any]) -> Any:
        collection = ctx.db.collection(name)
        if operation == "insert":
            assert document_t is not None
            return {"_id": collection.insert_one(document_t.render(values, ctx.caller))}
        if operation == "find":
            return collection.find(where(ctx, values), sort=sort, limit=limit)
        if operation == "count":
            return {"count": collection.count(where(ctx, values))}
        if operation == "find_one":
            found = collection.find_one(where(ctx, values))
            if found is None:
                raise NotFound(f"no matching record in {name}")
            return found
        if operation == "update":
            assert changes_t is not None
            changes = {k: v for k, v in changes_t.render(values, ctx.caller).items() if v}
            if not changes:
                raise ValidationError("nothing to change: no param of the changes was sent")
            if not collection.update_one(where(ctx, values), changes):
                raise NotFound(f"no matching record in {name}")
            _invalidate(ctx, name)
            return {"updated": True}
        if not collection.delete_one(where(ctx, values)):
            raise NotFound(f"no matching record in {name}")
        _invalidate(ctx, name)
        return {"deleted": True}

    if operation == "insert":

        def insert(ctx: Context, values: dict[str, Any]) -> Any:
            result = invoke(ctx, values)
            _invalidate(ctx, name)
            return result

        return insert
    return invoke


# --- type: external_api / http ----------------------------------------------------------


def build_http(
    decl: Mapping[str, Any],
    params: Mapping[str, ParamSpec],
    services: ServiceDirectory | None,
    *,
    module: str,
    action: str,
    seed: bool,
    timeout: float | None,
    retries: int | None,
    public: bool,
) -> CodeFree:
    """A seed ``type: external_api`` or a typed ``type: http`` action."""
    if services is None:
        raise CodeFreeError("this app runs no services manager, which http actions need", "type")
    method = str(decl.get("method", "GET")).upper()
    if seed:
        try:
            service = services.endpoint(action, decl["url"], timeout=timeout, retries=retries)
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
    query = None if query_decl is None else _template(query_decl, params, "query")
    body = None if body_decl is None else _template(body_decl, params, "body")
    uses_caller = any(t is not None and t.uses_caller for t in (query, body))
    if uses_caller and public:
        raise CodeFreeError(
            "$caller is empty for anonymous callers: a public action cannot use it", "auth"
        )
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


# --- the cache of read-only actions ------------------------------------------------------


def _generation_key(collection: str) -> str:
    return f"actions:gen:{collection}"


def _invalidate(ctx: Context, collection: str) -> None:
    """A code-free write: cached code-free reads of ``collection`` are stale from now on."""
    try:
        ctx.cache.incr(_generation_key(collection))
    except Exception:  # the write happened; a cache outage must not turn it into an error
        log.warning(
            "cache: could not mark %s changed; cached reads expire by their ttl",
            collection,
            exc_info=True,
        )


def cached(
    invoke: Invoker, action: str, ttl: float, *, per_caller: bool, collection: str | None
) -> Invoker:
    """``invoke`` whose results are kept ``ttl`` seconds, keyed by the action and its
    validated params (and the caller, when ``per_caller``). A cache outage is a miss."""

    def key(ctx: Context, values: Mapping[str, Any]) -> str:
        text = call_key((), values)
        if per_caller:
            text += f"|{ctx.caller.kind}:{ctx.caller.id}"
        digest = hashlib.sha256(text.encode()).hexdigest()[:40]
        generation = (
            0 if collection is None else int(ctx.cache.get_json(_generation_key(collection), 0))
        )
        return f"actions:{action}:{generation}:{digest}"

    def invoke_cached(ctx: Context, values: dict[str, Any]) -> Any:
        try:
            cache_key = key(ctx, values)
            hit = ctx.cache.get_json(cache_key, MISSING)
        except Exception:
            log.warning("cache: read failed for %s; calling through", action, exc_info=True)
            return invoke(ctx, values)
        if hit is not MISSING:
            return hit
        result = invoke(ctx, values)
        if not isinstance(result, WithMeta):
            try:
                ctx.cache.set_json(cache_key, result, ttl=ttl)
            except (TypeError, ValueError):
                pass  # not JSON: answered, not cached
            except Exception:
                log.warning("cache: write failed for %s", action, exc_info=True)
        return result

    return invoke_cached
