"""``elspeth validate`` and ``elspeth plugins``: check settings, graph, expressions and options."""

from __future__ import annotations

from pathlib import Path

import typer

from elspeth_core.cli.common import cli_errors, emit_json, out
from elspeth_core.cli.run import show_plan
from elspeth_core.config import load_settings
from elspeth_core.dag import build_graph
from elspeth_core.engine.expressions import Expression
from elspeth_core.errors import ConfigError, ExpressionError
from elspeth_core.plugins.registry import PluginRegistry


def validate_command(
    settings: Path = typer.Option(..., "--settings", "-s", help="Pipeline settings YAML."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Validate settings, the pipeline graph, gate expressions and plugin options."""
    with cli_errors():
        loaded = load_settings(settings)
        graph = build_graph(loaded.settings)
        validate_expressions(loaded)
        registry = PluginRegistry.builtin()
        registry.create("source", graph.source.plugin_name, graph.source.options)
        for position, node in enumerate(graph.transforms):
            options = {k: v for k, v in node.options.items() if k not in ("position", "on_error")}
            _create(registry, "transform", node.plugin_name, options, f"row_plugins[{position}]")
        for node in graph.aggregations:
            _create(registry, "aggregation", node.plugin_name, node.options["options"],
                    f"aggregations.{node.name}")
        for name, node in graph.sinks.items():
            _create(registry, "sink", node.plugin_name, node.options, f"sinks.{name}")
        show_plan(loaded, graph, as_json)


def _create(registry: PluginRegistry, kind: str, name: str, options: dict, key: str) -> None:
    try:
        registry.create(kind, name, options)
    except ConfigError as exc:
        raise ConfigError(exc.reason, key=f"{key}.options{'.' + exc.key if exc.key else ''}") from exc


def validate_expressions(loaded) -> None:  # type: ignore[no-untyped-def]
    settings = loaded.settings
    for position, gate in enumerate(settings.gates):
        try:
            Expression.parse(gate.condition)
        except ExpressionError as exc:
            raise ExpressionError(exc.reason, file=str(loaded.path),
                                  key=f"gates[{position}].condition") from exc
    names = frozenset({"row", "batch_count", "batch_age_seconds"})
    for agg in settings.aggregations:
        if agg.trigger.condition:
            try:
                Expression.parse(agg.trigger.condition, names=names)
            except ExpressionError as exc:
                raise ExpressionError(exc.reason, file=str(loaded.path),
                                      key=f"aggregations.{agg.name}.trigger.condition") from exc


plugins_app = typer.Typer(help="Plugins.", no_args_is_help=True)


@plugins_app.command("list")
def plugins_command(as_json: bool = typer.Option(False, "--json")) -> None:
    """List built-in and entry-point plugins."""
    with cli_errors():
        rows = PluginRegistry.builtin().list()
        if as_json:
            emit_json([{"kind": k, "name": n, "version": v, "origin": o} for k, n, v, o in rows])
            return
        for kind, name, version, origin in rows:
            out.print(f"{kind:<12} {name:<16} {version:<8} {origin}")
