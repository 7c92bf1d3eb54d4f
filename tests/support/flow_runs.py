"""Client-side helpers for tests that drive flow runs on a real Prefect server.

Everything here goes through `prefect.client.orchestration.get_client()` against whatever
PREFECT_API_URL is in effect (e.g. `PrefectServer.env()` applied with
`prefect.settings.temporary_settings`). Nothing here starts processes.

Pitfall: task runs and some logs reach the server through events and batched shipping,
so the counts are eventually consistent; `wait_for` polls instead of reading once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar
from uuid import UUID

from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    FlowRunFilter,
    FlowRunFilterId,
    LogFilter,
    LogFilterFlowRunId,
)
from prefect.client.schemas.objects import Artifact, FlowRun, Log
from prefect.client.schemas.responses import OrchestrationResult
from prefect.client.schemas.sorting import LogSort
from prefect.states import State, StateType

T = TypeVar("T")


async def wait_for(
    probe: Callable[[], Awaitable[T]],
    accept: Callable[[T], bool],
    *,
    timeout: float = 60.0,
    interval: float = 0.25,
    what: str = "condition",
) -> T:
    """Call `probe` until `accept(result)`; return that result.

    Raises:
        TimeoutError: `timeout` seconds passed; the message shows the last result.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = await probe()
        if accept(value):
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not reached in {timeout}s; last value: {value!r}")
        await asyncio.sleep(interval)


async def wait_for_flow_run(
    client: PrefectClient,
    flow_run_id: UUID | str,
    accept: Callable[[FlowRun], bool],
    *,
    timeout: float = 60.0,
    what: str = "flow-run state",
) -> FlowRun:
    """Poll the flow run until `accept(flow_run)` holds, e.g. `lambda r: r.state.is_crashed()`."""

    async def read() -> FlowRun:
        return await client.read_flow_run(UUID(str(flow_run_id)))

    return await wait_for(read, accept, timeout=timeout, what=what)


async def retry_like_ui(
    client: PrefectClient, flow_run_id: UUID | str, *, force: bool = True
) -> OrchestrationResult[Any]:
    """Do what the UI's Retry button does to a failed or crashed flow run.

    Both bundled UIs POST `/flow_runs/{id}/set_state` with a SCHEDULED state named
    `AwaitingRetry` and the message "Retry from the UI"; the React UI (default at /v2)
    sends `force: true`, the legacy Vue UI `force: false`. The run keeps its ID, a
    worker picks it up again, and `run_count` goes up by one. The server only allows
    this for a run with a deployment.
    """
    state: State[Any] = State(
        type=StateType.SCHEDULED, name="AwaitingRetry", message="Retry from the UI"
    )
    return await client.set_flow_run_state(UUID(str(flow_run_id)), state, force=force)


async def cancel_like_ui(
    client: PrefectClient, flow_run_id: UUID | str
) -> OrchestrationResult[Any]:
    """Do what the UI's Cancel button does: force a CANCELLING state named `Cancelling`."""
    state: State[Any] = State(type=StateType.CANCELLING, name="Cancelling")
    return await client.set_flow_run_state(UUID(str(flow_run_id)), state, force=True)


async def worker_executions(client: PrefectClient, flow_run_id: UUID | str) -> list[dict[str, Any]]:
    """`prefect.worker.executed-flow-run` events for a flow run, one per finished attempt.

    A worker emits this event once it is completely done with an attempt: after the
    process exited, the worker reported `Crashed` for a non-zero exit code and ran the
    flow's `on_crashed` hooks in a separate process (several seconds after a SIGKILL).
    """
    body = {
        "filter": {
            "event": {"name": ["prefect.worker.executed-flow-run"]},
            "related": {"id": [f"prefect.flow-run.{flow_run_id}"]},
        },
        "limit": 50,
    }
    response = await client.request("POST", "/events/filter", json=body)
    response.raise_for_status()
    return list(response.json()["events"])


async def wait_for_worker_release(
    client: PrefectClient, flow_run_id: UUID | str, *, attempts: int = 1, timeout: float = 60.0
) -> list[dict[str, Any]]:
    """Wait until the worker has finished with `attempts` attempts of the flow run.

    Retry a crashed run only after this: in 3.8.8 the worker proposes `Crashed` a second
    time when its `run()` returns (after the on_crashed hooks), and if the run was retried
    in between, that late proposal crashes the new attempt.
    """

    async def probe() -> list[dict[str, Any]]:
        return await worker_executions(client, flow_run_id)

    return await wait_for(
        probe, lambda events: len(events) >= attempts, timeout=timeout, what="worker release"
    )


async def read_run_artifacts(client: PrefectClient, flow_run_id: UUID | str) -> list[Artifact]:
    """All artifacts (every version of every key) created by one flow run."""
    artifact_filter = ArtifactFilter(
        flow_run_id=ArtifactFilterFlowRunId(any_=[UUID(str(flow_run_id))])
    )
    return await client.read_artifacts(artifact_filter=artifact_filter)


async def count_task_runs(client: PrefectClient, flow_run_id: UUID | str) -> int:
    """Number of task runs the server has recorded for a flow run (`POST /task_runs/count`).

    `PrefectClient` has no `count_task_runs`, and `read_task_runs` returns at most
    PREFECT_SERVER_API_DEFAULT_LIMIT (200) rows per call, so count on the server.
    """
    flow_runs = FlowRunFilter(id=FlowRunFilterId(any_=[UUID(str(flow_run_id))]))
    response = await client.request(
        "POST", "/task_runs/count", json={"flow_runs": flow_runs.model_dump(mode="json")}
    )
    response.raise_for_status()
    return int(response.json())


async def read_run_logs(client: PrefectClient, flow_run_id: UUID | str) -> list[Log]:
    """The flow run's logs (flow and task runs) as the UI shows them, oldest first."""
    log_filter = LogFilter(flow_run_id=LogFilterFlowRunId(any_=[UUID(str(flow_run_id))]))
    logs: list[Log] = []
    while True:
        page = await client.read_logs(
            log_filter=log_filter, limit=200, offset=len(logs), sort=LogSort.TIMESTAMP_ASC
        )
        logs.extend(page)
        if len(page) < 200:
            return logs
