"""``elspeth export`` and ``elspeth verify``: a run's signed audit export, and checking one."""

from __future__ import annotations

from pathlib import Path

import typer

from elspeth_core.cli.common import DEFAULT_DATABASE, cli_errors, emit_json, out
from elspeth_core.export import verify_export
from elspeth_core.export.writer import write_export
from elspeth_core.landscape.access import open_existing


def export_command(
    run_id: str = typer.Argument(..., help="The run to export."),
    output: Path = typer.Option(..., "--output", "-o", help="File to write."),
    fmt: str = typer.Option("json", "--format", "-f", help="json (JSON Lines) or csv."),
    sign: bool = typer.Option(
        False, "--sign", help="HMAC-SHA256 signatures (key from ELSPETH_SIGNING_KEY)."
    ),
    database: str = typer.Option(DEFAULT_DATABASE, "--database", "-d", help="Landscape URL."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Export a run's audit records (runs, nodes, rows, tokens, states, outcomes, batches, ...)."""
    with cli_errors(), open_existing(database) as db:
        path, manifest = write_export(db, run_id, {"path": str(output)}, fmt, sign)
    if as_json:
        emit_json(
            {
                "path": str(path),
                "run_id": run_id,
                "format": fmt,
                "signed": sign,
                "records": manifest["records"],
                "tables": manifest["tables"],
                "key_id": manifest["key_id"],
            }
        )
        return
    kind = f"signed, key id {manifest['key_id']}" if sign else "unsigned"
    out.print(f"Exported {manifest['records']} records of run {run_id} to {path} ({fmt}, {kind})")
    out.print(f"Check it any time with: elspeth verify {path}")


def verify_command(
    export: Path = typer.Argument(..., help="An export file written by 'elspeth export'."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Verify an audit export; name the first tampered record (exit 1) or 'verified N records'."""
    with cli_errors():
        report = verify_export(export)
    if as_json:
        emit_json(report.as_dict())
        return
    kind = (
        "signed, key id " + str(report.key_id)
        if report.signed
        else ("UNSIGNED: integrity chain only, anyone could have rewritten it")
    )
    out.print(f"verified {report.records} records of run {report.run_id} ({kind})")
