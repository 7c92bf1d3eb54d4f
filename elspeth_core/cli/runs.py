"""``elspeth runs list|show``: runs with status, counts per outcome and sink, attempts, lease.

The JSON keys of a run summary are a contract (the resume runbook and the crash suite read them):
``run_id``, ``status`` (``running`` with a dead lease shows as ``interrupted``), ``recorded_status``
(the column as stored), ``rows``, ``terminal_outcomes``, ``sinks``, ``quarantined``, ``failed``,
``attempts``, ``checkpoints``, ``lease`` ... Add keys; do not rename them.
"""

from __future__ import annotations

from typing import Any

import typer

from elspeth_core.checkpoint.recovery import lease_is_live
from elspeth_core.cli.common import DEFAULT_DATABASE, cli_errors, emit_json, out
from elspeth_core.errors import RunNotFound
from elspeth_core.landscape.access import open_existing
from elspeth_core.landscape.records import Record
from elspeth_core.landscape.run_summary import RunCounts, RunSummaryQueries

app = typer.Typer(help="Inspect runs in the landscape.", no_args_is_help=True)

DB_OPTION = typer.Option(DEFAULT_DATABASE, "--database", "-d", help="Landscape URL.")
JSON_OPTION = typer.Option(False, "--json", help="Machine-readable output.")


def summarize(run: Record, counts: RunCounts) -> dict[str, Any]:
    """The summary of one run (the ``runs list`` entry; ``runs show`` adds detail)."""
    status = run["status"]
    live = lease_is_live(run)
    if status == "running" and not live:
        status = "interrupted"  # its process died; the lease says so even if no hook ran
    outcomes = counts.terminal_outcomes
    return {
        "run_id": run["run_id"],
        "status": status,
        "recorded_status": run["status"],
        "started_at": run["started_at"],
        "completed_at": run["completed_at"],
        "rows": counts.rows,
        "tokens": counts.tokens,
        "pending_tokens": counts.pending_tokens,
        "terminal_outcomes": outcomes,
        "open_outcomes": counts.open_outcomes,
        "sinks": counts.sinks,
        "quarantined": outcomes.get("quarantined", 0),
        "failed": outcomes.get("failed", 0),
        "validation_errors": counts.validation_errors,
        "transform_errors": counts.transform_errors,
        "batches": counts.batches,
        "attempts": [_attempt(a) for a in counts.attempts],
        "resumes": sum(1 for a in counts.attempts if a["kind"] == "resume"),
        "checkpoints": counts.checkpoints,
        "lease": {
            "owner": run["lease_owner"],
            "expires_at": run["lease_expires_at"],
            "heartbeat_at": run["heartbeat_at"],
            "live": live,
        },
        "config_hash": run["config_hash"],
        "topology_hash": run["topology_hash"],
        "source_rows_ingested": run["source_rows_ingested"],
        "source_exhausted": bool(run["source_exhausted"]),
        "settings_path": run["settings_path"],
        "prefect_flow_run_id": run["prefect_flow_run_id"],
        "superseded_by": run["superseded_by"],
        "error": run["error"],
    }


def _attempt(attempt: Record) -> dict[str, Any]:
    return {
        "attempt": attempt["attempt"],
        "kind": attempt["kind"],
        "status": attempt["status"],
        "started_at": attempt["started_at"],
        "ended_at": attempt["ended_at"],
        "rows_before": attempt["rows_before"],
        "lease_owner": attempt["lease_owner"],
        "prefect_flow_run_id": attempt["prefect_flow_run_id"],
        "error": attempt["error"],
    }


