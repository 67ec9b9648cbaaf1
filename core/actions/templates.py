"""Templates of code-free actions: YAML values where ``$params.<name>``, ``$caller.id`` and
``$caller.kind`` stand for what a call brings.

A reference is replaced by the value as a whole, never parsed: a string param stays a
string wherever it lands (a filter value, a path segment, a query value), so a caller can
send neither an operator nor a path nor a host. Every other string starting with ``$`` in a
value position is a load error (a typo must not become a literal).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from core.contracts.context import Caller

REFERENCE = re.compile(r"^\$(params\.[A-Za-z_][A-Za-z0-9_]*|caller\.(id|kind))$")
MISSING: Any = type("Missing", (), {"__repr__": lambda self: "MISSING"})()


@dataclass(frozen=True)
class Ref:
    """``$params.<name>`` (source ``params``) or ``$caller.<id|kind>`` (source ``caller``)."""

    source: str
    name: str

    def value(self, params: Mapping[str, Any], caller: Caller) -> Any:
        if self.source == "params":
            return params.get(self.name, MISSING)
        return caller.id if self.name == "id" else caller.kind


class TemplateError(ValueError):
    """A template names what does not exist; ``path`` is the dotted place inside it."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(message)
        self.path = path


@dataclass(frozen=True)
class Template:
    """A compiled template: the YAML value with ``Ref`` where references were."""

    tree: Any

    @property
    def refs(self) -> list[Ref]:
        found: list[Ref] = []

        def walk(node: Any) -> None:
            if isinstance(node, Ref):
                found.append(node)
            elif isinstance(node, dict):
                for value in node.values():
                    walk(value)
            elif isinstance(node, list):
                for value in node:
                    walk(value)

        walk(self.tree)
        return found

    @property
    def uses_caller(self) -> bool:
        return any(ref.source == "caller" for ref in self.refs)

    def params(self) -> set[str]:
        return {ref.name for ref in self.refs if ref.source == "params"}

    def render(self, params: Mapping[str, Any], caller: Caller, *, filter: bool = False) -> Any:
        """The value for one call. A param the call did not send (optional, no default)
        drops its key or list item. With ``filter``, a reference in a field's place is
        compared for equality (``{"$eq": value}``), so an object value is never read as
        operators."""
        return _render(self.tree, params, caller, filter, operator=False)


def _render(
    node: Any, params: Mapping[str, Any], caller: Caller, filter: bool, operator: bool
) -> Any:
    if isinstance(node, Ref):
        value = node.value(params, caller)
        if filter and not operator and value is not MISSING:
            return {"$eq": value}
        return value
    if isinstance(node, dict):
        rendered = {}
        for key, child in node.items():
            value = _render(child, params, caller, filter, operator=key.startswith("$"))
            if value is not MISSING:
                rendered[key] = value
        return rendered
    if isinstance(node, list):
        items = (_render(child, params, caller, filter, operator) for child in node)
        return [item for item in items if item is not MISSING]
    return node


def compile_template(value: Any, params: Mapping[str, Any], path: str) -> Template:
    """Compile ``value``; ``TemplateError`` for a reference to an undeclared param or an
    unknown ``$`` name."""

    def walk(node: Any, where: str) -> Any:
        if isinstance(node, str) and node.startswith("$"):
            match = REFERENCE.match(node)
            if match is None:
                raise TemplateError(
                    where,
                    f"{node!r} is not a reference: use $params.<name>, $caller.id or $caller.kind",
                )
            source, _, name = node[1:].partition(".")
            if source == "params" and name not in params:
                known = ", ".join(sorted(params)) or "none"
                raise TemplateError(
                    where, f"{node}: no param {name!r} is declared (declared: {known})"
                )
            return Ref(source, name)
        if isinstance(node, dict):
            compiled = {}
            for key, child in node.items():
                if not isinstance(key, str):
                    raise TemplateError(where, f"key {key!r} must be a string")
                compiled[key] = walk(child, f"{where}.{key}")
            return compiled
        if isinstance(node, list):
            return [walk(child, f"{where}.{i}") for i, child in enumerate(node)]
        return node

    return Template(walk(value, path))
