"""``elspeth runs list|show``: runs with status, row counts and terminal outcome counts."""

from __future__ import annotations

from typing import Any

import typer

from elspeth_core.checkpoint.recovery import lease_is_live
from elspeth_core.cli.common import DEFAULT_DATABASE, cli_errors, emit_json, out
from elspeth_core.errors import RunNotFound
from elspeth_core.landscape import LandscapeDB, LandscapeQueries

app = typer.Typer(help="Inspect runs in the landscape.", no_args_is_help=True)

DB_OPTION = typer.Option(DEFAULT_DATABASE, "--database", "-d", help="Landscape URL.")


def _summary(queries: LandscapeQueries, run: dict[str, Any]) -> dict[str, Any]:
    run_id = run["run_id"]
    outcomes = queries.outcome_counts(run_id)
    status = run["status"]
    if status == "running" and not lease_is_live(run):
        status = "interrupted"  # its process died; the lease says so even if no hook ran
    return {
        "run_id": run_id,
        "status": status,
        "recorded_status": run["status"],
        "started_at": run["started_at"],
        "completed_at": run["completed_at"],
        "rows": queries.count_rows(run_id),
        "terminal_outcomes": outcomes,
        "sinks": queries.sink_counts(run_id),
        "quarantined": outcomes.get("quarantined", 0),
        "failed": outcomes.get("failed", 0),
        "config_hash": run["config_hash"],
        "prefect_flow_run_id": run["prefect_flow_run_id"],
        "error": run["error"],
    }


@app.command("list")
def list_runs(database: str = DB_OPTION, as_json: bool = typer.Option(False, "--json")) -> None:
    """List runs, newest first."""
    with cli_errors(), LandscapeDB(database, create=False) as db:
        queries = LandscapeQueries(db)
        runs = [_summary(queries, r) for r in queries.list_runs()]
        if as_json:
            emit_json(runs)
            return
        for r in runs:
            out.print(f"{r['run_id']}  {r['status']:<11} rows={r['rows']:<8} "
                      f"quarantined={r['quarantined']} failed={r['failed']}  {r['started_at']:%Y-%m-%d %H:%M:%S}")


@app.command("show")
def show_run(
    run_id: str, database: str = DB_OPTION, as_json: bool = typer.Option(False, "--json")
) -> None:
    """Show one run: status, counts per outcome and sink, attempts, checkpoints, lease."""
    with cli_errors(), LandscapeDB(database, create=False) as db:
        queries = LandscapeQueries(db)
        run = queries.get_run(run_id) if run_id != "latest" else queries.get_run(
            queries.latest_run_id() or "")
        if run is None:
            raise RunNotFound(run_id)
        data = _summary(queries, run)
        data["attempts"] = queries.attempts(run["run_id"])
        data["checkpoints"] = queries.count_checkpoints(run["run_id"])
        data["lease"] = {"owner": run["lease_owner"], "expires_at": run["lease_expires_at"],
                         "live": lease_is_live(run)}
        if as_json:
            emit_json(data)
            return
        out.print(f"Run {data['run_id']}: {data['status']}")
        out.print(f"  rows {data['rows']}  checkpoints {data['checkpoints']}  attempts "
                  f"{len(data['attempts'])}")
        for name, count in sorted(data["terminal_outcomes"].items()):
            out.print(f"  outcome {name:<18} {count}")
        for name, count in sorted(data["sinks"].items()):
            out.print(f"  sink {name:<21} {count}")
        if data["error"]:
            out.print(f"  error: {data['error']}")
