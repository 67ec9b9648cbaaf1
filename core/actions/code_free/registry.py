"""The registry of code-free types: what a ``type:`` value of an action declaration names.

A type is one file in this package that calls ``register`` with its meta-schemas (the
typed form, the seed's form, or both) and its builder; ``core.actions.declarations``
checks a declaration against the schema of its form, then asks the builder for the
function the pipeline runs. Nothing outside this package names a type.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from core.actions.actions import Invoker
from core.actions.params import ParamSpec
from core.actions.templates import Template, TemplateError, compile_template
from core.base.errors import ValidationError

if TYPE_CHECKING:
    from core.contracts.services import ServiceDirectory


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
    collection: str | None = None  # a database type's: its writes invalidate cached reads
    path_params: tuple[str, ...] = ()  # each becomes one URL path segment


@dataclass(frozen=True)
class Build:
    """What a builder gets: the declaration (already valid against its form's schema) and
    where it is."""

    decl: Mapping[str, Any]
    params: dict[str, ParamSpec]  # the builder may add one (the seed's update needs _id)
    seed: bool
    public: bool  # auth: public, so no $caller
    module: str
    action: str
    defaults: Mapping[str, Any]  # the file's ``config:`` block (the seed's)
    services: ServiceDirectory | None = None


@dataclass(frozen=True)
class CodeFreeType:
    """One ``type:`` value. ``typed`` / ``seed`` are the meta-schemas of its two forms
    (``None``: that form does not exist); ``is_seed`` says which form a declaration uses."""

    name: str
    build: Callable[[Build], CodeFree]
    typed: Mapping[str, Any] | None = None
    seed: Mapping[str, Any] | None = None
    is_seed: Callable[[Mapping[str, Any]], bool] = field(default=lambda decl: False)


TYPES: dict[str, CodeFreeType] = {}


def register(kind: CodeFreeType) -> CodeFreeType:
    if kind.name in TYPES or kind.name == "function":
        raise ValueError(f"code-free type {kind.name!r} is registered twice")
    if kind.typed is None and kind.seed is None:
        raise ValueError(f"code-free type {kind.name!r} has no schema")
    TYPES[kind.name] = kind
    return kind


def template(value: Any, params: Mapping[str, ParamSpec], field: str) -> Template:
    """``value`` compiled as a template (``$params.x``, ``$caller.id``), or ``CodeFreeError``."""
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


def check_shape(
    check: Callable[[Any], Any],
    rendered: Template,
    params: Mapping[str, ParamSpec],
    field: str,
    *,
    filter: bool,
) -> None:
    """``check`` (a parser that raises ``ValidationError``) accepts what ``rendered`` gives
    for sample values of the params' types."""
    from core.contracts.context import Caller

    samples = {name: _sample(spec) for name, spec in params.items()}
    try:
        check(rendered.render(samples, Caller("user", id="u"), filter=filter))
    except ValidationError as exc:
        raise CodeFreeError(exc.detail, field) from None


def refuse_public_caller(uses_caller: bool, public: bool) -> None:
    if uses_caller and public:
        raise CodeFreeError(
            "$caller is empty for anonymous callers: a public action cannot use it", "auth"
        )
