"""Property: for any pipeline shape and any crash point, crash + resume = the crash-free run.

Hypothesis draws a pipeline — 0 to 2 transforms, an optional aggregation (random count trigger and
output mode), an optional gate that forks to a ``require_all`` coalesce or routes to a second
sink — and one or two crash plans (a named crash point and how many times it is reached before the
kill; the second plan kills the first resume). Each example runs the real CLI in subprocesses: the
crash-free reference, then the crashed run and resumes until it completes. Outputs must be
byte-identical and every token must have exactly one terminal outcome. The property is checked on
both landscape backends (SQLite and PostgreSQL); every example gets its own two landscapes.
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.cli import assert_landscape_invariants, run_cli, run_ids, write_settings
from tests.support.landscape_fixtures import Landscapes
from tests.support.pipelines import csv_sink, jsonl_sink, make_csv, outputs, pipeline

pytestmark = pytest.mark.slow

ROWS = 700
TRANSFORMS = {
    "truncate": {"plugin": "truncate", "options": {"max_length": 14, "fields": ["note"]}},
    "keyword_filter": {
        "plugin": "keyword_filter",
        "on_error": "flagged",
        "options": {"keywords": ["secret"], "fields": ["note"]},
    },
    "field_mapper": {"plugin": "field_mapper", "options": {"mapping": {"status": "state"}}},
    "passthrough": {"plugin": "passthrough"},
}
AGGREGATIONS = {
    "single": ("batch_stats", {"value_field": "amount"}),
    "passthrough": ("batch_stats", {"value_field": "amount"}),
    "transform": ("batch_replicate", {"copies_field": "copies", "include_copy_index": True}),
}
CRASH_POINTS = (
    "source_read",
    "after_sink_write",
    "during_commit",
    "after_commit",
    "batch_executing",
    "mid_flush",
    "after_flush",
)
# What the gate looks at exists in every shape: single-mode batches have 'sum', not 'amount'.
BIG = "row.get('amount', row.get('sum', 0)) >= 500"


@st.composite
def shapes(draw: st.DrawFn) -> dict[str, Any]:
    transforms = draw(st.lists(st.sampled_from(sorted(TRANSFORMS)), max_size=2, unique=True))
    aggregation = draw(
        st.none()
        | st.tuples(st.sampled_from(sorted(AGGREGATIONS)), st.integers(min_value=3, max_value=80))
    )
    gate = draw(st.sampled_from([None, "fork", "route"]))
    return {"transforms": transforms, "aggregation": aggregation, "gate": gate}


@st.composite
def crash_plans(draw: st.DrawFn, shape: dict[str, Any]) -> list[str]:
    """One or two crash plans; batch crash points only where there are batches."""
    points = CRASH_POINTS if shape["aggregation"] else CRASH_POINTS[:4]

    def plan() -> str:
        point = draw(st.sampled_from(points))
        upper = ROWS if point == "source_read" else 8
        return f"{point}:{draw(st.integers(min_value=1, max_value=upper))}"

    return [plan()] + ([plan()] if draw(st.booleans()) else [])


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[dict[str, Any], list[str]]:
    shape = draw(shapes())
    return shape, draw(crash_plans(shape))


def _pipeline(work: Path, source: Path, shape: dict[str, Any], landscape: str) -> dict:
    sinks = {
        "out": csv_sink(work, "out"),
        "flagged": jsonl_sink(work, "flagged"),
        "high": jsonl_sink(work, "high"),
    }
    aggregations = []
    if shape["aggregation"] is not None:
        mode, count = shape["aggregation"]
        plugin, options = AGGREGATIONS[mode]
        aggregations.append(
            {
                "name": "agg",
                "plugin": plugin,
                "trigger": {"count": count},
                "output_mode": mode,
                "options": options,
            }
        )
    gates: list[dict] = []
    coalesce: list[dict] = []
    if shape["gate"] == "fork":
        gates.append(
            {
                "name": "split",
                "condition": BIG,
                "routes": {"true": "fork", "false": "continue"},
                "fork_to": ["a", "b"],
            }
        )
        coalesce.append({"name": "join", "branches": ["a", "b"], "policy": "require_all"})
    elif shape["gate"] == "route":
        gates.append(
            {"name": "big", "condition": BIG, "routes": {"true": "high", "false": "continue"}}
        )
    return pipeline(
        work,
        source,
        sinks=sinks,
        interval=40,
        aggregations=aggregations,
        gates=gates,
        coalesce=coalesce,
        row_plugins=[TRANSFORMS[name] for name in shape["transforms"]],
        landscape=landscape,
    )


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_csv(tmp_path_factory.mktemp("input") / "in.csv", ROWS, seed=13)


def _until_done(work: Path, db: str, settings_path: Path, plans: list[str]) -> None:
    plans = list(plans)
    for _attempt in range(10):
        env = {"ELSPETH_FAULT_INJECT": plans.pop(0)} if plans else {}
        ids = run_ids(db)
        result = (
            run_cli("resume", ids[0], "-d", db, "-x", cwd=work, env=env)
            if ids
            else run_cli("run", "-s", str(settings_path), "-x", cwd=work, env=env)
        )
        if result.code == 0:
            return
        assert result.code == -signal.SIGKILL, result.stderr
    raise AssertionError("the run did not complete")


@settings(
    max_examples=12,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(scenario=scenarios())
def test_crash_and_resume_equal_the_crash_free_run(
    tmp_path_factory: pytest.TempPathFactory,
    source: Path,
    landscapes: Landscapes,
    request: pytest.FixtureRequest,
    scenario: tuple[dict[str, Any], list[str]],
) -> None:
    shape, plans = scenario
    reference = tmp_path_factory.mktemp("reference")
    data = _pipeline(reference, source, shape, landscapes.new(reference, request=request))
    ran = run_cli(
        "run", "-s", str(write_settings(reference / "settings.yaml", data)), "-x", cwd=reference
    )
    assert ran.code == 0, ran.stderr

    work = tmp_path_factory.mktemp("crashed")
    db = landscapes.new(work, request=request)
    settings_path = write_settings(work / "settings.yaml", _pipeline(work, source, shape, db))
    _until_done(work, db, settings_path, plans)

    assert outputs(work) == outputs(reference), (shape, plans)
    (run_id,) = run_ids(db)
    assert_landscape_invariants(db, run_id, ROWS)
