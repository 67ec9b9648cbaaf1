"""Filter and sort trees of ``core.documents`` compiled to SQL for one dialect.

The only caller-controlled parts of the SQL are bound parameters; the JSON paths are bound too.
The dialects differ only in how they ask a JSON path for its kind and its value.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from core.contracts.documents import (
    ID_FIELD,
    VERSION_FIELD,
    And,
    Compare,
    Exists,
    In,
    Node,
    Not,
    Or,
)

Params = list[Any]


class Dialect(ABC):
    """How one SQL engine reads a JSON path. ``p`` is its placeholder."""

    p: str
    false: str
    json_column: str
    id_type: str = "TEXT"

    @abstractmethod
    def path_param(self, path: tuple[str, ...]) -> Any: ...

    @abstractmethod
    def kind(self) -> str:
        """SQL yielding the path's kind (engine names) or NULL when missing; one path param."""

    @abstractmethod
    def kind_in(self, kind: str) -> tuple[str, ...]:
        """Engine kind names for one of ours: number, string, bool, null, object, array."""

    @abstractmethod
    def compare(self, kind: str, op: str) -> tuple[str, int]:
        """SQL comparing the path's value (known to be of ``kind``) with one bound value, and
        how many path params it takes."""

    @abstractmethod
    def bool_equals(self, value: bool) -> tuple[str, int]:
        """SQL true when the path holds ``value`` (NULL allowed), and its path params."""

    @abstractmethod
    def sort_values(self, descending: bool) -> list[tuple[str, int]]:
        """ORDER BY terms after the kind rank: (sql, path params)."""

    @abstractmethod
    def dumps(self, doc: Mapping[str, Any]) -> Any: ...

    @abstractmethod
    def loads(self, raw: Any) -> dict[str, Any]: ...

    @abstractmethod
    def index_expression(self, path: tuple[str, ...]) -> str:
        """An index term for a field (paths are validated identifiers, so inlining is safe)."""


_OPS = {"$eq": "=", "$gt": ">", "$gte": ">=", "$lt": "<", "$lte": "<="}
_RANKS = {"number": 1, "string": 2, "object": 3, "array": 4, "bool": 5}


def _value_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    return "number" if isinstance(value, (int, float)) else "string"


@dataclass
class Compiler:
    """Filter trees to SQL ``WHERE`` text plus parameters for one dialect."""

    dialect: Dialect

    def where(self, node: Node) -> tuple[str, Params]:
        params: Params = []
        return self._node(node, params), params

    def _node(self, node: Node, params: Params) -> str:
        d = self.dialect
        if isinstance(node, And):
            return (
                "(" + " AND ".join(self._node(n, params) for n in node.nodes) + ")"
                if node.nodes
                else f"NOT {d.false}"
            )
        if isinstance(node, Or):
            return "(" + " OR ".join(self._node(n, params) for n in node.nodes) + ")"
        if isinstance(node, Not):
            return f"NOT {self._node(node.node, params)}"
        if node.path[0] in (ID_FIELD, VERSION_FIELD):
            return self._meta(node, params)
        if isinstance(node, Exists):
            params.append(d.path_param(node.path))
            return f"({d.kind()} IS {'NOT ' if node.present else ''}NULL)"
        if isinstance(node, In):
            if not node.values:
                return d.false
            return (
                "("
                + " OR ".join(self._node(Compare(node.path, "$eq", v), params) for v in node.values)
                + ")"
            )
        return self._compare(node, params)

    def _compare(self, node: Compare, params: Params) -> str:
        d = self.dialect
        kind = _value_kind(node.value)
        path = d.path_param(node.path)
        if kind == "null":  # null or missing
            params.extend([path, path])
            names = ", ".join(f"'{k}'" for k in d.kind_in("null"))
            return f"({d.kind()} IS NULL OR {d.kind()} IN ({names}))"
        if kind == "bool":
            sql, path_count = d.bool_equals(bool(node.value))
            params.extend([path] * path_count)
            return f"COALESCE({sql}, {d.false})"
        names = ", ".join(f"'{k}'" for k in d.kind_in(kind))
        comparison, path_count = d.compare(kind, _OPS[node.op])
        params.append(path)
        params.extend([path] * path_count)
        params.append(node.value)
        # CASE rather than AND: the engine may evaluate AND in any order, and reading a
        # string as a number must never happen.
        return f"(CASE WHEN {d.kind()} IN ({names}) THEN {comparison} ELSE {d.false} END)"

    def _meta(self, node: Compare | In | Exists, params: Params) -> str:
        """``_id`` (a string) and ``_version`` (an integer) are real, never-null columns."""
        d = self.dialect
        column = node.path[0]
        if len(node.path) != 1 or isinstance(node, Exists):
            present = isinstance(node, Exists) and node.present and len(node.path) == 1
            return f"NOT {d.false}" if present else d.false
        wanted = "string" if column == ID_FIELD else "number"
        if isinstance(node, In):
            kept = [v for v in node.values if _value_kind(v) == wanted]
            if not kept:
                return d.false
            params.extend(kept)
            return f"{column} IN ({', '.join(d.p for _ in kept)})"
        if _value_kind(node.value) != wanted:
            return d.false
        params.append(node.value)
        return f"{column} {_OPS[node.op]} {d.p}"

    def order_by(self, sort: Sequence[tuple[tuple[str, ...], int]]) -> tuple[str, Params]:
        d = self.dialect
        terms: list[str] = []
        params: Params = []
        for path, direction in sort:
            order = "DESC" if direction < 0 else "ASC"
            if path[0] in (ID_FIELD, VERSION_FIELD) and len(path) == 1:
                terms.append(f"{path[0]} {order}")
                continue
            param = d.path_param(path)
            whens = " ".join(
                f"WHEN {d.kind()} IN ({', '.join(repr(k) for k in d.kind_in(kind))}) THEN {rank}"
                for kind, rank in _RANKS.items()
            )
            params.extend([param] * len(_RANKS))
            terms.append(f"CASE {whens} ELSE 0 END {order}")
            for sql, count in d.sort_values(direction < 0):
                terms.append(sql)
                params.extend([param] * count)
        terms.append(f"{ID_FIELD} ASC")
        return ", ".join(terms), params
