"""``elspeth run``: validate a settings file, show the plan, and (with --execute) run it."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import typer

from elspeth_core.cli.checks import check_pipeline
from elspeth_core.cli.common import (
    EXIT_RUN_FAILED,
    EXIT_USAGE,
    cli_errors,
    emit_json,
    err,
    fail,
    out,
)
from elspeth_core.cli.progress import RichProgress
from elspeth_core.config import LoadedSettings, load_settings
from elspeth_core.dag import ExecutionGraph
from elspeth_core.engine.faults import FaultInjector
from elspeth_core.engine.orchestrator import Orchestrator, RunResult
from elspeth_core.landscape import LandscapeDB


def run_command(
    settings: Path = typer.Option(..., "--settings", "-s", help="Pipeline settings YAML."),
    execute: bool = typer.Option(False, "--execute", "-x", help="Really run (else show the plan)."),
    dry_run: bool = typer.Option(False, "--dry-run", "-n", help="Validate and show the plan only."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable result on stdout."),
) -> None:
    """Run a pipeline. Without --execute, print the plan and exit 1."""
    with cli_errors():
        loaded = load_settings(settings)
        graph = check_pipeline(loaded)  # nothing is created for a pipeline that cannot run
        if dry_run or not execute:
            show_plan(loaded, graph, as_json)
            if not dry_run:
                err.print("Nothing was run: add --execute (-x) to run this pipeline.")
                raise typer.Exit(EXIT_USAGE)
            return
        result = execute_run(loaded, as_json)
        report(result, as_json)
        if result.status != "completed":
            raise fail_run(result)


def landscape_url(loaded: LoadedSettings) -> str:
    landscape = loaded.settings.landscape
    return landscape.url if landscape.enabled else "sqlite://"


def execute_run(loaded: LoadedSettings, as_json: bool) -> RunResult:
    with LandscapeDB(landscape_url(loaded)) as db:
        progress = RichProgress(enabled=sys.stderr.isatty() and not as_json)
        orchestrator = Orchestrator(db, progress=progress, faults=FaultInjector.from_env())
        started = time.perf_counter()
        with progress:
            session = orchestrator.begin_run(loaded)
            err.print(f"Run {session.run_id} started") if not as_json else None
            result = orchestrator._drive_to_end(session)
        result.duration_seconds = time.perf_counter() - started
        return result


def show_plan(loaded: LoadedSettings, graph: ExecutionGraph, as_json: bool) -> None:
    plan: dict[str, Any] = {
        "settings": str(loaded.path),
        "landscape": landscape_url(loaded),
        "source": graph.source.plugin_name,
        "transforms": [n.plugin_name for n in graph.transforms],
        "aggregations": [n.name for n in graph.aggregations],
        "gates": [n.name for n in graph.gates],
        "coalesce": list(graph.coalesces),
        "sinks": {name: node.plugin_name for name, node in graph.sinks.items()},
        "output_sink": graph.output_sink,
        "audit_export": _export_plan(loaded),
        "topology_hash": graph.topology_hash,
    }
    if as_json:
        emit_json({"plan": plan})
        return
    out.print(f"Pipeline {loaded.path}: valid")
    out.print(f"  source      {plan['source']}")
    for name in ("transforms", "aggregations", "gates", "coalesce"):
        if plan[name]:
            out.print(f"  {name:<11} {', '.join(plan[name])}")
    out.print(f"  sinks       {', '.join(f'{k} ({v})' for k, v in plan['sinks'].items())}")
    out.print(f"  output_sink {plan['output_sink']}")
    export = plan["audit_export"]
    if export:
        signed = "signed" if export["sign"] else "unsigned"
        out.print(
            f"  export      {export['sink']} -> {export['path']} ({export['format']}, {signed})"
        )
    out.print(f"  landscape   {plan['landscape']}")


def _export_plan(loaded: LoadedSettings) -> dict[str, Any] | None:
    """The run-end audit export (its sink takes no rows, so it is not among the plan's sinks)."""
    export = loaded.settings.landscape.export
    if not export.enabled or export.sink is None:
        return None
    sink = loaded.settings.sinks[export.sink]
    return {
        "sink": export.sink,
        "path": sink.options.get("path"),
        "format": export.format,
        "sign": export.sign,
    }


def fail_run(result: RunResult) -> typer.Exit:
    """A run that ended failed: one line on stderr with the reason and where to look."""
    return fail(
        f"run {result.run_id} failed: {result.failed} failure(s) "
        f"({', '.join(f'{k} {v}' for k, v in sorted(result.outcomes.items()))})",
        f"See 'elspeth runs show {result.run_id}' and the transform_errors table.",
        EXIT_RUN_FAILED,
    )


def report(result: RunResult, as_json: bool) -> None:
    if as_json:
        emit_json(result.as_dict())
        return
    colour = "green" if result.status == "completed" else "red"
    out.print(f"Run {result.run_id}: [{colour}]{result.status}[/]", markup=True)
    out.print(
        f"  rows {result.rows}, quarantined {result.quarantined}, failed {result.failed}, "
        f"{result.duration_seconds:.2f} s, {result.rows_per_second:,.0f} rows/s"
    )
    for sink, count in sorted(result.sinks.items()):
        out.print(f"  sink {sink}: {count} rows")
    if result.export_path:
        out.print(f"  audit export: {result.export_path}")
    if result.status != "completed":
        out.print(f"  Investigate: elspeth runs show {result.run_id}")
