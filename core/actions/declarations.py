"""From one parsed action declaration to a runnable ``Action``.

Checks the declaration against the meta-schema, resolves the handler (a function of the
module package, or the seed form's module-object method), checks that the handler
accepts the declared params, and compiles the validators. Every problem names the file,
module, action and field.
"""

from __future__ import annotations

import difflib
import functools
import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import jsonschema
import jsonschema_rs

from core.actions.actions import Action, ActionSpec, Invoker
from core.actions.cache import cached
from core.actions.code_free import TYPES, Build, CodeFreeError, CodeFreeType
from core.actions.declaration_schema import JSON_TYPES, SEED_ACTION, SEED_TYPES, TYPED_ACTION
from core.actions.params import (
    ParamSpec,
    ParamsValidator,
    ReturnsValidator,
    SchemaCompileError,
    compile_schema,
)
from core.base.durations import parse_duration
from core.base.errors import DeclarationError, Problem
from core.base.yamlfile import key_line
from core.contracts.limits import Limit, parse_limit
from core.contracts.module import BaseModule, ImportFailed, RefError, resolve_ref
from core.contracts.services import ServiceDirectory


class MetaSchema:
    """A schema declarations are checked against: jsonschema-rs answers whether a
    declaration is valid (the common case, fast); only an invalid one is gone through by
    jsonschema, whose errors say which key and why."""

    def __init__(self, schema: Mapping[str, Any]) -> None:
        self._fast = jsonschema_rs.validator_for(dict(schema))
        self._detail = jsonschema.Draft202012Validator(schema)

    def problems(self, data: Any, where: Where) -> list[Problem]:
        if self._fast.is_valid(data):
            return []
        return schema_problems(self._detail, data, where)


_TYPED = MetaSchema(TYPED_ACTION)
_SEED = MetaSchema(SEED_ACTION)


@functools.cache
def _code_free_schema(kind: str, seed: bool) -> MetaSchema | None:
    form = TYPES[kind].seed if seed else TYPES[kind].typed
    return None if form is None else MetaSchema(form)


@dataclass(frozen=True)
class Where:
    """The place a problem is reported at."""

    file: str
    module: str
    action: str | None = None
    # The declaration as loaded, the lines of its keys (core.base.yamlfile), and its own line:
    # a problem at a field names the line of the deepest key of that field found.
    tree: Any = field(default=None, compare=False)
    lines: Mapping[int, Mapping[Any, int]] | None = field(default=None, compare=False)
    line: int | None = None

    def line_of(self, at: str | None) -> int | None:
        if self.lines is None:
            return self.line
        return key_line(self.tree, self.lines, at, self.line)

    def problem(self, message: str, field: str | None = None) -> Problem:
        return Problem(
            message,
            file=self.file,
            module=self.module,
            action=self.action,
            field=field,
            line=self.line_of(field),
        )

    def fail(self, message: str, field: str | None = None) -> DeclarationError:
        return DeclarationError([self.problem(message, field)])


_TYPE_ALIASES = {
    "int": "integer",
    "str": "string",
    "float": "number",
    "bool": "boolean",
    "dict": "object",
    "list": "array",
}


def did_you_mean(word: Any, choices: Sequence[str]) -> str:
    """`` (did you mean 'x'?)`` when ``word`` is close to one of ``choices``, else ``""``."""
    if not isinstance(word, str):
        return ""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _message(error: jsonschema.ValidationError, path: str) -> str:
    """A meta-schema error in the words of the file's author."""
    instance, last = error.instance, (str(error.path[-1]) if error.path else "")
    if error.validator == "type" and instance is None:
        return (
            f"{last or 'the declaration'} is empty: write its entries indented under it, "
            "or remove the key"
        )
    if last == "type" and isinstance(instance, str) and instance not in JSON_TYPES:
        alias = _TYPE_ALIASES.get(instance)
        hint = f" (did you mean {alias!r}?)" if alias else did_you_mean(instance, JSON_TYPES)
        return f"type {instance!r} is not a JSON Schema type{hint}; allowed: " + ", ".join(
            JSON_TYPES
        )
    if path.startswith("rate_limit") and error.validator == "pattern":
        return (
            f"{instance!r} is not a rate: write N/second, N/minute, N/hour or N/day "
            "(also N/5minutes; e.g. 10/minute)"
        )
    if error.validator == "enum" and isinstance(instance, str):
        values = error.validator_value if isinstance(error.validator_value, list) else []
        allowed = [str(v) for v in values]
        hint = did_you_mean(instance, allowed)
        return f"{instance!r} is not one of {', '.join(allowed)}{hint}"
    return error.message


