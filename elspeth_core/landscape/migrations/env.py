"""Alembic environment: runs the packaged migrations against the URL in the Alembic config.

A caller may pass an open connection in ``config.attributes["connection"]`` (tests, ``elspeth db``).
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from elspeth_core.landscape.schema import metadata

config = context.config


def _run(connection) -> None:  # type: ignore[no-untyped-def]
    context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


connection = config.attributes.get("connection")
if connection is not None:
    _run(connection)
else:
    engine = create_engine(config.get_main_option("sqlalchemy.url") or "")
    with engine.connect() as conn:
        _run(conn)
        conn.commit()
    engine.dispose()
