"""Fault injection for crash tests: named crash points where the process kills itself.

Production code calls ``faults.hit("after_sink_write")`` at the instants a crash is most dangerous.
With no plan (the default) that is a no-op. Tests set ``ELSPETH_FAULT_INJECT=<point>:<n>`` to make the
process SIGKILL itself the n-th time it reaches that point — a real, uncatchable death, exactly like
OOM or power loss (no cleanup, no hooks, no flush).

``<point>:<n>:stop`` freezes the process instead (SIGSTOP to itself, all threads) at the n-th hit,
until someone sends SIGCONT: a process that is alive but paused (a VM or container freeze, a stalled
disk) while its lease expires and another process takes the run over. It stops between landscape
transactions of the main thread (its heartbeat thread may be inside one).
"""

from __future__ import annotations

import os
import signal

CRASH_POINTS = (
    "source_read",  # after reading a source row, before it is committed
    "after_sink_write",  # sink bytes written (not yet fsynced), landscape transaction not begun
    "during_commit",  # inside the landscape transaction, before COMMIT
    "after_commit",  # right after a chunk commit
    "batch_executing",  # batch marked executing and committed, aggregation not run
    "mid_flush",  # aggregation ran, outputs partly driven downstream
    "after_flush",  # batch outputs driven, sink write not yet done
    "resume_start",  # resume: lease taken, nothing else done
)


class FaultInjector:
    """Kills the process at a named point (tests only); inert without a plan."""

    def __init__(self, plan: str | None = None) -> None:
        self._point: str | None = None
        self._remaining = 0
        self._signal = signal.SIGKILL
        if plan:
            point, _, rest = plan.partition(":")
            count, _, action = rest.partition(":")
            if point not in CRASH_POINTS:
                raise ValueError(
                    f"unknown crash point {point!r} (known: {', '.join(CRASH_POINTS)})"
                )
            if action not in ("", "kill", "stop"):
                raise ValueError(f"unknown fault action {action!r} (known: kill, stop)")
            self._point = point
            self._remaining = int(count or 1)
            self._signal = signal.SIGSTOP if action == "stop" else signal.SIGKILL

    @classmethod
    def from_env(cls) -> FaultInjector:
        return cls(os.environ.get("ELSPETH_FAULT_INJECT"))

    def hit(self, point: str) -> None:
        if point != self._point:
            return
        self._remaining -= 1
        if self._remaining <= 0:
            if self._signal == signal.SIGSTOP:
                self._point = None  # a pause happens once; continued, the process runs on
            os.kill(os.getpid(), self._signal)
