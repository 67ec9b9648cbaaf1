"""``type: database``: one operation on one collection of the module's database.

The typed form declares ``params:`` and templates (``filter``, ``changes``, ``document``,
``sort``, ``limit``); the seed's form declares ``required_params`` / ``optional_params``,
and the params are the document, the equality filter, or ``_id`` plus the fields to set.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from core.actions.actions import Invoker
from core.actions.cache import invalidate
from core.actions.code_free.registry import (
    Build,
    CodeFree,
    CodeFreeError,
    CodeFreeType,
    check_shape,
    refuse_public_caller,
    register,
    template,
)
from core.actions.declaration_schema import SEED_PARAMS, TYPED_PARAMS, code_free_schema
from core.actions.params import ParamSpec
from core.actions.templates import Template, compile_template
from core.base.errors import NotFound, ValidationError
from core.contracts.documents import (
    COLLECTION,
    RESERVED_PREFIX,
    parse_changes,
    parse_filter,
    parse_sort,
)

if TYPE_CHECKING:
    from core.contracts.context import Context

READS = frozenset({"find", "find_one", "count"})
OPERATIONS = ["insert", "find", "find_one", "count", "update", "delete"]
DEFAULT_LIMIT, MAX_LIMIT = 100, 1000
# Keys only the typed form has: with none of them, a database action is the seed's.
TYPED_KEYS = frozenset({"params", "filter", "changes", "document", "sort", "limit"})
_COLLECTION = {"type": "string", "minLength": 1}


def build(given: Build) -> CodeFree:
    """A ``type: database`` action; ``params`` may gain ``_id`` (seed update and delete)."""
    decl, params = given.decl, given.params
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
    if given.seed:
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
                templates[key] = template(decl[key], params, key)
        templates = {**_seed_templates(operation, params), **templates}
        _check_typed(operation, decl, templates, params)
    uses_caller = any(t.uses_caller for t in templates.values())
    refuse_public_caller(uses_caller, given.public)
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
        check_shape(parse_filter, templates["filter"], params, "filter", filter=True)
    if "changes" in decl:
        check_shape(parse_changes, templates["changes"], params, "changes", filter=False)
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
            invalidate(ctx, name)
            return {"updated": True}
        if not collection.delete_one(where(ctx, values)):
            raise NotFound(f"no matching record in {name}")
        invalidate(ctx, name)
        return {"deleted": True}

    if operation == "insert":

        def insert(ctx: Context, values: dict[str, Any]) -> Any:
            result = invoke(ctx, values)
            invalidate(ctx, name)
            return result

        return insert
    return invoke


register(
    CodeFreeType(
        "database",
        build,
        typed=code_free_schema(
            ["operation", "collection"],
            {
                "type": {"const": "database"},
                "operation": {"enum": OPERATIONS},
                "collection": _COLLECTION,
                "params": TYPED_PARAMS,
                "filter": {"type": "object"},
                "changes": {"type": "object"},
                "document": {"type": "object"},
                "sort": {"type": "object"},
                "limit": {"type": "integer"},
            },
        ),
        seed=code_free_schema(
            ["operation", "collection"],
            {
                "type": {"const": "database"},
                "operation": {"enum": OPERATIONS},
                "collection": _COLLECTION,
                **SEED_PARAMS,
            },
        ),
        is_seed=lambda decl: not TYPED_KEYS & set(decl),
    )
)
