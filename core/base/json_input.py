"""The JSON every transport accepts: parsed once, refused whole when it cannot be text.

Python's ``json`` reads some documents that no later layer can handle. Each of these is
400 ``malformed-request`` here, before identify, validation, a handler, Argon2, a database
or a log line sees it:

- a lone surrogate half (``"\\ud800"``) in a key or a value: a legal JSON escape, but not
  Unicode text (it cannot be encoded as UTF-8);
- a non-finite number: ``NaN``, ``Infinity`` and numbers that overflow a double
  (``1e99999``);
- an integer longer than Python converts (4300 digits);
- nesting deeper than ``http.max_json_depth``.

The details are this module's own words: nothing of Python's parser reaches a caller.
"""

from __future__ import annotations

import json
import math
import sys
from typing import Any

from core.base.errors import MalformedRequest

DEFAULT_MAX_DEPTH = 64


class _Refused(ValueError):
    """A value the parser read but the body may not hold."""


def _refuse_constant(name: str) -> Any:
    raise _Refused(f"{name} is not a JSON number")


def _finite(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise _Refused(f"the number {text[:40]} is out of range")
    return value


def parse_object(raw: bytes | str, max_depth: int = DEFAULT_MAX_DEPTH) -> dict[str, Any]:
    """The body as a JSON object (an empty body is ``{}``), or ``MalformedRequest``."""
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw, parse_constant=_refuse_constant, parse_float=_finite)
    except _Refused as exc:
        raise MalformedRequest(f"the body is not valid JSON: {exc}") from None
    except json.JSONDecodeError as exc:
        where = f"line {exc.lineno}, column {exc.colno}"
        raise MalformedRequest(f"the body is not valid JSON: {exc.msg} ({where})") from None
    except UnicodeDecodeError:
        raise MalformedRequest("the body is not valid UTF-8") from None
    except RecursionError:
        raise MalformedRequest(f"the body nests deeper than {max_depth} levels") from None
    except ValueError:  # the only other refusal: an integer too long to convert
        limit = sys.get_int_max_str_digits()
        raise MalformedRequest(f"the body holds an integer of more than {limit} digits") from None
    if not isinstance(body, dict):
        raise MalformedRequest(f"the body must be a JSON object, not {_json_type(body)}")
    check_value(body, max_depth)
    return body


def check_value(value: Any, max_depth: int = DEFAULT_MAX_DEPTH) -> None:
    """Refuse what ``parse_object`` refuses in a value some other parser produced
    (Socket.IO's, say): lone surrogates, non-finite numbers, nesting beyond ``max_depth``."""
    if not isinstance(value, (dict, list)):
        value = [value]  # a scalar: checked as the one item of a list
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > max_depth:
            raise MalformedRequest(f"the body nests deeper than {max_depth} levels")
        children = item.items() if isinstance(item, dict) else enumerate(item)
        for key, child in children:
            if isinstance(key, str) and not key.isascii():
                _text(key)
            if isinstance(child, str):
                if not child.isascii():
                    _text(child)
            elif isinstance(child, (dict, list)):
                stack.append((child, depth + 1))
            elif isinstance(child, float) and not math.isfinite(child):
                raise MalformedRequest("the body holds a number that is not finite")


def _text(value: str) -> None:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise MalformedRequest(
            "the body holds a string with a lone surrogate (\\ud800-\\udfff): not Unicode text"
        ) from None


def _json_type(value: Any) -> str:
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    return "a number"
