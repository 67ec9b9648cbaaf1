"""Parameter validation, compiled once per action at load time.

Params are JSON Schema fragments (the subset DESIGN.md names). Each action's params are
compiled into jsonschema-rs validators (Draft 2020-12) once, at load. Measured by
``make bench`` on a four-field object: a whole valid call (check, defaults, copy) takes
0.7 us here, where fastjsonschema's bare draft-07 check takes 1.3 us; and jsonschema-rs
reports every bad field where fastjsonschema stops at the first, which the 422 body needs.

Unknown and missing params are named one by one (each with its own path); values of
params marked ``secret`` never appear in a message.
"""

from __future__ import annotations

import copy
import functools
import itertools
import json
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, NoReturn

import jsonschema_rs

from core.base.errors import FieldError, MalformedRequest, ValidationError, pointer
from core.base.json_input import check_value

_MAX_MESSAGE = 200
MAX_ERRORS = 50  # a 422 names at most this many; the rest are counted in errors_omitted


@dataclass(frozen=True)
class ParamSpec:
    """One declared parameter: its JSON Schema fragment plus ``required`` and ``secret``."""

    name: str
    schema: Mapping[str, Any]
    required: bool = False
    secret: bool = False

    @property
    def has_default(self) -> bool:
        return "default" in self.schema


class SchemaCompileError(ValueError):
    """A params or returns schema is not a valid JSON Schema."""


def compile_schema(schema: Mapping[str, Any]) -> jsonschema_rs.Validator:
    """Compile ``schema``; raise ``SchemaCompileError`` with the reason when it is invalid.

    Validators are immutable: one per distinct schema serves every action that declares it
    (hundreds of actions often share a handful of param shapes).
    """
    try:
        canonical = json.dumps(schema, sort_keys=True)
    except (TypeError, ValueError):  # not JSON (a YAML date, say): compile it as it is
        return _validator(dict(schema))
    return _compile(canonical)


@functools.lru_cache(maxsize=4096)
def _compile(canonical: str) -> jsonschema_rs.Validator:
    return _validator(json.loads(canonical))


def _validator(schema: dict[str, Any]) -> jsonschema_rs.Validator:
    try:
        return jsonschema_rs.validator_for(schema, validate_formats=True)
    except (jsonschema_rs.ValidationError, ValueError) as exc:
        reason = str(exc).split("\n", 1)[0]
        raise SchemaCompileError(reason) from exc


# What a param that becomes one URL path segment may not be (a typed http action refuses
# these with a 422 of its own): said in the documents, so clients can see it.
NOT_A_PATH_SEGMENT: Mapping[str, Any] = {"enum": ["", ".", ".."]}


def object_schema(
    params: Mapping[str, ParamSpec], path_segments: Collection[str] = ()
) -> dict[str, Any]:
    """The params as one JSON Schema object (what the API listing and OpenAPI show);
    ``path_segments`` name the params that become a URL path segment."""
    properties = {name: dict(spec.schema) for name, spec in params.items()}
    for name in path_segments:
        prop = properties[name]
        if "not" in prop:  # the author's own `not` stays: both must hold
            prop["allOf"] = [*prop.get("allOf", ()), {"not": dict(NOT_A_PATH_SEGMENT)}]
        else:
            prop["not"] = dict(NOT_A_PATH_SEGMENT)
        if prop.get("type") == "string":
            prop["minLength"] = max(int(prop.get("minLength", 0)), 1)
    schema: dict[str, Any] = {
        "type": "object",
        "properties": properties,
        "additionalProperties": False,
    }
    required = [name for name, spec in params.items() if spec.required]
    if required:
        schema["required"] = required
    return schema


