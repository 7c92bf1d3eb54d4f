"""``elspeth validate`` and ``elspeth plugins``: check settings, graph, expressions and options."""

from __future__ import annotations

from pathlib import Path

import typer

from elspeth_core.cli.checks import check_pipeline
from elspeth_core.cli.common import cli_errors, emit_json, out
from elspeth_core.cli.run import show_plan
from elspeth_core.config import load_settings
from elspeth_core.plugins.registry import PluginRegistry


def validate_command(
    settings: Path = typer.Option(..., "--settings", "-s", help="Pipeline settings YAML."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Validate settings, the pipeline graph, gate expressions and plugin options."""
    with cli_errors():
        loaded = load_settings(settings)
        graph = check_pipeline(loaded)
        show_plan(loaded, graph, as_json)


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
