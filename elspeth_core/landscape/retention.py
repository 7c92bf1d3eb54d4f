"""Reads for payload retention (``elspeth purge``): which completed runs still reference payloads.

Purging is two steps: ``LandscapeRecorder.clear_payload_refs`` (one transaction, every row and
batch member of the run) and then deleting the run's payload folder. Because the references of a
run are cleared all at once, "does the run's first row still have a reference" answers "are this
run's payloads still referenced" with one index lookup.

The one write here, ``clear_quarantined_data``, removes the copy of a quarantined row's content
that ``validation_errors.row_data_json`` holds (its ``row_hash`` stays): without it a purge would
delete every payload except those of the rows that failed validation.
"""

from __future__ import annotations

from sqlalchemy import and_, select, update

from elspeth_core.landscape import schema as t
from elspeth_core.landscape.database import LandscapeDB
from elspeth_core.landscape.records import Record


class RetentionQueries:
    """What ``purge`` needs to decide, read from one landscape."""

    def __init__(self, db: LandscapeDB) -> None:
        self.db = db

    def completed_runs(self) -> list[Record]:
        """Completed runs, oldest completion first (only those can be purged)."""
        with self.db.connect() as conn:
            found = conn.execute(
                select(
                    t.runs.c.run_id,
                    t.runs.c.completed_at,
                    t.runs.c.settings_json,
                    t.runs.c.source_rows_ingested,
                )
                .where(and_(t.runs.c.status == "completed", t.runs.c.completed_at.is_not(None)))
                .order_by(t.runs.c.completed_at, t.runs.c.run_id)
            ).mappings()
            return [dict(r) for r in found]

    def has_payload_refs(self, run_id: str) -> bool:
        """True while the run's rows still point into the payload store."""
        with self.db.connect() as conn:
            first = conn.execute(
                select(t.rows.c.source_data_ref)
                .where(t.rows.c.run_id == run_id)
                .order_by(t.rows.c.row_index)
                .limit(1)
            ).first()
            return first is not None and first[0] is not None


def clear_quarantined_data(db: LandscapeDB, run_id: str) -> int:
    """Drop the row content kept with a run's validation errors; returns how many were cleared."""
    with db.begin() as conn:
        result = conn.execute(
            update(t.validation_errors)
            .where(
                and_(
                    t.validation_errors.c.run_id == run_id,
                    t.validation_errors.c.row_data_json.is_not(None),
                )
            )
            .values(row_data_json=None)
        )
        return int(result.rowcount or 0)
