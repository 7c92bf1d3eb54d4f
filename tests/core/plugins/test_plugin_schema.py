"""RowSchema: parsing the ``schema:`` option, coercion, and every failure reason."""

from __future__ import annotations

import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from elspeth_core.errors import ConfigError
from elspeth_core.plugins.schema import RowSchema

FIELDS = ["id: int", "amount: float", "name: str", "flag: bool", "items: any", "note: str?"]


def strict() -> RowSchema:
    return RowSchema.from_options({"mode": "strict", "fields": FIELDS})


def test_dynamic_accepts_anything_and_copies() -> None:
    row = {"x": object(), "y": "1"}
    for options in (None, {"fields": "dynamic"}):
        out, reason = RowSchema.from_options(options).validate(row)
        assert reason is None
        assert out == row and out is not row


def test_strict_coerces_strings_and_keeps_row_order() -> None:
    row = {
        "note": "",
        "flag": "Yes",
        "amount": "12.5",
        "id": " 12 ",
        "name": "Ann",
        "items": "[1]",
    }
    out, reason = strict().validate(row)
    assert reason is None
    assert out == {
        "note": None,
        "flag": True,
        "amount": 12.5,
        "id": 12,
        "name": "Ann",
        "items": "[1]",
    }
    assert list(out) == list(row)


def test_values_of_the_right_type_pass_unchanged() -> None:
    row = {"id": 3, "amount": 1.5, "name": "x", "flag": False, "items": [1, 2], "note": None}
    out, reason = strict().validate(row)
    assert reason is None and out == row


def test_missing_optional_field_is_appended_as_none() -> None:
    schema = RowSchema.from_options({"mode": "free", "fields": ["id: int", "note: str?"]})
    out, reason = schema.validate({"extra": "kept", "id": "1"})
    assert reason is None
    assert out == {"extra": "kept", "id": 1, "note": None}
    assert list(out) == ["extra", "id", "note"]


@pytest.mark.parametrize(
    ("row_update", "reason"),
    [
        ({"amount": "abc"}, "field 'amount': cannot convert 'abc' to float"),
        ({"amount": "nan"}, "field 'amount': NaN is not allowed (got 'nan')"),
        ({"amount": "-Infinity"}, "field 'amount': Infinity is not allowed (got '-Infinity')"),
        ({"amount": "1e999"}, "field 'amount': Infinity is not allowed (got '1e999')"),
        ({"amount": float("nan")}, "field 'amount': NaN is not allowed (got nan)"),
        ({"id": "12.5"}, "field 'id': cannot convert '12.5' to int"),
        ({"id": "1_000"}, "field 'id': cannot convert '1_000' to int"),
        ({"id": True}, "field 'id': cannot convert True to int"),
        ({"id": None}, "field 'id': a value is required (got null)"),
        ({"id": ""}, "field 'id': cannot convert '' to int"),
        ({"flag": "maybe"}, "field 'flag': cannot convert 'maybe' to bool"),
        ({"flag": 2}, "field 'flag': cannot convert 2 to bool"),
        ({"name": 5}, "field 'name': expected a string, got int 5"),
        ({"x": "1"}, "unexpected field 'x' (strict schema)"),
    ],
)
def test_failure_reasons(row_update: dict[str, object], reason: str) -> None:
    row: dict[str, object] = {"id": "1", "amount": "2", "name": "n", "flag": "0", "items": 1}
    row.update(row_update)
    assert strict().validate(row) == (None, reason)


def test_missing_required_field() -> None:
    assert strict().validate({"amount": "2", "name": "n", "flag": "0", "items": 1}) == (
        None,
        "missing required field 'id'",
    )


def test_free_mode_allows_extra_fields_strict_does_not() -> None:
    free = RowSchema.from_options({"mode": "free", "fields": ["id: int"]})
    assert free.validate({"id": "1", "x": "y"}) == ({"id": 1, "x": "y"}, None)
    strict_one = RowSchema.from_options({"mode": "strict", "fields": ["id: int"]})
    assert strict_one.validate({"id": "1", "x": "y"})[1] == "unexpected field 'x' (strict schema)"


@pytest.mark.parametrize(
    ("text", "expected"),
    [("true", True), ("FALSE", False), ("1", True), ("0", False), ("yes", True), ("No", False)],
)
def test_bool_words(text: str, expected: bool) -> None:
    schema = RowSchema.from_options({"mode": "strict", "fields": ["f: bool"]})
    assert schema.validate({"f": text}) == ({"f": expected}, None)


def test_integral_float_is_accepted_as_int() -> None:
    schema = RowSchema.from_options({"mode": "strict", "fields": ["n: int"]})
    assert schema.validate({"n": 3.0}) == ({"n": 3}, None)
    assert schema.validate({"n": 3.5}) == (None, "field 'n': cannot convert 3.5 to int")


def test_yaml_dict_field_form_and_contract_keys_are_accepted() -> None:
    schema = RowSchema.from_options(
        {"mode": "free", "fields": [{"id": "int"}], "guaranteed_fields": ["id"]}
    )
    assert [(f.name, f.type, f.optional) for f in schema.fields] == [("id", "int", False)]


@pytest.mark.parametrize(
    ("options", "key", "fragment"),
    [
        ({"mode": "strict", "fields": ["id int"]}, "schema.fields[0]", "malformed field spec"),
        ({"mode": "strict", "fields": ["id: integer"]}, "schema.fields[0]", "unknown type"),
        ({"mode": "strict", "fields": ["a: int", "a: str"]}, "schema.fields[1]", "duplicate"),
        ({"mode": "strict", "fields": []}, "schema.fields", "non-empty list"),
        ({"fields": ["id: int"]}, "schema.mode", "mode must be"),
        ({"mode": "loose", "fields": ["id: int"]}, "schema.mode", "mode must be"),
        ({"mode": "strict"}, "schema.fields", "'fields' is required"),
        ({"fields": "dynamic", "colour": 1}, "schema", "unknown schema key 'colour'"),
    ],
)
def test_malformed_schema_raises_config_error(
    options: dict[str, object], key: str, fragment: str
) -> None:
    with pytest.raises(ConfigError) as info:
        RowSchema.from_options(options)
    assert info.value.key == key
    assert fragment in info.value.reason


@given(st.integers(min_value=-(10**18), max_value=10**18))
def test_int_round_trips_through_text(value: int) -> None:
    schema = RowSchema.from_options({"mode": "strict", "fields": ["n: int"]})
    assert schema.validate({"n": str(value)}) == ({"n": value}, None)


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_float_round_trips_through_text(value: float) -> None:
    schema = RowSchema.from_options({"mode": "strict", "fields": ["x: float"]})
    assert schema.validate({"x": repr(value)}) == ({"x": value}, None)


def test_validation_is_fast() -> None:
    schema = strict()
    row = {"id": "1", "amount": "2.5", "name": "n", "flag": "true", "items": "x", "note": "y"}
    start = time.perf_counter()
    for _ in range(20_000):
        schema.validate(row)
    elapsed = time.perf_counter() - start
    assert elapsed < 1.0, f"20k rows took {elapsed:.2f}s"
