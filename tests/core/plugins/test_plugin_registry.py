"""PluginRegistry: built-ins, lookups, creation and third-party plugins from entry points."""

from __future__ import annotations

import importlib.metadata
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest

from elspeth_core.errors import ConfigError
from elspeth_core.plugins import (
    AggregationPlugin,
    PluginConfig,
    PluginRegistry,
    SinkPlugin,
    SourcePlugin,
    TransformPlugin,
    TransformResult,
)
from elspeth_core.plugins.sinks import CsvSink
from elspeth_core.plugins.transforms import FieldMapper

BUILTINS = {
    ("source", "csv"),
    ("source", "json"),
    ("source", "null"),
    ("transform", "passthrough"),
    ("transform", "field_mapper"),
    ("transform", "truncate"),
    ("transform", "keyword_filter"),
    ("transform", "json_explode"),
    ("transform", "pseudonymize"),
    ("aggregation", "batch_stats"),
    ("aggregation", "batch_replicate"),
    ("sink", "csv"),
    ("sink", "json"),
    ("sink", "database"),
}
PROTOCOLS = {
    "source": SourcePlugin,
    "transform": TransformPlugin,
    "aggregation": AggregationPlugin,
    "sink": SinkPlugin,
}
MINIMAL_OPTIONS: dict[tuple[str, str], dict[str, object]] = {
    ("source", "csv"): {"path": "in.csv"},
    ("source", "json"): {"path": "in.json"},
    ("transform", "truncate"): {"max_length": 3},
    ("transform", "keyword_filter"): {"keywords": ["x"]},
    ("transform", "json_explode"): {"array_field": "items"},
    ("transform", "pseudonymize"): {"fields": ["id"]},
    ("aggregation", "batch_stats"): {"value_field": "v"},
    ("sink", "csv"): {"path": "out.csv"},
    ("sink", "json"): {"path": "out.json"},
    ("sink", "database"): {"url": "sqlite://", "table": "t"},
}


def test_builtins_are_listed_with_versions() -> None:
    listed = PluginRegistry.builtin(entry_points=False).list()
    assert {(kind, name) for kind, name, _, _ in listed} == BUILTINS
    assert all(version == "1.0.0" and origin == "builtin" for _, _, version, origin in listed)
    assert [kind for kind, *_ in listed] == sorted(
        (kind for kind, *_ in listed), key=["source", "transform", "aggregation", "sink"].index
    )


@pytest.mark.parametrize(("kind", "name"), sorted(BUILTINS))
def test_each_builtin_satisfies_its_protocol(kind: str, name: str) -> None:
    registry = PluginRegistry.builtin(entry_points=False)
    plugin = registry.create(kind, name, MINIMAL_OPTIONS.get((kind, name), {}))
    assert isinstance(plugin, PROTOCOLS[kind])
    cls = registry.get(kind, name)
    assert cls.name == name and cls.version == "1.0.0"
    assert issubclass(cls.config_model, PluginConfig)


def test_unknown_plugin_lists_the_available_ones() -> None:
    registry = PluginRegistry.builtin(entry_points=False)
    with pytest.raises(ConfigError) as info:
        registry.get("transform", "x")
    assert info.value.reason == (
        "unknown transform plugin 'x' (available: field_mapper, json_explode, keyword_filter, "
        "passthrough, pseudonymize, truncate)"
    )
    with pytest.raises(ConfigError, match="unknown plugin kind 'gate'"):
        registry.get("gate", "x")


def test_create_validates_options() -> None:
    registry = PluginRegistry.builtin(entry_points=False)
    mapper = registry.create("transform", "field_mapper", {"mapping": {"a": "b"}})
    assert isinstance(mapper, FieldMapper)
    with pytest.raises(ConfigError) as info:
        registry.create("sink", "csv", {"path": "o.csv", "mode": "sideways"})
    assert info.value.key == "mode"


class Upper:
    """A third-party transform without a ``kind`` attribute: inferred from ``process``."""

    name: ClassVar[str] = "upper"
    version: ClassVar[str] = "2.1.0"
    config_model: ClassVar[type[PluginConfig]] = PluginConfig

    def __init__(self, options: object) -> None:
        self.options = options

    def process(self, row: dict[str, object]) -> TransformResult:
        return TransformResult.ok({k: str(v).upper() for k, v in row.items()})


class Ambiguous(Upper):
    name: ClassVar[str] = "ambiguous"

    def read(self) -> Iterator[dict[str, object]]:
        return iter(())


@pytest.fixture
def plugin_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    source = Path(__file__).read_text()
    (tmp_path / "thirdparty_plugins_for_tests.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "thirdparty_plugins_for_tests"
    sys.modules.pop("thirdparty_plugins_for_tests", None)


def entry_point(name: str, value: str) -> importlib.metadata.EntryPoint:
    return importlib.metadata.EntryPoint(name=name, value=value, group="elspeth.plugins")


def test_entry_point_plugins_are_registered_with_their_origin(plugin_module: str) -> None:
    registry = PluginRegistry.builtin(entry_points=False)
    registry.load_entry_points([entry_point("upper", f"{plugin_module}:Upper")])
    assert (
        "transform",
        "upper",
        "2.1.0",
        f"entry point ({plugin_module}:Upper)",
    ) in registry.list()
    plugin = registry.create("transform", "upper", {})
    assert plugin.process({"a": "x"}).row == {"a": "X"}


def test_broken_or_ambiguous_entry_points_are_config_errors(plugin_module: str) -> None:
    registry = PluginRegistry.builtin(entry_points=False)
    with pytest.raises(ConfigError, match="cannot load plugin entry point 'gone'"):
        registry.load_entry_points([entry_point("gone", "no_such_module_xyz:Thing")])
    with pytest.raises(ConfigError, match="several: source, transform"):
        registry.load_entry_points([entry_point("amb", f"{plugin_module}:Ambiguous")])
    with pytest.raises(ConfigError, match="is not a class"):
        registry.load_entry_points([entry_point("c", f"{plugin_module}:BUILTINS")])


def test_a_third_party_plugin_cannot_shadow_a_builtin() -> None:
    class FakeCsv(CsvSink):
        pass

    registry = PluginRegistry.builtin(entry_points=False)
    with pytest.raises(ConfigError, match="sink plugin 'csv' from elsewhere clashes"):
        registry.register(FakeCsv, origin="elsewhere")


def test_declared_kind_wins_and_installed_entry_points_load() -> None:
    class Declared(Ambiguous):
        kind = "source"
        name: ClassVar[str] = "declared"

    registry = PluginRegistry()
    registry.register(Declared)
    assert registry.get("source", "declared") is Declared
    # Whatever is installed in this environment must load cleanly.
    assert len(PluginRegistry.builtin().list()) >= len(BUILTINS)
