"""Opening the landscape database: engine, SQLite durability pragmas, schema creation and checks.

SQLite runs in WAL mode with ``synchronous=FULL`` so that a committed chunk survives power loss; a
busy timeout lets the heartbeat thread and a competing ``resume`` wait instead of failing. The
schema is created from the Alembic baseline (``create_all`` + stamp for an empty database) and an
older schema is refused with the command to run. This module must not know about runs or rows.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Connection,
    Engine,
    RootTransaction,
    create_engine,
    event,
    func,
    inspect,
    select,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, OperationalError
from sqlalchemy.pool import StaticPool

from elspeth_core.errors import (
    ConfigError,
    LandscapeError,
    LandscapeNotFound,
    SchemaVersionError,
)
from elspeth_core.landscape import migrations
from elspeth_core.landscape.schema import metadata

SQLITE_BUSY_TIMEOUT_MS = 30_000
SCHEMA_LOCK_KEY = 0x454C5350  # 'ELSP'


class LandscapeDB:
    """A handle on one landscape database (SQLite file or PostgreSQL).

    Args:
        url: SQLAlchemy URL, e.g. ``sqlite:///runs/audit.db`` or ``postgresql+psycopg://...``.
        create: create the schema when the database is empty (the default for ``run``).
    """

    def __init__(self, url: str, *, create: bool = True) -> None:
        self.url = url
        self.engine = _make_engine(url, create=create)
        self.dialect = self.engine.dialect.name
        try:
            self._ensure_schema(create)
        except OperationalError as exc:
            self.engine.dispose()
            raise LandscapeError(
                f"cannot open landscape database {_safe_url(url)}: {exc.orig}",
                hint="Check the landscape url in the settings or --database.",
            ) from exc

    def _ensure_schema(self, create: bool) -> None:
        with self.engine.connect() as conn:
            if self.dialect == "postgresql":
                # Several processes may open an empty database at once: one creates the schema.
                conn.execute(select(func.pg_advisory_xact_lock(SCHEMA_LOCK_KEY)))
            current = migrations.current_revision(conn)
            if current is None and not inspect(conn).has_table("runs"):
                if not create:
                    raise LandscapeNotFound(
                        f"no landscape found at {_safe_url(self.url)}",
                        hint="Check --database / the settings' landscape url.",
                    )
                metadata.create_all(conn)
                migrations.stamp_head(conn)
                conn.commit()
                return
        if current != migrations.HEAD_REVISION:
            raise SchemaVersionError(
                f"landscape schema at {_safe_url(self.url)} is at revision {current}, "
                f"this version of ELSPETH needs {migrations.HEAD_REVISION}",
                hint=f"Run: elspeth db upgrade --database '{_safe_url(self.url)}'",
            )

    @contextmanager
    def begin(self) -> Iterator[Connection]:
        """A write transaction, committed on success, rolled back on error.

        On SQLite it starts with BEGIN IMMEDIATE (the write lock up front), so two writers queue
        on the busy timeout instead of one failing when it upgrades a read lock. Reads through
        ``connect()`` never take the write lock.
        """
        conn, transaction = self.open_write()
        try:
            yield conn
        except BaseException:
            transaction.rollback()
            raise
        else:
            transaction.commit()
        finally:
            conn.close()

    def open_write(self) -> tuple[Connection, RootTransaction]:
        """A connection with a write transaction begun (as in :meth:`begin`), for a caller that
        commits it later, possibly from another thread; it must roll back or commit, then close."""
        conn = self.engine.connect().execution_options(elspeth_write=True)
        return conn, conn.begin()

    @contextmanager
    def connect(self) -> Iterator[Connection]:
        """A connection for reads (autobegin; nothing is committed)."""
        with self.engine.connect() as conn:
            yield conn

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> LandscapeDB:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _safe_url(url: str) -> str:
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url


def _make_engine(url: str, *, create: bool) -> Engine:
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise ConfigError(f"not a database URL: {url!r}", key="landscape.url") from exc
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database or ""
        if database and database != ":memory:":
            if not create and not Path(database).exists():
                raise LandscapeNotFound(
                    f"no landscape found at {_safe_url(url)}",
                    hint="Check --database / the settings' landscape url.",
                )
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        if not database or database == ":memory:":
            engine = create_engine(
                url, poolclass=StaticPool, connect_args={"check_same_thread": False}
            )
        else:
            engine = create_engine(url)
        event.listen(engine, "connect", _sqlite_pragmas)
        event.listen(engine, "begin", _sqlite_begin_immediate)
        return engine
    kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if parsed.get_backend_name() == "postgresql":
        kwargs["connect_args"] = {"application_name": f"elspeth-{os.getpid()}"}
    return create_engine(url, **kwargs)


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    # Let SQLAlchemy, not pysqlite, decide when transactions start (see _sqlite_begin_immediate).
    dbapi_conn.isolation_level = None
    cursor = dbapi_conn.cursor()
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _sqlite_begin_immediate(conn: Connection) -> None:
    # Write transactions (LandscapeDB.begin) take the write lock up front; reads use a plain BEGIN.
    write = conn.get_execution_options().get("elspeth_write", False)
    conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")
