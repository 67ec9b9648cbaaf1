"""The document model every database backend implements, and its reference semantics.

Filters and updates are parsed here into small typed trees *before* any backend sees them:
field names must be dotted identifiers and operators come from a fixed list, so nothing a
caller controls can reach SQL or a Mongo operator position unchecked. The same module holds
the in-memory reference implementation (``matches``, ``sort_key``, ``apply_changes``) that
the property tests hold every backend to.

Semantics (identical on SQLite, PostgreSQL and MongoDB):
- a value compares only with values of its own kind: numbers (int/float, never bool),
  strings (by code point), booleans; ``None`` equals null *or* a missing field;
- ``$ne``/``$nin`` are the negation of ``$eq``/``$in`` (so they match missing fields);
- ``$gt``/``$gte``/``$lt``/``$lte`` take a number or a string and never match other kinds;
- filters do not reach into arrays (an array field matches only ``$exists`` and ``$ne``);
- strings may not contain NUL characters (PostgreSQL cannot store them) or lone surrogate
  halves (not valid Unicode);
- sort orders missing/null < numbers < strings < objects < arrays < booleans, then ``_id``.
"""

from __future__ import annotations

import copy
import math
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from core.base.errors import Conflict, FieldError, ValidationError, pointer

FIELD = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
COLLECTION = re.compile(r"^[a-z][a-z0-9_]{0,47}$")
RESERVED_PREFIX = "sb_"  # the runtime's own collections: users, API keys, audit, states
ID_FIELD, VERSION_FIELD = "_id", "_version"
META_FIELDS = frozenset({ID_FIELD, VERSION_FIELD})
INT64 = (-(2**63), 2**63 - 1)

Scalar = None | bool | int | float | str
CompareOp = Literal["$eq", "$gt", "$gte", "$lt", "$lte"]
_COMPARE = ("$eq", "$gt", "$gte", "$lt", "$lte")


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()


# --- the filter tree -------------------------------------------------------------------


@dataclass(frozen=True)
class Compare:
    path: tuple[str, ...]
    op: CompareOp
    value: Scalar


@dataclass(frozen=True)
class In:
    path: tuple[str, ...]
    values: tuple[Scalar, ...]


@dataclass(frozen=True)
class Exists:
    path: tuple[str, ...]
    present: bool


@dataclass(frozen=True)
class Not:
    node: Node


@dataclass(frozen=True)
class And:
    nodes: tuple[Node, ...]


@dataclass(frozen=True)
class Or:
    nodes: tuple[Node, ...]


Node = Compare | In | Exists | Not | And | Or


Where = tuple[Any, ...]  # the path of a bad part inside what the caller passed


class _Bad:
    """Errors about one kind of argument (a filter, a document, an update, a sort): the
    detail names the kind and every path is a JSON pointer into the argument."""

    def __init__(self, what: str) -> None:
        self.what = what

    def __call__(self, where: Where, message: str) -> ValidationError:
        path = pointer(where) or "/"
        return ValidationError(
            f"invalid {self.what}: {path}: {message}", errors=[FieldError(path, message)]
        )


_bad_filter, _bad_document = _Bad("filter"), _Bad("document")
_bad_update, _bad_sort = _Bad("update"), _Bad("sort")


def field_path(name: Any, where: Where = (), bad: _Bad = _bad_filter) -> tuple[str, ...]:
    """A validated dotted field name as a tuple of segments."""
    if not isinstance(name, str) or not FIELD.match(name):
        raise bad(
            where or (name,), "field names must be dotted identifiers ([A-Za-z_][A-Za-z0-9_]*)"
        )
    return tuple(name.split("."))


def _scalar(value: Any, where: Where, bad: _Bad = _bad_filter) -> Scalar:
    if isinstance(value, str):
        _check_text(value, where, bad)
        return value
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        if not INT64[0] <= value <= INT64[1]:
            raise bad(where, "integers must fit in 64 bits")
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise bad(where, "numbers must be finite")
        return value
    raise bad(
        where, f"values must be null, booleans, numbers or strings, not {type(value).__name__}"
    )


