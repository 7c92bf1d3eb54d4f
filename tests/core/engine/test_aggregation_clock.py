"""Time-based triggers with an injected clock (the engine's clock port), and a resume that
restores a draft batch's *elapsed* age rather than a monotonic timestamp.

A test transform advances the fake clock by 3 s per row, so batch boundaries are exact. Every test
runs on both landscape backends (SQLite and PostgreSQL).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from elspeth_core.checkpoint import CheckpointManager, RecoveryManager
from elspeth_core.config import load_settings
from elspeth_core.dag import build_graph
from elspeth_core.engine.orchestrator import Orchestrator
from elspeth_core.landscape import LandscapeDB
from elspeth_core.plugins import BatchStats, PluginConfig, TransformResult
from elspeth_core.plugins.registry import PluginRegistry
from tests.support.cli import query
from tests.support.landscape_fixtures import Landscapes
from tests.support.pipelines import make_csv, outputs, pipeline


class FakeClock:
    def __init__(self, start: float = 0.0) -> None:
        self.now = start

    def monotonic(self) -> float:
        return self.now


class TickOptions(PluginConfig):
    seconds: float = 3.0


def _registry(clock: FakeClock, crash: dict[str, Any]) -> PluginRegistry:
    class Tick:
        """Advances the clock; raises KeyboardInterrupt once at row ``crash['at']``."""

        name = "tick"
        version = "0.1"
        config_model = TickOptions

        def __init__(self, options: dict | None = None) -> None:
            self.config = TickOptions.model_validate(options or {})

        def process(self, row: dict) -> TransformResult:
            if row["id"] == crash.get("at"):
                crash["at"] = None
                raise KeyboardInterrupt("simulated crash")
            clock.now += self.config.seconds
            return TransformResult.ok(row)

    registry = PluginRegistry.builtin(entry_points=False)
    registry.register(Tick)
    return registry


def _settings(work: Path, source: Path, trigger: dict, landscape: str) -> Path:
    agg = {
        "name": "window",
        "plugin": "batch_stats",
        "trigger": trigger,
        "output_mode": "single",
        "options": {"value_field": "amount"},
    }
    data = pipeline(
        work,
        source,
        row_plugins=[{"plugin": "tick"}],
        aggregations=[agg],
        frequency="every_row",
        landscape=landscape,
    )
    path = work / "settings.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _run(
    work: Path, source: Path, trigger: dict, landscape: str, crash_at: int | None = None
) -> str | None:
    clock = FakeClock()
    settings = _settings(work, source, trigger, landscape)
    with LandscapeDB(landscape) as db:
        orchestrator = Orchestrator(db, registry=_registry(clock, {"at": crash_at}), clock=clock)
        try:
            return orchestrator.run(load_settings(settings)).run_id
        except KeyboardInterrupt:
            return None


@pytest.mark.parametrize(
    ("trigger", "size", "kind", "reason"),
    [
        ({"timeout_seconds": 10}, 5, "timeout", "batch_age_seconds 12.000 >= 10.0"),
        (
            {"condition": "batch_age_seconds >= 7"},
            4,
            "condition",
            "condition true: batch_age_seconds >= 7",
        ),
        ({"count": 50, "timeout_seconds": 5}, 3, "timeout", "batch_age_seconds 6.000 >= 5.0"),
    ],
)
def test_time_triggers_fire_on_elapsed_batch_age(
    tmp_path: Path, trigger: dict, size: int, kind: str, reason: str, landscape_url: str
) -> None:
    source = make_csv(tmp_path / "in.csv", 22)
    run_id = _run(tmp_path, source, trigger, landscape_url)
    batches = query(
        landscape_url,
        f"""SELECT b.trigger_type, b.trigger_reason,
                        count(m.token_id) FROM batches b JOIN batch_members m
                        ON m.batch_id = b.batch_id WHERE b.run_id = '{run_id}'
                        GROUP BY b.batch_id ORDER BY b.created_at, b.batch_id""",
    )
    full, rest = divmod(22, size)
    assert batches == [(kind, reason, size)] * full + (
        [("end_of_source", "end of source", rest)] if rest else []
    )


def test_resume_restores_the_draft_batch_with_its_elapsed_age(
    tmp_path: Path, landscape_url: str, landscapes: Landscapes, request: pytest.FixtureRequest
) -> None:
    source = make_csv(tmp_path / "in.csv", 22)
    trigger = {"timeout_seconds": 10}
    reference = tmp_path / "reference"
    reference.mkdir()
    assert _run(reference, source, trigger, landscapes.new(reference, request=request)) is not None

    work = tmp_path / "crashed"
    work.mkdir()
    url = landscape_url
    # rows 0-6 committed, batch 5.. open
    assert _run(work, source, trigger, url, crash_at=7) is None
    clock = FakeClock(start=1000.0)  # a new process: its monotonic clock means nothing to us
    with LandscapeDB(url, create=False) as db:
        checkpoints = CheckpointManager(db)
        recovery = RecoveryManager(db, checkpoints)
        (run_id,) = [r[0] for r in query(url, "SELECT run_id FROM runs")]
        assert recovery.can_resume(run_id) == (True, "resumable")
        point = recovery.get_resume_point(run_id)
        saved = point.aggregation_state["aggregations"]
        (node_state,) = saved.values()
        assert node_state["count"] == 2
        assert node_state["elapsed_seconds"] == pytest.approx(3.0)

        orchestrator = Orchestrator(db, checkpoints, registry=_registry(clock, {}), clock=clock)
        session = orchestrator.open_for_resume(run_id)
        graph = build_graph(session.settings)
        restored = session.get_restored_state(graph.aggregations[0].node_id)
        assert restored is not None
        assert restored["count"] == 2
        assert restored["elapsed_seconds"] == pytest.approx(3.0)
        assert restored["members"] == node_state["members"]
        assert session.buffers[graph.aggregations[0].node_id].age(clock) == pytest.approx(3.0)
        assert session.get_restored_state(graph.sinks["out"].node_id) is None
        result = orchestrator._drive_to_end(session)
        assert result.status == "completed"

    assert outputs(work) == outputs(reference)


class Remembering:
    """A batch_stats that records what the engine restored for it (the ``on_restore`` hook)."""

    name = "remembering"
    version = "0.1"
    config_model = PluginConfig
    restored: list[dict] = []

    def __init__(self, options: dict | None = None) -> None:
        self._stats = BatchStats({"value_field": "amount"})

    def aggregate(self, rows: list[dict], output_mode: str) -> list[dict]:
        return self._stats.aggregate(rows, output_mode)

    def on_restore(self, state: dict) -> None:
        Remembering.restored.append(state)


def test_an_aggregation_plugin_is_told_what_was_restored(
    tmp_path: Path, landscape_url: str
) -> None:
    source = make_csv(tmp_path / "in.csv", 22)
    data = pipeline(
        tmp_path,
        source,
        row_plugins=[{"plugin": "tick"}],
        frequency="every_row",
        landscape=landscape_url,
        aggregations=[
            {
                "name": "window",
                "plugin": "remembering",
                "trigger": {"count": 5},
                "output_mode": "single",
            }
        ],
    )
    settings = tmp_path / "settings.yaml"
    settings.write_text(yaml.safe_dump(data, sort_keys=False))
    url = landscape_url
    crash: dict[str, Any] = {"at": 8}
    clock = FakeClock()
    registry = _registry(clock, crash)
    registry.register(Remembering)
    with LandscapeDB(url) as db:
        with pytest.raises(KeyboardInterrupt):
            Orchestrator(db, registry=registry, clock=clock).run(load_settings(settings))
        (run_id,) = [r[0] for r in query(url, "SELECT run_id FROM runs")]
        Remembering.restored.clear()
        orchestrator = Orchestrator(db, registry=registry, clock=clock)
        session = orchestrator.open_for_resume(run_id)
        node_id = session.graph.aggregations[0].node_id
        assert Remembering.restored == [session.get_restored_state(node_id)]
        assert Remembering.restored[0]["count"] == 3  # rows 5, 6, 7 of the second batch
        assert orchestrator._drive_to_end(session).status == "completed"
