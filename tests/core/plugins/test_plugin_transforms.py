"""Built-in transforms: passthrough, field_mapper, truncate, keyword_filter, json_explode."""

from __future__ import annotations

from typing import Any

import pytest

from elspeth_core.errors import ConfigError
from elspeth_core.plugins.protocols import TransformResult
from elspeth_core.plugins.transforms import (
    FieldMapper,
    JsonExplode,
    KeywordFilter,
    Passthrough,
    Truncate,
)


def test_passthrough_returns_the_same_object() -> None:
    row = {"a": 1}
    result = Passthrough({}).process(row)
    assert result.row is row and result.rows is None and result.error is None


def test_every_transform_accepts_on_error() -> None:
    assert Passthrough({"on_error": "rejects"}).config.on_error == "rejects"
    assert KeywordFilter({"keywords": ["x"], "on_error": "discard"}).config.on_error == "discard"


# -- field_mapper --------------------------------------------------------------------------------


def test_field_mapper_renames_in_place_keeping_order() -> None:
    row = {"a": 1, "b": 2, "c": 3}
    result = FieldMapper({"mapping": {"b": "beta"}}).process(row)
    assert result.row == {"a": 1, "beta": 2, "c": 3}
    assert list(result.row or {}) == ["a", "beta", "c"]
    assert row == {"a": 1, "b": 2, "c": 3}  # input untouched


def test_field_mapper_select_only() -> None:
    mapper = FieldMapper({"mapping": {"c": "C", "a": "A"}, "select_only": True})
    assert mapper.process({"a": 1, "b": 2, "c": 3}).row == {"A": 1, "C": 3}


def test_field_mapper_missing_fields() -> None:
    lenient = FieldMapper({"mapping": {"x": "y"}})
    assert lenient.process({"a": 1}).row == {"a": 1}
    strict = FieldMapper({"mapping": {"x": "y"}, "strict": True})
    assert strict.process({"a": 1}) == TransformResult.fail("missing field 'x'")


def test_field_mapper_swap_and_collision() -> None:
    swap = FieldMapper({"mapping": {"a": "b", "b": "a"}})
    assert swap.process({"a": 1, "b": 2}).row == {"b": 1, "a": 2}
    clash = FieldMapper({"mapping": {"a": "b"}})
    result = clash.process({"a": 1, "b": 2})
    assert result.error == "renaming 'a' to 'b' would overwrite the existing field 'b'"


def test_field_mapper_refuses_two_fields_renamed_to_one() -> None:
    with pytest.raises(ConfigError) as info:
        FieldMapper({"mapping": {"a": "x", "b": "x"}})
    assert info.value.key == "mapping"
    assert info.value.reason.startswith("two fields are renamed to 'x' (got ")


# -- truncate ------------------------------------------------------------------------------------


def test_truncate_all_string_fields_with_suffix() -> None:
    transform = Truncate({"max_length": 5, "suffix": "..."})
    row = {"a": "abcdefgh", "b": "abc", "n": 123456789}
    assert transform.process(row).row == {"a": "ab...", "b": "abc", "n": 123456789}


def test_truncate_only_named_fields_and_unchanged_rows_are_the_same_object() -> None:
    transform = Truncate({"max_length": 2, "fields": ["a", "missing"]})
    assert transform.process({"a": "abc", "b": "abc"}).row == {"a": "ab", "b": "abc"}
    row = {"a": "ab", "b": "abcdef"}
    assert transform.process(row).row is row


def test_truncate_options() -> None:
    with pytest.raises(ConfigError) as info:
        Truncate({"max_length": 2, "suffix": "..."})
    assert str(info.value) == "suffix: suffix is longer than max_length 2 (got '...')"
    with pytest.raises(ConfigError) as info:
        Truncate({})
    assert info.value.key == "max_length"


# -- keyword_filter ------------------------------------------------------------------------------


def test_keyword_filter_fails_matching_rows_case_insensitively() -> None:
    transform = KeywordFilter({"keywords": ["Secret", "pin"], "fields": ["body"]})
    row = {"title": "secret", "body": "my PIN is 1234"}
    assert transform.process(row) == TransformResult.fail("matched keyword 'pin' in field 'body'")
    clean = {"title": "secret", "body": "hello"}
    assert transform.process(clean).row is clean


def test_keyword_filter_case_sensitive_and_all_fields() -> None:
    transform = KeywordFilter({"keywords": ["Secret"], "case_sensitive": True})
    assert transform.process({"a": "secret", "b": 5}).row is not None
    assert transform.process({"a": "x", "b": "a Secret"}).error == (
        "matched keyword 'Secret' in field 'b'"
    )


def test_keyword_filter_options() -> None:
    with pytest.raises(ConfigError) as info:
        KeywordFilter({"keywords": []})
    assert info.value.key == "keywords"
    with pytest.raises(ConfigError) as info:
        KeywordFilter({"keywords": [""]})
    assert info.value.key == "keywords" and "empty keyword" in info.value.reason
    with pytest.raises(ConfigError) as info:
        KeywordFilter({"keywords": ["a"], "fields": "some"})
    assert info.value.key is not None and info.value.key.startswith("fields")


# -- json_explode --------------------------------------------------------------------------------


def test_json_explode_one_row_per_element() -> None:
    transform = JsonExplode({"array_field": "items", "include_index": True})
    row: dict[str, Any] = {"id": 1, "items": [{"sku": "a"}, {"sku": "b"}], "tail": True}
    result = transform.process(row)
    assert result.rows == [
        {"id": 1, "tail": True, "item": {"sku": "a"}, "item_index": 0},
        {"id": 1, "tail": True, "item": {"sku": "b"}, "item_index": 1},
    ]
    assert result.rows is not None
    result.rows[0]["item"]["sku"] = "changed"
    assert row["items"][0] == {"sku": "a"}  # children do not share values with the parent


def test_json_explode_output_field_and_empty_list() -> None:
    transform = JsonExplode({"array_field": "tags", "output_field": "tag"})
    assert transform.process({"tags": ["x"]}).rows == [{"tag": "x"}]
    assert transform.process({"id": 1, "tags": []}) == TransformResult.expand([])


def test_json_explode_failures() -> None:
    transform = JsonExplode({"array_field": "items"})
    assert transform.process({"id": 1}).error == "array field 'items' is missing"
    assert transform.process({"items": "x"}).error == "array field 'items' is not a list (got str)"
    assert transform.process({"items": [1], "item": 0}).error == (
        "output field 'item' already exists in the row"
    )
