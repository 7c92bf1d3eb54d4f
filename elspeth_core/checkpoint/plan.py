"""The batch part of the resume plan: what a resume will do with each recorded batch.

Key contracts:
- The plan states, per batch, exactly what ``Orchestrator._restore`` does with it (SPEC §4 rule
  4): an ``executing`` batch is marked ``failed`` and retried; a ``failed`` batch without a newer
  attempt is retried (attempt + 1); a retry that is still a ``draft`` is restored and run; any
  other ``draft`` is restored with its members and keeps buffering; a ``failed`` batch that
  already has a retry is superseded by it and left alone; a failed ``passthrough`` batch whose
  members all have a final (``failed``) outcome stays failed.
- :func:`plan_batches` is pure — recorded batches in, actions out — so the rules can be tested
  without a landscape. It must never write.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

BatchActionKind = Literal[
    "retry",  # failed, no newer attempt: retry_batch → attempt + 1, run
    "fail_and_retry",  # executing (its process died): mark failed, then retry
    "run_retry_draft",  # a retry (attempt ≥ 2) created but not run yet: restore and run it
    "restore",  # an open draft: restore its members and trigger age, keep buffering
    "superseded",  # failed, and a newer attempt exists: nothing to do
    "stays_failed",  # failed passthrough batch whose members' failure is final: not retried
    "fail_only",  # executing passthrough batch whose members are all final: marked failed only
]
RERUN_ACTIONS: tuple[BatchActionKind, ...] = ("retry", "fail_and_retry", "run_retry_draft")


@dataclass(frozen=True)
class BatchAction:
    """One recorded batch and what a resume will do with it."""

    batch_id: str
    aggregation: str
    aggregation_node_id: str
    status: str
    attempt: int
    members: int
    action: BatchActionKind
    label: str
    retry_of_batch_id: str | None = None
    superseded_by: str | None = None
    next_attempt: int | None = None
    elapsed_seconds: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def plan_batches(
    batches: Sequence[Mapping[str, Any]],
    *,
    member_ids: Callable[[str], list[str]],
    nonterminal: set[str],
    output_modes: Mapping[str, str],
    elapsed: Mapping[str, float],
) -> list[BatchAction]:
    """What a resume does with each batch that is not ``completed``, oldest first.

    Args:
        batches: every batch of the run (any status), oldest first.
        member_ids: a batch's member token IDs, in ordinal order.
        nonterminal: the run's token IDs without a terminal outcome.
        output_modes: aggregation name → ``output_mode`` (``single`` when absent).
        elapsed: batch ID → trigger age saved in the checkpoint, for open drafts.

    Returns:
        One :class:`BatchAction` per batch in ``draft``, ``executing`` or ``failed``.
    """
    successors = {b["retry_of_batch_id"]: b for b in batches if b.get("retry_of_batch_id")}
    actions = []
    for batch in batches:
        if batch["status"] == "completed":
            continue
        ids = member_ids(batch["batch_id"])
        mode = output_modes.get(batch["aggregation_name"], "single")
        # Same rule as the orchestrator: a passthrough batch whose members all already have a
        # final outcome (its aggregation raised and failed them) would emit them twice.
        retryable = mode != "passthrough" or any(token in nonterminal for token in ids)
        actions.append(
            _action(batch, len(ids), successors.get(batch["batch_id"]), retryable, elapsed)
        )
    return actions


def _action(
    batch: Mapping[str, Any],
    members: int,
    successor: Mapping[str, Any] | None,
    retryable: bool,
    elapsed: Mapping[str, float],
) -> BatchAction:
    attempt = int(batch["attempt"])
    common: dict[str, Any] = {
        "batch_id": batch["batch_id"],
        "aggregation": batch["aggregation_name"],
        "aggregation_node_id": batch["aggregation_node_id"],
        "status": batch["status"],
        "attempt": attempt,
        "members": members,
        "retry_of_batch_id": batch.get("retry_of_batch_id"),
    }
    status = batch["status"]
    if status == "failed" and successor is not None:
        return BatchAction(
            **common,
            action="superseded",
            label=f"superseded by attempt {successor['attempt']} "
            f"(batch {successor['batch_id']}); left as is",
            superseded_by=successor["batch_id"],
        )
    if status in ("failed", "executing") and not retryable:
        final = "every member already has a final outcome"
        if status == "executing":
            return BatchAction(**common, action="fail_only", label=f"will mark failed; {final}")
        return BatchAction(**common, action="stays_failed", label=f"stays failed: {final}")
    if status == "failed":
        return BatchAction(
            **common,
            action="retry",
            label=f"will retry (attempt {attempt + 1}) with {members} members",
            next_attempt=attempt + 1,
        )
    if status == "executing":
        return BatchAction(
            **common,
            action="fail_and_retry",
            label=f"will mark failed and retry (attempt {attempt + 1}) with {members} members",
            next_attempt=attempt + 1,
        )
    if batch.get("retry_of_batch_id"):
        return BatchAction(
            **common,
            action="run_retry_draft",
            label=f"restore retry draft (attempt {attempt}, retrying batch "
            f"{batch['retry_of_batch_id']}) with {members} members and run it",
        )
    age = float(elapsed.get(batch["batch_id"], 0.0))
    return BatchAction(
        **common,
        action="restore",
        label=f"restore with {members} members and keep buffering (trigger age {age:.1f} s)",
        elapsed_seconds=age,
    )
