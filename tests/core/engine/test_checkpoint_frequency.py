"""``checkpoint.frequency`` decides how much a resume redoes — never the outputs.

Killed while reading row 350 of a pipeline whose aggregation fires every 100 rows, the durable
position is: the last batch boundary (300) for ``aggregation_only``; the last commit of every 30
rows after it (330) for ``every_n`` — or the one before it (300 with the aggregation, 300 without),
since an ``every_n`` commit becomes durable on the commit thread while the next rows are read, so
at most one commit is still in flight when the process dies; the row before (349) for
``every_row``, whose commits are durable before the next row is read. Without aggregations,
``aggregation_only`` commits nothing before the end (or the engine's row cap). Every test runs on
both landscape backends (SQLite and PostgreSQL).
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from tests.support.cli import query
from tests.support.landscape_fixtures import Landscapes
from tests.support.pipelines import (
    assert_every_token_terminal_once,
    make_csv,
    only_run,
    outputs,
    pipeline,
    resume,
    run_pipeline,
)

ROWS = 1000
STATS = {
    "name": "stats",
    "plugin": "batch_stats",
    "trigger": {"count": 100},
    "output_mode": "single",
    "options": {"value_field": "amount"},
}


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_csv(tmp_path_factory.mktemp("input") / "in.csv", ROWS)


@pytest.fixture(scope="module")
def references(
    tmp_path_factory: pytest.TempPathFactory, source: Path, landscapes: Landscapes
) -> dict[bool, dict]:
    found = {}
    for with_aggregation in (True, False):
        work = tmp_path_factory.mktemp("reference")
        aggs = [STATS] if with_aggregation else []
        data = pipeline(work, source, aggregations=aggs, landscape=landscapes.new(work))
        ran = run_pipeline(work, data)
        assert ran.code == 0, ran.stderr
        found[with_aggregation] = outputs(work)
    return found


@pytest.mark.parametrize(
    ("frequency", "with_aggregation", "durable_rows"),
    [
        ("aggregation_only", True, {300}),
        ("every_n", True, {300, 330}),
        ("every_row", True, {349}),
        ("aggregation_only", False, {0}),
        ("every_n", False, {300, 330}),
    ],
)
def test_frequency_sets_the_durable_position_and_never_the_outputs(
    tmp_path: Path,
    source: Path,
    references: dict[bool, dict],
    frequency: str,
    with_aggregation: bool,
    durable_rows: set[int],
    landscape_url: str,
) -> None:
    aggs = [STATS] if with_aggregation else []
    db = landscape_url
    data = pipeline(
        tmp_path, source, aggregations=aggs, frequency=frequency, interval=30, landscape=db
    )
    crashed = run_pipeline(tmp_path, data, env={"ELSPETH_FAULT_INJECT": "source_read:350"})
    assert crashed.code == -signal.SIGKILL
    run_id = only_run(db)
    [(durable,)] = query(db, f"SELECT source_rows_ingested FROM runs WHERE run_id = '{run_id}'")
    assert durable in durable_rows
    assert query(db, f"SELECT count(*) FROM rows WHERE run_id = '{run_id}'") == [(durable,)]
    assert query(db, f"SELECT rows_ingested FROM checkpoints WHERE run_id = '{run_id}'") == [
        (durable,)
    ]
    assert resume(tmp_path, run_id, landscape=db).code == 0
    assert outputs(tmp_path) == references[with_aggregation]
    assert_every_token_terminal_once(db, run_id)
