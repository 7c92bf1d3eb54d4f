"""Prefect flows that run and resume ELSPETH pipelines; thin adapters over ``elspeth_core``.

Stages are tasks over chunks of rows (never a task per row): ``begin`` → ``process_chunk`` × N →
``finalize``. Tasks return small values (IDs, counts). The landscape is the source of truth: a
retried flow run (Retry in the UI: same flow-run ID, ``run_count`` > 1) finds the landscape run it
started and resumes it under the same run ID instead of starting over.

Pitfall: the tasks never persist their results, whatever Prefect's defaults say. With results
persisted by default, Prefect's default cache policy (inputs + flow run) would answer a second
``process-chunk`` with equal arguments from the first one's result without reading a row, and a
retried flow run's ``begin-run`` from the cache without opening the run in the new process.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    update_progress_artifact,
)
from prefect.context import FlowRunContext
from prefect.runtime import flow_run as current_flow_run

from elspeth_core.config import LoadedSettings, load_settings, load_settings_from_dict
from elspeth_core.engine.faults import FaultInjector
from elspeth_core.engine.orchestrator import Orchestrator
from elspeth_core.errors import ElspethError, RunAlreadyCompleted
from elspeth_core.landscape import LandscapeDB, LandscapeQueries, LandscapeRecorder
from flows.sessions import OpenRun, forget, recall, remember

os.environ.setdefault("DO_NOT_TRACK", "1")
CORE_LOGGER = "elspeth_core"
RUN_ID_LABEL = "elspeth.run_id"
MIN_CHUNK_ROWS = 1_000
MAX_CHUNK_ROWS = 500_000
MIN_CHUNK_SECONDS = 3.0
TARGET_CHUNKS = 60


def _load(settings_path: str | None, settings: dict[str, Any] | None) -> LoadedSettings:
    if settings is not None:
        return load_settings_from_dict(settings, source_name="<flow parameter>")
    if not settings_path:
        raise ValueError("run_pipeline needs settings_path or settings")
    return load_settings(settings_path)


def _url(loaded: LoadedSettings) -> str:
    landscape = loaded.settings.landscape
    return landscape.url if landscape.enabled else "sqlite://"


def _estimate_rows(loaded: LoadedSettings) -> int | None:
    """Lines in a file source (a cheap byte scan), for the progress artifact only."""
    path = loaded.settings.datasource.options.get("path")
    if not path or not Path(path).is_file():
        return None
    with open(path, "rb") as handle:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: handle.read(1 << 20), b""))


class _FlowLogProgress:
    def advance(self, rows: int, *, run_id: str) -> None:
        return None

    def note(self, message: str) -> None:
        logging.getLogger("elspeth_core").info(message)


@task(name="begin-run", persist_result=False)
def begin_run_task(
    settings_path: str | None, settings: dict[str, Any] | None, flow_run_id: str | None
) -> dict[str, Any]:
    """Start a new landscape run, or take over the one this flow run started before (retry)."""
    loaded = _load(settings_path, settings)
    db = LandscapeDB(_url(loaded))
    orchestrator = Orchestrator(db, progress=_FlowLogProgress(), faults=FaultInjector.from_env())
    existing = LandscapeQueries(db).run_for_flow_run(flow_run_id) if flow_run_id else None
    if existing is not None:
        if existing["status"] == "completed":
            db.close()
            return {"run_id": existing["run_id"], "resumed": True, "already_completed": True}
        session = orchestrator.open_for_resume(existing["run_id"], loaded, flow_run_id=flow_run_id)
        resumed = True
    else:
        session = orchestrator.begin_run(loaded, flow_run_id=flow_run_id)
        resumed = False
    remember(OpenRun(db, orchestrator, session, loaded))
    return {
        "run_id": session.run_id,
        "resumed": resumed,
        "already_completed": False,
        "rows_before": session.rows_ingested,
        "estimated_rows": _estimate_rows(loaded),
    }


@task(name="resume-run", persist_result=False)
def resume_run_task(run_id: str, database: str | None, flow_run_id: str | None) -> dict[str, Any]:
    """Take over a landscape run by ID (``resume_run`` flow)."""
    from elspeth_core.cli.common import DEFAULT_DATABASE

    db = LandscapeDB(database or DEFAULT_DATABASE, create=False)
    orchestrator = Orchestrator(db, progress=_FlowLogProgress(), faults=FaultInjector.from_env())
    try:
        session = orchestrator.open_for_resume(run_id, flow_run_id=flow_run_id)
    except BaseException:
        db.close()
        raise
    remember(OpenRun(db, orchestrator, session, None))
    return {
        "run_id": run_id,
        "resumed": True,
        "already_completed": False,
        "rows_before": session.rows_ingested,
        "estimated_rows": None,
    }


@task(name="process-chunk", persist_result=False)
def process_chunk_task(run_id: str, max_rows: int) -> dict[str, Any]:
    """Process up to ``max_rows`` source rows (commits inside); returns counts only."""
    open_run = recall(run_id)
    if open_run is None:
        raise ElspethError(
            f"run {run_id} is not open in this process",
            hint="Retry the flow run: it resumes from the landscape.",
        )
    started = time.perf_counter()
    try:
        done = open_run.orchestrator.process_chunk(open_run.session, max_rows)
    except BaseException as exc:
        open_run.orchestrator.abort(open_run.session, exc)
        forget(run_id)
        open_run.db.close()
        raise
    return {
        "rows": done,
        "seconds": time.perf_counter() - started,
        "rows_ingested": open_run.session.rows_ingested,
        "exhausted": open_run.session.source_exhausted,
    }


@task(name="finalize-run", persist_result=False)
def finalize_task(run_id: str) -> dict[str, Any]:
    """Flush open batches, complete the sinks, mark the run completed or failed."""
    open_run = forget(run_id)
    if open_run is None:
        raise ElspethError(f"run {run_id} is not open in this process")
    try:
        result = open_run.orchestrator.finalize(open_run.session).as_dict()
    except BaseException as exc:
        open_run.orchestrator.abort(open_run.session, exc)
        open_run.db.close()
        raise
    try:
        result.update(_landscape_facts(open_run.db, run_id))
    except Exception:  # noqa: BLE001 - the run is finished; the summary just says less
        get_run_logger().warning(
            "could not read run %s back for the summary", run_id, exc_info=True
        )
    finally:
        open_run.db.close()
    return result


def _landscape_facts(db: LandscapeDB, run_id: str) -> dict[str, Any]:
    """What the audit trail says about the whole run (all attempts), for the summary artifact."""
    queries = LandscapeQueries(db)
    run = queries.get_run(run_id) or {}
    url = str(db.url)
    return {
        "error": run.get("error"),
        "rows_total": queries.count_rows(run_id),
        "attempts": len(queries.attempts(run_id)),
        "batch_retries": queries.count_batch_retries(run_id),
        # Only a SQLite URL is safe to show: a server URL may carry a password.
        "landscape": url if url.startswith("sqlite") else None,
    }


def _next_chunk(rate: float, elapsed: float) -> int:
    seconds = max(MIN_CHUNK_SECONDS, elapsed / TARGET_CHUNKS)
    return int(min(MAX_CHUNK_ROWS, max(MIN_CHUNK_ROWS, rate * seconds)))


def _drive(started: dict[str, Any]) -> dict[str, Any]:
    """Chunk tasks until the source is exhausted, then finalize; progress artifact meanwhile."""
    logger = get_run_logger()
    run_id = started["run_id"]
    _label_flow_run(run_id)
    if started.get("already_completed"):
        logger.info("ELSPETH run %s is already completed; nothing to do", run_id)
        return _completed_summary(run_id)
    logger.info("ELSPETH run %s %s", run_id, "resumed" if started["resumed"] else "started")
    total = started.get("estimated_rows")
    progress_id = create_progress_artifact(
        progress=0.0,
        key=f"elspeth-progress-{run_id.lower()}"[:60],
        description=f"ELSPETH run {run_id}: rows processed",
    )
    chunk_rows, t0, chunks = 2_000, time.perf_counter(), 0
    while True:
        chunk = process_chunk_task(run_id, chunk_rows)
        chunks += 1
        if total:
            update_progress_artifact(progress_id, min(99.0, 100.0 * chunk["rows_ingested"] / total))
        if chunk["exhausted"]:
            break
        rate = chunk["rows"] / chunk["seconds"] if chunk["seconds"] > 0 else MIN_CHUNK_ROWS
        chunk_rows = _next_chunk(rate, time.perf_counter() - t0)
    result = finalize_task(run_id)
    update_progress_artifact(progress_id, 100.0)
    result["chunk_tasks"] = chunks
    _summary_artifact(result)
    logger.info(
        "ELSPETH run %s %s: %s rows, %.0f rows/s",
        run_id,
        result["status"],
        result["rows"],
        result["rows_per_second"],
    )
    if result["status"] != "completed":
        raise ElspethError(
            f"ELSPETH run {run_id} failed: {result['failed']} failure(s)",
            hint=f"elspeth runs show {run_id}",
        )
    return result


def _core_logs_to_flow_run() -> None:
    """Let ``elspeth_core`` INFO records reach the flow-run logs.

    ``PREFECT_LOGGING_EXTRA_LOGGERS=elspeth_core`` (prefect.yaml sets it) attaches Prefect's API
    handler to the logger but no level, so the logger inherits the root's WARNING and drops INFO.
    Only lowered, never raised: an operator's DEBUG stays DEBUG.
    """
    core = logging.getLogger(CORE_LOGGER)
    if core.getEffectiveLevel() > logging.INFO:
        core.setLevel(logging.INFO)


def _label_flow_run(run_id: str) -> None:
    """Show the ELSPETH run ID on the flow run: a tag (listed in the UI) and a label (queryable).

    Best effort: the landscape already records the flow-run ID, and the log line names the run.
    """
    ctx = FlowRunContext.get()
    if ctx is None or ctx.flow_run is None:
        return
    from prefect.client.orchestration import get_client

    tag = f"elspeth-run:{run_id}"
    try:
        with get_client(sync_client=True) as client:
            current = client.read_flow_run(ctx.flow_run.id)
            if tag not in current.tags:
                client.update_flow_run(ctx.flow_run.id, tags=[*current.tags, tag])
            client.update_flow_run_labels(ctx.flow_run.id, {RUN_ID_LABEL: run_id})
    except Exception:  # noqa: BLE001 - cosmetic; never fail a run over a tag
        get_run_logger().warning("could not tag the flow run with %s", tag, exc_info=True)


def _completed_summary(run_id: str) -> dict[str, Any]:
    return {"run_id": run_id, "status": "completed", "already_completed": True}


def _summary_artifact(result: dict[str, Any]) -> None:
    run_id = result["run_id"]
    sinks = "\n".join(f"| {name} | {count} |" for name, count in sorted(result["sinks"].items()))
    outcomes = ", ".join(f"{k}: {v}" for k, v in sorted(result["outcomes"].items()))
    reason = ""
    if result["status"] != "completed":
        reason = (
            f"\n**Reason:** {result.get('error') or 'see the landscape'}. Each failed row's error "
            "is in the landscape (`transform_errors`, the token's `failed` outcome).\n"
        )
    database = f" -d {result['landscape']}" if result.get("landscape") else ""
    first_sink = min(result["sinks"], default="SINK")
    markdown = f"""# ELSPETH run `{run_id}`: {result["status"]}
{reason}
| | |
|---|---|
| ELSPETH run ID | `{run_id}` |
| rows in the run (all attempts) | {result.get("rows_total", result["rows"])} |
| rows read (this attempt) | {result["rows"]} |
| quarantined | {result["quarantined"]} |
| failed | {result["failed"]} |
| batches (this attempt) | {result["batches"]} |
| batch retries (all attempts) | {result.get("batch_retries", 0)} |
| attempt | {result["attempt"]} of {result.get("attempts", result["attempt"])} |
| duration (this attempt) | {result["duration_seconds"]:.2f} s |
| rows/s | {result["rows_per_second"]:,.0f} |
| chunk tasks | {result.get("chunk_tasks")} |