def schema_problems(
    validator: jsonschema.Draft202012Validator, data: Any, where: Where
) -> list[Problem]:
    """Every meta-schema violation of ``data``; unknown keys are named one by one, with the
    allowed ones and the likely intended one."""
    problems = []
    errors = sorted(validator.iter_errors(data), key=lambda e: list(map(str, e.path)))
    # A required key that an unknown key is a likely misspelling of: the unknown key's
    # problem ("did you mean 'handler'?") says it all.
    meant = {
        (".".join(map(str, e.path)), close)
        for e in errors
        if e.validator == "additionalProperties" and isinstance(e.instance, dict)
        for key in e.instance
        for close in difflib.get_close_matches(str(key), list(e.schema.get("properties", {})), n=1)
        if key not in e.schema.get("properties", {})
    }
    for error in errors:
        path = ".".join(str(p) for p in error.path)
        if error.validator == "additionalProperties" and isinstance(error.instance, dict):
            allowed = sorted(error.schema.get("properties", {}))
            for key in sorted(set(error.instance) - set(allowed), key=str):
                problems.append(
                    where.problem(
                        f"unknown key {key!r}{did_you_mean(key, allowed)}; allowed: "
                        + ", ".join(allowed),
                        f"{path}.{key}".strip("."),
                    )
                )
        elif error.validator == "propertyNames":
            problems.append(
                where.problem(
                    f"invalid param name {error.instance!r}: must be a Python identifier other "
                    "than 'ctx'",
                    path,
                )
            )
        elif error.validator == "required" and isinstance(error.instance, dict):
            missing = [
                name
                for name in error.validator_value
                if name not in error.instance and (path, name) not in meant
            ]
            for name in missing:
                field = f"{path}.{name}".strip(".")
                problems.append(where.problem(f"{name!r} is a required property", field))
        else:
            problems.append(where.problem(_message(error, path), path or None))
    return problems


def build_action(
    where: Where,
    decl: Any,
    defaults: Mapping[str, Any],
    instance: BaseModule | None,
    services: ServiceDirectory | None = None,
) -> Action:
    """The ``Action`` for one declaration; ``DeclarationError`` lists what is wrong."""
    if not isinstance(decl, dict):
        raise where.fail("a declaration must be a mapping")
    kind = decl.get("type")
    if isinstance(kind, str) and kind in TYPES:
        return _code_free_action(where, TYPES[kind], decl, defaults, services)
    if kind is not None and kind != "function":
        allowed = ", ".join(("function", *sorted(TYPES)))
        raise where.fail(
            f"unknown type {kind!r}; allowed: {allowed} (or none, with handler)", "type"
        )
    seed = kind == "function" or "function" in decl
    problems = (_SEED if seed else _TYPED).problems(decl, where)
    if problems:
        raise DeclarationError(problems)
    if seed:
        params = _seed_params(where, decl)
        method = _seed_method(where, instance, decl["function"])
        handler_ref = f"function:{method.__name__}"

        def call_method(ctx: Any, values: dict[str, Any]) -> Any:
            return method(values)

        invoke: Invoker = call_method
    else:
        params = _typed_params(decl)
        handler_ref = decl["handler"]
        try:
            function = resolve_ref(where.module, handler_ref)
        except ImportFailed as exc:
            raise DeclarationError([exc.problem]) from exc
        except RefError as exc:
            raise where.fail(str(exc), "handler") from exc
        check_signature(where, function, handler_ref, params)

        def call_function(ctx: Any, values: dict[str, Any]) -> Any:
            return function(ctx, **values)

        invoke = call_function

    spec = _spec(where, decl, defaults, handler_ref, params)
    if spec.cache is not None:  # the author says the handler only reads
        invoke = cached(
            invoke, spec.name, spec.cache, per_caller=spec.auth != "public", collection=None
        )
    return compile_action(where, spec, invoke)


