"""Partitioned execution on Dask: compute row ranges in parallel, publish them in order.

Contract:
- A partition task (on a Dask worker, through ``prefect-dask``) processes source rows
  ``[start, start + size)`` through the same engine code as a normal run, but writes NOTHING to
  the landscape or the sinks: its audit records and sink rows go to a staging file of its own
  (written to a temporary name, then renamed), and its payloads to its own payload pack (fsynced).
  It returns only the staging path and counts. Running it twice is harmless: each execution has
  its own file, only the one whose result the flow receives is published, and a partition whose
  range is already published is never published again (``publish_partition`` returns False).
- The flow process publishes partitions strictly in row order through the run's one session: sink
  writes, then one landscape commit per partition (fenced by the run's lease). So sink files are
  byte-identical to a single-process run, and the exactly-once and resume rules are unchanged: a
  crash loses only unpublished partitions, which a resume recomputes from the landscape's ingest
  position — single-process (``elspeth resume RUN -x``, ``resume_run``) or partitioned again
  (``resume_run_partitioned``, ``run_on_dask(resume_run_id=RUN)``).
- Semantics per partition: aggregations and joins that span rows would need buffers shared by
  partitions, so pipelines with aggregations are refused in partitioned mode (run them without
  Dask). Forks and joins completed within a row are fine.

Pitfall: prefect-dask starts the cluster (or connects to ``ELSPETH_DASK_ADDRESS``) on the first
access to the runner's client; the flow does that before the first partition, and reports the
time apart (``cluster_start_seconds``) from the partitioned phase.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.context import FlowRunContext
from prefect.runtime import flow_run as current_flow_run
from prefect.settings import PREFECT_API_URL, temporary_settings
from prefect_dask import DaskTaskRunner

from elspeth_core.engine.session import RunSession
from elspeth_core.engine.staging import compute_partition_rows, read_staging
from elspeth_core.errors import ConfigError
from elspeth_core.landscape import LandscapeDB, LandscapeQueries
from flows.run_pipeline import (
    _estimate_rows,
    _load,
    _summary_artifact,
    begin_run_task,
    resume_run_task,
)
from flows.sessions import OpenRun, forget, recall

# The work function lives in the core (no Prefect objects around it), so Dask workers import it by
# reference; only the task wrapper is defined here.
compute_partition = task(name="compute-partition")(compute_partition_rows)

# Partitions per worker: enough that the last partition's tail is short next to a worker's share,
# few enough that per-partition costs (a Prefect task run, a re-read of the source up to the
# partition's start) stay small.
PARTITIONS_PER_WORKER = 4
MIN_PARTITION_ROWS = 200
FALLBACK_ESTIMATE = 100_000
_RECORD_LISTS = (
    "rows",
    "tokens",
    "token_parents",
    "node_states",
    "routing_events",
    "token_outcomes",
    "validation_errors",
    "transform_errors",
)


def partition_size(remaining: int | None, workers: int, requested: int | None = None) -> int:
    """Rows per partition: ``requested``, or the (estimated) remaining rows split into
    ``PARTITIONS_PER_WORKER`` equal partitions per worker."""
    if requested:
        return requested
    parts = PARTITIONS_PER_WORKER * max(1, workers)
    return max(MIN_PARTITION_ROWS, math.ceil(max(1, remaining or FALLBACK_ESTIMATE) / parts))


def publish_partition(session: RunSession, staged: dict[str, Any]) -> bool:
    """Apply one computed partition to the run, in order: sinks, then one landscape commit.

    Returns:
        True when published; False when its range was already published (a re-run of a
        partition after its publication): nothing is written and its staging file is removed.

    Raises:
        RuntimeError: the partition does not start where the run is, or its staging file holds
            another range than its result says.
    """
    start, rows = staged["start"], staged["rows"]
    if start < session.rows_ingested and start + rows <= session.rows_ingested:
        Path(staged["path"]).unlink(missing_ok=True)
        return False
    if session.rows_ingested != start:
        raise RuntimeError(
            f"partition at {start} published out of order (run is at {session.rows_ingested})"
        )
    meta, pieces = read_staging(staged["path"])
    expected = {"run_id": session.run_id, "start": start, "rows": rows}
    if {k: meta.get(k) for k in expected} != expected:
        raise RuntimeError(f"staging file {staged['path']} holds {meta}, expected {expected}")
    for records, sink_rows in pieces:
        _renumber_sink_lines(session, records)
        for name in _RECORD_LISTS:
            getattr(session.records, name).extend(getattr(records, name))
        for sink, sink_batch in sink_rows.items():
            session._sink_rows[sink].extend(sink_batch)
    session.rows_ingested = start + rows
    if rows and staged.get("position"):
        # The source's byte position after the range: the commit records it with its digest.
        session._source_pos = tuple(staged["position"])  # type: ignore[assignment]
        session._source_pos_rows = session.rows_ingested
    session.source_exhausted = staged["exhausted"]
    session._rows_since_commit += rows
    session.stats.rows += rows
    session.commit()
    Path(staged["path"]).unlink(missing_ok=True)
    return True


def _renumber_sink_lines(session: RunSession, records: Any) -> None:
    # Line numbers were counted inside the partition; the run's sinks decide the real ones.
    seen: dict[str, int] = {}
    for outcome in records.token_outcomes:
        sink = outcome.get("sink_name")
        if sink:
            base = session._sink_counts[sink] + len(session._sink_rows[sink])
            seen[sink] = seen.get(sink, 0) + 1
            outcome["sink_line"] = base + seen[sink]


def _dask_runner() -> DaskTaskRunner:
    """The flow's Dask runner: ELSPETH_DASK_ADDRESS (an existing cluster) or a local cluster of
    ELSPETH_DASK_WORKERS (default 2) single-threaded worker processes."""
    address = os.environ.get("ELSPETH_DASK_ADDRESS")
    if address:
        return DaskTaskRunner(address=address)
    workers = int(os.environ.get("ELSPETH_DASK_WORKERS", "2"))
    return DaskTaskRunner(
        cluster_kwargs={
            "n_workers": workers,
            "threads_per_worker": 1,
            "processes": True,
            "dashboard_address": ":0",
        }
    )


def _start_cluster(workers: int) -> float:
    """Start (or connect to) the flow's Dask cluster and warm its workers; returns seconds."""
    began = time.perf_counter()
    ctx = FlowRunContext.get()
    runner = getattr(ctx, "task_runner", None)
    client = getattr(runner, "client", None)  # prefect-dask starts the cluster on this access
    if client is not None:
        if not os.environ.get("ELSPETH_DASK_ADDRESS"):
            client.wait_for_workers(workers, timeout=120)
        # What a partition imports first, paid once per worker while the cluster starts. A
        # builtin is sent by reference, so workers need not import this module.
        client.run(exec, "import prefect.task_engine, elspeth_core.engine.staging")
    return time.perf_counter() - began


