"""Checks a pipeline completely before anything is created: graph, expressions, plugin options,
and that the run-end audit export (``landscape.export``) could be written.

``validate``, ``run`` (with or without --execute) and ``run --dry-run`` share this, so a pipeline that
``validate`` refuses never records a run, and every error names the settings file and the key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from elspeth_core.config import LoadedSettings
from elspeth_core.config.yaml_source import parse_settings_yaml, read_settings_text
from elspeth_core.dag import ExecutionGraph, build_graph
from elspeth_core.engine.expressions import Expression
from elspeth_core.errors import ConfigError, ExpressionError
from elspeth_core.export import ExportError, SigningKeyMissing, check_export_ready
from elspeth_core.plugins.registry import PluginRegistry


def _line_of(loaded: LoadedSettings, path: tuple[Any, ...]) -> int | None:
    """The settings file's line for a key path (or its nearest recorded parent)."""
    try:
        _data, lines = parse_settings_yaml(
            read_settings_text(Path(loaded.path), str(loaded.path)), str(loaded.path)
        )
    except Exception:  # noqa: BLE001 - inline settings or unreadable file: no line to show
        return None
    while path:
        if path in lines:
            return lines[path]
        path = path[:-1]
    return None


def _path_of(key: str) -> tuple[Any, ...]:
    parts: list[Any] = []
    for piece in key.replace("]", "").split("."):
        name, _, index = piece.partition("[")
        parts.append(name)
        if index:
            parts.append(int(index))
    return tuple(parts)


def _located(exc: ConfigError, loaded: LoadedSettings, key: str) -> ConfigError:
    return ConfigError(
        exc.reason,
        file=str(loaded.path),
        key=key,
        line=_line_of(loaded, _path_of(key)),
        hint=exc.hint,
    )


def check_pipeline(loaded: LoadedSettings) -> ExecutionGraph:
    """Everything ``validate`` checks, before anything is created: graph, expressions, options.

    Raises:
        ConfigError: naming the settings file and the key of the first problem.
    """
    try:
        graph = build_graph(loaded.settings)
    except ConfigError as exc:
        if exc.file:
            raise
        raise _located(exc, loaded, exc.key or "") from exc
    validate_expressions(loaded)
    registry = PluginRegistry.builtin()
    source = graph.source
    _create(registry, "source", source.plugin_name, source.options, "datasource", loaded)
    for position, node in enumerate(graph.transforms):
        options = {k: v for k, v in node.options.items() if k not in ("position", "on_error")}
        key = f"row_plugins[{position}]"
        _create(registry, "transform", node.plugin_name, options, key, loaded)
    for index, node in enumerate(graph.aggregations):
        key = f"aggregations[{index}]"
        _create(registry, "aggregation", node.plugin_name, node.options["options"], key, loaded)
    for name, node in graph.sinks.items():
        _create(registry, "sink", node.plugin_name, node.options, f"sinks.{name}", loaded)
    check_export(loaded)
    return graph


def check_export(loaded: LoadedSettings) -> None:
    """The run-end audit export could be written: its sink has a path, and a key if it signs.

    The key lives in the environment, not the file, but the error points at the setting that
    needs it, so the operator sees both what is missing and why.

    Raises:
        ConfigError: at ``landscape.export.sign`` (no ``ELSPETH_SIGNING_KEY``) or
            ``landscape.export.sink`` (no ``path`` option).
    """
    try:
        check_export_ready(loaded.settings)
    except ExportError as exc:
        key = (
            "landscape.export.sign"
            if isinstance(exc, SigningKeyMissing)
            else "landscape.export.sink"
        )
        located = ConfigError(exc.message, hint=exc.hint)
        raise _located(located, loaded, key) from exc


def _create(
    registry: PluginRegistry,
    kind: str,
    name: str,
    options: dict[str, Any],
    key: str,
    loaded: LoadedSettings,
) -> None:
    try:
        registry.create(kind, name, options)
    except ConfigError as exc:
        if exc.key == "plugin":
            where = f"{key}.plugin"
        else:
            where = f"{key}.options.{exc.key}" if exc.key else f"{key}.options"
        raise _located(exc, loaded, where) from exc


def validate_expressions(loaded: LoadedSettings) -> None:
    """Parse every gate condition and trigger condition (nothing is evaluated)."""
    settings = loaded.settings
    for position, gate in enumerate(settings.gates):
        try:
            Expression.parse(gate.condition)
        except ExpressionError as exc:
            raise _located_expression(exc, loaded, f"gates[{position}].condition") from exc
    names = frozenset({"row", "batch_count", "batch_age_seconds"})
    for index, agg in enumerate(settings.aggregations):
        if agg.trigger.condition:
            try:
                Expression.parse(agg.trigger.condition, names=names)
            except ExpressionError as exc:
                key = f"aggregations[{index}].trigger.condition"
                raise _located_expression(exc, loaded, key) from exc


def _located_expression(exc: ExpressionError, loaded: LoadedSettings, key: str) -> ExpressionError:
    line = _line_of(loaded, _path_of(key))
    return ExpressionError(exc.reason, file=str(loaded.path), key=key, line=line, hint=exc.hint)