@dataclass
class ParamsValidator:
    """Checks a call's params and returns them with defaults applied."""

    params: Mapping[str, ParamSpec]
    _validator: jsonschema_rs.Validator = field(init=False, repr=False)
    _detail: jsonschema_rs.Validator = field(init=False, repr=False)
    _required: tuple[str, ...] = field(init=False, repr=False)
    _names: frozenset[str] = field(init=False, repr=False)
    _secret: frozenset[str] = field(init=False, repr=False)
    _integers: tuple[str, ...] = field(init=False, repr=False)
    _defaults: tuple[tuple[str, Any, bool], ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        # The fast path is one is_valid() against the whole object; only a failing call
        # pays for the breakdown, where unknown and missing names are checked by hand so
        # that each gets its own path.
        schema = object_schema(self.params)
        self._validator = compile_schema(schema)
        schema.pop("required", None)
        schema.pop("additionalProperties")
        self._detail = compile_schema(schema)
        self._names = frozenset(self.params)
        self._required = tuple(n for n, s in self.params.items() if s.required)
        self._secret = frozenset(n for n, s in self.params.items() if s.secret)
        self._integers = tuple(
            n for n, s in self.params.items() if s.schema.get("type") == "integer"
        )
        # Scalars are shared; only mutable defaults are copied per call.
        self._defaults = tuple(
            (n, s.schema["default"], isinstance(s.schema["default"], (dict, list)))
            for n, s in self.params.items()
            if s.has_default
        )

    def __call__(self, raw: Mapping[str, Any]) -> dict[str, Any]:
        try:
            valid = self._validator.is_valid(raw)
        except ValueError:  # not text or too deep: only an in-process caller gets here
            check_value(raw)  # raises the transport's 400 for what it can name
            raise MalformedRequest("the params nest too deeply to be checked") from None
        if not valid:
            self._reject(raw)
        params = dict(raw)
        for name in self._integers:
            value = params.get(name)
            if isinstance(value, float):  # JSON Schema counts 3.0 as an integer
                params[name] = int(value)
        for name, default, mutable in self._defaults:
            if name not in params:
                params[name] = copy.deepcopy(default) if mutable else default
        return params

    def _reject(self, raw: Mapping[str, Any]) -> NoReturn:
        errors = itertools.chain(
            (FieldError(pointer([n]), "unknown parameter") for n in raw if n not in self._names),
            (FieldError(pointer([n]), "is required") for n in self._required if n not in raw),
            self._describe(raw),
        )
        shown = list(itertools.islice(errors, MAX_ERRORS))
        omitted = sum(1 for _ in errors)
        paths = sorted({e.path for e in shown})
        detail = f"{len(shown) + omitted} invalid parameter{'s' if len(shown) > 1 else ''}: "
        detail += ", ".join(paths[:10]) + (", ..." if len(paths) > 10 or omitted else "")
        raise ValidationError(
            detail=detail,
            errors=shown,
            extra={"errors_omitted": omitted} if omitted else {},
        )

    def _describe(self, raw: Mapping[str, Any]) -> Iterator[FieldError]:
        for error in self._detail.iter_errors(raw):
            path = list(error.instance_path)
            keyword = error.schema_path[-1] if error.schema_path else "schema"
            message = error.message
            if (path and path[0] in self._secret) or len(message) > _MAX_MESSAGE:
                message = _without_value(error.kind, str(keyword))  # never echo the value
            yield FieldError(pointer(path), message)


def _without_value(kind: Any, keyword: str) -> str:
    """What a value fails, said without the value (a secret, or too long to quote)."""
    if keyword == "minLength":
        return f"must be at least {kind.limit} characters"
    if keyword == "maxLength":
        return f"must be at most {kind.limit} characters"
    if keyword == "pattern":
        return f"must match {kind.pattern}"
    return f"fails the {keyword} constraint"


class ReturnsValidator:
    """Checks a handler's result against ``returns:`` (development and test only)."""

    def __init__(self, schema: Mapping[str, Any]) -> None:
        self._validator = compile_schema(schema)

    def problems(self, value: Any) -> list[str]:
        return [
            f"{pointer(e.instance_path) or '/'}: {e.message[:_MAX_MESSAGE]}"
            for e in self._validator.iter_errors(value)
        ]
