"""``elspeth resume``: show what a resume would do, or do it (same run ID), or --force-new."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from elspeth_core.checkpoint import CheckpointManager, RecoveryManager
from elspeth_core.checkpoint.recovery import lease_is_live
from elspeth_core.cli.common import (
    DEFAULT_DATABASE,
    EXIT_RUN_FAILED,
    cli_errors,
    emit_json,
    out,
)
from elspeth_core.cli.progress import RichProgress
from elspeth_core.cli.run import landscape_url, report
from elspeth_core.config import load_settings
from elspeth_core.engine.faults import FaultInjector
from elspeth_core.engine.orchestrator import Orchestrator
from elspeth_core.errors import RunInProgress, RunNotFound
from elspeth_core.landscape import LandscapeDB


def resume_command(
    run_id: str = typer.Argument(..., help="The run to resume."),
    execute: bool = typer.Option(False, "--execute", "-x", help="Really resume (else dry run)."),
    settings: Path | None = typer.Option(
        None, "--settings", "-s", help="Settings file; must match the recorded configuration."
    ),
    force_new: bool = typer.Option(
        False, "--force-new", help="Start a fresh run instead; the old one is marked failed."
    ),
    database: str | None = typer.Option(None, "--database", "-d", help="Landscape URL."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Resume a crashed or failed run under the same run ID."""
    with cli_errors():
        loaded = load_settings(settings) if settings else None
        url = database or (landscape_url(loaded) if loaded else DEFAULT_DATABASE)
        with LandscapeDB(url, create=False) as db:
            orchestrator = Orchestrator(
                db,
                CheckpointManager(db),
                progress=RichProgress(enabled=sys.stderr.isatty() and not as_json),
                faults=FaultInjector.from_env(),
            )
            if force_new:
                _refuse_force_new_on_live_run(orchestrator, run_id)
                if not execute:
                    out.print(
                        f"Would start a fresh run from run {run_id}'s settings; add --execute."
                    )
                    return
                result = orchestrator.force_new(run_id, loaded)
            elif not execute:
                plan = RecoveryManager(db, orchestrator.checkpoints).plan(run_id)
                if loaded is not None:  # the dry run refuses what --execute would refuse
                    orchestrator.settings_for_resume(
                        orchestrator.queries.get_run(run_id) or {}, loaded
                    )
                _show_plan(plan.as_dict(), as_json)
                return
            else:
                with orchestrator.progress:  # type: ignore[attr-defined]
                    session = orchestrator.open_for_resume(run_id, loaded)
                    result = orchestrator._drive_to_end(session)
        report(result, as_json)
        if result.status != "completed":
            raise typer.Exit(EXIT_RUN_FAILED)


def _refuse_force_new_on_live_run(orchestrator: Orchestrator, run_id: str) -> None:
    run = orchestrator.queries.get_run(run_id)
    if run is None:
        raise RunNotFound(run_id)
    if lease_is_live(run):
        raise RunInProgress(run_id, str(run["lease_owner"]), str(run["lease_expires_at"]))


def _show_plan(plan: dict, as_json: bool) -> None:
    if as_json:
        emit_json({"resume_plan": plan})
        return
    out.print(f"Run {plan['run_id']} ({plan['status']}) can be resumed:")
    out.print(
        f"  checkpoint sequence  {plan['checkpoint_sequence']} (row {plan['checkpoint_row_id']})"
    )
    out.print(
        f"  rows recorded        {plan['rows_recorded']}"
        f"{' (source fully read)' if plan['source_exhausted'] else ''}"
    )
    out.print(f"  unprocessed rows     {plan['unprocessed_rows']}")
    out.print(f"  batches to retry     {len(plan['batches_to_retry'])}")
    out.print(f"  open batches         {len(plan['draft_batches'])}")
    for batch in plan["batches"]:
        out.print(
            f"    {batch['aggregation']} batch {batch['batch_id']} attempt {batch['attempt']} "
            f"({batch['status']}): {batch['label']}",
            markup=False,
            highlight=False,
        )
    out.print(f"Run it: elspeth resume {plan['run_id']} --execute")
