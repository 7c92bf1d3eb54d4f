"""In-memory audit records of one commit unit (a chunk of rows, or a batch flush).

The engine fills a :class:`ChunkRecords` while it processes rows and hands it to
``LandscapeRecorder.commit_chunk``, which writes everything in ONE transaction. Records are plain
dicts keyed by column name so that the engine never needs SQLAlchemy. Nothing here does I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

Record = dict[str, Any]


@dataclass
class ChunkRecords:
    """Everything one commit writes, table by table, in insertion order."""

    rows: list[Record] = field(default_factory=list)
    tokens: list[Record] = field(default_factory=list)
    token_parents: list[Record] = field(default_factory=list)
    node_states: list[Record] = field(default_factory=list)
    routing_events: list[Record] = field(default_factory=list)
    token_outcomes: list[Record] = field(default_factory=list)
    batches: list[Record] = field(default_factory=list)
    batch_members: list[Record] = field(default_factory=list)
    batch_outputs: list[Record] = field(default_factory=list)
    batch_updates: list[Record] = field(default_factory=list)
    validation_errors: list[Record] = field(default_factory=list)
    transform_errors: list[Record] = field(default_factory=list)
    artifacts: dict[str, Record] = field(default_factory=dict)
    checkpoint: Record | None = None
    rows_ingested: int | None = None
    source_exhausted: bool = False
    source_position_json: str | None = None  # the source's position after rows_ingested rows

    def is_empty(self) -> bool:
        return not (
            self.rows
            or self.tokens
            or self.node_states
            or self.token_outcomes
            or self.batches
            or self.batch_updates
            or self.batch_members
            or self.artifacts
            or self.checkpoint
        )

    def count(self) -> int:
        """Number of audit records (for progress and benchmarks)."""
        return sum(
            len(x)
            for x in (
                self.rows,
                self.tokens,
                self.token_parents,
                self.node_states,
                self.routing_events,
                self.token_outcomes,
                self.batch_members,
                self.batch_outputs,
                self.validation_errors,
                self.transform_errors,
            )
        )
