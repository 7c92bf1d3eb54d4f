"""End-to-end checks of the Prefect machinery the product's crash recovery relies on.

A real server, a real `process` worker and deployments from a real prefect.yaml: the
flow-run process is SIGKILLed mid-run, the server must show it Crashed, and the UI's Retry
(as `retry_like_ui` sends it) must run the same flow run again with run_count 2. The UI
test checks that the flow-run and artifact pages render what the product will show.
The harness test lives in `test_prefect_harness.py`: this module's server is the ambient API
while its fixture is up, and a flow run there would not be the harness's.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prefect.client.orchestration import get_client
from prefect.deployments import run_deployment
from prefect.settings import PREFECT_API_URL, temporary_settings

from .browser import chromium_path, render_dom, visible_text
from .flow_runs import (
    read_run_artifacts,
    retry_like_ui,
    wait_for,
    wait_for_flow_run,
    wait_for_worker_release,
)
from .prefect_server import PrefectServer, flow_run_pids

TOYFLOWS = Path(__file__).parent / "toyflows"
POOL = "toy-pool"

pytestmark = [pytest.mark.prefect, pytest.mark.timeout(300)]


@dataclass(frozen=True)
class ToyProject:
    server: PrefectServer
    project: Path
    markers: Path


@pytest.fixture(scope="module")
def toy_project(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ToyProject]:
    """A server with the toy prefect.yaml deployed and one worker polling its pool."""
    root = tmp_path_factory.mktemp("toy")
    project = root / "toyflows"
    shutil.copytree(TOYFLOWS, project, ignore=shutil.ignore_patterns("__pycache__"))
    markers = root / "markers"
    deploy_env = {
        "TOY_POOL": POOL,
        "TOY_PROJECT_DIR": str(project),
        "TOY_MARKER_DIR": str(markers / "default"),
    }
    began = time.monotonic()
    with PrefectServer() as server:
        # The CLI equivalent, `prefect work-pool create`, is exercised by prove_findings.py.
        server.create_process_pool(POOL)
        # The worker boots while `prefect deploy` runs; both only need the pool.
        server.start_worker(POOL, cwd=project)
        server.cli("deploy", "--all", cwd=project, extra_env=deploy_env)
        print(
            f"server up in {server.startup_seconds:.1f}s,"
            f" deployed with a worker in {time.monotonic() - began:.1f}s"
        )
        try:
            with temporary_settings(updates={PREFECT_API_URL: server.api_url}):
                yield ToyProject(server, project, markers)
        except BaseException:
            print(server.log_tail(server.worker_log("worker-1"), lines=200))
            raise


async def _read_marker(directory: Path, name: str, timeout: float) -> dict[str, Any]:
    async def probe() -> bool:
        return (directory / name).exists()

    await wait_for(probe, bool, timeout=timeout, what=f"marker file {name}")
    return dict(json.loads((directory / name).read_text()))


async def _crash_and_retry(marker_dir: Path, timings: dict[str, float]) -> None:
    began = time.monotonic()
    flow_run = await run_deployment(
        "toy-crashable/on-demand",
        parameters={"marker_dir": str(marker_dir), "label": "crash-test"},
        timeout=0,
    )
    first = await _read_marker(marker_dir, "hanging-1.json", timeout=90)
    timings["first attempt running"] = time.monotonic() - began
    assert first["flow_run_id"] == str(flow_run.id)
    assert flow_run_pids(flow_run.id) == [first["pid"]]

    async with get_client() as client:
        began = time.monotonic()
        os.kill(first["pid"], signal.SIGKILL)
        crashed = await wait_for_flow_run(client, flow_run.id, lambda r: r.state.is_final())
        timings["crash reported"] = time.monotonic() - began
        assert crashed.state is not None and crashed.state.is_crashed(), crashed.state
        assert crashed.run_count == 1

        # The worker is done with the attempt only after the on_crashed hook ran in a
        # process of its own; retrying earlier races with its late Crashed proposal.
        await wait_for_worker_release(client, flow_run.id)
        [hook_file] = marker_dir.glob("hook-on_crashed-*.json")
        hook = json.loads(hook_file.read_text())
        assert hook["pid"] != first["pid"] and hook["state_type"] == "CRASHED"
        timings["worker released the attempt"] = time.monotonic() - began

        began = time.monotonic()
        result = await retry_like_ui(client, flow_run.id)
        assert result.state is not None and result.state.name == "AwaitingRetry"
        final = await wait_for_flow_run(
            client, flow_run.id, lambda r: r.state.is_final(), timeout=90
        )
        timings["retry completed"] = time.monotonic() - began

    assert final.state is not None and final.state.is_completed(), final.state
    assert final.id == flow_run.id and final.run_count == 2
    second = json.loads((marker_dir / "attempt-2.json").read_text())
    assert second["flow_run_id"] == str(flow_run.id)
    assert second["run_count"] == second["runtime_run_count"] == 2
    assert second["pid"] != first["pid"]


def test_sigkilled_flow_run_crashes_and_ui_retry_completes_it(toy_project: ToyProject) -> None:
    timings: dict[str, float] = {}
    asyncio.run(_crash_and_retry(toy_project.markers / "crash", timings))
    print({phase: round(seconds, 1) for phase, seconds in timings.items()})


def test_ui_renders_flow_run_and_artifacts(toy_project: ToyProject) -> None:
    if chromium_path() is None:
        pytest.skip("chromium is not installed (apt-get install -y chromium)")
    marker_dir = toy_project.markers / "ui"

    async def run_to_completion() -> tuple[Any, dict[str, Any]]:
        flow_run = await run_deployment(
            "toy-crashable/on-demand",
            parameters={"marker_dir": str(marker_dir), "label": "ui-check", "hang_on_attempt": 0},
            timeout=120,
        )
        async with get_client() as client:
            artifacts = await read_run_artifacts(client, flow_run.id)
        return flow_run, {a.key: a for a in artifacts}

    flow_run, artifacts = asyncio.run(run_to_completion())
    assert flow_run.state.is_completed(), flow_run.state
    base = toy_project.server.url

    page = visible_text(render_dom(f"{base}/v2/runs/flow-run/{flow_run.id}?tab=Artifacts"))
    assert flow_run.name in page and "Completed" in page
    assert {"toy-summary", "toy-progress", "toy-table"} <= set(page.split())

    summary = visible_text(
        render_dom(f"{base}/v2/artifacts/artifact/{artifacts['toy-summary'].id}")
    )
    assert "Run ui-check processed 30 rows in attempt 1." in summary
