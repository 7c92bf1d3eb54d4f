"""Alembic migrations of the landscape schema, shipped inside the package.

``HEAD_REVISION`` is the revision this code expects. A fresh database is created from the
metadata and stamped at head; an older one is upgraded by ``elspeth db upgrade``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Column, Connection, MetaData, String, Table, inspect, select

if TYPE_CHECKING:
    from alembic.config import Config

HEAD_REVISION = "0002_source_position"
SCRIPT_LOCATION = Path(__file__).parent

# Alembic's own bookkeeping table, read without importing Alembic: every CLI command opens the
# landscape and checks its revision, and importing Alembic would cost a tenth of a second each time.
_version_table = Table("alembic_version", MetaData(), Column("version_num", String(32)))


def alembic_config(url: str | None = None) -> Config:
    """An Alembic configuration pointing at the packaged migration scripts."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(SCRIPT_LOCATION))
    if url:
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def current_revision(conn: Connection) -> str | None:
    """The Alembic revision stamped in this database, or None when it has none.

    Raises:
        ValueError: the database is stamped with several revisions (branches this package never
            has).
    """
    if not inspect(conn).has_table(_version_table.name):
        return None
    found = list(conn.execute(select(_version_table.c.version_num)).scalars())
    if len(found) > 1:
        raise ValueError(f"landscape stamped with several revisions: {', '.join(found)}")
    return found[0] if found else None


def stamp_head(conn: Connection) -> None:
    """Record the head revision in a database whose tables were just created from metadata."""
    from alembic.runtime.migration import MigrationContext

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
