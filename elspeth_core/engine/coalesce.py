"""Coalesce (join) rules: when a join is ready and what its merged row is. Pure, no I/O.

A join collects the fork children of one fork group that reach a coalesce, keyed by branch. The
session records arrivals and merges; this module only decides readiness and builds merged data.
Merged data never shares mutable values with the branch rows (branches were deep-copied at the fork;
``select`` and ``union`` copy the top level again so a later change to one never leaks).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from elspeth_core.engine.tokens import Token


@dataclass
class PendingJoin:
    """Branch tokens of one fork group waiting at one coalesce."""

    coalesce: str
    opened_at: float
    arrived: dict[str, Token] = field(default_factory=dict)
    merged: bool = False


def join_ready(settings: Any, join: PendingJoin) -> bool:
    """Whether the coalesce policy lets ``join`` merge now."""
    count = len(join.arrived)
    if settings.policy == "first":
        return count >= 1
    if settings.policy == "quorum":
        return count >= (settings.quorum_count or len(settings.branches))
    return count >= len(settings.branches)


def can_merge_incomplete(settings: Any, join: PendingJoin) -> bool:
    """At end of source (or after a timeout): may a join that is not complete still merge?"""
    if not join.arrived:
        return False
    if settings.policy == "best_effort":
        return True
    return settings.policy in ("quorum", "first") and join_ready(settings, join)


def join_timed_out(settings: Any, join: PendingJoin, now: float) -> bool:
    """Whether a ``best_effort`` join has waited ``timeout_seconds`` and merges what arrived.

    ``now`` is the same monotonic clock ``join.opened_at`` was read from (a resumed join's
    ``opened_at`` is rebuilt from its recorded elapsed age).
    """
    return (
        settings.policy == "best_effort"
        and settings.timeout_seconds is not None
        and bool(join.arrived)
        and not join.merged
        and now - join.opened_at >= settings.timeout_seconds
    )


def ordered_arrivals(settings: Any, join: PendingJoin) -> list[Token]:
    """The arrived branch tokens in the coalesce's ``branches`` order."""
    return [join.arrived[b] for b in settings.branches if b in join.arrived]


def merged_data(settings: Any, ordered: list[Token]) -> dict[str, Any]:
    """The merged row: ``union`` (later branches win), ``nested`` (by branch), or ``select``."""
    if settings.merge == "nested":
        return {token.branch or "": token.data for token in ordered}
    if settings.merge == "select":
        chosen = next((t for t in ordered if t.branch == settings.select_branch), ordered[0])
        return dict(chosen.data)
    data: dict[str, Any] = {}
    for token in ordered:
        data.update(token.data)
    return data