def _discard_staging(staging: Path) -> None:
    """Remove staging files no result points at (a dead attempt's, or a re-run's)."""
    shutil.rmtree(staging, ignore_errors=True)


def _drive_partitions(
    open_run: OpenRun,
    settings: dict[str, Any],
    *,
    estimate: int | None,
    partition_rows: int | None,
    workers: int,
) -> dict[str, Any]:
    """Compute the run's remaining rows in partitions on the cluster, publish them in order, and
    finalize the run. The run is released (finalized or aborted) whatever happens."""
    logger = get_run_logger()
    session = open_run.session
    run_id = session.run_id
    first = session.rows_ingested
    size = partition_size(estimate - first if estimate else None, workers, partition_rows)
    # Partitions are submitted ahead up to the estimated end; past it only one at a time, until
    # a partition finds the source's end (the estimate is a hint, never a limit).
    horizon = estimate if estimate else None
    staging = Path(session.settings.payload_store.base_path) / run_id / "staging"
    window = 2 * max(1, workers)
    futures: list[Any] = []
    index = published = 0
    try:
        _discard_staging(staging)
        staging.mkdir(parents=True, exist_ok=True)
        cluster_seconds = _start_cluster(workers)
        t0 = time.perf_counter()
        next_start = first
        while True:
            while len(futures) < window and (
                horizon is None or next_start < horizon or not futures
            ):
                futures.append(
                    compute_partition.submit(
                        settings,
                        run_id,
                        session.settings_hash,
                        index,
                        next_start,
                        size,
                        str(staging),
                        session.attempt,
                    )
                )
                index += 1
                next_start += size
            staged = futures.pop(0).result()
            published += publish_partition(session, staged)
            if staged["exhausted"]:
                break
            if horizon is not None and staged["start"] + staged["rows"] >= horizon:
                horizon = None  # the source is longer than estimated
        for future in futures:
            future.wait()  # speculative partitions past the end: their results are not used
        result = open_run.orchestrator.finalize(session)
        _discard_staging(staging)
    except BaseException as exc:
        open_run.orchestrator.abort(session, exc)
        raise
    finally:
        forget(run_id)
        open_run.db.close()
    seconds = time.perf_counter() - t0
    out = result.as_dict()
    # From the first partition submitted to the run finalized; the cluster's start is apart.
    out["partitioned_seconds"] = round(seconds, 3)
    out["cluster_start_seconds"] = round(cluster_seconds, 3)
    out["partitions"] = published
    out["partitions_submitted"] = index
    out["partition_rows"] = size
    out["rows_before"] = first
    _summary_artifact({**out, "chunk_tasks": index})
    logger.info(
        "ELSPETH run %s %s in %.1f s over %d partitions of %d rows (cluster start %.1f s)",
        run_id,
        result.status,
        seconds,
        published,
        size,
        cluster_seconds,
    )
    return out