Terminal outcomes: {outcomes}

| sink | rows |
|---|---|
{sinks}

The landscape is the audit trail, with every row's lineage:

- the run: `elspeth runs show {run_id}{database}`
- explain a row: `elspeth explain --run {run_id} --sink {first_sink} --line 1{database}`
  (or `--row ROW_ID`, `--token TOKEN_ID`)
"""
    create_markdown_artifact(
        markdown=markdown,
        key=f"elspeth-summary-{run_id.lower()}"[:60],
        description=f"ELSPETH run {run_id} summary",
    )


def _mark_landscape(flow: Any, flow_run: Any, state: Any, status: str) -> None:
    """State hook: mark the landscape run of this flow run failed/interrupted (best effort)."""
    params = dict(getattr(flow_run, "parameters", {}) or {})
    try:
        if "run_id" in params:
            from elspeth_core.cli.common import DEFAULT_DATABASE

            url = params.get("database") or DEFAULT_DATABASE
        else:
            url = _url(_load(params.get("settings_path"), params.get("settings")))
        with LandscapeDB(url, create=False) as db:
            run = LandscapeQueries(db).run_for_flow_run(str(flow_run.id))
            if run and run["status"] == "running":
                LandscapeRecorder(db).mark_run(
                    run["run_id"], status, reason=f"Prefect flow run {state.name}"
                )
    except Exception:  # noqa: BLE001 - hooks are best effort; the lease covers the rest
        logging.getLogger(__name__).warning("could not mark landscape run", exc_info=True)


def _on_failure(flow: Any, flow_run: Any, state: Any) -> None:
    _mark_landscape(flow, flow_run, state, "failed")


def _on_crashed(flow: Any, flow_run: Any, state: Any) -> None:
    _mark_landscape(flow, flow_run, state, "interrupted")


@flow(
    name="run_pipeline",
    on_failure=[_on_failure],
    on_crashed=[_on_crashed],
    on_cancellation=[_on_crashed],
    log_prints=True,
)
def run_pipeline(
    settings_path: str | None = None,
    settings: dict[str, Any] | None = None,
    execute: bool = True,
) -> dict[str, Any]:
    """Run an ELSPETH pipeline; a retried flow run resumes its landscape run."""
    _core_logs_to_flow_run()
    loaded = _load(settings_path, settings)
    if not execute:
        from elspeth_core.dag import build_graph

        graph = build_graph(loaded.settings)
        get_run_logger().info(
            "plan only (execute=false): %d nodes, output sink %s",
            len(graph.nodes),
            graph.output_sink,
        )
        return {"status": "planned", "topology_hash": graph.topology_hash}
    flow_run_id = current_flow_run.id
    started = begin_run_task(settings_path, settings, flow_run_id)
    return _drive(started)


@flow(
    name="resume_run",
    on_failure=[_on_failure],
    on_crashed=[_on_crashed],
    on_cancellation=[_on_crashed],
    log_prints=True,
)
def resume_run(run_id: str, database: str | None = None) -> dict[str, Any]:
    """Resume an ELSPETH run by ID; refusals fail the flow run with the refusal message."""
    _core_logs_to_flow_run()
    try:
        started = resume_run_task(run_id, database, current_flow_run.id)
    except RunAlreadyCompleted:
        get_run_logger().info("run %s already completed", run_id)
        return _completed_summary(run_id)
    return _drive(started)
