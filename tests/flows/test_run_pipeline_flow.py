"""The ``run_pipeline`` flow against Prefect's own test harness (a real API server, one per session).

The linked-run and failed-rows cases run on both landscape backends (SQLite and PostgreSQL); the
task-count bound does not depend on the landscape and stays on SQLite (it runs 22,000 rows).
"""

from __future__ import annotations

import asyncio
import csv
import json
from pathlib import Path

import pytest

from examples.generate import generate
from tests.support.cli import (
    assert_landscape_invariants,
    gate_pipeline,
    query,
    run_cli,
    run_ids,
    sink_files,
    url_invariants,
    url_query,
    url_run_ids,
    write_settings,
)
from tests.support.flow_runs import count_task_runs, read_run_artifacts

pytestmark = pytest.mark.prefect


def _run(tmp_path: Path, rows: int, url: str | None = None) -> tuple[object, Path]:
    from flows.run_pipeline import run_pipeline

    source = tmp_path / "in.csv"
    generate(str(source), rows, seed=3, bad_every=101)
    data = gate_pipeline(tmp_path, source)
    if url is not None:
        data["landscape"] = {"url": url}
    state = run_pipeline(settings=data, return_state=True)
    return state, tmp_path / "audit.db"


def _expected_outputs(source: Path) -> dict[str, int]:
    """Rows each sink of the gate pipeline must hold, computed from the input alone."""
    counts = {"normal.csv": 0, "high.csv": 0, "flagged.jsonl": 0, "quarantine.jsonl": 0}
    for row in csv.DictReader(source.open(newline="")):
        try:
            amount = float(row["amount"])
            int(row["id"])
        except ValueError:
            counts["quarantine.jsonl"] += 1
            continue
        if row["status"] == "flagged":
            counts["flagged.jsonl"] += 1
        else:
            counts["high.csv" if amount >= 500 else "normal.csv"] += 1
    return counts


def _rows_in(files: dict[str, bytes]) -> dict[str, int]:
    """Data rows per output file (CSV files have a header line)."""
    return {
        name: data.count(b"\n") - (1 if name.endswith(".csv") and data else 0)
        for name, data in files.items()
    }


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


@pytest.mark.postgres
def test_flow_run_on_a_postgresql_landscape_completes_and_is_linked(
    prefect_harness: float, tmp_path: Path, pg_url: str
) -> None:
    work = tmp_path / "flow"
    work.mkdir()
    state, db = _run(work, 3_000, url=pg_url)
    assert state.is_completed(), state
    assert not db.exists()  # no SQLite landscape was made beside the PostgreSQL one
    flow_run_id = str(state.state_details.flow_run_id)
    (run_id,) = url_run_ids(pg_url)
    assert url_query(pg_url, "SELECT prefect_flow_run_id FROM runs") == [(flow_run_id,)]
    url_invariants(pg_url, run_id, 3_000)

    # Outputs: the counts the input implies, each row vouched for by one outcome naming its
    # sink, and the very bytes the CLI writes for the same pipeline on a SQLite landscape.
    expected = _expected_outputs(work / "in.csv")
    outputs = sink_files(work)
    assert _rows_in(outputs) == expected
    by_sink = url_query(
        pg_url,
        """SELECT sink_name, count(*) FROM token_outcomes WHERE run_id = :r AND is_terminal
           AND outcome IN ('completed', 'routed') GROUP BY sink_name ORDER BY sink_name""",
        r=run_id,
    )
    assert by_sink == sorted(
        (name.split(".")[0], n) for name, n in expected.items() if n and name != "quarantine.jsonl"
    )
    reference = tmp_path / "cli"
    reference.mkdir()
    generate(str(reference / "in.csv"), 3_000, seed=3, bad_every=101)
    settings = write_settings(
        reference / "settings.yaml", gate_pipeline(reference, reference / "in.csv")
    )
    assert run_cli("run", "-s", str(settings), "-x", cwd=reference).code == 0
    assert outputs == sink_files(reference)

    artifacts, tasks = asyncio.run(_artifacts_and_tasks(flow_run_id))
    summary = next(a for a in artifacts if a.type == "markdown")
    assert f"| quarantined | {expected['quarantine.jsonl']} |" in summary.data
    assert f"elspeth runs show {run_id}`" in summary.data  # a PostgreSQL URL is never shown
    assert 3 <= tasks <= 20


# SQLite-only: how many task runs a flow run makes does not depend on the landscape backend.
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
    prefect_harness: float, tmp_path: Path, landscape_url: str
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
        "landscape": {"url": landscape_url},
        "payload_store": {"base_path": str(tmp_path / "payloads")},
    }
    state = run_pipeline(settings=settings, return_state=True)
    assert state.is_failed()
    flow_run_id = str(state.state_details.flow_run_id)
    assert url_query(landscape_url, "SELECT status, prefect_flow_run_id FROM runs") == [
        ("failed", flow_run_id)
    ]
    assert url_query(landscape_url, "SELECT count(*) FROM transform_errors")[0][0] == 20
    assert (tmp_path / "out.jsonl").read_text().count("\n") == 180
    artifacts, _ = asyncio.run(_artifacts_and_tasks(flow_run_id))
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