@flow(name="run_pipeline_partitioned", log_prints=True, task_runner=_dask_runner())
def run_partitioned(
    settings_path: str | None = None,
    settings: dict[str, Any] | None = None,
    partition_rows: int | None = None,
    workers: int = 2,
) -> dict[str, Any]:
    """Run a pipeline with partitions computed on the flow's task runner (Dask).

    A retried flow run (Retry in the UI) resumes its landscape run, partitioned again.
    """
    loaded = _load(settings_path, settings)
    if loaded.settings.aggregations:
        raise ConfigError("partitioned execution does not support aggregations; run without Dask")
    started = begin_run_task.fn(settings_path, settings, current_flow_run.id)
    run_id = started["run_id"]
    if started.get("already_completed"):
        return {"run_id": run_id, "status": "completed", "already_completed": True}
    open_run = recall(run_id)
    assert open_run is not None
    estimate = started.get("estimated_rows") or _estimate_rows(loaded)
    return _drive_partitions(
        open_run, loaded.raw, estimate=estimate, partition_rows=partition_rows, workers=workers
    )


@flow(name="resume_run_partitioned", log_prints=True, task_runner=_dask_runner())
def resume_partitioned(
    run_id: str,
    database: str | None = None,
    partition_rows: int | None = None,
    workers: int = 2,
) -> dict[str, Any]:
    """Resume a run by ID with its remaining rows computed in partitions on Dask.

    Only the rows the landscape has not recorded are computed (from its ingest position), with
    the settings recorded for the run; the same refusals as ``elspeth resume`` apply.
    """
    stored = _recorded_settings(run_id, database)
    if stored.get("aggregations"):
        raise ConfigError("partitioned execution does not support aggregations; run without Dask")
    resume_run_task.fn(run_id, database, current_flow_run.id)
    open_run = recall(run_id)
    assert open_run is not None
    return _drive_partitions(
        open_run,
        stored,
        estimate=_estimate_rows(_load(None, stored)),
        partition_rows=partition_rows,
        workers=workers,
    )


def _recorded_settings(run_id: str, database: str | None) -> dict[str, Any]:
    """The run's recorded settings ({} for an unknown run: the resume then refuses it)."""
    from elspeth_core.cli.common import DEFAULT_DATABASE

    with LandscapeDB(database or DEFAULT_DATABASE, create=False) as db:
        run = LandscapeQueries(db).get_run(run_id)
    return json.loads(run["settings_json"]) if run else {}


@contextmanager
def _worker_environment(workers: int, address: str | None) -> Iterator[None]:
    """Set the environment the Dask runner and its worker processes read, and restore it after.

    Worker processes inherit ``os.environ``, not this process's Prefect settings context, so the
    effective API URL is exported to them. Without any API URL, every worker would start its own
    temporary Prefect server (10-15 s each, all on one SQLite file); one temporary server is
    started here instead, used by this process too, and stopped afterwards.
    """
    saved = {name: os.environ.get(name) for name in _WORKER_ENV}
    server = None
    try:
        os.environ["ELSPETH_DASK_WORKERS"] = str(workers)
        if address:
            os.environ["ELSPETH_DASK_ADDRESS"] = address
        api_url = PREFECT_API_URL.value()
        if not api_url:
            from prefect.server.api.server import SubprocessASGIServer

            server = SubprocessASGIServer()
            server.start()
            api_url = server.api_url
        os.environ["PREFECT_API_URL"] = api_url
        with temporary_settings(updates={PREFECT_API_URL: api_url}):
            yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        if server is not None:
            server.stop()


_WORKER_ENV = ("ELSPETH_DASK_WORKERS", "ELSPETH_DASK_ADDRESS", "PREFECT_API_URL")


def run_on_dask(
    *,
    settings_path: str | None = None,
    settings: dict[str, Any] | None = None,
    workers: int = 2,
    address: str | None = None,
    partition_rows: int | None = None,
    resume_run_id: str | None = None,
    database: str | None = None,
) -> dict[str, Any]:
    """Run ``run_partitioned`` on a local Dask cluster of ``workers`` processes, or at ``address``;
    with ``resume_run_id``, resume that run (landscape at ``database``) the same way.

    The runner is set when the flow is defined (a runner given through ``with_options`` ends up in
    the flow-run context that Dask must pickle, and a started runner holds locks); so the choice
    goes through the same environment variables a deployment would set.
    """
    with _worker_environment(workers, address):
        if resume_run_id is not None:
            resume_obj = resume_partitioned.with_options(task_runner=_dask_runner())
            resumed: dict[str, Any] = resume_obj(
                run_id=resume_run_id,
                database=database,
                partition_rows=partition_rows,
                workers=workers,
            )
            return resumed
        flow_obj = run_partitioned.with_options(task_runner=_dask_runner())
        result: dict[str, Any] = flow_obj(
            settings_path=settings_path,
            settings=settings,
            partition_rows=partition_rows,
            workers=workers,
        )
    return result
