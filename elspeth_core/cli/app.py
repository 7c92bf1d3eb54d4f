"""The ``elspeth`` application: command registration and the documented exit codes."""

from __future__ import annotations

import typer

from elspeth_core.cli import db, explain, export, health, purge, resume, run, runs, validate
from elspeth_core.cli.common import setup_logging

HELP = """ELSPETH: auditable, crash-safe data pipelines with row-level lineage.

Exit codes: 0 success; 1 validation/usage error or refused action; 2 run failed
(or its run-end audit export failed: the run itself is complete); 3 resume refused (not
resumable: not found, completed, in progress, no checkpoint, configuration mismatch, source
changed).
"""

app = typer.Typer(
    help=HELP, no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False
)
app.command("run")(run.run_command)
app.command("resume")(resume.resume_command)
app.command("validate")(validate.validate_command)
app.command("explain")(explain.explain_command)
app.command("purge")(purge.purge_command)
app.command("export")(export.export_command)
app.command("verify")(export.verify_command)
app.command("health")(health.health_command)
app.add_typer(runs.app, name="runs")
app.add_typer(db.app, name="db")
app.add_typer(validate.plugins_app, name="plugins")


@app.callback()
def _main(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log progress to stderr."),
) -> None:
    setup_logging(verbose)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
