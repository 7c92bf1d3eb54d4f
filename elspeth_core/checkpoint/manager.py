"""CheckpointManager: the checkpoint rows of a run.

The engine writes checkpoints inside its chunk commits (same transaction as the outcomes they vouch
for), through the recorder; this manager is the public face for reading and housekeeping. A
checkpoint stores elapsed ages, never monotonic clock readings (meaningless after a restart).
"""

from __future__ import annotations

import json
from typing import Any

from elspeth_core.landscape import LandscapeDB, LandscapeQueries, LandscapeRecorder
from elspeth_core.landscape.records import ChunkRecords


class CheckpointManager:
    def __init__(self, db: LandscapeDB) -> None:
        self.db = db
        self._queries = LandscapeQueries(db)
        self._recorder = LandscapeRecorder(db)

    def create_checkpoint(
        self, checkpoint: dict[str, Any], *, owner: str, lease_seconds: float
    ) -> None:
        """Record a checkpoint on its own (fenced by the run's lease); older ones are superseded."""
        records = ChunkRecords(checkpoint=checkpoint)
        self._recorder.commit_chunk(
            checkpoint["run_id"], records, owner=owner, lease_seconds=lease_seconds
        )

    def get_latest_checkpoint(self, run_id: str) -> dict[str, Any] | None:
        found = self._queries.latest_checkpoint(run_id)
        if found is not None:
            found["aggregation_state"] = json.loads(found.get("aggregation_state_json") or "{}")
        return found

    def delete_checkpoints(self, run_id: str) -> int:
        return self._recorder.delete_checkpoints(run_id)
