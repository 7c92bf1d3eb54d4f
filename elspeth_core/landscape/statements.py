"""Statements compiled once and executed straight through the DBAPI cursor (the commit hot path).

``conn.execute(insert(table), rows)`` builds or looks up the compiled statement and then processes
every parameter of every row in Python; at a hundred chunk commits per second, each with thousands
of records, that costs more than the database work itself. A :class:`CompiledStatement` keeps what
SQLAlchemy compiled for one dialect — the SQL text in a positional parameter style, the order of its
parameters, and the bind processors of the few columns that need one (timestamps, booleans on
SQLite) — and builds the driver's parameter tuples column by column with C-level ``map``/``zip``
(positional binding is a quarter cheaper in the SQLite driver than binding by name).

:class:`CopyInsert` writes an INSERT's rows with PostgreSQL's ``COPY ... FROM STDIN`` instead,
several times faster than an ``executemany`` of the same rows, in the same transaction.

Statements are still built with SQLAlchemy Core from the schema's tables (never SQL strings by
hand, except COPY's column list, which is quoted by the dialect), and only ``landscape`` uses this
module. Semantics are those of ``conn.execute``: the same SQL, the same bind processors, so the
same stored values.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from itertools import chain
from operator import is_, itemgetter
from typing import Any, cast

from sqlalchemy import Connection, CursorResult, Table, bindparam, insert
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.sql import ClauseElement
from sqlalchemy.sql.compiler import SQLCompiler

Processor = Callable[[Any], Any]
_UNSET = object()

# The positional style each driver understands, whatever style its dialect defaults to.
_POSITIONAL_STYLE = {"pysqlite": "qmark", "psycopg": "format"}


class CompiledStatement:
    """One statement compiled for one dialect, with its parameter plan.

    Callers pass parameters by name (a mapping per row); they reach the driver as tuples in the
    compiled statement's order, with the bind processors applied.

    Args:
        statement: a Core statement; bound values must be ``bindparam``\\ s (or, for an INSERT,
            come from ``column_keys``) so that one compiled form serves every execution.
        dialect: the dialect of the connections it will run on.
        column_keys: for an INSERT, the columns the rows provide.
    """

    def __init__(
        self,
        statement: ClauseElement,
        dialect: Dialect,
        column_keys: Sequence[str] | None = None,
    ) -> None:
        compiled = cast(
            SQLCompiler,
            statement.compile(
                dialect=_positional(dialect),
                column_keys=list(column_keys) if column_keys is not None else None,
            ),
        )
        self.sql = str(compiled)
        self.names: tuple[str, ...] = tuple(compiled.positiontup or ())
        # Processors of the connection's own dialect: exactly what conn.execute would apply.
        self._processors: tuple[tuple[int, Processor], ...] = tuple(
            (position, processor)
            for position, name in enumerate(self.names)
            if (processor := compiled.binds[name].type._cached_bind_processor(dialect)) is not None
        )

    def execute(self, conn: Connection, params: Mapping[str, Any]) -> CursorResult[Any]:
        """Run once with ``params`` (keyed by bind name)."""
        return conn.exec_driver_sql(self.sql, self.tuples([params])[0])

    def executemany(self, conn: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
        """Run once per row (one ``executemany``); every row has (at least) ``names``."""
        conn.exec_driver_sql(self.sql, self.tuples(rows))

    def tuples(self, rows: Sequence[Mapping[str, Any]]) -> list[tuple[Any, ...]]:
        """The rows as the driver's parameter tuples: in statement order, processors applied."""
        return values_in_order(rows, self.names, self._processors)