def _code_free_action(
    where: Where,
    kind: CodeFreeType,
    decl: dict[str, Any],
    defaults: Mapping[str, Any],
    services: ServiceDirectory | None,
) -> Action:
    """A declaration of a registered code-free type (core/actions/code_free/)."""
    seed = kind.is_seed(decl)
    schema = _code_free_schema(kind.name, seed)
    if schema is None:  # the type has only the other form
        if seed:
            raise where.fail(
                f"type: {kind.name} takes typed params (params:), not required_params", "type"
            )
        raise where.fail(f"type: {kind.name} takes the seed's required_params", "type")
    problems = schema.problems(decl, where)
    if problems:
        raise DeclarationError(problems)
    params = _seed_params(where, decl) if seed else _typed_params(decl)
    build = Build(
        decl,
        params,
        seed=seed,
        public=decl.get("auth", "user") == "public",
        module=where.module,
        action=where.action or "",
        defaults=defaults,
        services=services,
    )
    try:
        built = kind.build(build)
    except CodeFreeError as exc:
        raise where.fail(str(exc), exc.field) from None
    spec = replace(
        _spec(where, decl, defaults, built.handler, params), path_params=built.path_params
    )
    ttl = spec.cache
    if ttl is not None and not built.read_only:
        raise where.fail(
            f"cache: {built.handler} writes; only read-only actions can be cached", "cache"
        )
    if ttl is None and built.read_only and defaults.get("cache_enabled"):
        ttl = float(defaults.get("cache_ttl", 0)) or None
        spec = replace(spec, cache=ttl)
    invoke = built.invoke
    if ttl is not None:
        invoke = cached(
            invoke,
            spec.name,
            ttl,
            per_caller=spec.auth != "public" or built.uses_caller,
            collection=built.collection,
        )
    return compile_action(where, spec, invoke)


def _spec(
    where: Where,
    decl: Mapping[str, Any],
    defaults: Mapping[str, Any],
    handler: str,
    params: dict[str, ParamSpec],
) -> ActionSpec:
    timeout = decl.get("timeout", defaults.get("default_timeout"))
    description = decl.get("description", "")
    limits = _limits(where, decl.get("rate_limit", ()))
    by = tuple(decl.get("rate_limit_by", ("caller",)))
    unknown = [b for b in by if b.startswith("params.") and b[len("params.") :] not in params]
    if unknown:
        names = ", ".join(unknown)
        raise where.fail(f"rate_limit_by names {names}: not a declared param", "rate_limit_by")
    run = decl.get("run", "inline")
    if run == "inline" and "keep" in decl:
        raise where.fail("keep is how long an execution is kept: add run: background", "keep")
    if run != "inline" and decl.get("auth", "user") == "public":
        raise where.fail(
            f"run: {run} needs a caller who can read the execution later: "
            "auth: user, api_key or any, not public",
            "auth",
        )
    if run != "inline" and "cache" in decl:
        raise where.fail(f"run: {run} actions answer with an execution; they cannot cache", "cache")
    return ActionSpec(
        name=where.action or "",
        module=where.module,
        source=where.file,
        handler=handler,
        summary=decl.get("summary") or description.split("\n", 1)[0],
        description=description,
        auth=decl.get("auth", "user"),
        roles=frozenset(decl.get("roles", ())),
        scopes=frozenset(decl.get("scopes", ())),
        rate_limit=limits,
        rate_limit_by=by,
        rate_limit_failure=decl.get("rate_limit_failure", "open"),
        idempotent=bool(decl.get("idempotent", False)),
        timeout=None if timeout is None else parse_duration(timeout),
        params=params,
        returns=decl.get("returns"),
        deprecated=bool(decl.get("deprecated", False)),
        examples=tuple(decl.get("examples", ())),
        url_pattern=decl.get("url_pattern"),
        cache=None if decl.get("cache") is None else parse_duration(decl["cache"]),
        run=run,
        keep=None if decl.get("keep") is None else parse_duration(decl["keep"]),
    )


def _limits(where: Where, texts: Sequence[str]) -> tuple[Limit, ...]:
    """Each ``rate_limit`` entry parsed now, not on the first request."""
    limits, problems = [], []
    for index, text in enumerate(texts):
        try:
            limits.append(parse_limit(text))
        except ValueError as exc:
            problems.append(where.problem(f"{text!r}: {exc}", f"rate_limit.{index}"))
    if problems:
        raise DeclarationError(problems)
    return tuple(limits)


