"""Partitioned execution on Dask: compute row ranges in parallel, publish them in order.

Contract:
- A partition task (on a Dask worker, through ``prefect-dask``) processes source rows
  ``[start, start + size)`` through the same engine code as a normal run, but writes NOTHING to
  the landscape or the sinks: its audit records and sink rows go to a staging file (written to a
  temporary name, then renamed), and its payloads to its own payload pack (fsynced). It returns
  only the staging path and counts. Running it twice is harmless: the second run replaces an
  unpublished staging file, and a published one is never read again.
- The flow process publishes partitions strictly in row order through the run's one session: sink
  writes, then one landscape commit per partition (fenced by the run's lease). So sink files are
  byte-identical to a single-process run, and the exactly-once and resume rules are unchanged: a
  crash loses only unpublished partitions, which a resume recomputes from the landscape's ingest
  position.
- Semantics per partition: aggregations and joins that span rows would need buffers shared by
  partitions, so pipelines with aggregations are refused in partitioned mode (run them without
  Dask). Forks and joins completed within a row are fine.
"""

from __future__ import annotations

import os
import pickle
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.runtime import flow_run as current_flow_run
from prefect.settings import PREFECT_API_URL, temporary_settings
from prefect_dask import DaskTaskRunner

from elspeth_core.engine.session import RunSession
from elspeth_core.engine.staging import compute_partition_rows
from elspeth_core.errors import ConfigError
from elspeth_core.landscape.records import ChunkRecords
from flows.run_pipeline import _estimate_rows, _load, _summary_artifact, begin_run_task
from flows.sessions import forget, recall

# The work function lives in the core (no Prefect objects around it), so Dask workers import it by
# reference; only the task wrapper is defined here.
compute_partition = task(name="compute-partition")(compute_partition_rows)


def publish_partition(session: RunSession, staged: dict[str, Any]) -> None:
    """Apply one computed partition to the run, in order: sinks, then one landscape commit."""
    if session.rows_ingested != staged["start"]:
        raise RuntimeError(
            f"partition at {staged['start']} published out of order "
            f"(run is at {session.rows_ingested})"
        )
    with open(staged["path"], "rb") as handle:
        pieces = pickle.load(handle)
    for records, sink_rows in pieces:
        _renumber_sink_lines(session, records)
        for name in (
            "rows",
            "tokens",
            "token_parents",
            "node_states",
            "routing_events",
            "token_outcomes",
            "validation_errors",
            "transform_errors",
        ):
            getattr(session.records, name).extend(getattr(records, name))
        for sink, rows in sink_rows.items():
            session._sink_rows[sink].extend(rows)
    session.rows_ingested = staged["start"] + staged["rows"]
    session.source_exhausted = staged["exhausted"]
    session._rows_since_commit += staged["rows"]
    session.stats.rows += staged["rows"]
    session.commit()
    Path(staged["path"]).unlink(missing_ok=True)


def _renumber_sink_lines(session: RunSession, records: ChunkRecords) -> None:
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


@flow(name="run_pipeline_partitioned", log_prints=True, task_runner=_dask_runner())
def run_partitioned(
    settings_path: str | None = None,
    settings: dict[str, Any] | None = None,
    partition_rows: int | None = None,
    workers: int = 2,
) -> dict[str, Any]:
    """Run a pipeline with partitions computed on the flow's task runner (Dask)."""
    logger = get_run_logger()
    loaded = _load(settings_path, settings)
    if loaded.settings.aggregations:
        raise ConfigError("partitioned execution does not support aggregations; run without Dask")
    started = begin_run_task.fn(settings_path, settings, current_flow_run.id)
    run_id = started["run_id"]
    if started.get("already_completed"):
        return {"run_id": run_id, "status": "completed", "already_completed": True}
    open_run = recall(run_id)
    assert open_run is not None
    session = open_run.session
    estimate = started.get("estimated_rows") or _estimate_rows(loaded) or 100_000
    size = partition_rows or max(2_000, estimate // (4 * max(1, workers)) + 1)
    staging = Path(loaded.settings.payload_store.base_path) / run_id / "staging"
    staging.mkdir(parents=True, exist_ok=True)
    resolved = loaded.raw
    window = 2 * max(1, workers)
    t0 = time.perf_counter()
    next_start = session.rows_ingested
    futures: list[Any] = []
    index = 0
    try:
        while True:
            while len(futures) < window:
                futures.append(
                    compute_partition.submit(
                        resolved,
                        run_id,
                        session.settings_hash,
                        index,
                        next_start,
                        size,
                        str(staging),
                    )
                )
                index += 1
                next_start += size
            staged = futures.pop(0).result()
            publish_partition(session, staged)
            if staged["exhausted"]:
                break
        for future in futures:
            future.wait()
        result = open_run.orchestrator.finalize(session)
    except BaseException as exc:
        open_run.orchestrator.abort(session, exc)
        raise
    finally:
        forget(run_id)
        open_run.db.close()
    out = result.as_dict()
    # From the first partition submitted to the run finalized: the cluster's start-up is before.
    out["partitioned_seconds"] = round(time.perf_counter() - t0, 3)
    out["partitions"] = index
    out["partition_rows"] = size
    _summary_artifact({**out, "chunk_tasks": index})
    logger.info(
        "ELSPETH run %s %s in %.1f s over %d partitions",
        run_id,
        result.status,
        time.perf_counter() - t0,
        index,
    )
    return out


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
) -> dict[str, Any]:
    """Run ``run_partitioned`` on a local Dask cluster of ``workers`` processes, or at ``address``.

    The runner is set when the flow is defined (a runner given through ``with_options`` ends up in
    the flow-run context that Dask must pickle, and a started runner holds locks); so the choice
    goes through the same environment variables a deployment would set.
    """
    with _worker_environment(workers, address):
        flow_obj = run_partitioned.with_options(task_runner=_dask_runner())
        result: dict[str, Any] = flow_obj(
            settings_path=settings_path,
            settings=settings,
            partition_rows=partition_rows,
            workers=workers,
        )
    return result
