"""Reads from the landscape: runs, checkpoints, the resume work set, publications, lineage.

Everything recovery decides is derived here from recorded outcomes (SPEC §4 rule 1): a token needs
work when it has no terminal outcome; a row needs work when it has no tokens or such a token.
No function here writes.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from sqlalchemy import and_, func, select

from elspeth_core.landscape import schema as t
from elspeth_core.landscape.database import LandscapeDB
from elspeth_core.landscape.records import Record


class LandscapeQueries:
    """All reads from one landscape database."""

    def __init__(self, db: LandscapeDB) -> None:
        self.db = db

    def get_run(self, run_id: str) -> Record | None:
        with self.db.connect() as conn:
            found = conn.execute(select(t.runs).where(t.runs.c.run_id == run_id)).mappings()
            row = found.first()
            return dict(row) if row else None

    def latest_run_id(self) -> str | None:
        with self.db.connect() as conn:
            return conn.execute(
                select(t.runs.c.run_id).order_by(t.runs.c.started_at.desc(), t.runs.c.run_id.desc())
            ).scalar()

    def run_for_flow_run(self, flow_run_id: str) -> Record | None:
        """The newest landscape run started by a Prefect flow run (for Retry from the UI)."""
        with self.db.connect() as conn:
            found = conn.execute(
                select(t.runs)
                .where(t.runs.c.prefect_flow_run_id == flow_run_id)
                .order_by(t.runs.c.started_at.desc())
            ).mappings()
            row = found.first()
            return dict(row) if row else None

    def list_runs(self, limit: int = 50) -> list[Record]:
        with self.db.connect() as conn:
            found = conn.execute(
                select(t.runs).order_by(t.runs.c.started_at.desc()).limit(limit)
            ).mappings()
            return [dict(r) for r in found]

    def latest_checkpoint(self, run_id: str) -> Record | None:
        with self.db.connect() as conn:
            found = conn.execute(
                select(t.checkpoints)
                .where(t.checkpoints.c.run_id == run_id)
                .order_by(t.checkpoints.c.sequence_number.desc())
                .limit(1)
            ).mappings()
            row = found.first()
            return dict(row) if row else None

    def count_checkpoints(self, run_id: str) -> int:
        return self._count(t.checkpoints, t.checkpoints.c.run_id == run_id)

    def count_rows(self, run_id: str) -> int:
        return self._count(t.rows, t.rows.c.run_id == run_id)

    def count_batch_retries(self, run_id: str) -> int:
        """Batch attempts after the first (a retry after a crash or a failure), all attempts."""
        b = t.batches.c
        return self._count(t.batches, and_(b.run_id == run_id, b.attempt > 1))

    def _count(self, table: Any, cond: Any) -> int:
        with self.db.connect() as conn:
            return int(
                conn.execute(select(func.count()).select_from(table).where(cond)).scalar_one()
            )

    def iter_row_hashes(self, run_id: str, batch: int = 10_000) -> Iterator[tuple[int, str]]:
        """(row_index, source_data_hash) of recorded rows in source order, streamed in pages."""
        last = -1
        while True:
            with self.db.connect() as conn:
                page = conn.execute(
                    select(t.rows.c.row_index, t.rows.c.source_data_hash)
                    .where(and_(t.rows.c.run_id == run_id, t.rows.c.row_index > last))
                    .order_by(t.rows.c.row_index)
                    .limit(batch)
                ).all()
            if not page:
                return
            for index, digest in page:
                yield int(index), str(digest)
            last = int(page[-1][0])

    def publications(self, run_id: str) -> dict[str, Record]:
        """Each sink's last committed publication state, by sink name."""
        with self.db.connect() as conn:
            found = conn.execute(select(t.artifacts).where(t.artifacts.c.run_id == run_id))
            return {
                r["sink_name"]: {**dict(r), "publication": json.loads(r["publication_json"])}
                for r in found.mappings()
            }

    def nonterminal_tokens(self, run_id: str) -> list[Record]:
        """Tokens of a run without a terminal outcome, with their row (the resume work set)."""
        terminal = t.token_outcomes.alias("terminal")
        with self.db.connect() as conn:
            found = conn.execute(
                select(t.tokens.c.token_id, t.tokens.c.row_id, t.rows.c.row_index)
                .join(t.rows, t.rows.c.row_id == t.tokens.c.row_id)
                .outerjoin(
                    terminal,
                    and_(terminal.c.token_id == t.tokens.c.token_id, terminal.c.is_terminal),
                )
                .where(and_(t.tokens.c.run_id == run_id, terminal.c.outcome_id.is_(None)))
                .order_by(t.rows.c.row_index, t.tokens.c.token_id)
            ).mappings()
            return [dict(r) for r in found]

    def rows_without_tokens(self, run_id: str) -> list[Record]:
        with self.db.connect() as conn:
            found = conn.execute(
                select(t.rows.c.row_id, t.rows.c.row_index)
                .outerjoin(t.tokens, t.tokens.c.row_id == t.rows.c.row_id)
                .where(and_(t.rows.c.run_id == run_id, t.tokens.c.token_id.is_(None)))
                .order_by(t.rows.c.row_index)
            ).mappings()
            return [dict(r) for r in found]

    def batch_members_with_data(self, batch_id: str) -> list[Record]:
        with self.db.connect() as conn:
            found = conn.execute(
                select(t.batch_members)
                .where(t.batch_members.c.batch_id == batch_id)
                .order_by(t.batch_members.c.ordinal)
            ).mappings()
            return [dict(r) for r in found]

    def token_rows(self, token_ids: list[str]) -> dict[str, str]:
        """token_id -> row_id."""
        if not token_ids:
            return {}
        with self.db.connect() as conn:
            found = conn.execute(
                select(t.tokens.c.token_id, t.tokens.c.row_id).where(
                    t.tokens.c.token_id.in_(token_ids)
                )
            ).all()
            return {str(a): str(b) for a, b in found}

    def row_indexes(self, row_ids: list[str]) -> dict[str, int]:
        """row_id -> row_index."""
        if not row_ids:
            return {}
        with self.db.connect() as conn:
            found = conn.execute(
                select(t.rows.c.row_id, t.rows.c.row_index).where(t.rows.c.row_id.in_(row_ids))
            ).all()
            return {str(a): int(b) for a, b in found}

    def outcome_counts(self, run_id: str) -> dict[str, int]:
        with self.db.connect() as conn:
            found = conn.execute(
                select(t.token_outcomes.c.outcome, func.count())
                .where(and_(t.token_outcomes.c.run_id == run_id, t.token_outcomes.c.is_terminal))
                .group_by(t.token_outcomes.c.outcome)
            ).all()
            return {str(k): int(v) for k, v in found}

    def sink_counts(self, run_id: str) -> dict[str, int]:
        with self.db.connect() as conn:
            found = conn.execute(
                select(t.token_outcomes.c.sink_name, func.count())
                .where(
                    and_(
                        t.token_outcomes.c.run_id == run_id,
                        t.token_outcomes.c.is_terminal,
                        t.token_outcomes.c.sink_name.is_not(None),
                    )
                )
                .group_by(t.token_outcomes.c.sink_name)
            ).all()
            return {str(k): int(v) for k, v in found}

    def attempts(self, run_id: str) -> list[Record]:
        with self.db.connect() as conn:
            found = conn.execute(
                select(t.run_attempts)
                .where(t.run_attempts.c.run_id == run_id)
                .order_by(t.run_attempts.c.attempt)
            ).mappings()
            return [dict(r) for r in found]

    def tokens_per_row_violations(self, run_id: str) -> int:
        """Tokens with zero or several terminal outcomes (0 for a healthy completed run)."""
        with self.db.connect() as conn:
            counts = (
                select(t.tokens.c.token_id, func.count(t.token_outcomes.c.outcome_id).label("n"))
                .outerjoin(
                    t.token_outcomes,
                    and_(
                        t.token_outcomes.c.token_id == t.tokens.c.token_id,
                        t.token_outcomes.c.is_terminal,
                    ),
                )
                .where(t.tokens.c.run_id == run_id)
                .group_by(t.tokens.c.token_id)
                .subquery()
            )
            return int(
                conn.execute(
                    select(func.count()).select_from(counts).where(counts.c.n != 1)
                ).scalar_one()
            )
