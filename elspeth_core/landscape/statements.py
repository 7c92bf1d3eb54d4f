"""Statements compiled once and executed straight through the DBAPI cursor (the commit hot path).

``conn.execute(insert(table), rows)`` builds or looks up the compiled statement and then processes
every parameter of every row in Python; at a hundred chunk commits per second, each with thousands
of records, that costs more than the database work itself. A :class:`CompiledStatement` keeps what
SQLAlchemy compiled for one dialect — the SQL text, the parameter order the driver wants, and the
bind processors of the few columns that need one (timestamps, booleans on SQLite) — and builds the
driver's parameters column by column with C-level ``map``/``zip``.

Statements are still built with SQLAlchemy Core from the schema's tables (never SQL strings by
hand), and only ``landscape`` uses this module. Semantics are those of ``conn.execute``: the same
SQL, the same bind processors, so the same stored values.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from operator import is_, itemgetter
from typing import Any, cast

from sqlalchemy import Connection, CursorResult
from sqlalchemy.engine import Dialect
from sqlalchemy.sql import ClauseElement
from sqlalchemy.sql.compiler import SQLCompiler

Processor = Callable[[Any], Any]
_UNSET = object()


# DBAPI drivers that also accept named parameters with a mapping per row, whatever the dialect's
# default paramstyle: rows can then be handed to the driver as they are, without building tuples.
_NAMED_STYLE_DRIVERS = frozenset({"pysqlite"})


class CompiledStatement:
    """One statement compiled for one dialect, with its parameter plan.

    Parameters are passed by name (a mapping per row); rows whose columns need no bind processor
    go to the driver as they are, the others as shallow copies with the processed values.

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
        text_dialect = dialect
        if dialect.positional and dialect.driver in _NAMED_STYLE_DRIVERS:
            text_dialect = cast(Any, type(dialect))(paramstyle="named")
        if text_dialect.positional:
            raise ValueError(f"driver {dialect.driver} needs positional parameters: unsupported")
        compiled = cast(
            SQLCompiler,
            statement.compile(
                dialect=text_dialect,
                column_keys=list(column_keys) if column_keys is not None else None,
            ),
        )
        self.sql = str(compiled)
        self.names: tuple[str, ...] = tuple(compiled.binds)
        # Processors of the connection's own dialect: exactly what conn.execute would apply.
        self._processors: tuple[tuple[str, Processor], ...] = tuple(
            (name, processor)
            for name, bind in compiled.binds.items()
            if (processor := bind.type._cached_bind_processor(dialect)) is not None
        )

    def execute(self, conn: Connection, params: Mapping[str, Any]) -> CursorResult[Any]:
        """Run once with ``params`` (keyed by bind name)."""
        values = {name: params[name] for name in self.names}
        for name, processor in self._processors:
            values[name] = processor(values[name])
        return conn.exec_driver_sql(self.sql, values)

    def executemany(self, conn: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
        """Run once per row (one ``executemany``); every row has (at least) ``names``."""
        conn.exec_driver_sql(self.sql, self._many(rows))

    def _many(self, rows: Sequence[Mapping[str, Any]]) -> list[Any]:
        changed: list[tuple[str, list[Any]]] = []
        for name, processor in self._processors:
            raw = list(map(itemgetter(name), rows))
            processed = list(map(_remember_last(processor), raw))
            if not all(map(is_, raw, processed)):  # e.g. to_float() of floats changes nothing
                changed.append((name, processed))
        if not changed:
            return list(rows)
        if len(changed) == 1:
            ((name, values),) = changed
            return [{**row, name: value} for row, value in zip(rows, values, strict=True)]
        names = [name for name, _values in changed]
        columns = zip(*(values for _name, values in changed), strict=True)
        return [
            {**row, **dict(zip(names, values, strict=True))}
            for row, values in zip(rows, columns, strict=True)
        ]


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
