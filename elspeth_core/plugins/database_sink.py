"""The ``database`` sink: rows into a table of a *target* database (SQLAlchemy), exactly once.

This is the one plugin module allowed to import SQLAlchemy (an import-linter exception): it writes
to the user's database, never to the landscape.

How exactly-once works: every row carries two hidden columns, ``_elspeth_run_id`` and
``_elspeth_seq`` (its 1-based position among the rows this run published to this table; the pair is
the table's primary key, so a row can never be inserted twice). ``flush()`` inserts the rows
written since the last flush AND updates the ledger table ``_elspeth_publications`` (run, table,
rows committed) in ONE transaction of the target database, then returns a :class:`Publication`
whose ``rows`` is that committed count. The engine records the publication in the landscape in
the same transaction as the outcomes of those rows. After a crash between the two commits,
``restore(publication)`` deletes this run's rows beyond ``publication.rows`` (and sets the ledger
back), so the rows are written again exactly once.

Life cycle: ``restore`` → (``write``* → ``flush``)* → ``finish`` → ``close``.
``if_exists: replace`` drops the table when a run starts (``restore(None)``); ``append`` keeps it
and its rows (a table that lacks the hidden columns is refused, not altered). The table is created
from the first row: its fields in order, typed from their values (int → BIGINT, float → FLOAT,
bool → BOOLEAN, anything else → TEXT; dicts and lists are stored as compact JSON). A later row with
a field that is not a column is refused (``SinkError``), and so is a fraction for an integer
column (PostgreSQL would round it, so the table would no longer hold the row the audit trail
hashed); missing fields are stored as NULL.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field
from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Connection,
    DateTime,
    Engine,
    Float,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    and_,
    create_engine,
    delete,
    func,
    insert,
    inspect,
    select,
    update,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from elspeth_core.errors import ConfigError, SinkError
from elspeth_core.plugins.protocols import PluginConfig, Publication, Row, validated_options

RUN_COLUMN = "_elspeth_run_id"
SEQ_COLUMN = "_elspeth_seq"
HIDDEN_COLUMNS = (RUN_COLUMN, SEQ_COLUMN)
LEDGER_TABLE = "_elspeth_publications"
_HASH_PAGE = 5_000


class DatabaseSinkOptions(PluginConfig):
    url: str = Field(min_length=1)
    table: str = Field(min_length=1, max_length=120)
    if_exists: Literal["append", "replace"] = "append"


def _ledger_table(metadata: MetaData) -> Table:
    return Table(
        LEDGER_TABLE,
        metadata,
        Column("run_id", String(64), nullable=False),
        Column("table_name", String(120), nullable=False),
        Column("rows_committed", BigInteger, nullable=False),
        Column("updated_at", DateTime(timezone=True), nullable=False),
        PrimaryKeyConstraint("run_id", "table_name"),
    )


class DatabaseSink:
    """Writes rows to ``table`` at ``url`` with an exactly-once ledger (see module docstring)."""

    name: ClassVar[str] = "database"
    version: ClassVar[str] = "1.0.0"
    config_model: ClassVar[type[PluginConfig]] = DatabaseSinkOptions

    def __init__(self, options: Mapping[str, Any] | None = None) -> None:
        self.config = validated_options(DatabaseSinkOptions, options)
        try:
            self._url = make_url(self.config.url)
        except ArgumentError as exc:
            raise ConfigError(f"not a database URL: {exc}", key="url") from exc
        self.uri = f"{self._url.render_as_string(hide_password=True)}#{self.config.table}"
        self._engine: Engine | None = None
        self._metadata = MetaData()
        self._ledger = _ledger_table(self._metadata)
        self._table: Table | None = None
        self._run_id: str | None = None
        self._pending: list[dict[str, Any]] = []
        self._committed = 0
        self._finished = False

    # -- life cycle -------------------------------------------------------------------------

    def restore(self, publication: Publication | None, *, run_id: str) -> None:
        """Make the table hold exactly the rows ``publication`` vouches for, for ``run_id``.

        Raises:
            SinkError: the target holds fewer of this run's rows than the publication says (it
                was modified outside ELSPETH), the table lacks the hidden columns, or the
                database cannot be reached.
        """
        self._run_id = run_id
        self._pending = []
        self._finished = False
        committed = 0 if publication is None else publication.rows
        if publication is not None and publication.uri != self.uri:
            raise SinkError(
                f"the audit trail's publication is for {publication.uri}, but this sink writes "
                f"{self.uri}",
                hint="Fix the sink's url/table, or start a fresh run with --force-new.",
            )
        with self._transaction() as conn:
            self._ledger.create(conn, checkfirst=True)
            if publication is None and self.config.if_exists == "replace":
                self._drop_table(conn)
            self._table = self._reflect(conn)
            present = self._count(conn)
            if present < committed:
                raise SinkError(
                    f"{self.uri} holds {present} rows of run {run_id}, but the audit trail says "
                    f"{committed} were published: it was modified outside ELSPETH",
                    hint="Restore the table from a backup, or start a fresh run with --force-new.",
                )
            if self._table is not None and present > committed:
                conn.execute(
                    delete(self._table).where(
                        and_(
                            self._table.c[RUN_COLUMN] == run_id,
                            self._table.c[SEQ_COLUMN] > committed,
                        )
                    )
                )
            self._set_ledger(conn, committed)
        self._committed = committed

    def write(self, rows: list[Row]) -> None:
        """Buffer rows for the next ``flush`` (nothing reaches the database before it).

        Raises:
            SinkError: the output is finished, or a value cannot be stored (NaN, Infinity, a
                value JSON cannot encode).
        """
        if self._run_id is None:
            raise SinkError(f"sink for {self.uri} is not open: call restore() first")
        if self._finished:
            raise SinkError(f"output {self.uri} is already finished; cannot write more rows")
        self._pending.extend(_storable(row, self.uri) for row in rows)

    def flush(self) -> Publication:
        """Insert the buffered rows and the ledger update in one transaction; the new state."""
        if self._pending:
            rows, first = self._pending, self._pending[0]
            with self._transaction() as conn:
                table = self._table if self._table is not None else self._create_table(conn, first)
                conn.execute(insert(table), self._values(table, rows))
                self._set_ledger(conn, self._committed + len(rows))
            self._table = table
            self._committed += len(rows)
            self._pending = []
        return self._publication()

    def finish(self) -> Publication:
        """Flush what is left; a database table needs no closing bytes."""
        publication = self.flush()
        self._finished = True
        return publication

    def close(self) -> None:
        """Release the connection pool (unflushed rows are dropped: they were never published)."""
        engine, self._engine = self._engine, None
        if engine is not None:
            engine.dispose()

    def content_hash(self) -> str | None:
        """SHA-256 over this run's rows in publication order (JSON lines, hidden columns left out)."""
        if self._table is None or self._run_id is None:
            return None
        table = self._table
        visible = [c for c in table.columns if c.name not in HIDDEN_COLUMNS]
        digest = hashlib.sha256()
        last = 0
        with self._transaction() as conn:
            while True:
                page = conn.execute(
                    select(table.c[SEQ_COLUMN], *visible)
                    .where(and_(table.c[RUN_COLUMN] == self._run_id, table.c[SEQ_COLUMN] > last))
                    .order_by(table.c[SEQ_COLUMN])
                    .limit(_HASH_PAGE)
                ).all()
                if not page:
                    return digest.hexdigest()
                for seq, *values in page:
                    digest.update(json.dumps(values, default=str, ensure_ascii=False).encode())
                    digest.update(b"\n")
                    last = seq

    # -- internals ----------------------------------------------------------------------------

    def _connect(self) -> Engine:
        if self._engine is None:
            if self._url.get_backend_name() == "sqlite" and self._url.database not in (
                None,
                "",
                ":memory:",
            ):
                Path(self._url.database).parent.mkdir(parents=True, exist_ok=True)
            self._engine = create_engine(self._url)
        return self._engine

    @contextmanager
    def _transaction(self) -> Iterator[Connection]:
        """One transaction of the target database; SQLAlchemy errors become ``SinkError``."""
        try:
            with self._connect().begin() as conn:
                yield conn
        except SQLAlchemyError as exc:
            raise SinkError(f"cannot write to {self.uri}: {exc}") from exc

    def _drop_table(self, conn: Connection) -> None:
        if inspect(conn).has_table(self.config.table):
            Table(self.config.table, MetaData(), autoload_with=conn).drop(conn)

    def _reflect(self, conn: Connection) -> Table | None:
        if not inspect(conn).has_table(self.config.table):
            return None
        table = Table(self.config.table, MetaData(), autoload_with=conn)
        missing = [name for name in HIDDEN_COLUMNS if name not in table.c]
        if missing:
            raise SinkError(
                f"table {self.uri} exists but has no {', '.join(missing)} column(s), which the "
                "database sink needs to publish exactly once",
                hint="Use if_exists: replace, another table, or add the columns "
                f"({RUN_COLUMN} text, {SEQ_COLUMN} bigint).",
            )
        return table

    def _create_table(self, conn: Connection, first: dict[str, Any]) -> Table:
        if not first:
            raise SinkError(f"cannot create {self.uri}: the first row has no fields")
        clash = [name for name in first if name in HIDDEN_COLUMNS]
        if clash:
            raise SinkError(f"row field {clash[0]!r} is reserved by the database sink")
        table = Table(
            self.config.table,
            MetaData(),
            *(Column(name, _column_type(value), nullable=True) for name, value in first.items()),
            Column(RUN_COLUMN, String(64), nullable=False),
            Column(SEQ_COLUMN, BigInteger, nullable=False),
            PrimaryKeyConstraint(RUN_COLUMN, SEQ_COLUMN),
        )
        table.create(conn)
        return table

    def _values(self, table: Table, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        columns = [c.name for c in table.columns if c.name not in HIDDEN_COLUMNS]
        known = frozenset(columns)
        integers = [
            c.name
            for c in table.columns
            if c.name not in HIDDEN_COLUMNS and isinstance(c.type, Integer)
        ]
        values = []
        for offset, row in enumerate(rows, start=self._committed + 1):
            if not row.keys() <= known:
                extra = next(key for key in row if key not in known)
                raise SinkError(
                    f"row has field {extra!r} that is not a column of {self.uri} "
                    f"({', '.join(columns)})"
                )
            for name in integers:
                self._check_whole(name, row.get(name))
            values.append(
                {
                    **{name: row.get(name) for name in columns},
                    RUN_COLUMN: self._run_id,
                    SEQ_COLUMN: offset,
                }
            )
        return values

    def _check_whole(self, name: str, value: Any) -> None:
        """Refuse a fraction for an integer column: PostgreSQL would round it silently."""
        if isinstance(value, float) and not value.is_integer():
            raise SinkError(
                f"field {name!r} is {value}, but column {name} of {self.uri} holds integers "
                "(it was typed from the first row); storing it would change the value",
                hint=f"Type the field as a float in the source schema ('{name}: float') so the "
                "column is created as FLOAT, or use another table.",
            )

    def _count(self, conn: Connection) -> int:
        if self._table is None:
            return 0
        return int(
            conn.execute(
                select(func.count())
                .select_from(self._table)
                .where(self._table.c[RUN_COLUMN] == self._run_id)
            ).scalar_one()
        )

    def _set_ledger(self, conn: Connection, rows: int) -> None:
        key = and_(
            self._ledger.c.run_id == self._run_id, self._ledger.c.table_name == self.config.table
        )
        now = datetime.now(UTC)
        changed = conn.execute(
            update(self._ledger).where(key).values(rows_committed=rows, updated_at=now)
        )
        if changed.rowcount == 0:
            conn.execute(
                insert(self._ledger),
                [
                    {
                        "run_id": self._run_id,
                        "table_name": self.config.table,
                        "rows_committed": rows,
                        "updated_at": now,
                    }
                ],
            )

    def _publication(self) -> Publication:
        return Publication(
            uri=self.uri,
            rows=self._committed,
            size_bytes=0,
            state={
                "table": self.config.table,
                "ledger": LEDGER_TABLE,
                "run_id": self._run_id,
                "rows_committed": self._committed,
            },
        )


def _column_type(value: Any) -> Any:
    if isinstance(value, bool):
        return Boolean()
    if isinstance(value, int):
        return BigInteger()
    if isinstance(value, float):
        return Float()
    return Text()


def _storable(row: Row, uri: str) -> dict[str, Any]:
    """A copy of ``row`` whose values the database can store (nested values as JSON text)."""
    out: dict[str, Any] = {}
    for key, value in row.items():
        if isinstance(value, dict | list):
            try:
                value = json.dumps(
                    value, ensure_ascii=False, separators=(",", ":"), allow_nan=False
                )
            except (TypeError, ValueError) as exc:
                raise SinkError(f"field {key!r} cannot be stored in {uri}: {exc}") from exc
        elif isinstance(value, float) and not math.isfinite(value):
            raise SinkError(f"field {key!r} is {value}, which cannot be stored in {uri}")
        out[str(key)] = value
    return out