class MultiRowInsert:
    """An INSERT of many rows per statement (``VALUES (...), (...), ...``), for SQLite.

    SQLite runs one statement per row of an ``executemany``; one statement for 64 rows costs
    about a quarter less per record (measured on the node-state table), and the commit hot path
    inserts thousands of records per chunk. Rows go 64 to a statement; the remainder is split in
    statements of 32, 16, ... 1 rows (at most six more), each compiled once. Values are those of
    :class:`CompiledStatement` for the same columns: the same bind processors, the same stored
    values.
    """

    ROWS = 64

    def __init__(self, table: Table, dialect: Dialect, column_keys: Sequence[str]) -> None:
        self.single = CompiledStatement(insert(table), dialect, column_keys)
        self._table = table
        self._dialect = _positional(dialect)
        self._sql: dict[int, str] = {1: self.single.sql}

    def _statement(self, rows: int) -> str:
        """The SQL text inserting ``rows`` rows at once (compiled on first use)."""
        found = self._sql.get(rows)
        if found is None:
            names = self.single.names
            many = insert(self._table).values(
                [{name: bindparam(f"r{i}_{name}") for name in names} for i in range(rows)]
            )
            compiled = cast(SQLCompiler, many.compile(dialect=self._dialect))
            expected = [f"r{i}_{name}" for i in range(rows) for name in names]
            if list(compiled.positiontup or ()) != expected:  # never: it is the column order
                raise ValueError(f"unexpected parameter order inserting into {self._table}")
            found = self._sql[rows] = str(compiled)
        return found

    def executemany(self, conn: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
        """Insert ``rows`` (each has at least the statement's columns).

        The statements go straight to a cursor of the connection's driver connection, in its
        transaction: ``exec_driver_sql`` adds about 20 µs a statement of bookkeeping this path
        does not use (no result, no events). Driver errors are wrapped as ``exec_driver_sql``
        would wrap them (an ``IntegrityError`` stays an ``IntegrityError``).
        """
        values = self.single.tuples(rows)
        start, size = 0, self.ROWS
        cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
        sql = ""
        try:
            while start < len(values):
                while start + size > len(values):
                    size //= 2
                sql = self._statement(size)
                cursor.execute(sql, tuple(chain.from_iterable(values[start : start + size])))
                start += size
        except conn.dialect.loaded_dbapi.Error as exc:
            raise DBAPIError.instance(
                sql, None, exc, conn.dialect.loaded_dbapi.Error, dialect=conn.dialect
            ) from exc
        finally:
            cursor.close()


class CopyInsert:
    """Rows of one table and column set written with PostgreSQL's ``COPY ... FROM STDIN``.

    Values go through the same bind processors as an INSERT's; psycopg adapts them for COPY as it
    does for query parameters, so the stored values are those an ``executemany`` would store.
    """

    def __init__(self, table: Table, dialect: Dialect, column_keys: Sequence[str]) -> None:
        quote = dialect.identifier_preparer.quote
        self.names = tuple(column_keys)
        columns = ", ".join(quote(name) for name in self.names)
        self.sql = f"COPY {quote(table.name)} ({columns}) FROM STDIN"
        self._processors: tuple[tuple[int, Processor], ...] = tuple(
            (position, processor)
            for position, name in enumerate(self.names)
            if (processor := table.c[name].type._cached_bind_processor(dialect)) is not None
        )

    def executemany(self, conn: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
        """Copy ``rows`` inside the connection's current transaction."""
        values = values_in_order(rows, self.names, self._processors)
        driver_conn = cast(Any, conn.connection.driver_connection)
        try:
            with driver_conn.cursor() as cursor, cursor.copy(self.sql) as copy:
                for row in values:
                    copy.write_row(row)
        except conn.dialect.loaded_dbapi.IntegrityError as exc:
            # What conn.execute would raise, so callers handle one exception type.
            raise IntegrityError(self.sql, None, exc) from exc


def _positional(dialect: Dialect) -> Dialect:
    """``dialect`` with the positional parameter style its driver understands."""
    style = _POSITIONAL_STYLE.get(dialect.driver)
    if style is None:
        raise ValueError(f"driver {dialect.driver} has no known positional style: unsupported")
    if dialect.paramstyle == style:
        return dialect
    return cast(Dialect, cast(Any, type(dialect))(paramstyle=style))


def values_in_order(
    rows: Sequence[Mapping[str, Any]],
    names: Sequence[str],
    processors: Sequence[tuple[int, Processor]],
) -> list[tuple[Any, ...]]:
    """Each row's values of ``names`` as a tuple, with ``processors`` applied by position."""
    if not names:
        return [() for _row in rows]
    if not processors:
        if len(names) == 1:
            return [(value,) for value in map(itemgetter(names[0]), rows)]
        return list(map(itemgetter(*names), rows))
    columns = [list(map(itemgetter(name), rows)) for name in names]
    for position, processor in processors:
        raw = columns[position]
        processed = list(map(_remember_last(processor), raw))
        if not all(map(is_, raw, processed)):  # e.g. to_float() of floats changes nothing
            columns[position] = processed
    return list(zip(*columns, strict=True))


def _remember_last(processor: Processor) -> Processor:
    """``processor`` reusing its last result for the very same object, for one ``executemany``.

    One timestamp object is shared by every outcome of a chunk, and ``True``/``False`` are
    singletons, so most calls are skipped. Bound values are immutable scalars (timestamps, numbers,
    booleans, strings), so the same object always processes to the same value.
    """
    last_in: Any = _UNSET
    last_out: Any = None

    def process(value: Any) -> Any:
        nonlocal last_in, last_out
        if value is not last_in:
            last_out = processor(value)
            last_in = value
        return last_out

    return process
