"""Built-in aggregations: batch_stats and batch_replicate in each output mode."""

from __future__ import annotations

from typing import Any

import pytest

from elspeth_core.errors import ConfigError, PluginError
from elspeth_core.plugins.aggregations import BatchReplicate, BatchStats

MEMBERS: list[dict[str, Any]] = [
    {"region": "north", "amount": "10.5"},
    {"region": "south", "amount": 2},
    {"region": "north", "amount": None},
    {"region": "north", "amount": "n/a"},
    {"region": "north", "amount": True},
    {"region": "north", "amount": "nan"},
]


def test_batch_stats_single() -> None:
    stats = BatchStats({"value_field": "amount", "group_by": "region"})
    assert stats.aggregate(MEMBERS, "single") == [
        {"count": 2, "sum": 12.5, "batch_size": 6, "mean": 6.25, "region": "north"}
    ]


def test_batch_stats_transform_and_no_mean() -> None:
    stats = BatchStats({"value_field": "amount", "compute_mean": False})
    assert stats.aggregate(MEMBERS, "transform") == [{"count": 2, "sum": 12.5, "batch_size": 6}]


def test_batch_stats_passthrough_enriches_each_member() -> None:
    stats = BatchStats({"value_field": "amount"})
    out = stats.aggregate(MEMBERS[:2], "passthrough")
    assert out == [
        {
            "region": "north",
            "amount": "10.5",
            "batch_count": 2,
            "batch_sum": 12.5,
            "batch_mean": 6.25,
        },
        {"region": "south", "amount": 2, "batch_count": 2, "batch_sum": 12.5, "batch_mean": 6.25},
    ]
    assert "batch_count" not in MEMBERS[0]


def test_batch_stats_without_values() -> None:
    stats = BatchStats({"value_field": "missing", "group_by": "region"})
    assert stats.aggregate([{"region": "x"}], "single") == [
        {"count": 0, "sum": 0.0, "batch_size": 1, "mean": None, "region": "x"}
    ]


def test_batch_stats_sum_is_independent_of_member_order() -> None:
    values = [{"v": x} for x in (1e16, 1.0, -1e16, 0.1, 0.2)]
    stats = BatchStats({"value_field": "v"})
    forward = stats.aggregate(values, "single")[0]["sum"]
    backward = stats.aggregate(values[::-1], "single")[0]["sum"]
    assert forward == backward == pytest.approx(1.3)


def test_batch_stats_options_and_modes() -> None:
    with pytest.raises(ConfigError) as info:
        BatchStats({})
    assert info.value.key == "value_field"
    with pytest.raises(PluginError, match="unknown output_mode"):
        BatchStats({"value_field": "v"}).aggregate([], "sideways")


def test_batch_replicate_transform_mode() -> None:
    plugin = BatchReplicate({"copies_field": "n", "default_copies": 1, "include_copy_index": True})
    rows: list[dict[str, Any]] = [{"id": "a", "n": "2"}, {"id": "b", "n": "x"}, {"id": "c", "n": 0}]
    assert plugin.aggregate(rows, "transform") == [
        {"id": "a", "n": "2", "copy_index": 0},
        {"id": "a", "n": "2", "copy_index": 1},
        {"id": "b", "n": "x", "copy_index": 0},
    ]


def test_batch_replicate_default_copies_and_independent_copies() -> None:
    plugin = BatchReplicate({"default_copies": 2})
    out = plugin.aggregate([{"tags": ["x"]}], "transform")
    assert out == [{"tags": ["x"]}, {"tags": ["x"]}]
    out[0]["tags"].append("y")
    assert out[1]["tags"] == ["x"]


def test_batch_replicate_passthrough_and_single() -> None:
    plugin = BatchReplicate({"copies_field": "n", "default_copies": 3})
    assert plugin.aggregate([{"n": 2}, {"id": 1}], "passthrough") == [
        {"n": 2, "copies": 2},
        {"id": 1, "copies": 3},
    ]
    with pytest.raises(PluginError, match="output_mode 'transform'"):
        plugin.aggregate([{"n": 2}], "single")


def test_batch_replicate_negative_copies_is_an_error() -> None:
    with pytest.raises(PluginError, match="-1 copies"):
        BatchReplicate({"copies_field": "n"}).aggregate([{"n": -1}], "transform")
    with pytest.raises(ConfigError):
        BatchReplicate({"default_copies": -1})
