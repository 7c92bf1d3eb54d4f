"""Run every experiment behind tests/support/PREFECT_NOTES.md against a real server.

    cd /work/main && DO_NOT_TRACK=1 uv run python -m tests.support.toyflows.prove_findings

Starts a throwaway `PrefectServer`, deploys this directory's prefect.yaml (from a copy
outside any git repository), runs the toy flow through a `process` worker and prints what
happened, with timings, as JSON lines. It kills only the processes it started.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName
from prefect.deployments import run_deployment
from prefect.settings import PREFECT_API_URL, temporary_settings

from tests.support.flow_runs import (
    cancel_like_ui,
    count_task_runs,
    read_run_artifacts,
    read_run_logs,
    retry_like_ui,
    wait_for,
    wait_for_flow_run,
    wait_for_worker_release,
    worker_executions,
)
from tests.support.prefect_server import PrefectServer

TOYFLOWS = Path(__file__).resolve().parent
POOL = "toy-pool"
T0 = time.monotonic()


def report(step: str, **facts: Any) -> None:
    print(json.dumps({"t": round(time.monotonic() - T0, 1), "step": step, **facts}, default=str))
    sys.stdout.flush()


def markers(directory: Path) -> dict[str, dict[str, Any]]:
    if not directory.exists():
        return {}
    return {p.name: json.loads(p.read_text()) for p in sorted(directory.glob("*.json"))}


async def wait_marker(directory: Path, name: str, timeout: float = 60.0) -> dict[str, Any]:
    async def probe() -> bool:
        return (directory / name).exists()

    await wait_for(probe, bool, timeout=timeout, what=f"marker {name}")
    return json.loads((directory / name).read_text())


async def start_hanging_run(label: str, marker_dir: Path, **params: Any) -> tuple[Any, dict]:
    flow_run = await run_deployment(
        "toy-crashable/on-demand",
        parameters={"marker_dir": str(marker_dir), "label": label, **params},
        timeout=0,
    )
    attempt = await wait_marker(marker_dir, "hanging-1.json", timeout=90)
    return flow_run, attempt


async def experiments(server: PrefectServer, project: Path, worker: subprocess.Popen) -> None:
    runs = server.home / "markers"
    async with get_client() as client:
        # a. deployments from prefect.yaml; the cron schedule produced scheduled runs.
        deployments = await client.read_deployments(
            deployment_filter=DeploymentFilter(
                name=DeploymentFilterName(any_=["on-demand", "nightly"])
            )
        )
        for deployment in deployments:
            report(
                "a.deployment",
                name=deployment.name,
                schedules=[s.schedule.model_dump(exclude_none=True) for s in deployment.schedules],
                schedule_parameters=[s.parameters for s in deployment.schedules],
                parameters=deployment.parameters,
                pull_steps=deployment.pull_steps,
            )
        nightly = next(d for d in deployments if d.name == "nightly")
        scheduled = await wait_for(
            lambda: client.read_flow_runs(
                deployment_filter=DeploymentFilter(id={"any_": [nightly.id]})
            ),
            bool,
            timeout=30,
            what="scheduler-created runs",
        )
        report(
            "a.scheduler",
            scheduled_runs=len(scheduled),
            first=[(str(r.expected_start_time), r.parameters.get("label")) for r in scheduled[:2]],
        )

        # a + c + e + g. CLI-triggered run that completes.
        marker_dir = runs / "cli"
        began = time.monotonic()
        out = server.cli(
            "deployment",
            "run",
            "toy-crashable/on-demand",
            "--param",
            f"marker_dir={marker_dir}",
            "--param",
            "label=from-cli",
            "--param",
            "hang_on_attempt=0",
            "--param",
            "chunks=4",
        )
        flow_run_id = next(line.split()[-1] for line in out.stdout.splitlines() if "UUID" in line)
        report("a.cli_run", cli_seconds=round(time.monotonic() - began, 1), flow_run_id=flow_run_id)
        done = await wait_for_flow_run(
            client, flow_run_id, lambda r: r.state.is_final(), timeout=90
        )
        report(
            "a.cli_run_final",
            state=done.state.name,
            parameters=done.parameters,
            seconds_to_final=round(time.monotonic() - began, 1),
            cwd=markers(marker_dir)["attempt-1.json"]["cwd"],
        )
        artifacts = await read_run_artifacts(client, flow_run_id)
        report(
            "c.artifacts",
            artifacts=[
                {"key": a.key, "type": a.type, "data": a.data, "description": a.description}
                for a in artifacts
            ],
        )
        tasks = await wait_for(
            lambda: count_task_runs(client, flow_run_id),
            lambda n: n >= 4,
            timeout=30,
            what="task runs",
        )
        report("g.task_runs", count=tasks)
        logs = await wait_for(
            lambda: read_run_logs(client, flow_run_id),
            lambda logs: any("inside a task" in log.message for log in logs),
            timeout=30,
            what="core logs",
        )
        report(
            "e.logs_default_level",
            core=[
                (log.name, log.level, log.message, bool(log.task_run_id))
                for log in logs
                if log.name.startswith("elspeth_core")
            ],
        )

        # e. the same with the package logger lowered to INFO inside the flow.
        marker_dir = runs / "info"
        flow_run = await run_deployment(
            "toy-crashable/on-demand",
            parameters={
                "marker_dir": str(marker_dir),
                "hang_on_attempt": 0,
                "core_log_level": "INFO",
            },
            timeout=90,
        )
        logs = await wait_for(
            lambda: read_run_logs(client, flow_run.id),
            lambda logs: any("core INFO" in log.message for log in logs),
            timeout=30,
            what="core INFO log",
        )
        report(
            "e.logs_info_level",
            core=[
                (log.name, log.level, log.message)
                for log in logs
                if log.name.startswith("elspeth_core")
            ],
        )

        # b + d. SIGKILL the flow-run process, wait for the worker, retry as the UI does.
        marker_dir = runs / "sigkill"
        flow_run, attempt = await start_hanging_run("sigkill", marker_dir)
        pids = server_flow_run_pids(flow_run.id)
        report("b.found_process", marker_pid=attempt["pid"], proc_environ_pids=pids)
        killed_at = time.monotonic()
        os.kill(attempt["pid"], signal.SIGKILL)
        crashed = await wait_for_flow_run(client, flow_run.id, lambda r: r.state.is_crashed())
        report(
            "b.crashed",
            seconds=round(time.monotonic() - killed_at, 2),
            state=crashed.state.name,
            message=crashed.state.message,
            run_count=crashed.run_count,
        )
        events = await wait_for_worker_release(client, flow_run.id)
        report(
            "b.worker_released",
            seconds=round(time.monotonic() - killed_at, 2),
            status_code=[r.get("prefect.infrastructure.status-code") for r in events[0]["related"]],
            hooks=hooks(marker_dir, attempt),
        )
        retried_at = time.monotonic()
        result = await retry_like_ui(client, flow_run.id)
        report("b.retry", status=result.status.value, state=result.state and result.state.name)
        final = await wait_for_flow_run(
            client, flow_run.id, lambda r: r.state.is_final(), timeout=90
        )
        second = markers(marker_dir)["attempt-2.json"]
        history = await client.read_flow_run_states(flow_run.id)
        report(
            "b.retried",
            seconds=round(time.monotonic() - retried_at, 1),
            state=final.state.name,
            run_count=final.run_count,
            same_id=second["flow_run_id"] == str(flow_run.id),
            inside_flow=second,
            history=[s.name for s in history],
        )
        await wait_for_worker_release(client, flow_run.id, attempts=2)

        # d. SIGTERM, then retry with force=False as the legacy UI does.
        marker_dir = runs / "sigterm"
        flow_run, attempt = await start_hanging_run("sigterm", marker_dir)
        os.kill(attempt["pid"], signal.SIGTERM)
        crashed = await wait_for_flow_run(client, flow_run.id, lambda r: r.state.is_final())
        await wait_for_worker_release(client, flow_run.id)
        report(
            "d.sigterm",
            state=crashed.state.name,
            message=crashed.state.message,
            hooks=hooks(marker_dir, attempt),
        )
        result = await retry_like_ui(client, flow_run.id, force=False)
        final = await wait_for_flow_run(
            client, flow_run.id, lambda r: r.state.is_final(), timeout=90
        )
        report(
            "b.retry_force_false",
            status=result.status.value,
            state=final.state.name,
            run_count=final.run_count,
        )

        # d. the flow raises; then retry a Failed run.
        marker_dir = runs / "raise"
        flow_run = await run_deployment(
            "toy-crashable/on-demand",
            parameters={"marker_dir": str(marker_dir), "fail": True},
            timeout=90,
        )
        failed = await client.read_flow_run(flow_run.id)
        await wait_for_worker_release(client, flow_run.id)
        attempt = markers(marker_dir)["attempt-1.json"]
        report(
            "d.raise",
            state=failed.state.name,
            message=failed.state.message,
            hooks=hooks(marker_dir, attempt),
        )
        result = await retry_like_ui(client, flow_run.id)
        final = await wait_for_flow_run(
            client, flow_run.id, lambda r: r.state.is_final() and r.run_count > 1, timeout=90
        )
        report(
            "b.retry_failed",
            status=result.status.value,
            state=final.state.name,
            run_count=final.run_count,
        )

        # d. cancel from the UI while the flow hangs.
        marker_dir = runs / "cancel"
        flow_run, attempt = await start_hanging_run("cancel", marker_dir)
        cancelled_at = time.monotonic()
        await cancel_like_ui(client, flow_run.id)
        final = await wait_for_flow_run(
            client, flow_run.id, lambda r: r.state.is_final(), timeout=90
        )
        await wait_for_worker_release(client, flow_run.id)
        report(
            "d.cancel",
            seconds=round(time.monotonic() - cancelled_at, 1),
            state=final.state.name,
            message=final.state.message,
            hooks=hooks(marker_dir, attempt),
        )
        # b. Retrying at once after a SIGKILL races with the worker.
        marker_dir = runs / "race"
        flow_run, attempt = await start_hanging_run("race", marker_dir)
        os.kill(attempt["pid"], signal.SIGKILL)
        await wait_for_flow_run(client, flow_run.id, lambda r: r.state.is_crashed())
        result = await retry_like_ui(client, flow_run.id)
        timeline = []
        began = time.monotonic()
        while time.monotonic() - began < 120:
            current = await client.read_flow_run(flow_run.id)
            seen = (current.state.name, current.run_count)
            if not timeline or timeline[-1][1:] != seen:
                timeline.append((round(time.monotonic() - began, 1), *seen))
            if len(await worker_executions(client, flow_run.id)) >= 2:
                break
            await asyncio.sleep(0.5)
        history = await client.read_flow_run_states(flow_run.id)
        report(
            "b.retry_too_early",
            status=result.status.value,
            timeline=timeline,
            history=[(s.name, (s.message or "")[:60]) for s in history],
            markers=sorted(markers(marker_dir)),
        )

        # d. the worker and the flow-run process are SIGKILLed together (host failure).
        marker_dir = runs / "host"
        flow_run, attempt = await start_hanging_run("host", marker_dir)
        worker.kill()
        os.kill(attempt["pid"], signal.SIGKILL)
        await asyncio.sleep(30)
        stranded = await client.read_flow_run(flow_run.id)
        report(
            "d.worker_and_flow_killed",
            state_after_30s=stranded.state.name,
            hooks=hooks(marker_dir, attempt),
        )
    ui_experiment(server, flow_run_id, {a.key: a for a in artifacts})


def ui_experiment(server: PrefectServer, flow_run_id: str, artifacts: dict[str, Any]) -> None:
    """h. What headless Chromium sees of the flow-run and artifact pages."""
    from tests.support.browser import chromium_path, render_dom, screenshot, visible_text

    if chromium_path() is None:
        report("h.ui", skipped="no chromium")
        return
    pages = {
        "v2_flow_run": f"{server.url}/v2/runs/flow-run/{flow_run_id}",
        "v2_flow_run_artifacts_tab": f"{server.url}/v2/runs/flow-run/{flow_run_id}?tab=Artifacts",
        "v2_markdown_artifact": f"{server.url}/v2/artifacts/artifact/{artifacts['toy-summary'].id}",
        "v2_table_artifact": f"{server.url}/v2/artifacts/artifact/{artifacts['toy-table'].id}",
        "v1_flow_run": f"{server.url}/runs/flow-run/{flow_run_id}",
    }
    for name, url in pages.items():
        began = time.monotonic()
        text = visible_text(render_dom(url))
        report(
            "h.ui", page=name, url=url, seconds=round(time.monotonic() - began, 1), text=text[:600]
        )
    shot = screenshot(pages["v2_flow_run_artifacts_tab"], server.home.parent / "toy-flow-run.png")
    report("h.screenshot", path=shot, bytes=shot.stat().st_size)


def harness_experiment() -> None:
    """f. prefect_test_harness start-up time, and a flow with tasks and artifacts inside it."""
    import fastapi
    from prefect.testing.utilities import prefect_test_harness

    sys.path.insert(0, str(TOYFLOWS))
    from toy_flows import crashable

    began = time.monotonic()
    with tempfile.TemporaryDirectory() as marker_dir, prefect_test_harness():
        started = time.monotonic() - began
        result = crashable(marker_dir=marker_dir, label="harness", hang_on_attempt=0)
        report(
            "f.harness",
            fastapi=fastapi.__version__,
            startup_seconds=round(started, 1),
            flow_seconds=round(time.monotonic() - began - started, 1),
            rows=result["rows"],
        )
    report("f.harness_stopped", total_seconds=round(time.monotonic() - began, 1))


def server_flow_run_pids(flow_run_id: Any) -> list[int]:
    from tests.support.prefect_server import flow_run_pids

    return flow_run_pids(flow_run_id)


def hooks(marker_dir: Path, attempt: dict[str, Any]) -> list[dict[str, Any]]:
    """Which hooks ran, and whether in the flow-run process or another one."""
    return [
        {
            "hook": m["hook"],
            "state": m["state_name"],
            "in_flow_process": m["pid"] == attempt["pid"],
            "flow_run_run_count_seen": name.rsplit("-", 1)[1].split(".")[0],
        }
        for name, m in markers(marker_dir).items()
        if name.startswith("hook-")
    ]


def main() -> None:
    harness_experiment()
    with tempfile.TemporaryDirectory(prefix="toy-project-") as tmp, PrefectServer() as server:
        report("server", startup_seconds=round(server.startup_seconds or 0, 1), api=server.api_url)
        project = Path(tmp) / "toyflows"
        shutil.copytree(TOYFLOWS, project, ignore=shutil.ignore_patterns("__pycache__"))
        env = {
            "TOY_POOL": POOL,
            "TOY_PROJECT_DIR": str(project),
            "TOY_MARKER_DIR": str(server.home / "markers" / "default"),
        }
        began = time.monotonic()
        server.cli("work-pool", "create", POOL, "--type", "process")
        report("a.pool", seconds=round(time.monotonic() - began, 1))
        began = time.monotonic()
        server.cli("deploy", "--all", cwd=project, extra_env=env)
        report(
            "a.deploy", seconds=round(time.monotonic() - began, 1), git=(project / ".git").exists()
        )
        worker = server.start_worker(POOL, cwd=project)
        try:
            with temporary_settings(updates={PREFECT_API_URL: server.api_url}):
                asyncio.run(experiments(server, project, worker))
        finally:
            print(server.log_tail(server.worker_log("worker-1"), lines=400), file=sys.stderr)


if __name__ == "__main__":
    main()
