"""Toy flows that exercise the Prefect features the product relies on.

They are test fixtures, not product code: each flow records what it saw (its PID, flow-run
ID, run count) as JSON files in `marker_dir`, so a test in another process can find the
flow-run process, kill it, and check what the retried attempt saw. The state hooks write
marker files too, which is how the notes establish which hook fires on raise, SIGTERM and
SIGKILL.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.client.schemas.objects import FlowRun, State
from prefect.context import FlowRunContext
from prefect.flows import Flow
from prefect.runtime import flow_run as runtime_flow_run

# A stdlib logger outside the `prefect` namespace, like the core's loggers.
core_logger = logging.getLogger("elspeth_core.toy")


def _write_marker(marker_dir: str, name: str, payload: dict[str, Any]) -> None:
    directory = Path(marker_dir)
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / f".{name}.tmp"
    tmp.write_text(json.dumps(payload, default=str))
    tmp.replace(directory / name)


def _hook(kind: str):
    def record(flow: Flow, flow_run: FlowRun, state: State) -> None:
        _write_marker(
            flow_run.parameters["marker_dir"],
            f"hook-{kind}-{flow_run.run_count}.json",
            {
                "hook": kind,
                "pid": os.getpid(),
                "flow_run_id": str(flow_run.id),
                "state_type": state.type.value,
                "state_name": state.name,
                "message": state.message,
            },
        )

    record.__name__ = f"record_{kind}"
    return record


@task
def count_rows(chunk: list[int]) -> int:
    core_logger.warning("core WARNING inside a task, %s rows", len(chunk))
    return len(chunk)


@flow(
    name="toy-crashable",
    on_failure=[_hook("on_failure")],
    on_crashed=[_hook("on_crashed")],
    on_cancellation=[_hook("on_cancellation")],
    on_completion=[_hook("on_completion")],
)
def crashable(
    marker_dir: str,
    label: str = "toy",
    chunks: int = 3,
    hang_on_attempt: int = 1,
    fail: bool = False,
    core_log_level: str | None = None,
) -> dict[str, Any]:
    """Process `chunks` chunks as tasks, then hang forever if this is attempt `hang_on_attempt`.

    Set `hang_on_attempt=0` to never hang, `fail=True` to raise after the tasks, and
    `core_log_level="INFO"` to lower the level of the `elspeth_core` logger.
    """
    if core_log_level:
        logging.getLogger("elspeth_core").setLevel(core_log_level)
    context = FlowRunContext.get()
    assert context is not None and context.flow_run is not None
    run = context.flow_run
    attempt = {
        "pid": os.getpid(),
        "flow_run_id": str(run.id),
        "runtime_id": runtime_flow_run.get_id(),
        "run_count": run.run_count,
        "runtime_run_count": runtime_flow_run.run_count,
        "flow_run_name": run.name,
        "label": label,
        "cwd": os.getcwd(),
    }
    _write_marker(marker_dir, f"attempt-{run.run_count}.json", attempt)
    get_run_logger().info("attempt %s of flow run %s", run.run_count, run.id)
    core_logger.info("core INFO from attempt %s", run.run_count)
    core_logger.warning("core WARNING from attempt %s", run.run_count)

    progress_id = create_progress_artifact(
        progress=0.0, key="toy-progress", description="rows processed"
    )
    rows = 0
    for index in range(chunks):
        rows += count_rows.submit(list(range(10))).result()
        update_progress_artifact(progress_id, progress=100.0 * (index + 1) / chunks)

    if fail:
        raise RuntimeError("toy failure requested")
    if run.run_count == hang_on_attempt:
        _write_marker(marker_dir, f"hanging-{run.run_count}.json", attempt)
        while True:
            time.sleep(0.2)

    create_markdown_artifact(
        markdown=f"# Toy summary\n\nRun **{label}** processed {rows} rows in attempt {run.run_count}.",
        key="toy-summary",
        description="toy run summary",
    )
    create_table_artifact(
        table=[{"sink": "out", "rows": rows}, {"sink": "quarantine", "rows": 0}],
        key="toy-table",
        description="rows per sink",
    )
    result = {**attempt, "rows": rows}
    _write_marker(marker_dir, f"done-{run.run_count}.json", result)
    return result
