"""A run's audit records, table by table, streamed in a stable order (for the audit export).

Key contracts:
- ``AUDIT_TABLES`` is the export's table order; within a table records come in primary-key order,
  so exporting the same run twice yields the same records in the same order.
- Records are streamed from one read transaction (a consistent snapshot on both backends), never
  loaded whole: a run of millions of rows exports in flat memory.
- Values are JSON-ready: timestamps as ISO 8601 strings (UTC), booleans as booleans.
Nothing here writes.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Any

from sqlalchemy import Table, select

from elspeth_core.landscape import schema as t
from elspeth_core.landscape.database import LandscapeDB
from elspeth_core.landscape.records import Record

AUDIT_TABLES: tuple[str, ...] = (
    "runs",
    "run_attempts",
    "nodes",
    "edges",
    "rows",
    "tokens",
    "token_parents",
    "node_states",
    "routing_events",
    "token_outcomes",
    "batches",
    "batch_members",
    "batch_outputs",
    "artifacts",
    "validation_errors",
    "transform_errors",
)
_STREAM_ROWS = 2_000


def _table(name: str) -> Table:
    table = t.metadata.tables[name]
    return table


def primary_key(table_name: str) -> tuple[str, ...]:
    return tuple(c.name for c in _table(table_name).primary_key.columns)


def record_id(table_name: str, record: Record, key: tuple[str, ...] | None = None) -> str:
    """The record's primary key as one string (composite keys joined with '/')."""
    return "/".join(str(record[name]) for name in key or primary_key(table_name))


def _query(name: str, run_id: str) -> Any:
    table = _table(name)
    order = list(table.primary_key.columns)
    if name == "token_parents":
        owner = select(t.tokens.c.token_id).where(t.tokens.c.run_id == run_id)
        return select(table).where(table.c.token_id.in_(owner)).order_by(*order)
    if name in ("batch_members", "batch_outputs"):
        owner = select(t.batches.c.batch_id).where(t.batches.c.run_id == run_id)
        return select(table).where(table.c.batch_id.in_(owner)).order_by(*order)
    return select(table).where(table.c.run_id == run_id).order_by(*order)


def iter_audit_records(db: LandscapeDB, run_id: str) -> Iterator[tuple[str, str, Record]]:
    """Yield ``(table, record_id, record)`` for every audit record of a run."""
    with db.connect() as conn:
        streaming = conn.execution_options(stream_results=True, yield_per=_STREAM_ROWS)
        for name in AUDIT_TABLES:
            key = primary_key(name)
            for row in streaming.execute(_query(name, run_id)).mappings():
                record = {column: _json_ready(value) for column, value in row.items()}
                yield name, record_id(name, record, key), record


def _json_ready(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    return value
