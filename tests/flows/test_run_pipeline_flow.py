"""The Prefect flows against Prefect's own test harness (a real API server, one per session)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from examples.generate import generate
from tests.support.cli import assert_landscape_invariants, gate_pipeline, query, run_ids
from tests.support.flow_runs import count_task_runs, read_run_artifacts

pytestmark = pytest.mark.prefect


def _run(tmp_path: Path, rows: int) -> tuple[object, Path]:
    from flows.run_pipeline import run_pipeline

    source = tmp_path / "in.csv"
    generate(str(source), rows, seed=3, bad_every=101)
    state = run_pipeline(settings=gate_pipeline(tmp_path, source), return_state=True)
    return state, tmp_path / "audit.db"


async def _artifacts_and_tasks(flow_run_id: str) -> tuple[list, int]:
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        return (
            await read_run_artifacts(client, flow_run_id),
            await count_task_runs(client, flow_run_id),
        )


def test_flow_run_completes_and_is_linked(prefect_harness: float, tmp_path: Path) -> None:
    state, db = _run(tmp_path, 3_000)
    assert state.is_completed(), state
    flow_run_id = str(state.state_details.flow_run_id)
    (run_id,) = run_ids(db)
    assert query(db, "SELECT prefect_flow_run_id FROM runs")[0][0] == flow_run_id
    assert_landscape_invariants(db, run_id, 3_000)
    artifacts, tasks = asyncio.run(_artifacts_and_tasks(flow_run_id))
    kinds = {a.type for a in artifacts}
    assert {"markdown", "progress"} <= kinds
    summary = next(a for a in artifacts if a.type == "markdown")
    quarantined = query(db, "SELECT count(*) FROM validation_errors")[0][0]
    assert quarantined == 3_000 // 101
    assert f"| quarantined | {quarantined} |" in summary.data
    assert run_id in summary.data
    assert 3 <= tasks <= 20


def test_task_runs_stay_bounded_for_ten_times_the_rows(
    prefect_harness: float, tmp_path: Path
) -> None:
    (tmp_path / "small").mkdir()
    (tmp_path / "big").mkdir()
    small_state, _ = _run(tmp_path / "small", 2_000)
    big_state, big_db = _run(tmp_path / "big", 20_000)
    assert small_state.is_completed() and big_state.is_completed()
    _, small_tasks = asyncio.run(_artifacts_and_tasks(str(small_state.state_details.flow_run_id)))
    _, big_tasks = asyncio.run(_artifacts_and_tasks(str(big_state.state_details.flow_run_id)))
    assert big_tasks <= 40, big_tasks
    assert big_tasks < 10 * small_tasks
    (run_id,) = run_ids(big_db)
    assert_landscape_invariants(big_db, run_id, 20_000)


def test_failed_rows_fail_the_flow_run_with_the_reason(
    prefect_harness: float, tmp_path: Path
) -> None:
    from flows.run_pipeline import run_pipeline

    source = tmp_path / "in.jsonl"
    source.write_text(
        "\n".join(
            json.dumps({"id": i, "amount": i * 1.5} if i % 10 else {"id": i}) for i in range(200)
        )
        + "\n"
    )
    settings = {
        "datasource": {"plugin": "json", "options": {"path": str(source)}},
        "row_plugins": [
            {"plugin": "field_mapper", "options": {"mapping": {"amount": "value"}, "strict": True}}
        ],
        "sinks": {"out": {"plugin": "json", "options": {"path": str(tmp_path / "out.jsonl")}}},
        "output_sink": "out",
        "landscape": {"url": f"sqlite:///{tmp_path / 'audit.db'}"},
        "payload_store": {"base_path": str(tmp_path / "payloads")},
    }
    state = run_pipeline(settings=settings, return_state=True)
    assert state.is_failed()
    db = tmp_path / "audit.db"
    assert query(db, "SELECT status FROM runs")[0][0] == "failed"
    assert query(db, "SELECT count(*) FROM transform_errors")[0][0] == 20
    assert (tmp_path / "out.jsonl").read_text().count("\n") == 180
    artifacts, _ = asyncio.run(_artifacts_and_tasks(str(state.state_details.flow_run_id)))
    summary = next(a for a in artifacts if a.type == "markdown")
    assert "| failed | 20 |" in summary.data


def test_chunk_tasks_run_even_where_results_are_persisted_by_default(
    prefect_harness: float, tmp_path: Path
) -> None:
    """Two chunk tasks with equal arguments in one flow run both read rows.

    With ``PREFECT_RESULTS_PERSIST_BY_DEFAULT`` on (an operator's choice), Prefect's default cache
    policy would key a task run on its inputs and the flow run, so the second ``(run_id, 500)``
    chunk would return the first one's counts without reading a row. The landscape, not a Prefect
    result, says where a run stands.
    """
    from prefect import flow
    from prefect.settings import (
        PREFECT_LOCAL_STORAGE_PATH,
        PREFECT_RESULTS_PERSIST_BY_DEFAULT,
        temporary_settings,
    )

    from flows.run_pipeline import begin_run_task, finalize_task, process_chunk_task

    source = tmp_path / "in.csv"
    generate(str(source), 1_500, seed=5, bad_every=0)

    @flow(persist_result=False)  # the tasks, not this test flow, are under test
    def equal_chunks(settings: dict) -> tuple[dict, dict, dict]:
        run_id = begin_run_task(None, settings, None)["run_id"]
        first = process_chunk_task(run_id, 500)
        second = process_chunk_task(run_id, 500)
        assert process_chunk_task(run_id, 10_000)["exhausted"]
        return first, second, finalize_task(run_id)

    with temporary_settings(
        updates={
            PREFECT_RESULTS_PERSIST_BY_DEFAULT: True,
            PREFECT_LOCAL_STORAGE_PATH: tmp_path / "prefect-results",
        }
    ):
        first, second, result = equal_chunks(gate_pipeline(tmp_path, source))
    assert (first["rows_ingested"], second["rows_ingested"]) == (500, 1_000)
    assert result["status"] == "completed"
    (run_id,) = run_ids(tmp_path / "audit.db")
    assert_landscape_invariants(tmp_path / "audit.db", run_id, 1_500)
    assert not list((tmp_path / "prefect-results").glob("*"))  # nothing of a run kept in Prefect