def _check_text(value: str, where: Where, bad: _Bad) -> None:
    """Text every backend can store: no NUL (PostgreSQL refuses it) and no lone surrogate
    halves (a JSON "\\ud800" escape; not valid Unicode, so neither UTF-8 nor BSON takes it)."""
    if "\x00" in value:
        raise bad(where, "strings cannot contain NUL (\\u0000) characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise bad(where, "strings must be valid Unicode (a lone surrogate half is not)") from None


def parse_filter(spec: Mapping[str, Any] | None, where: Where = ()) -> Node:
    """Validate a Mongo-style filter and return its tree (``{}``/None matches everything)."""
    if spec is None:
        return And(())
    if not isinstance(spec, Mapping):
        raise _bad_filter(where, "a filter must be a mapping")
    nodes: list[Node] = []
    for key, value in spec.items():
        if key in ("$and", "$or"):
            if not isinstance(value, (list, tuple)) or not value:
                raise _bad_filter((*where, key), "takes a non-empty list of filters")
            parts = tuple(parse_filter(v, (*where, key, i)) for i, v in enumerate(value))
            nodes.append(And(parts) if key == "$and" else Or(parts))
        elif isinstance(key, str) and key.startswith("$"):
            raise _bad_filter((*where, key), "unknown top-level operator")
        else:
            nodes.extend(_field_nodes(field_path(key, (*where, key)), (*where, key), value))
    return nodes[0] if len(nodes) == 1 else And(tuple(nodes))


def _field_nodes(path: tuple[str, ...], name: Where, value: Any) -> list[Node]:
    if not isinstance(value, Mapping):
        return [Compare(path, "$eq", _scalar(value, name))]
    if not value:
        raise _bad_filter(name, "an empty operator mapping")
    nodes: list[Node] = []
    for op, operand in value.items():
        where = (*name, op)
        if op in _COMPARE:
            scalar = _scalar(operand, where)
            if op != "$eq" and (scalar is None or isinstance(scalar, bool)):
                raise _bad_filter(where, "orders only numbers and strings")
            nodes.append(Compare(path, op, scalar))
        elif op == "$ne":
            nodes.append(Not(Compare(path, "$eq", _scalar(operand, where))))
        elif op in ("$in", "$nin"):
            if not isinstance(operand, (list, tuple)):
                raise _bad_filter(where, "takes a list")
            node = In(path, tuple(_scalar(v, (*where, i)) for i, v in enumerate(operand)))
            nodes.append(node if op == "$in" else Not(node))
        elif op == "$exists":
            if not isinstance(operand, bool):
                raise _bad_filter(where, "takes true or false")
            nodes.append(Exists(path, operand))
        else:
            raise _bad_filter(
                where, "unknown operator; use $eq $ne $gt $gte $lt $lte $in $nin $exists"
            )
    return nodes


# --- reference semantics ----------------------------------------------------------------


def resolve(doc: Mapping[str, Any], path: Sequence[str]) -> Any:
    """The value at ``path``, or ``MISSING`` when any step is absent or not an object."""
    current: Any = doc
    for part in path:
        if not isinstance(current, Mapping) or part not in current:
            return MISSING
        current = current[part]
    return current


def kind(value: Any) -> str:
    """The comparison class of a JSON value."""
    if value is MISSING or value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def _equal(found: Any, wanted: Scalar) -> bool:
    if wanted is None:
        return found is MISSING or found is None
    return kind(found) == kind(wanted) and found == wanted


def matches(doc: Mapping[str, Any], node: Node) -> bool:
    """Whether ``doc`` (with ``_id``/``_version`` as fields) satisfies ``node``."""
    if isinstance(node, And):
        return all(matches(doc, n) for n in node.nodes)
    if isinstance(node, Or):
        return any(matches(doc, n) for n in node.nodes)
    if isinstance(node, Not):
        return not matches(doc, node.node)
    found = resolve(doc, node.path)
    if isinstance(node, Exists):
        return (found is not MISSING) == node.present
    if isinstance(node, In):
        return any(_equal(found, v) for v in node.values)
    if node.op == "$eq":
        return _equal(found, node.value)
    if kind(found) != kind(node.value):
        return False
    if node.op == "$gt":
        return bool(found > node.value)
    if node.op == "$gte":
        return bool(found >= node.value)
    if node.op == "$lt":
        return bool(found < node.value)
    return bool(found <= node.value)


_RANK = {"null": 0, "number": 1, "string": 2, "object": 3, "array": 4, "bool": 5}


def sort_key(doc: Mapping[str, Any], path: Sequence[str]) -> tuple[int, Any]:
    """The reference order of one field: by kind, then by value within numbers/strings/bools."""
    value = resolve(doc, path)
    rank = _RANK[kind(value)]
    return (rank, value) if rank in (1, 2, 5) else (rank, 0)


def parse_sort(sort: Sequence[tuple[str, int]] | None) -> tuple[tuple[tuple[str, ...], int], ...]:
    """Validated ``[(field, 1 | -1), ...]``."""
    if not sort:
        return ()
    parsed = []
    for index, item in enumerate(sort):
        if not isinstance(item, (list, tuple)) or len(item) != 2 or item[1] not in (1, -1):
            raise _bad_sort((index,), "use a list of (field, 1) or (field, -1)")
        parsed.append((field_path(item[0], (index, 0), _bad_sort), int(item[1])))
    return tuple(parsed)


# --- documents and updates -------------------------------------------------------------


def check_document(doc: Any, where: Where = (), bad: _Bad = _bad_document) -> None:
    """Documents are JSON objects: string keys without dots or ``$``, finite numbers.
    (Paths are built only for nested containers and for the error: most values are plain.)"""
    if isinstance(doc, Mapping):
        for key, value in doc.items():
            if not isinstance(key, str) or not key or "." in key or key.startswith("$"):
                raise bad(
                    (*where, key), "keys must be non-empty strings without '.' or a leading '$'"
                )
            if not _plain_text(key):
                _check_text(key, (*where, key), bad)
            if not _plain(value):
                _check_value(value, (*where, key), bad)
    elif isinstance(doc, list):
        for index, value in enumerate(doc):
            if not _plain(value):
                _check_value(value, (*where, index), bad)
    elif doc is not None and not isinstance(doc, bool):
        _scalar(doc, where, bad)


def _check_value(value: Any, where: Where, bad: _Bad) -> None:
    if isinstance(value, (Mapping, list)):
        check_document(value, where, bad)
    else:
        _scalar(value, where, bad)


def _plain_text(value: str) -> bool:
    """Text ``_check_text`` would pass, found without encoding it when it is ASCII."""
    if "\x00" in value:
        return False
    if value.isascii():
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _plain(value: Any) -> bool:
    """A scalar ``_scalar`` would pass (exact types only; anything else goes through it)."""
    kind = type(value)
    if kind is str:
        return _plain_text(value)
    if value is None or kind is bool:
        return True
    if kind is int:
        return bool(INT64[0] <= value <= INT64[1])
    if kind is float:
        return math.isfinite(value)
    return False


def prepare_insert(doc: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """(``_id``, body) of a document to insert: the given string id or a new one; the body
    without ``_id``/``_version`` and checked, the same on every backend."""
    body = dict(doc)
    doc_id = body.pop(ID_FIELD, None) or uuid.uuid4().hex
    if not isinstance(doc_id, str):
        raise _bad_document((ID_FIELD,), "must be a string")
    _check_text(doc_id, (ID_FIELD,), _bad_document)
    body.pop(VERSION_FIELD, None)
    check_document(body)
    return doc_id, body


def check_version(what: str, version: int, expected: int | None) -> None:
    """Optimistic concurrency: ``Conflict`` when ``what`` moved past ``expected``."""
    if expected is not None and version != expected:
        raise Conflict(
            f"{what} is at version {version}, not {expected}", extra={"current_version": version}
        )


@dataclass(frozen=True)
class Changes:
    """A validated update: ``$set``, ``$inc`` and ``$unset`` by field path."""

    set: tuple[tuple[tuple[str, ...], Any], ...] = ()
    inc: tuple[tuple[tuple[str, ...], int | float], ...] = ()
    unset: tuple[tuple[str, ...], ...] = ()


def parse_changes(spec: Mapping[str, Any]) -> Changes:
    if not isinstance(spec, Mapping) or not spec:
        raise _bad_update((), "use a non-empty mapping of $set, $inc and $unset")
    unknown = [k for k in spec if k not in ("$set", "$inc", "$unset")]
    if unknown:
        raise _bad_update((unknown[0],), "updates take only $set, $inc and $unset (no replacement)")
    sets: list[tuple[tuple[str, ...], Any]] = []
    incs: list[tuple[tuple[str, ...], Any]] = []
    unsets: list[tuple[str, ...]] = []
    for name, value in (spec.get("$set") or {}).items():
        check_document(value, ("$set", name), _bad_update)
        sets.append((_writable(name, ("$set", name)), copy.deepcopy(value)))
    for name, value in (spec.get("$inc") or {}).items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _bad_update(("$inc", name), "takes a number")
        incs.append((_writable(name, ("$inc", name)), _scalar(value, ("$inc", name), _bad_update)))
    unset_spec = spec.get("$unset") or {}
    names = unset_spec if isinstance(unset_spec, (list, tuple)) else list(unset_spec)
    unsets.extend(_writable(name, ("$unset", name)) for name in names)
    touched = [p for p, _ in sets] + [p for p, _ in incs] + unsets
    if len(set(touched)) != len(touched):
        raise _bad_update((), "a field may appear in only one operator")
    return Changes(tuple(sets), tuple(incs), tuple(unsets))


def _writable(name: str, where: Where) -> tuple[str, ...]:
    path = field_path(name, where, _bad_update)
    if path[0] in META_FIELDS:
        raise _bad_update(where, "_id and _version are managed by the database")
    return path


def apply_changes(doc: dict[str, Any], changes: Changes) -> dict[str, Any]:
    """A new document with ``changes`` applied (``doc`` is not modified)."""
    result = copy.deepcopy(doc)
    for path, value in changes.set:
        _parent(result, path)[path[-1]] = copy.deepcopy(value)
    for path, amount in changes.inc:
        parent = _parent(result, path)
        current = parent.get(path[-1], 0)
        if kind(current) != "number":
            raise _bad_update(("$inc", ".".join(path)), "$inc needs a number or a missing field")
        total = current + amount
        if isinstance(total, int) and not INT64[0] <= total <= INT64[1]:
            raise _bad_update(("$inc", ".".join(path)), "$inc would overflow 64 bits")
        if isinstance(total, float) and not math.isfinite(total):
            raise _bad_update(("$inc", ".".join(path)), "$inc would overflow to infinity")
        parent[path[-1]] = total
    for path in changes.unset:
        parent_value = resolve(result, path[:-1]) if len(path) > 1 else result
        if isinstance(parent_value, dict):
            parent_value.pop(path[-1], None)
    return result


def _parent(doc: dict[str, Any], path: tuple[str, ...]) -> dict[str, Any]:
    current = doc
    for part in path[:-1]:
        nxt = current.setdefault(part, {})
        if not isinstance(nxt, dict):
            raise _bad_update(path, f"{part!r} is not an object")
        current = nxt
    return current


# --- the API modules see ---------------------------------------------------------------


class Collection(Protocol):
    """``ctx.db.collection(name)``: the same on every backend."""

    def insert_one(self, doc: Mapping[str, Any]) -> str: ...

    def insert_many(self, docs: Sequence[Mapping[str, Any]]) -> list[str]: ...

    def find_one(self, filter: Mapping[str, Any] | None = None) -> dict[str, Any] | None: ...

    def find(
        self,
        filter: Mapping[str, Any] | None = None,
        *,
        sort: Sequence[tuple[str, int]] | None = None,
        limit: int | None = None,
        skip: int = 0,
    ) -> list[dict[str, Any]]: ...

    def count(self, filter: Mapping[str, Any] | None = None) -> int: ...

    def update_one(
        self,
        filter: Mapping[str, Any],
        changes: Mapping[str, Any],
        *,
        expected_version: int | None = None,
    ) -> bool: ...

    def delete_one(self, filter: Mapping[str, Any]) -> bool: ...

    def delete_many(self, filter: Mapping[str, Any]) -> int: ...

    def create_index(self, fields: Sequence[str], *, unique: bool = False) -> None: ...


def collection_name(name: Any) -> str:
    if not isinstance(name, str) or not COLLECTION.match(name):
        raise ValueError(f"collection name {name!r} must match {COLLECTION.pattern}")
    return name
