"""A ``best_effort`` coalesce merges what arrived once its ``timeout_seconds`` elapsed, not only at
the end of the source (SPEC section 2), driven by an injected clock.

Even rows fork to 'a' (waits at the coalesce) and 'side'; no row ever reaches 'b', so every join
is incomplete. A test transform advances the fake clock by 3 s per row, so with a 10 s timeout the
join of row k merges right after row k + 4 (12 s later), and the last joins at the end.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from elspeth_core.config import load_settings
from elspeth_core.engine.coalesce import PendingJoin, join_timed_out
from elspeth_core.engine.orchestrator import Orchestrator
from elspeth_core.engine.tokens import Token
from elspeth_core.landscape import LandscapeDB
from elspeth_core.plugins import PluginConfig, TransformResult
from elspeth_core.plugins.registry import PluginRegistry
from tests.support.cli import query
from tests.support.pipelines import (
    assert_every_token_terminal_once,
    csv_sink,
    jsonl_sink,
    make_csv,
    pipeline,
    read_csv,
)

ROWS = 20
TICK = 3.0
TIMEOUT = 10.0


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def monotonic(self) -> float:
        return self.now


def _registry(clock: FakeClock) -> PluginRegistry:
    class Tick:
        name = "tick"
        version = "0.1"
        config_model = PluginConfig

        def __init__(self, options: dict | None = None) -> None:
            pass

        def process(self, row: dict) -> TransformResult:
            clock.now += TICK
            return TransformResult.ok(row)

    registry = PluginRegistry.builtin(entry_points=False)
    registry.register(Tick)
    return registry


def _settings(work: Path, source: Path, landscape: str) -> Path:
    gates = [
        {
            "name": "even",
            "condition": "row['id'] % 2 == 0",
            "routes": {"true": "fork", "false": "continue"},
            "fork_to": ["a", "side"],
        },
        {
            "name": "never",
            "condition": "row['id'] < 0",
            "routes": {"true": "fork", "false": "continue"},
            "fork_to": ["b"],
        },
    ]
    coalesce = [
        {
            "name": "join",
            "branches": ["a", "b"],
            "policy": "best_effort",
            "timeout_seconds": TIMEOUT,
        }
    ]
    data = pipeline(
        work,
        source,
        landscape=landscape,
        row_plugins=[{"plugin": "tick"}],
        gates=gates,
        coalesce=coalesce,
        sinks={"out": csv_sink(work, "out"), "side": jsonl_sink(work, "side")},
        frequency="every_row",
    )
    path = work / "settings.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_a_best_effort_join_merges_when_its_timeout_elapses(
    tmp_path: Path, landscape_url: str
) -> None:
    source = make_csv(tmp_path / "in.csv", ROWS)
    clock = FakeClock()
    with LandscapeDB(landscape_url) as db:
        result = Orchestrator(db, registry=_registry(clock), clock=clock).run(
            load_settings(_settings(tmp_path, source, landscape_url))
        )
    assert result.status == "completed"

    # Row m is processed at 3(m + 1) s; the join opened by even row k times out once
    # 3(m - k) >= 10, i.e. after row k + 4. Joins of the last rows merge at the end.
    expected: list[int] = []
    for m in range(ROWS):
        if m % 2:
            expected.append(m)
        if m >= 4 and (m - 4) % 2 == 0:
            expected.append(m - 4)
    expected += [k for k in range(0, ROWS, 2) if k + 4 >= ROWS]
    assert [int(r["id"]) for r in read_csv(tmp_path / "out" / "out.csv")] == expected

    db_path = landscape_url
    assert_every_token_terminal_once(db_path, result.run_id)
    merged = query(
        db_path,
        f"""SELECT c.branch_name, count(*) FROM tokens m
            JOIN token_parents p ON p.token_id = m.token_id
            JOIN tokens c ON c.token_id = p.parent_token_id
            WHERE m.run_id = '{result.run_id}' AND m.join_group_id IS NOT NULL
            GROUP BY c.branch_name""",
    )
    assert merged == [("a", ROWS // 2)]


def test_only_an_unmerged_best_effort_join_with_arrivals_times_out() -> None:
    class Settings:
        def __init__(self, policy: str, timeout_seconds: float | None) -> None:
            self.policy = policy
            self.timeout_seconds = timeout_seconds
            self.branches = ["a", "b"]

    arrived = {"a": Token("t1", "r1", 0, {"id": 0}, branch="a")}
    waiting = PendingJoin("join", opened_at=100.0, arrived=dict(arrived))
    best_effort = Settings("best_effort", 10.0)
    assert join_timed_out(best_effort, waiting, now=110.0)
    assert not join_timed_out(best_effort, waiting, now=109.9)
    assert not join_timed_out(Settings("quorum", 10.0), waiting, now=500.0)
    assert not join_timed_out(Settings("require_all", 10.0), waiting, now=500.0)
    assert not join_timed_out(best_effort, PendingJoin("join", 100.0), now=500.0)
    merged = PendingJoin("join", 100.0, dict(arrived), merged=True)
    assert not join_timed_out(best_effort, merged, now=500.0)