def compile_action(where: Where, spec: ActionSpec, invoke: Invoker) -> Action:
    """Compile the params and returns validators once; bad schemas are load errors."""
    problems: list[Problem] = []
    for name, param in spec.params.items():
        try:
            checker = compile_schema(param.schema)
        except SchemaCompileError as exc:
            problems.append(where.problem(f"invalid schema: {exc}", f"params.{name}"))
            continue
        if param.has_default and param.required:
            problems.append(
                where.problem("a required param cannot have a default", f"params.{name}.default")
            )
        elif param.has_default and not checker.is_valid(param.schema["default"]):
            problems.append(
                where.problem(
                    "default does not satisfy the param's own schema", f"params.{name}.default"
                )
            )
    returns = None
    if spec.returns is not None:
        try:
            returns = ReturnsValidator(spec.returns)
        except SchemaCompileError as exc:
            problems.append(where.problem(f"invalid schema: {exc}", "returns"))
    if problems:
        raise DeclarationError(problems)
    return Action(spec=spec, validate=ParamsValidator(spec.params), invoke=invoke, returns=returns)


# --- the typed form -------------------------------------------------------------------


def _typed_params(decl: Mapping[str, Any]) -> dict[str, ParamSpec]:
    return {
        name: ParamSpec(
            name=name,
            schema={k: v for k, v in schema.items() if k not in ("required", "secret")},
            required=bool(schema.get("required", False)),
            secret=bool(schema.get("secret", False)),
        )
        for name, schema in (decl.get("params") or {}).items()
    }


def check_signature(
    where: Where, function: Callable[..., Any], ref: str, params: Mapping[str, ParamSpec]
) -> None:
    """The handler takes ``ctx`` first and accepts every declared param by keyword."""
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):
        return  # no introspectable signature (some builtins): trust the declaration
    kinds = inspect.Parameter
    listed = list(signature.parameters.values())
    if not listed or listed[0].kind not in (kinds.POSITIONAL_ONLY, kinds.POSITIONAL_OR_KEYWORD):
        raise where.fail(
            f"handler {ref} must take ctx as its first positional parameter", "handler"
        )
    rest = listed[1:]
    takes_any = any(p.kind is kinds.VAR_KEYWORD for p in rest)
    by_keyword = {
        p.name for p in rest if p.kind in (kinds.POSITIONAL_OR_KEYWORD, kinds.KEYWORD_ONLY)
    }
    problems = [
        where.problem(f"handler {ref} does not accept declared param {name!r}", f"params.{name}")
        for name in params
        if name not in by_keyword and not takes_any
    ]
    for p in rest:
        if p.default is not kinds.empty or p.kind in (kinds.VAR_KEYWORD, kinds.VAR_POSITIONAL):
            continue
        declared = params.get(p.name)
        if p.kind is kinds.POSITIONAL_ONLY or declared is None:
            problems.append(
                where.problem(
                    f"handler {ref} requires {p.name!r}, which is not a declared param", "params"
                )
            )
        elif not declared.required and not declared.has_default:
            problems.append(
                where.problem(
                    f"param {p.name!r} is optional but handler {ref} has no default for it",
                    f"params.{p.name}",
                )
            )
    if problems:
        raise DeclarationError(problems)


# --- the seed form --------------------------------------------------------------------


def _seed_params(where: Where, decl: Mapping[str, Any]) -> dict[str, ParamSpec]:
    required: Sequence[str] = decl.get("required_params", ())
    optional: Sequence[str] = decl.get("optional_params", ())
    types: Mapping[str, str] = decl.get("parameter_types", {})
    problems = [
        where.problem(f"{name!r} is both required and optional", "optional_params")
        for name in sorted(set(required) & set(optional))
    ]
    problems.extend(
        where.problem(
            f"{name!r} is typed but in neither required_params nor optional_params",
            f"parameter_types.{name}",
        )
        for name in types
        if name not in required and name not in optional
    )
    if problems:
        raise DeclarationError(problems)
    params = {}
    for name in (*required, *optional):
        json_type = SEED_TYPES[types[name]] if name in types else None  # untyped: any JSON
        params[name] = ParamSpec(
            name, {"type": json_type} if json_type else {}, required=name in required
        )
    return params


def _seed_method(where: Where, instance: BaseModule | None, function: str) -> Callable[..., Any]:
    """The module object's ``_<function>`` (or ``<function>``), taking the params dict."""
    if instance is None:
        raise where.fail(f"type: function needs a module folder named {where.module!r}", "function")
    method = getattr(instance, f"_{function}", None) or getattr(instance, function, None)
    owner = type(instance).__name__
    if not callable(method):
        raise where.fail(
            f"module object {owner} has no method _{function} or {function}", "function"
        )
    try:
        inspect.signature(method).bind({})
    except TypeError:
        raise where.fail(
            f"{owner}.{method.__name__} must take the params as one dict argument", "function"
        ) from None
    except ValueError:  # no introspectable signature: trust it
        pass
    return method  # type: ignore[no-any-return]
