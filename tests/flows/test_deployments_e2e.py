"""The deployments in prefect.yaml, end to end, against a real Prefect server and process worker.

What an operator does, with nothing mocked: trigger `run-pipeline`, lose the flow-run process
to a SIGKILL mid-way, press Retry (the request the UI sends), and get the same ELSPETH run
completed with outputs byte-identical to a run that never crashed. The same through the
`resume-run` deployment for a run that crashed outside Prefect (the CLI): its flow run is
SIGKILLed mid-way too and retried from the UI. A run whose rows
fail for good ends `Failed` with the reason in the summary artifact and the landscape.

The server, worker and deployments come from `conftest.deployed_project` (one per session).
The SIGKILL-and-retry scenario also runs as a team shares it: the landscape on PostgreSQL and
the Prefect server's own database on PostgreSQL too, with two workers on the pool
(`conftest.deployed_project_on_postgres`).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import FlowRun
from prefect.deployments import run_deployment
from sqlalchemy.engine import make_url

from examples.generate import generate
from tests.support.cli import (
    cli_env,
    elspeth_cmd,
    gate_pipeline,
    sink_files,
    url_invariants,
    url_query,
    url_run_ids,
    write_settings,
)
from tests.support.flow_runs import (
    count_task_runs,
    read_run_artifacts,
    read_run_logs,
    retry_like_ui,
    wait_for,
    wait_for_flow_run,
    wait_for_worker_release,
)
from tests.support.landscape_fixtures import Landscapes
from tests.support.prefect_server import flow_run_pids

if TYPE_CHECKING:
    from tests.flows.conftest import DeployedProject

pytestmark = [pytest.mark.prefect, pytest.mark.slow, pytest.mark.timeout(600)]

ROWS = 20_000
CHECKPOINT_INTERVAL = 500
KILL_AFTER_ROWS = 2_000
RUN_PIPELINE = "run_pipeline/run-pipeline"
RESUME_RUN = "resume_run/resume-run"
RUN_ON_DASK = "run_pipeline_partitioned/run-pipeline-dask"
SINKS = {"normal.csv", "high.csv", "flagged.jsonl", "quarantine.jsonl"}
# Landscape backend -> the deployed project whose server runs the flow: on "postgres" both the
# landscape and Prefect's own database are PostgreSQL, as for a team sharing one server.
PROJECTS = {"sqlite": "deployed_project", "postgres": "deployed_project_on_postgres"}


def _pipeline(workdir: Path, source: Path, landscape: str | None = None) -> tuple[Path, str]:
    """Write the gate pipeline's settings into `workdir`; return (settings file, landscape URL).

    The landscape is `workdir/audit.db` unless `landscape` names another URL.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    data = gate_pipeline(workdir, source)
    data["checkpoint"]["checkpoint_interval"] = CHECKPOINT_INTERVAL
    if landscape is not None:
        data["landscape"]["url"] = landscape
    return write_settings(workdir / "settings.yaml", data), data["landscape"]["url"]


@pytest.fixture(scope="session")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("input") / "in.csv"
    generate(str(path), ROWS, seed=11, bad_every=997)
    return path


