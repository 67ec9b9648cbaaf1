"""ParamsValidator and ParamSpec (core/params.py): defaults, error paths, secrets, properties."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.actions.params import ParamSpec, ParamsValidator
from core.base.errors import ValidationError, pointer


def validator(**params: Mapping[str, Any]) -> ParamsValidator:
    """A validator from ``name={schema..., "required": bool, "secret": bool}``."""
    specs = {}
    for name, fragment in params.items():
        schema = {k: v for k, v in fragment.items() if k not in ("required", "secret")}
        specs[name] = ParamSpec(
            name,
            schema,
            required=bool(fragment.get("required", False)),
            secret=bool(fragment.get("secret", False)),
        )
    return ParamsValidator(specs)


def errors_of(check: ParamsValidator, raw: Mapping[str, Any]) -> ValidationError:
    with pytest.raises(ValidationError) as info:
        check(raw)
    return info.value


def paths(error: ValidationError) -> set[str]:
    return {e.path for e in error.errors}


TRANSFER: dict[str, dict[str, Any]] = {
    "to": {"type": "string", "minLength": 1, "required": True},
    "amount": {"type": "integer", "minimum": 1, "maximum": 1000, "required": True},
    "note": {"type": "string", "maxLength": 200, "default": ""},
    "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 5, "default": []},
    "address": {
        "type": "object",
        "properties": {"zip": {"type": "string", "pattern": "^[0-9]{5}$"}},
        "default": {"zip": "00000"},
    },
    "pin": {"type": "string", "maxLength": 4, "secret": True},
    "email": {"type": "string", "format": "email"},
    "anything": {},
}


@pytest.fixture
def transfer() -> ParamsValidator:
    return validator(**TRANSFER)


# --- defaults and conversion ------------------------------------------------------------


def test_defaults_are_applied(transfer: ParamsValidator) -> None:
    assert transfer({"to": "bob", "amount": 5}) == {
        "to": "bob",
        "amount": 5,
        "note": "",
        "tags": [],
        "address": {"zip": "00000"},
    }


def test_given_values_win_over_defaults(transfer: ParamsValidator) -> None:
    result = transfer({"to": "bob", "amount": 5, "note": "rent", "tags": ["a"]})
    assert result["note"] == "rent"
    assert result["tags"] == ["a"]


def test_defaults_are_deep_copied(transfer: ParamsValidator) -> None:
    first = transfer({"to": "bob", "amount": 5})
    first["tags"].append("mutated")
    first["address"]["zip"] = "99999"
    second = transfer({"to": "bob", "amount": 5})
    assert second["tags"] == []
    assert second["address"] == {"zip": "00000"}
    assert transfer.params["tags"].schema["default"] == []


def test_raw_params_are_not_mutated(transfer: ParamsValidator) -> None:
    raw = {"to": "bob", "amount": 5.0}
    transfer(raw)
    assert raw == {"to": "bob", "amount": 5.0}


def test_has_default() -> None:
    assert ParamSpec("a", {"type": "string", "default": "x"}).has_default
    assert ParamSpec("a", {"type": "string", "default": None}).has_default
    assert not ParamSpec("a", {"type": "string"}).has_default


def test_integral_float_is_accepted_as_int(transfer: ParamsValidator) -> None:
    result = transfer({"to": "bob", "amount": 3.0})
    assert result["amount"] == 3
    assert type(result["amount"]) is int


def test_fractional_float_is_not_an_integer(transfer: ParamsValidator) -> None:
    error = errors_of(transfer, {"to": "bob", "amount": 3.5})
    assert paths(error) == {"/amount"}


def test_untyped_param_takes_any_json_value(transfer: ParamsValidator) -> None:
    value = {"nested": [1, "two", None, {"three": 3.5}]}
    assert transfer({"to": "bob", "amount": 1, "anything": value})["anything"] == value


def test_no_params_declared_accepts_empty_and_rejects_anything_else() -> None:
    check = ParamsValidator({})
    assert check({}) == {}
    assert paths(errors_of(check, {"a": 1})) == {"/a"}


# --- error paths and messages ---------------------------------------------------------


def test_missing_required_param(transfer: ParamsValidator) -> None:
    error = errors_of(transfer, {"amount": 5})
    assert [(e.path, e.message) for e in error.errors] == [("/to", "is required")]
    assert error.status == 422
    assert "/to" in error.detail


def test_unknown_param(transfer: ParamsValidator) -> None:
    error = errors_of(transfer, {"to": "bob", "amount": 5, "x": 1})
    assert [(e.path, e.message) for e in error.errors] == [("/x", "unknown parameter")]


def test_every_bad_field_is_named(transfer: ParamsValidator) -> None:
    error = errors_of(
        transfer,
        {"amount": "many", "note": "n" * 201, "tags": ["a", 2], "x": 1, "y": 2},
    )
    assert paths(error) == {"/to", "/amount", "/note", "/tags/1", "/x", "/y"}
    assert error.detail.startswith(f"{len(error.errors)} invalid parameters")
    for path in ("/to", "/amount", "/note", "/tags/1", "/x", "/y"):
        assert path in error.detail


def test_problem_body_lists_the_errors(transfer: ParamsValidator) -> None:
    body = errors_of(transfer, {"amount": 0}).problem("req-1")
    assert body["type"] == "/problems/validation"
    assert body["status"] == 422
    assert body["request_id"] == "req-1"
    assert {e["path"] for e in body["errors"]} == {"/to", "/amount"}
    assert all(set(e) == {"path", "message"} for e in body["errors"])


def test_nested_path_is_a_json_pointer(transfer: ParamsValidator) -> None:
    error = errors_of(transfer, {"to": "bob", "amount": 5, "address": {"zip": "abc"}})
    assert paths(error) == {"/address/zip"}


def test_bounds_are_reported(transfer: ParamsValidator) -> None:
    assert paths(errors_of(transfer, {"to": "bob", "amount": 0})) == {"/amount"}
    assert paths(errors_of(transfer, {"to": "bob", "amount": 1001})) == {"/amount"}
    assert paths(errors_of(transfer, {"to": "", "amount": 1})) == {"/to"}


def test_format_email_is_checked(transfer: ParamsValidator) -> None:
    error = errors_of(transfer, {"to": "bob", "amount": 5, "email": "not an email"})
    assert error.status == 422
    assert paths(error) == {"/email"}
    assert transfer({"to": "bob", "amount": 5, "email": "ann@example.com"})["email"] == (
        "ann@example.com"
    )


@pytest.mark.parametrize(
    ("parts", "expected"),
    [
        ([], ""),
        (["a"], "/a"),
        (["a/b"], "/a~1b"),
        (["c~d"], "/c~0d"),
        (["~1"], "/~01"),  # "~" is escaped before "/", so this does not decode to "/"
        (["address", 0, "zip"], "/address/0/zip"),
        ([""], "/"),
    ],
)
def test_pointer_escapes_per_rfc_6901(parts: list[Any], expected: str) -> None:
    assert pointer(parts) == expected


def test_param_names_with_slash_and_tilde_are_escaped() -> None:
    check = validator(**{"a/b~c": {"type": "integer", "required": True}})
    assert paths(errors_of(check, {"a/b~c": "s"})) == {"/a~1b~0c"}
    assert paths(errors_of(check, {})) == {"/a~1b~0c"}
    assert paths(errors_of(check, {"a/b~c": 1, "x/y": 1})) == {"/x~1y"}


# --- no value echoed where it must not be ---------------------------------------------


def test_secret_value_never_appears_in_the_error(transfer: ParamsValidator) -> None:
    secret = "supersecretvalue"
    error = errors_of(transfer, {"to": "bob", "amount": 5, "pin": secret})
    assert paths(error) == {"/pin"}
    assert all(secret not in e.message for e in error.errors)
    assert secret not in error.detail
    assert secret not in str(error)
    assert secret not in json.dumps(error.problem("r"))


def test_secret_value_of_the_wrong_type_is_not_echoed(transfer: ParamsValidator) -> None:
    error = errors_of(transfer, {"to": "bob", "amount": 5, "pin": 987654321})
    assert paths(error) == {"/pin"}
    assert "987654321" not in json.dumps(error.problem("r"))


def test_secret_nested_value_is_not_echoed() -> None:
    check = validator(
        card={
            "type": "object",
            "properties": {"cvc": {"type": "string", "pattern": "^[0-9]{3}$"}},
            "secret": True,
        }
    )
    error = errors_of(check, {"card": {"cvc": "leakyleaky"}})
    assert paths(error) == {"/card/cvc"}
    assert "leakyleaky" not in json.dumps(error.problem("r"))


def test_long_value_is_not_echoed(transfer: ParamsValidator) -> None:
    long = "y" * 10_000
    error = errors_of(transfer, {"to": "bob", "amount": 5, "note": long})
    assert paths(error) == {"/note"}
    body = json.dumps(error.problem("r"))
    assert len(body) < 1_000
    assert all(len(e.message) <= 200 for e in error.errors)
    assert "y" * 100 not in body


def test_long_value_failing_a_pattern_is_not_echoed(transfer: ParamsValidator) -> None:
    error = errors_of(transfer, {"to": "bob", "amount": 5, "address": {"zip": "9" * 10_000}})
    assert paths(error) == {"/address/zip"}
    assert all(len(e.message) <= 200 for e in error.errors)


# --- properties -----------------------------------------------------------------------

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
RAW_PARAMS = st.dictionaries(st.sampled_from(sorted(TRANSFER)) | st.text(max_size=8), JSON_VALUES)


@given(raw=RAW_PARAMS)
def test_any_json_input_gives_declared_params_or_a_validation_error(
    raw: dict[str, Any],
) -> None:
    check = validator(**TRANSFER)
    try:
        result = check(raw)
    except ValidationError as error:
        assert error.errors, "a ValidationError names at least one field"
        assert all(e.path.startswith("/") for e in error.errors)
        return
    assert set(result) <= set(TRANSFER)
    assert {"to", "amount"} <= set(result)


AMOUNT = validator(amount={"type": "integer", "minimum": 1, "maximum": 1000, "required": True})


@given(amount=st.integers() | st.integers(min_value=-5, max_value=1005))
def test_amount_is_valid_iff_within_bounds(amount: int) -> None:
    try:
        result = AMOUNT({"amount": amount})
    except ValidationError as error:
        assert not 1 <= amount <= 1000
        assert paths(error) == {"/amount"}
    else:
        assert 1 <= amount <= 1000
        assert result == {"amount": amount}
