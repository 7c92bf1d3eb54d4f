"""Plugins: the protocols, the registry and the built-in sources, transforms, aggregations, sinks.

Plugins read, transform and write rows; they never import SQLAlchemy and never touch the landscape
(the engine records what they did). Build a registry with ``PluginRegistry.builtin()``.
"""

from elspeth_core.plugins.aggregations import BatchReplicate, BatchStats
from elspeth_core.plugins.protocols import (
    AggregationPlugin,
    BadRow,
    PluginConfig,
    Publication,
    Row,
    SinkPlugin,
    SourcePlugin,
    TransformPlugin,
    TransformResult,
    validated_options,
)
from elspeth_core.plugins.registry import KINDS, PluginInfo, PluginRegistry
from elspeth_core.plugins.schema import FieldSpec, RowSchema
from elspeth_core.plugins.sinks import CsvSink, JsonSink
from elspeth_core.plugins.sources import CsvSource, JsonSource, NullSource
from elspeth_core.plugins.transforms import (
    FieldMapper,
    JsonExplode,
    KeywordFilter,
    Passthrough,
    Truncate,
)

__all__ = [
    "KINDS",
    "AggregationPlugin",
    "BadRow",
    "BatchReplicate",
    "BatchStats",
    "CsvSink",
    "CsvSource",
    "FieldMapper",
    "FieldSpec",
    "JsonExplode",
    "JsonSink",
    "JsonSource",
    "KeywordFilter",
    "NullSource",
    "Passthrough",
    "PluginConfig",
    "PluginInfo",
    "PluginRegistry",
    "Publication",
    "Row",
    "RowSchema",
    "SinkPlugin",
    "SourcePlugin",
    "TransformPlugin",
    "TransformResult",
    "Truncate",
    "validated_options",
]
