"""Alembic migrations of the landscape schema, shipped inside the package.

``HEAD_REVISION`` is the revision this code expects. A fresh database is created from the
metadata and stamped at head; an older one is upgraded by ``elspeth db upgrade``.
"""

from __future__ import annotations

from pathlib import Path

from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection

HEAD_REVISION = "0002_source_position"
SCRIPT_LOCATION = Path(__file__).parent


def alembic_config(url: str | None = None) -> Config:
    """An Alembic configuration pointing at the packaged migration scripts."""
    config = Config()
    config.set_main_option("script_location", str(SCRIPT_LOCATION))
    if url:
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def current_revision(conn: Connection) -> str | None:
    """The Alembic revision stamped in this database, or None when it has none."""
    return MigrationContext.configure(conn).get_current_revision()


def stamp_head(conn: Connection) -> None:
    """Record the head revision in a database whose tables were just created from metadata."""
    context = MigrationContext.configure(conn)
    context.stamp(_script(), "head")


def _script():  # type: ignore[no-untyped-def]
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config())


def upgrade(url: str, revision: str = "head") -> None:
    """Apply the packaged migrations up to ``revision`` (``elspeth db upgrade``)."""
    from alembic import command

    command.upgrade(alembic_config(url), revision)


def current(url: str) -> str | None:
    """The revision a database is at, without any schema check (``elspeth db current``)."""
    from sqlalchemy import create_engine

    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return current_revision(conn)
    finally:
        engine.dispose()
