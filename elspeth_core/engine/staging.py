"""Staged computation of a row range: the engine's processing without any durable effect.

Used for partitioned execution (``flows/partitioned.py``): a worker process computes rows
``[start, start + size)`` exactly as a run would, but its commits are collected in memory and
written to a staging file (temporary name, fsync, rename); its payloads go to its own pack. The run's
owner later publishes staging files strictly in row order. Nothing here touches the landscape or a
sink, and nothing here imports Prefect or Dask.

Key contracts:
- Every execution writes a staging file of its own (a unique name): when Dask runs a partition
  twice, or a task of a dead flow process is still running while a resume recomputes the same
  range, no execution can replace the file another one returned. The file repeats the range it
  holds, so the publisher checks it against the result it was handed.
- A partition reports the source's end (``exhausted``) when its range reaches it, also when the
  range ends exactly at the last row (one row of look-ahead), so no empty trailing partition is
  needed to find the end.
- ``position`` is the seekable source's byte position after the range: published with the
  partition, it lets a resume verify the published rows with one digest (see
  ``elspeth_core/plugins/source_position.py``).
"""

from __future__ import annotations

import itertools
import os
import pickle
import uuid
from pathlib import Path
from typing import Any

from elspeth_core.config import load_settings_from_dict
from elspeth_core.dag import build_graph
from elspeth_core.engine.session import RunSession
from elspeth_core.errors import ConfigError
from elspeth_core.landscape.records import ChunkRecords
from elspeth_core.payloads import PayloadStore
from elspeth_core.plugins.registry import PluginRegistry

PARTITION_PACK_BASE = 100_000
STAGING_SUFFIX = ".pkl"

Staged = list[tuple[ChunkRecords, dict[str, list[dict[str, Any]]]]]


class StagingSession(RunSession):
    """A session whose commits are collected in memory instead of written anywhere."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.staged: Staged = []

    def commit(self, *, checkpoint: bool = True, final: bool = False, wait: bool = True) -> None:
        rows = {name: pending for name, pending in self._sink_rows.items() if pending}
        if self.records.is_empty() and not rows:
            return
        # No fsync here: the payload pack is synced once, before the staging file is written.
        self.staged.append((self.records, rows))
        self.records = ChunkRecords()
        self._sink_rows = {name: [] for name in self.graph.sinks}


def partition_pack(attempt: int, index: int) -> int:
    """The pack number of partition ``index`` of run attempt ``attempt`` (never a real attempt's).

    Packs are also named by process ID and only appended to, so this only keeps the packs of
    different attempts apart for whoever reads the payload folder.
    """
    return PARTITION_PACK_BASE * max(1, attempt) + index


def compute_partition_rows(
    settings: dict[str, Any],
    run_id: str,
    config_hash: str,
    index: int,
    start: int,
    size: int,
    staging_dir: str,
    attempt: int = 1,
) -> dict[str, Any]:
    """Compute rows [start, start + size) into a new staging file.

    Returns:
        ``path`` (the staging file), ``start``, ``rows`` (rows read), ``exhausted`` (the source
        ends within or right after the range) and ``position`` (the source's byte position after
        the range, None for a source that cannot seek).

    Raises:
        ConfigError: a join is still waiting for rows beyond the range.
    """
    loaded = load_settings_from_dict(settings, source_name=f"run {run_id}")
    graph = build_graph(loaded.settings)
    session = StagingSession(
        run_id=run_id,
        settings=loaded.settings,
        graph=graph,
        recorder=None,  # type: ignore[arg-type]
        registry=PluginRegistry.builtin(),
        payloads=PayloadStore(loaded.settings.payload_store.base_path),
        owner="staging",
        lease_seconds=0.0,
        attempt=partition_pack(attempt, index),
        config_hash=config_hash,
    )
    try:
        session._source_iter = itertools.islice(iter(session.source.read()), start, None)
        session.rows_ingested = start
        session.process_rows(size)
        if session.pending_joins:
            raise ConfigError(
                "a join is still waiting at a partition boundary; run this pipeline without Dask"
            )
        rows = session.rows_ingested - start
        position = session._source_pos if session._source_pos_rows == start + rows else None
        exhausted = session.source_exhausted or not session.peek_more()
        session.payloads.sync()
        meta = {
            "run_id": run_id,
            "start": start,
            "rows": rows,
            "exhausted": exhausted,
            "position": list(position) if position else None,
        }
        path = _write_staging(Path(staging_dir), start, meta, session.staged)
        return {"path": str(path), **{k: v for k, v in meta.items() if k != "run_id"}}
    finally:
        session.close()


def _write_staging(folder: Path, start: int, meta: dict[str, Any], staged: Staged) -> Path:
    name = f"{start:012d}-{uuid.uuid4().hex[:16]}"
    path = folder / f"{name}{STAGING_SUFFIX}"
    tmp = folder / f"{name}.tmp"
    with open(tmp, "wb") as handle:
        pickle.dump((meta, staged), handle, protocol=pickle.HIGHEST_PROTOCOL)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    return path


def read_staging(path: str | Path) -> tuple[dict[str, Any], Staged]:
    """The range a staging file holds (``run_id``, ``start``, ``rows``, ...) and its commits."""
    with open(path, "rb") as handle:
        meta, staged = pickle.load(handle)
    return meta, staged