@app.command("list")
def list_runs(
    database: str = DB_OPTION,
    as_json: bool = JSON_OPTION,
    limit: int = typer.Option(50, "--limit", min=1, help="Newest N runs."),
    status: str | None = typer.Option(
        None, "--status", help="Only runs recorded with this status (running, completed, ...)."
    ),
) -> None:
    """List runs, newest first, with row, quarantine and failure counts."""
    with cli_errors(), open_existing(database) as db:
        queries = RunSummaryQueries(db)
        runs = queries.runs(limit, status)
        counts = queries.counts([r["run_id"] for r in runs])
        summaries = [summarize(r, counts[r["run_id"]]) for r in runs]
    if as_json:
        emit_json(summaries)
        return
    if not summaries:
        out.print("No runs in this landscape.")
        return
    for s in summaries:
        sinks = " ".join(f"{k}={v}" for k, v in sorted(s["sinks"].items()))
        out.print(
            f"{s['run_id']}  {s['status']:<11} {s['started_at']:%Y-%m-%d %H:%M:%S}  "
            f"rows={s['rows']} quarantined={s['quarantined']} failed={s['failed']} "
            f"pending={s['pending_tokens']} attempts={len(s['attempts'])}  {sinks}"
        )


@app.command("show")
def show_run(
    run_id: str = typer.Argument(..., help="Run ID, or 'latest'."),
    database: str = DB_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Show one run: status, counts per outcome and sink, attempts, checkpoints, lease, artifacts."""
    with cli_errors(), open_existing(database) as db:
        queries = RunSummaryQueries(db)
        wanted = queries.latest_run_id() if run_id == "latest" else run_id
        run = queries.run(wanted) if wanted else None
        if run is None:
            raise RunNotFound(run_id)
        counts = queries.counts([run["run_id"]], detail=True)[run["run_id"]]
        data = summarize(run, counts)
        data["latest_checkpoint"] = counts.latest_checkpoint
        data["artifacts"] = counts.artifacts
    if as_json:
        emit_json(data)
        return
    _print_show(data)


def _print_show(data: dict[str, Any]) -> None:
    out.print(
        f"Run {data['run_id']}: {data['status']}"
        + (
            f" (recorded {data['recorded_status']})"
            if data["status"] != data["recorded_status"]
            else ""
        )
    )
    out.print(f"  started {data['started_at']}  completed {data['completed_at'] or '-'}")
    out.print(f"  config {data['config_hash']}  settings {data['settings_path'] or '-'}")
    out.print(
        f"  rows {data['rows']} (source exhausted: {data['source_exhausted']})  tokens "
        f"{data['tokens']}  pending {data['pending_tokens']}"
    )
    for name, count in sorted(data["terminal_outcomes"].items()):
        out.print(f"  outcome {name:<18} {count}")
    for name, count in sorted(data["open_outcomes"].items()):
        out.print(f"  open    {name:<18} {count}")
    for name, count in sorted(data["sinks"].items()):
        out.print(f"  sink {name:<21} {count}")
    out.print(
        f"  quarantined {data['quarantined']}  failed {data['failed']}  validation errors "
        f"{data['validation_errors']}  transform errors {data['transform_errors']}"
    )
    if data["batches"]:
        out.print("  batches " + ", ".join(f"{k} {v}" for k, v in sorted(data["batches"].items())))
    for a in data["attempts"]:
        out.print(
            f"  attempt {a['attempt']} {a['kind']:<6} {a['status']:<11} started "
            f"{a['started_at']:%Y-%m-%d %H:%M:%S} rows before {a['rows_before']}"
        )
    checkpoint = data["latest_checkpoint"]
    out.print(
        f"  checkpoints {data['checkpoints']}"
        + (
            f" (latest sequence {checkpoint['sequence_number']}, "
            f"{checkpoint['rows_ingested']} rows)"
            if checkpoint
            else ""
        )
    )
    lease = data["lease"]
    out.print(
        f"  lease {'live' if lease['live'] else 'free'}"
        + (f", owner {lease['owner']} until {lease['expires_at']}" if lease["owner"] else "")
    )
    for artifact in data["artifacts"]:
        out.print(
            f"  artifact {artifact['sink_name']}: {artifact['path_or_uri']} "
            f"({artifact['rows_written']} rows, {artifact['size_bytes']} bytes)"
        )
    if data["superseded_by"]:
        out.print(f"  superseded by run {data['superseded_by']}")
    if data["error"]:
        out.print(f"  error: {data['error']}")