class ReferenceRun:
    """A crash-free CLI run of the same pipeline over the same input, started in the background.

    Session-scoped and requested before `deployed_project`, so it runs while the Prefect server
    starts (the slowest part of the set-up); `files()` waits for it.
    """

    def __init__(self, workdir: Path, source: Path) -> None:
        self.settings, _ = _pipeline(workdir, source)
        self._process = subprocess.Popen(
            elspeth_cmd("run", "-s", str(self.settings), "--execute"),
            cwd=workdir,
            env=cli_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        self._files: dict[str, bytes] | None = None

    def files(self) -> dict[str, bytes]:
        if self._files is None:
            _, stderr = self._process.communicate(timeout=600)
            assert self._process.returncode == 0, stderr.decode(errors="replace")
            self._files = sink_files(self.settings.parent)
            assert set(self._files) == SINKS and all(self._files.values())
        return self._files

    def stop(self) -> None:
        if self._process.poll() is None:
            self._process.kill()
            self._process.wait()


@pytest.fixture(scope="session")
def reference(tmp_path_factory: pytest.TempPathFactory, source: Path) -> Iterator[ReferenceRun]:
    run = ReferenceRun(tmp_path_factory.mktemp("reference"), source)
    try:
        yield run
    finally:
        run.stop()


def _runs(url: str) -> list[tuple[Any, ...]]:
    return url_query(
        url, "SELECT run_id, status, source_rows_ingested, prefect_flow_run_id FROM runs"
    )


def _attempts(url: str, run_id: str) -> list[tuple[Any, ...]]:
    return url_query(
        url,
        "SELECT attempt, kind, status, prefect_flow_run_id FROM run_attempts"
        " WHERE run_id = :r ORDER BY attempt",
        r=run_id,
    )


async def _wait_for_committed_rows(url: str, at_least: int, timeout: float = 180.0) -> int:
    async def probe() -> int:
        # The flow-run process creates the landscape: until then there is no `runs` table.
        found = _runs(url) if url_run_ids(url) else []
        return int(found[0][2]) if found else 0

    return await wait_for(
        probe, lambda n: n >= at_least, timeout=timeout, interval=0.1, what="committed rows"
    )


async def _final(flow_run_id: Any, timeout: float = 240.0) -> FlowRun:
    async with get_client() as client:
        return await wait_for_flow_run(
            client,
            flow_run_id,
            lambda r: r.state is not None and r.state.is_final(),
            timeout=timeout,
            what="final state",
        )


def _summary(artifacts: list[Any]) -> Any:
    [summary] = [a for a in artifacts if a.type == "markdown"]
    return summary


async def _sigkill_then_retry(
    project: DeployedProject, settings: Path, url: str, timings: dict[str, float]
) -> tuple[FlowRun, str, str]:
    began = time.monotonic()
    flow_run = await run_deployment(
        RUN_PIPELINE, parameters={"settings_path": str(settings)}, timeout=0
    )
    committed = await _wait_for_committed_rows(url, KILL_AFTER_ROWS)
    timings["triggered -> rows committed"] = time.monotonic() - began
    [(run_id, status, _, linked)] = _runs(url)
    assert status == "running" and linked == str(flow_run.id)
    [pid] = flow_run_pids(flow_run.id)
    os.kill(pid, signal.SIGKILL)
    killed_at = time.monotonic()
    [(_, _, rows_at_kill, _)] = _runs(url)
    assert committed <= rows_at_kill < ROWS, "killed too late to prove a resume"

    async with get_client() as client:
        crashed = await wait_for_flow_run(
            client, flow_run.id, lambda r: r.state is not None and r.state.is_final()
        )
        assert crashed.state is not None and crashed.state.is_crashed(), crashed.state
        assert crashed.run_count == 1
        # The worker ran on_crashed in a process of its own; only then is the attempt over.
        await wait_for_worker_release(client, flow_run.id, timeout=90)
        timings["kill -> worker released"] = time.monotonic() - killed_at
        # The on_crashed hook marked the landscape run (and released its lease).
        assert _runs(url)[0][1] == "interrupted"

        retried_at = time.monotonic()
        result = await retry_like_ui(client, flow_run.id)
        assert result.state is not None and result.state.name == "AwaitingRetry", result
    final = await _final(flow_run.id)
    timings["retry -> completed"] = time.monotonic() - retried_at
    return final, run_id, str(pid)


@pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def test_ui_retry_of_a_sigkilled_flow_run_resumes_the_same_elspeth_run(
    backend: str,
    reference: ReferenceRun,
    source: Path,
    request: pytest.FixtureRequest,
    tmp_path: Path,
) -> None:
    # Reached by name, after `reference` has started: the module's first test, so the shared
    # project's last user (conftest) is still a later test that names it.
    project: DeployedProject = request.getfixturevalue(PROJECTS[backend])
    landscape = Landscapes(backend, request).new(tmp_path / "crash", request=request)
    settings, url = _pipeline(tmp_path / "crash", source, landscape)
    assert url.startswith("sqlite:///" if backend == "sqlite" else "postgresql+psycopg://")
    timings: dict[str, float] = {}
    with project.client_settings():
        final, run_id, _ = asyncio.run(_sigkill_then_retry(project, settings, url, timings))
        artifacts, logs, tasks = asyncio.run(_observations(final.id))
    print(backend, {k: round(v, 1) for k, v in timings.items()})

    assert final.state is not None and final.state.is_completed(), final.state
    assert final.run_count == 2
    # Same flow run, same ELSPETH run: one landscape run, two attempts, both this flow run's.
    assert _runs(url) == [(run_id, "completed", ROWS, str(final.id))]
    attempts = _attempts(url, run_id)
    assert [(a[0], a[1], a[3]) for a in attempts] == [
        (1, "run", str(final.id)),
        (2, "resume", str(final.id)),
    ]
    assert attempts[0][2] == "interrupted" and attempts[1][2] == "completed"
    assert sink_files(settings.parent) == reference.files()
    url_invariants(url, run_id, ROWS)

    # The run ID is visible on the flow run: tag, label, log lines and the summary.
    assert f"elspeth-run:{run_id}" in final.tags
    assert final.labels.get("elspeth.run_id") == run_id
    messages = [log.message for log in logs]
    assert f"ELSPETH run {run_id} resumed" in messages
    core = [log.message for log in logs if log.name.startswith("elspeth_core")]
    assert any(m.startswith(f"run {run_id} resumed (attempt 2)") for m in core), core
    summary = _summary(artifacts)
    assert f"# ELSPETH run `{run_id}`: completed" in summary.data
    assert "| attempt | 2 of 2 |" in summary.data
    assert f"| rows in the run (all attempts) | {ROWS} |" in summary.data
    # One progress artifact per attempt (same key, new version); the killed attempt's never got
    # to 100 (it may still read 0 when the kill came before its first chunk task returned).
    progress = sorted((a for a in artifacts if a.type == "progress"), key=lambda a: a.created)
    assert [a.key for a in progress] == [f"elspeth-progress-{run_id.lower()}"] * 2
    assert progress[0].data < 100 and progress[1].data == 100, [a.data for a in progress]
    assert 4 <= tasks <= 200
    if backend == "postgres":
        flow_runs, workers = _prefect_database(project, final.id)
        assert flow_runs == [(2, "COMPLETED")]
        assert workers == [("worker-1", "ONLINE"), ("worker-2", "ONLINE")]


def _prefect_database(project: DeployedProject, flow_run_id: Any) -> tuple[list[Any], list[Any]]:
    """Read the flow run and the pool's workers straight from the Prefect server's PostgreSQL.

    Proves the server kept its state there (not in a SQLite file of its home).
    """
    url = make_url(project.server.database_url)
    assert url.drivername == "postgresql+asyncpg", url.drivername
    sync = url.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
    flow_runs = url_query(
        sync,
        "SELECT run_count, state_type FROM flow_run WHERE id = CAST(:i AS uuid)",
        i=str(flow_run_id),
    )
    workers = url_query(
        sync,
        "SELECT w.name, w.status FROM worker w JOIN work_pool p ON p.id = w.work_pool_id"
        " WHERE p.name = :p ORDER BY w.name",
        p=project.pool,
    )
    return flow_runs, workers


async def _observations(flow_run_id: Any) -> tuple[list[Any], list[Any], int]:
    """Artifacts, logs (shipped in batches: wait for the last line) and task-run count."""
    async with get_client() as client:
        logs = await wait_for(
            lambda: read_run_logs(client, flow_run_id),
            lambda found: any("rows/s" in log.message for log in found),
            timeout=30,
            what="the flow's closing log line",
        )
        return (
            await read_run_artifacts(client, flow_run_id),
            logs,
            await count_task_runs(client, flow_run_id),
        )


async def _resume_sigkill_then_retry(url: str, run_id: str, rows_at_crash: int) -> FlowRun:
    """Trigger `resume-run`, SIGKILL its flow-run process mid-way, retry it as the UI does."""
    flow_run = await run_deployment(
        RESUME_RUN, parameters={"run_id": run_id, "database": url}, timeout=0
    )
    await _wait_for_committed_rows(url, rows_at_crash + KILL_AFTER_ROWS)
    [pid] = flow_run_pids(flow_run.id)
    os.kill(pid, signal.SIGKILL)
    [(_, _, rows_at_kill, _)] = _runs(url)
    assert rows_at_kill < ROWS, "killed too late to prove a second resume"
    async with get_client() as client:
        crashed = await wait_for_flow_run(
            client, flow_run.id, lambda r: r.state is not None and r.state.is_final()
        )
        assert crashed.state is not None and crashed.state.is_crashed(), crashed.state
        await wait_for_worker_release(client, flow_run.id, timeout=90)
        assert _runs(url)[0][1] == "interrupted"  # resume_run's on_crashed hook
        result = await retry_like_ui(client, flow_run.id)
        assert result.state is not None and result.state.name == "AwaitingRetry", result
    return await _final(flow_run.id)


def test_resume_run_deployment_finishes_a_cli_crash_and_survives_its_own_sigkill(
    reference: ReferenceRun,
    source: Path,
    deployed_project: DeployedProject,
    tmp_path: Path,
) -> None:
    settings, url = _pipeline(tmp_path / "cli-crash", source)
    crashed = subprocess.run(
        elspeth_cmd("run", "-s", str(settings), "--execute"),
        cwd=settings.parent,
        env=cli_env({"ELSPETH_FAULT_INJECT": "after_sink_write:12"}),
        capture_output=True,
        timeout=300,
    )
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    [(run_id, status, rows_at_crash, linked)] = _runs(url)
    assert status == "running" and 0 < rows_at_crash < ROWS and linked is None

    with deployed_project.client_settings():
        final = asyncio.run(_resume_sigkill_then_retry(url, run_id, rows_at_crash))
        artifacts, _, _ = asyncio.run(_observations(final.id))

    assert final.state is not None and final.state.is_completed(), final.state
    assert final.run_count == 2
    assert _runs(url)[0][:3] == (run_id, "completed", ROWS)
    # The CLI attempt died without a hook: the takeover marked it interrupted. The killed
    # resume_run attempt and its UI retry belong to the same flow run.
    assert _attempts(url, run_id) == [
        (1, "run", "interrupted", None),
        (2, "resume", "interrupted", str(final.id)),
        (3, "resume", "completed", str(final.id)),
    ]
    assert sink_files(settings.parent) == reference.files()
    url_invariants(url, run_id, ROWS)
    assert f"elspeth-run:{run_id}" in final.tags
    assert f"# ELSPETH run `{run_id}`: completed" in _summary(artifacts).data


def test_dask_deployment_matches_the_single_process_run(
    reference: ReferenceRun,
    source: Path,
    deployed_project: DeployedProject,
    tmp_path: Path,
) -> None:
    settings, url = _pipeline(tmp_path / "dask", source)
    with deployed_project.client_settings():
        flow_run = run_deployment(
            RUN_ON_DASK,
            parameters={"settings_path": str(settings), "workers": 2, "partition_rows": 5_000},
            timeout=0,
        )
        final = asyncio.run(_final(flow_run.id, timeout=300))

    assert final.state is not None and final.state.is_completed(), final.state
    [(run_id, status, rows, linked)] = _runs(url)
    assert (status, rows, linked) == ("completed", ROWS, str(final.id))
    assert sink_files(settings.parent) == reference.files()
    url_invariants(url, run_id, ROWS)


def test_rows_failing_for_good_fail_the_flow_run_with_the_reason(
    deployed_project: DeployedProject, tmp_path: Path
) -> None:
    source = tmp_path / "in.jsonl"
    rows = [{"id": i, "amount": i * 1.5} if i % 10 else {"id": i} for i in range(400)]
    source.write_text("".join(json.dumps(row) + "\n" for row in rows))
    url = f"sqlite:///{tmp_path / 'audit.db'}"
    settings = write_settings(
        tmp_path / "settings.yaml",
        {
            "datasource": {"plugin": "json", "options": {"path": str(source)}},
            # strict: a row without `amount` raises, and no on_error routes it anywhere.
            "row_plugins": [
                {
                    "plugin": "field_mapper",
                    "options": {"mapping": {"amount": "value"}, "strict": True},
                }
            ],
            "sinks": {"out": {"plugin": "json", "options": {"path": str(tmp_path / "out.jsonl")}}},
            "output_sink": "out",
            "landscape": {"url": url},
            "payload_store": {"base_path": str(tmp_path / "payloads")},
        },
    )
    with deployed_project.client_settings():
        flow_run = run_deployment(
            RUN_PIPELINE, parameters={"settings_path": str(settings)}, timeout=0
        )
        final = asyncio.run(_final(flow_run.id))
        artifacts = asyncio.run(_artifacts(final.id))

    assert final.state is not None and final.state.is_failed(), final.state
    assert final.state.message and "40 failure(s)" in final.state.message
    [(run_id, status, rows_in, linked)] = _runs(url)
    assert (status, rows_in, linked) == ("failed", 400, str(final.id))
    errors = url_query(url, "SELECT count(*) FROM transform_errors WHERE run_id = :r", r=run_id)
    assert errors == [(40,)]
    assert (tmp_path / "out.jsonl").read_text().count("\n") == 360
    summary = _summary(artifacts).data
    assert f"# ELSPETH run `{run_id}`: failed" in summary
    assert "**Reason:** 40 token(s) and 0 batch(es) failed" in summary
    assert "| failed | 40 |" in summary


async def _artifacts(flow_run_id: Any) -> list[Any]:
    async with get_client() as client:
        return await wait_for(
            lambda: read_run_artifacts(client, flow_run_id),
            lambda found: any(a.type == "markdown" for a in found),
            timeout=30,
            what="summary artifact",
        )
