"""``elspeth purge``: delete expired payloads of completed runs; hashes stay in the landscape.

Destructive, so it asks twice: ``--dry-run`` shows what would go; without ``--yes`` the command
lists the runs and refuses (exit 1) with the command to confirm.
"""

from __future__ import annotations

from pathlib import Path

import typer

from elspeth_core.cli.common import DEFAULT_DATABASE, EXIT_USAGE, cli_errors, emit_json, fail, out
from elspeth_core.landscape.access import open_existing
from elspeth_core.purge import PurgeItem, execute_purge, plan_purge


def purge_command(
    retention_days: int | None = typer.Option(
        None,
        "--retention-days",
        min=0,
        help="Purge runs completed more than N days ago (default: each run's "
        "payload_store.retention_days).",
    ),
    dry_run: bool = typer.Option(False, "--dry-run", "-n", help="Show what would be purged."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Really delete the payloads."),
    database: str = typer.Option(DEFAULT_DATABASE, "--database", "-d", help="Landscape URL."),
    payloads: Path | None = typer.Option(
        None, "--payloads", help="Payload store path (default: each run's payload_store)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Delete the payloads of completed runs past retention; keep their hashes."""
    with cli_errors(), open_existing(database) as db:
        items = plan_purge(db, retention_days=retention_days, payloads_path=payloads)
        if dry_run or not yes:
            _report(items, as_json, done=False, freed=0)
            if not dry_run and items:
                raise fail(
                    f"purge refused: {len(items)} run(s) listed above would lose their payloads",
                    "Check the list, then run the same command with --yes (or --dry-run to "
                    "only look).",
                    EXIT_USAGE,
                )
            return
        freed = execute_purge(db, items)
        _report(items, as_json, done=True, freed=freed)


def _report(items: list[PurgeItem], as_json: bool, *, done: bool, freed: int) -> None:
    if as_json:
        emit_json(
            {
                "purged": done,
                "runs": [item.as_dict() for item in items],
                "bytes_freed": freed,
            }
        )
        return
    if not items:
        out.print("Nothing to purge: no completed run past retention still has payloads.")
        return
    verb = "Purged" if done else "Would purge"
    for item in items:
        out.print(
            f"{verb} run {item.run_id}: completed {item.completed_at:%Y-%m-%d %H:%M:%S}, "
            f"retention {item.retention_days} d, {item.rows} rows, {item.size_bytes:,} bytes "
            f"in {item.payload_dir}"
        )
    if done:
        out.print(
            f"{len(items)} run(s) purged, {freed:,} bytes freed; their hashes stay "
            "(explain shows 'payload purged')."
        )
