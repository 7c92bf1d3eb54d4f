"""``elspeth db upgrade|current``: the landscape schema's Alembic revision."""

from __future__ import annotations

import typer

from elspeth_core.cli.common import DEFAULT_DATABASE, cli_errors, emit_json, out
from elspeth_core.landscape import migrations

app = typer.Typer(help="Landscape schema migrations.", no_args_is_help=True)
DB_OPTION = typer.Option(DEFAULT_DATABASE, "--database", "-d", help="Landscape URL.")


@app.command("current")
def current_command(
    database: str = DB_OPTION, as_json: bool = typer.Option(False, "--json")
) -> None:
    """Print the schema revision of the landscape and the one this version needs."""
    with cli_errors():
        revision = migrations.current(database)
        data = {
            "current": revision,
            "head": migrations.HEAD_REVISION,
            "up_to_date": revision == migrations.HEAD_REVISION,
        }
        if as_json:
            emit_json(data)
            return
        state = "up to date" if data["up_to_date"] else "needs 'elspeth db upgrade'"
        out.print(f"current {revision or '(none)'}; head {migrations.HEAD_REVISION}: {state}")


@app.command("upgrade")
def upgrade_command(database: str = DB_OPTION) -> None:
    """Upgrade the landscape schema to the version this ELSPETH needs."""
    with cli_errors():
        before = migrations.current(database)
        migrations.upgrade(database)
        out.print(f"upgraded {before or '(empty)'} -> {migrations.current(database)}")
