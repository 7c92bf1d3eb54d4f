"""Per-run counts for ``elspeth runs list|show``: rows, outcomes, sinks, errors, batches, attempts.

Every count is a grouped query over the runs asked for (one query per table, not one per run), so
listing fifty runs costs the same number of round trips as showing one. Counts come from the
recorded outcomes, never from counters kept by the engine: they are what the audit trail proves.
Nothing here writes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, and_, func, select

from elspeth_core.landscape import schema as t
from elspeth_core.landscape.database import LandscapeDB
from elspeth_core.landscape.records import Record


@dataclass
class RunCounts:
    """What the landscape holds for one run."""

    rows: int = 0
    tokens: int = 0
    terminal_outcomes: dict[str, int] = field(default_factory=dict)
    open_outcomes: dict[str, int] = field(default_factory=dict)
    sinks: dict[str, int] = field(default_factory=dict)
    validation_errors: int = 0
    transform_errors: int = 0
    batches: dict[str, int] = field(default_factory=dict)
    attempts: list[Record] = field(default_factory=list)
    checkpoints: int = 0
    latest_checkpoint: Record | None = None
    artifacts: list[Record] = field(default_factory=list)

    @property
    def pending_tokens(self) -> int:
        """Tokens without a terminal outcome (each token has at most one)."""
        return self.tokens - sum(self.terminal_outcomes.values())


class RunSummaryQueries:
    """Grouped reads of run-level counts."""

    def __init__(self, db: LandscapeDB) -> None:
        self.db = db

    def runs(self, limit: int, status: str | None = None) -> list[Record]:
        query = select(t.runs).order_by(t.runs.c.started_at.desc(), t.runs.c.run_id.desc())
        if status is not None:
            query = query.where(t.runs.c.status == status)
        with self.db.connect() as conn:
            return [dict(r) for r in conn.execute(query.limit(limit)).mappings()]

    def run(self, run_id: str) -> Record | None:
        with self.db.connect() as conn:
            found = conn.execute(select(t.runs).where(t.runs.c.run_id == run_id)).mappings()
            row = found.first()
            return dict(row) if row else None

    def latest_run_id(self) -> str | None:
        with self.db.connect() as conn:
            return conn.execute(
                select(t.runs.c.run_id)
                .order_by(t.runs.c.started_at.desc(), t.runs.c.run_id.desc())
                .limit(1)
            ).scalar()

    def counts(self, run_ids: Sequence[str], *, detail: bool = False) -> dict[str, RunCounts]:
        """Counts for each run; ``detail`` adds the latest checkpoint and the artifacts."""
        result = {run_id: RunCounts() for run_id in run_ids}
        if not run_ids:
            return result
        ids = list(run_ids)
        with self.db.connect() as conn:
            for run_id, n in _grouped(conn, t.rows.c.run_id, ids):
                result[run_id].rows = n
            for run_id, n in _grouped(conn, t.tokens.c.run_id, ids):
                result[run_id].tokens = n
            for run_id, n in _grouped(conn, t.validation_errors.c.run_id, ids):
                result[run_id].validation_errors = n
            for run_id, n in _grouped(conn, t.transform_errors.c.run_id, ids):
                result[run_id].transform_errors = n
            for run_id, n in _grouped(conn, t.checkpoints.c.run_id, ids):
                result[run_id].checkpoints = n
            self._outcomes(conn, ids, result)
            self._batches(conn, ids, result)
            for attempt in conn.execute(
                select(t.run_attempts)
                .where(t.run_attempts.c.run_id.in_(ids))
                .order_by(t.run_attempts.c.run_id, t.run_attempts.c.attempt)
            ).mappings():
                result[attempt["run_id"]].attempts.append(dict(attempt))
            if detail:
                self._detail(conn, ids, result)
        return result

    @staticmethod
    def _outcomes(conn: Connection, ids: list[str], result: dict[str, RunCounts]) -> None:
        o = t.token_outcomes.c
        for run_id, outcome, terminal, n in conn.execute(
            select(o.run_id, o.outcome, o.is_terminal, func.count())
            .where(o.run_id.in_(ids))
            .group_by(o.run_id, o.outcome, o.is_terminal)
        ).all():
            counts = result[run_id].terminal_outcomes if terminal else result[run_id].open_outcomes
            counts[str(outcome)] = int(n)
        for run_id, sink, n in conn.execute(
            select(o.run_id, o.sink_name, func.count())
            .where(and_(o.run_id.in_(ids), o.is_terminal, o.sink_name.is_not(None)))
            .group_by(o.run_id, o.sink_name)
        ).all():
            result[run_id].sinks[str(sink)] = int(n)

    @staticmethod
    def _batches(conn: Connection, ids: list[str], result: dict[str, RunCounts]) -> None:
        b = t.batches.c
        for run_id, status, n in conn.execute(
            select(b.run_id, b.status, func.count())
            .where(b.run_id.in_(ids))
            .group_by(b.run_id, b.status)
        ).all():
            result[run_id].batches[str(status)] = int(n)

    @staticmethod
    def _detail(conn: Connection, ids: list[str], result: dict[str, RunCounts]) -> None:
        c = t.checkpoints.c
        for checkpoint in conn.execute(
            select(t.checkpoints).where(c.run_id.in_(ids)).order_by(c.sequence_number)
        ).mappings():
            result[checkpoint["run_id"]].latest_checkpoint = {
                "checkpoint_id": checkpoint["checkpoint_id"],
                "sequence_number": checkpoint["sequence_number"],
                "rows_ingested": checkpoint["rows_ingested"],
                "row_id": checkpoint["row_id"],
                "created_at": checkpoint["created_at"],
            }
        for artifact in conn.execute(
            select(t.artifacts)
            .where(t.artifacts.c.run_id.in_(ids))
            .order_by(t.artifacts.c.sink_name)
        ).mappings():
            result[artifact["run_id"]].artifacts.append(
                {
                    "sink_name": artifact["sink_name"],
                    "path_or_uri": artifact["path_or_uri"],
                    "rows_written": artifact["rows_written"],
                    "size_bytes": artifact["size_bytes"],
                    "content_hash": artifact["content_hash"],
                    "updated_at": artifact["updated_at"],
                }
            )


def _grouped(conn: Connection, column: Any, ids: list[str]) -> list[tuple[str, int]]:
    found = conn.execute(select(column, func.count()).where(column.in_(ids)).group_by(column)).all()
    return [(str(run_id), int(n)) for run_id, n in found]
