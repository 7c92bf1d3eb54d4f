"""The ``elspeth`` application: command registration and the documented exit codes."""

from __future__ import annotations

from typing import Any

import typer

# Typer vendors Click: its usage errors are not ``click.UsageError`` of the click package.
from typer._click.exceptions import UsageError
from typer.core import TyperGroup

from elspeth_core.cli import db, explain, export, health, purge, resume, run, runs, validate
from elspeth_core.cli.common import EXIT_USAGE, setup_logging

# One paragraph per line: rich keeps the help text's line breaks and wraps each line again.
HELP = (
    "ELSPETH: auditable, crash-safe data pipelines with row-level lineage.\n\n"
    "Exit codes: 0 success; 1 validation/usage error or refused action; 2 run failed "
    "(or its run-end audit export failed: the run itself is complete); 3 resume refused (not "
    "resumable: not found, completed, in progress, no checkpoint, configuration mismatch, source "
    "changed)."
)


class _ElspethGroup(TyperGroup):
    """Usage errors (unknown command or option, missing option) exit 1, as documented.

    Click exits 2 on a usage error, which ``elspeth`` documents as "run failed". Every usage error
    of a subcommand is raised inside the root group's ``invoke``, its own in ``make_context``.
    """

    def make_context(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().make_context(*args, **kwargs)
        except UsageError as exc:
            exc.exit_code = EXIT_USAGE
            raise

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except UsageError as exc:
            exc.exit_code = EXIT_USAGE
            raise


app = typer.Typer(
    cls=_ElspethGroup,
    help=HELP,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
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
