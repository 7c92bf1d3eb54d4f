"""Aggregation state of one run session: open batches, closed batches waiting to run, triggers.

Pure: no I/O, no landscape access. The session records what happens to batches; this module only
says when a batch fires and holds the in-memory shape of batches.

Key contracts:
- A batch is *open* (``draft``) while it buffers members; when a trigger fires it is *closed*: its
  status ``executing`` is recorded in the same commit unit as its last member, so a draft batch in
  the landscape never holds a batch that already fired (a resume can continue buffering into it).
- Trigger state is an *elapsed* age and a count; a monotonic timestamp is only ever compared with
  the same process's clock (after a restart the age is rebuilt from the recorded elapsed seconds).
- Closed batches run in FIFO order. A batch's outputs only reach later aggregations, so the queue
  is ordered by pipeline position, then by closing order — the order a resume retries them in.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from elspeth_core.dag import Node
from elspeth_core.engine.expressions import Expression
from elspeth_core.engine.tokens import Token
from elspeth_core.errors import PluginError

TRIGGER_NAMES = frozenset({"row", "batch_count", "batch_age_seconds"})


class MonotonicClock(Protocol):
    def monotonic(self) -> float: ...


@dataclass
class OpenBatch:
    """An aggregation's open (draft) batch: members in ordinal order and its trigger state."""

    node: Node
    index: int
    batch_id: str
    members: list[Token] = field(default_factory=list)
    opened_at: float = 0.0  # this process's monotonic clock; persisted as an elapsed age

    def age(self, clock: MonotonicClock) -> float:
        return max(0.0, clock.monotonic() - self.opened_at)


@dataclass(frozen=True)
class ClosedBatch:
    """A batch whose trigger fired (``executing`` recorded) and that waits to be aggregated."""

    index: int
    batch_id: str
    members: list[Token]


def parse_condition(source: str | None) -> Expression | None:
    """The trigger's ``condition`` over ``row``, ``batch_count`` and ``batch_age_seconds``."""
    return Expression.parse(source, names=TRIGGER_NAMES) if source else None


def fired_trigger(
    node: Node,
    batch: OpenBatch,
    clock: MonotonicClock,
    *,
    token: Token | None,
    condition: Expression | None,
) -> tuple[str, str] | None:
    """``(trigger_type, reason)`` of the first trigger that fires for ``batch``, else None.

    Count, then timeout, then condition (evaluated only when a member just arrived: ``token``).
    """
    trigger = node.settings.trigger
    count = len(batch.members)
    age = batch.age(clock)
    if trigger.count and count >= trigger.count:
        return "count", f"batch_count {count} >= {trigger.count}"
    if trigger.timeout_seconds is not None and age >= trigger.timeout_seconds:
        return "timeout", f"batch_age_seconds {age:.3f} >= {trigger.timeout_seconds}"
    if condition is not None and token is not None:
        env: dict[str, Any] = {"row": token.data, "batch_count": count, "batch_age_seconds": age}
        if condition.evaluate(env):
            return "condition", f"condition true: {condition.source}"
    return None


def check_output_count(mode: str, members: int, outputs: int) -> None:
    """Raise when an aggregation broke its output mode's row-count contract.

    Raises:
        PluginError: ``single`` without exactly one row, ``passthrough`` without one per member.
    """
    if mode == "single" and outputs != 1:
        raise PluginError(f"single output mode needs exactly 1 output row, got {outputs}")
    if mode == "passthrough" and outputs != members:
        raise PluginError(
            f"passthrough output mode needs one output per member ({members}), got {outputs}"
        )
