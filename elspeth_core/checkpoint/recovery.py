"""RecoveryManager: can a run resume, from where, and what work is left.

Key contracts (SPEC §4):
- What needs work is derived from recorded outcomes — tokens without a terminal outcome, rows
  without tokens, incomplete batches — never from a counter. The checkpoint only adds what the
  outcomes cannot say: open batches' elapsed trigger age and pending joins.
- A refusal never writes anything. Refusal messages use the runbook's phrases.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from elspeth_core.checkpoint.manager import CheckpointManager
from elspeth_core.checkpoint.plan import RERUN_ACTIONS, BatchAction, plan_batches
from elspeth_core.engine.lease import owner_is_dead
from elspeth_core.errors import (
    NoCheckpoint,
    ResumeRefused,
    RunAlreadyCompleted,
    RunInProgress,
    RunNotFound,
)
from elspeth_core.landscape import LandscapeDB, LandscapeQueries, LandscapeRecorder


@dataclass(frozen=True)
class ResumePoint:
    """Where a run resumes: its newest checkpoint and the state recorded with it."""

    run_id: str
    checkpoint: dict[str, Any]
    node_id: str | None
    sequence_number: int
    aggregation_state: dict[str, Any]
    rows_ingested: int


@dataclass(frozen=True)
class ResumePlan:
    """What a resume will do (shown by ``elspeth resume`` without ``--execute``)."""

    run_id: str
    status: str
    resume_point: ResumePoint
    rows_recorded: int
    source_exhausted: bool
    unprocessed_rows: list[str]
    batches: list[BatchAction]
    lease: dict[str, Any] = field(default_factory=dict)

    @property
    def batches_to_retry(self) -> list[BatchAction]:
        """Batches the resume runs again: executing and failed ones, and retries not run yet."""
        return [b for b in self.batches if b.action in RERUN_ACTIONS]

    @property
    def draft_batches(self) -> list[BatchAction]:
        """Open batches (not retries) restored with their members; they keep buffering."""
        return [b for b in self.batches if b.action == "restore"]

    def as_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "status": self.status,
            "checkpoint_sequence": self.resume_point.sequence_number,
            "checkpoint_row_id": self.resume_point.checkpoint.get("row_id"),
            "rows_recorded": self.rows_recorded,
            "source_exhausted": self.source_exhausted,
            "unprocessed_rows": len(self.unprocessed_rows),
            "batches_to_retry": [b.as_dict() for b in self.batches_to_retry],
            "draft_batches": [b.as_dict() for b in self.draft_batches],
            "batches": [b.as_dict() for b in self.batches],
            "lease": self.lease,
        }


class RecoveryManager:
    def __init__(self, db: LandscapeDB, checkpoint_manager: CheckpointManager) -> None:
        self.db = db
        self.checkpoints = checkpoint_manager
        self.queries = LandscapeQueries(db)
        self.recorder = LandscapeRecorder(db)

    def check_resumable(self, run_id: str) -> dict[str, Any]:
        """Return the run record, or raise the refusal that applies.

        Raises:
            RunNotFound, RunAlreadyCompleted, RunInProgress, NoCheckpoint.
        """
        run = self.queries.get_run(run_id)
        if run is None:
            raise RunNotFound(run_id)
        if run["status"] == "completed":
            raise RunAlreadyCompleted(run_id)
        if run.get("superseded_by"):
            raise ResumeRefused(
                f"Run {run_id} was superseded by run {run['superseded_by']} (--force-new)",
                hint=f"Resume or inspect run {run['superseded_by']} instead.",
                run_id=run_id,
            )
        if lease_is_live(run):
            expires = run["lease_expires_at"]
            raise RunInProgress(run_id, str(run["lease_owner"]), expires.isoformat())
        if self.queries.latest_checkpoint(run_id) is None:
            raise NoCheckpoint(run_id)
        return run

    def can_resume(self, run_id: str) -> tuple[bool, str]:
        """(True, "resumable") or (False, the refusal's message)."""
        try:
            self.check_resumable(run_id)
        except ResumeRefused as exc:
            return False, exc.message
        return True, "resumable"

    def get_resume_point(self, run_id: str) -> ResumePoint:
        self.check_resumable(run_id)
        checkpoint = self.checkpoints.get_latest_checkpoint(run_id)
        if checkpoint is None:
            raise NoCheckpoint(run_id)
        return ResumePoint(
            run_id=run_id,
            checkpoint=checkpoint,
            node_id=checkpoint.get("node_id"),
            sequence_number=int(checkpoint["sequence_number"]),
            aggregation_state=json.loads(checkpoint.get("aggregation_state_json") or "{}"),
            rows_ingested=int(checkpoint["rows_ingested"]),
        )

    def get_unprocessed_rows(self, run_id: str) -> list[str]:
        """Row IDs that still need work: no tokens, or a token without a terminal outcome.

        Fork and expansion parents are recorded with terminal outcomes (``forked``/``expanded``),
        so only their children count here. Rows never read are not listed: they are not recorded
        yet, and resume reads them from the source.
        """
        found = {r["row_id"]: r["row_index"] for r in self.queries.rows_without_tokens(run_id)}
        for token in self.queries.nonterminal_tokens(run_id):
            found.setdefault(token["row_id"], token["row_index"])
        return [row_id for row_id, _ in sorted(found.items(), key=lambda kv: kv[1])]

    def plan(self, run_id: str) -> ResumePlan:
        """What ``Orchestrator.open_for_resume`` would do with this run; writes nothing.

        Raises:
            ResumeRefused (and subclasses): as :meth:`check_resumable`.
        """
        point = self.get_resume_point(run_id)
        run = self.queries.get_run(run_id) or {}
        return ResumePlan(
            run_id=run_id,
            status=str(run.get("status")),
            resume_point=point,
            rows_recorded=self.queries.count_rows(run_id),
            source_exhausted=bool(run.get("source_exhausted")),
            unprocessed_rows=self.get_unprocessed_rows(run_id),
            batches=self.batch_actions(run, point),
            lease={
                "owner": run.get("lease_owner"),
                "expires_at": _iso(run.get("lease_expires_at")),
            },
        )

    def batch_actions(self, run: dict[str, Any], point: ResumePoint) -> list[BatchAction]:
        """What a resume does with each batch that is not completed (:func:`plan_batches`)."""
        run_id = str(run["run_id"])
        batches = self.recorder.get_batches(run_id)
        if all(b["status"] == "completed" for b in batches):
            return []
        settings = json.loads(run.get("settings_json") or "{}")
        saved = point.aggregation_state.get("aggregations", {})
        return plan_batches(
            batches,
            member_ids=lambda batch_id: [
                m["token_id"] for m in self.recorder.get_batch_members(batch_id)
            ],
            nonterminal={t["token_id"] for t in self.queries.nonterminal_tokens(run_id)},
            output_modes={
                a["name"]: a.get("output_mode", "single") for a in settings.get("aggregations", [])
            },
            elapsed={
                entry["batch_id"]: float(entry.get("elapsed_seconds", 0.0))
                for entry in saved.values()
                if isinstance(entry, dict) and entry.get("batch_id")
            },
        )


def lease_is_live(run: dict[str, Any]) -> bool:
    """A lease is live when held, unexpired, and its owner is not provably dead."""
    owner = run.get("lease_owner")
    expires = run.get("lease_expires_at")
    if not owner or expires is None:
        return False
    if expires < datetime.now(UTC):
        return False
    return not owner_is_dead(owner)


def _iso(value: Any) -> str | None:
    return value.isoformat() if isinstance(value, datetime) else None
