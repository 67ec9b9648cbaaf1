"""The meta-schema every action declaration is checked against at load time.

Two forms are accepted: the typed form (``handler:`` + ``params:``) and the seed's form
(``type: function`` + ``function:`` + ``required_params`` / ``optional_params`` /
``parameter_types``). ``additionalProperties: false`` everywhere: an unknown key is an
error naming the key, never silently ignored.
"""

from __future__ import annotations

from typing import Any

from core.contracts.limits import RATE

IDENTIFIER = r"^[A-Za-z_][A-Za-z0-9_]*$"
ACTION_KEY = r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*$"
RATE_BY = r"^(caller|ip|params\.[A-Za-z_][A-Za-z0-9_]*)$"
DURATION = r"^\s*\d+(\.\d+)?\s*(ms|s|m|h|d)?\s*$"
JSON_TYPES = ["string", "integer", "number", "boolean", "object", "array", "null"]

# Seed type names -> JSON Schema types.
SEED_TYPES: dict[str, str | None] = {
    "string": "string",
    "str": "string",
    "int": "integer",
    "integer": "integer",
    "float": "number",
    "number": "number",
    "bool": "boolean",
    "boolean": "boolean",
    "dict": "object",
    "object": "object",
    "list": "array",
    "array": "array",
    "any": None,
}

_TYPE = {
    "anyOf": [
        {"enum": JSON_TYPES},
        {"type": "array", "items": {"enum": JSON_TYPES}, "minItems": 1, "uniqueItems": True},
    ]
}
DURATION_VALUE = {
    "anyOf": [{"type": "number", "exclusiveMinimum": 0}, {"type": "string", "pattern": DURATION}]
}

# The JSON Schema subset params may use (the common ground of drafts 07 and 2020-12).
_SUBSET: dict[str, Any] = {
    "type": _TYPE,
    "enum": {"type": "array", "minItems": 1},
    "const": {},
    "minimum": {"type": "number"},
    "maximum": {"type": "number"},
    "exclusiveMinimum": {"type": "number"},
    "exclusiveMaximum": {"type": "number"},
    "minLength": {"type": "integer", "minimum": 0},
    "maxLength": {"type": "integer", "minimum": 0},
    "pattern": {"type": "string"},  # compiled (and so checked) by jsonschema-rs
    "format": {"type": "string"},
    "items": {"$ref": "#/$defs/schema"},
    "properties": {"type": "object", "additionalProperties": {"$ref": "#/$defs/schema"}},
    "required": {"type": "array", "items": {"type": "string"}},
    "additionalProperties": {"anyOf": [{"type": "boolean"}, {"$ref": "#/$defs/schema"}]},
    "minItems": {"type": "integer", "minimum": 0},
    "maxItems": {"type": "integer", "minimum": 0},
    "uniqueItems": {"type": "boolean"},
    "oneOf": {"type": "array", "items": {"$ref": "#/$defs/schema"}, "minItems": 1},
    "anyOf": {"type": "array", "items": {"$ref": "#/$defs/schema"}, "minItems": 1},
    "default": {},
    "title": {"type": "string"},
    "description": {"type": "string"},
    "examples": {"type": "array"},
    "secret": {"type": "boolean"},  # a value hooks and logs never see (params, returns fields)
}

_COMMON: dict[str, Any] = {
    "summary": {"type": "string"},
    "description": {"type": "string"},
    "auth": {"enum": ["public", "user", "api_key", "any"]},
    "roles": {"type": "array", "items": {"type": "string", "minLength": 1}, "uniqueItems": True},
    "scopes": {"type": "array", "items": {"type": "string", "minLength": 1}, "uniqueItems": True},
    "rate_limit": {"type": "array", "items": {"type": "string", "pattern": RATE}},
    "rate_limit_by": {
        "type": "array",
        "items": {"type": "string", "pattern": RATE_BY},
        "minItems": 1,
        "uniqueItems": True,
    },
    "rate_limit_failure": {"enum": ["open", "closed"]},
    "idempotent": {"type": "boolean"},
    "timeout": DURATION_VALUE,
    "returns": {"$ref": "#/$defs/schema"},
    "deprecated": {"type": "boolean"},
    "examples": {"type": "array"},
    "url_pattern": {"type": "string"},
    "cache": DURATION_VALUE,  # read-only actions: keep results this long
    "run": {"enum": ["inline", "background", "either"]},  # background: an execution
    "keep": DURATION_VALUE,  # how long an execution's record and result are kept
}

_DEFS: dict[str, Any] = {
    "schema": {"type": "object", "properties": _SUBSET, "additionalProperties": False},
    "param": {
        "type": "object",
        "properties": {**_SUBSET, "required": {"type": "boolean"}},
        "additionalProperties": False,
    },
}

_NAMES = {"type": "array", "items": {"type": "string", "pattern": IDENTIFIER}, "uniqueItems": True}
SEED_PARAMS: dict[str, Any] = {
    "required_params": _NAMES,
    "optional_params": _NAMES,
    "parameter_types": {
        "type": "object",
        "propertyNames": {"pattern": IDENTIFIER},
        "additionalProperties": {"enum": sorted(SEED_TYPES)},
    },
}
TYPED_PARAMS: dict[str, Any] = {
    "type": "object",
    "propertyNames": {"pattern": IDENTIFIER, "not": {"const": "ctx"}},
    "additionalProperties": {"$ref": "#/$defs/param"},
}

TYPED_ACTION: dict[str, Any] = {
    "$defs": _DEFS,
    "type": "object",
    "required": ["handler"],
    "properties": {
        **_COMMON,
        "handler": {
            "type": "string",
            "pattern": r"^[A-Za-z_][A-Za-z0-9_.]*:[A-Za-z_][A-Za-z0-9_]*$",
        },
        "params": TYPED_PARAMS,
    },
    "additionalProperties": False,
}


SEED_ACTION: dict[str, Any] = {
    "$defs": _DEFS,
    "type": "object",
    "required": ["type", "function"],
    "properties": {
        **_COMMON,
        "type": {"const": "function"},
        "function": {"type": "string", "pattern": IDENTIFIER},
        **SEED_PARAMS,
    },
    "additionalProperties": False,
}


def code_free_schema(required: list[str], properties: dict[str, Any]) -> dict[str, Any]:
    """The meta-schema of one form of a code-free type (core/actions/code_free/): the keys
    every action has, ``type``, and the type's own ``properties``."""
    return {
        "$defs": _DEFS,
        "type": "object",
        "required": ["type", *required],
        "properties": {**_COMMON, **properties},
        "additionalProperties": False,
    }


FILE_KEYS = frozenset({"actions", "config", "module"})

# The seed's module-wide ``config:`` block: default_timeout bounds every action of the file
# (and its upstream calls), max_retries is the retries of its external_api calls,
# cache_enabled + cache_ttl cache its read-only code-free actions.
SEED_FILE_CONFIG: dict[str, Any] = {
    "type": "object",
    "properties": {
        "default_timeout": DURATION_VALUE,
        "max_retries": {"type": "integer", "minimum": 0},
        "cache_enabled": {"type": "boolean"},
        "cache_ttl": {"type": "integer", "minimum": 0},
    },
}
