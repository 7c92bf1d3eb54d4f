"""The ``resume_run`` flow against Prefect's test harness: batch recovery and refusals.

A CLI run of an aggregation pipeline is SIGKILLed right after a batch's ``executing`` commit;
the ``resume_run`` flow then finishes it under the same run ID. The outputs must equal a
crash-free run's byte for byte, the interrupted batch must show its failed attempt and the retry
with the same members in the same order, and the summary artifact must count the retry. A resume
the landscape refuses must end the flow run ``Failed`` with the refusal's message. Both run on
both landscape backends (SQLite and PostgreSQL).
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import pytest

from tests.support.cli import assert_landscape_invariants, query, run_cli, run_ids, write_settings
from tests.support.flow_runs import read_run_artifacts
from tests.support.landscape_fixtures import Landscapes
from tests.support.pipelines import make_csv, outputs, pipeline

pytestmark = pytest.mark.prefect

ROWS = 1_200


def _aggregating(work: Path, source: Path, url: str) -> dict:
    return pipeline(
        work,
        source,
        interval=100,
        landscape=url,
        aggregations=[
            {
                "name": "stats",
                "plugin": "batch_stats",
                "trigger": {"count": 100},
                "output_mode": "single",
                "options": {"value_field": "amount", "group_by": "status"},
            }
        ],
    )


async def _artifacts(flow_run_id: str) -> list:
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        return await read_run_artifacts(client, flow_run_id)


def test_resume_run_flow_retries_the_interrupted_batch(
    prefect_harness: float,
    tmp_path: Path,
    landscapes: Landscapes,
    request: pytest.FixtureRequest,
) -> None:
    from flows.run_pipeline import resume_run

    source = make_csv(tmp_path / "in.csv", ROWS, seed=21)
    reference = tmp_path / "reference"
    reference.mkdir()
    url = landscapes.new(reference, request=request)
    settings = write_settings(reference / "settings.yaml", _aggregating(reference, source, url))
    assert run_cli("run", "-s", str(settings), "-x", cwd=reference).code == 0

    work = tmp_path / "crashed"
    work.mkdir()
    db = landscapes.new(work, request=request)
    settings = write_settings(work / "settings.yaml", _aggregating(work, source, db))
    crashed = run_cli(
        "run",
        "-s",
        str(settings),
        "-x",
        cwd=work,
        env={"ELSPETH_FAULT_INJECT": "batch_executing:4"},
    )
    assert crashed.code == -signal.SIGKILL, crashed.stderr
    (run_id,) = run_ids(db)
    assert query(db, "SELECT status FROM batches WHERE status = 'executing'") == [("executing",)]
    assert outputs(work) != outputs(reference)  # the crash left the outputs short

    state = resume_run(run_id=run_id, database=db, return_state=True)

    assert state.is_completed(), state
    assert run_ids(db) == [run_id]
    assert outputs(work) == outputs(reference)
    assert_landscape_invariants(db, run_id, ROWS)
    ((retry, failed),) = query(
        db, "SELECT batch_id, retry_of_batch_id FROM batches WHERE attempt = 2"
    )
    statuses = query(
        db, f"SELECT attempt, status FROM batches WHERE batch_id IN ('{failed}', '{retry}')"
    )
    assert sorted(statuses) == [(1, "failed"), (2, "completed")]
    members = [
        query(db, f"SELECT token_id FROM batch_members WHERE batch_id = '{b}' ORDER BY ordinal")
        for b in (failed, retry)
    ]
    assert members[0] == members[1] and len(members[0]) == 100
    flow_run_id = str(state.state_details.flow_run_id)
    assert query(db, "SELECT prefect_flow_run_id FROM run_attempts WHERE attempt = 2") == [
        (flow_run_id,)
    ]
    summary = next(a for a in asyncio.run(_artifacts(flow_run_id)) if a.type == "markdown")
    assert "| batch retries (all attempts) | 1 |" in summary.data
    assert f"| rows in the run (all attempts) | {ROWS} |" in summary.data


def test_resume_run_flow_refusal_fails_the_flow_run_with_its_message(
    prefect_harness: float, tmp_path: Path, landscape_url: str
) -> None:
    from flows.run_pipeline import resume_run

    db = landscape_url
    source = make_csv(tmp_path / "in.csv", 50, seed=2)
    settings = write_settings(tmp_path / "settings.yaml", _aggregating(tmp_path, source, db))
    assert run_cli("run", "-s", str(settings), "-x", cwd=tmp_path).code == 0
    before = query(db, "SELECT count(*) FROM run_attempts")

    state = resume_run(run_id="01NOSUCHRUN", database=db, return_state=True)

    assert state.is_failed(), state
    assert "Run not found" in (state.message or ""), state.message
    assert query(db, "SELECT count(*) FROM run_attempts") == before
