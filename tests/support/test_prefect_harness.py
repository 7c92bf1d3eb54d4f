"""`prefect_test_harness` with the pinned Prefect and FastAPI: a flow, its tasks, its artifacts.

Kept out of `test_prefect_server.py` on purpose: that module's fixture points PREFECT_API_URL
at its own server for as long as the module runs. Once the session's harness exists, the
process-wide events client keeps sending to the harness, so a flow run made under the other
server's settings gets its task runs recorded nowhere (0 task runs), as CI showed.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from prefect import flow, task
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    update_progress_artifact,
)
from prefect.client.orchestration import get_client
from prefect.context import FlowRunContext

from .flow_runs import count_task_runs, read_run_artifacts, wait_for

pytestmark = [pytest.mark.prefect, pytest.mark.timeout(300)]


@flow(name="harness-toy")
def _harness_toy(chunks: int) -> dict[str, Any]:
    context = FlowRunContext.get()
    assert context is not None and context.flow_run is not None
    progress = create_progress_artifact(progress=0.0, key="harness-progress")
    total = 0
    for index in range(chunks):
        total += _double.submit(index).result()
        update_progress_artifact(progress, progress=100.0 * (index + 1) / chunks)
    create_markdown_artifact(markdown=f"total **{total}**", key="harness-summary")
    return {"flow_run_id": str(context.flow_run.id), "total": total}


@task
def _double(value: int) -> int:
    return 2 * value


def test_flow_runs_inside_prefect_test_harness(prefect_harness: float) -> None:
    result = _harness_toy(chunks=5)
    assert result["total"] == 20

    async def inspect() -> tuple[int, dict[str, Any]]:
        async with get_client() as client:
            tasks = await wait_for(
                lambda: count_task_runs(client, result["flow_run_id"]),
                lambda n: n == 5,
                what="5 task runs",
            )
            artifacts = await read_run_artifacts(client, result["flow_run_id"])
            return tasks, {a.key: a.data for a in artifacts}

    tasks, artifacts = asyncio.run(inspect())
    assert tasks == 5
    assert artifacts == {"harness-progress": 100.0, "harness-summary": "total **20**"}
    print(f"prefect_test_harness started in {prefect_harness:.1f}s")
