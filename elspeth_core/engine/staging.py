"""Staged computation of a row range: the engine's processing without any durable effect.

Used for partitioned execution (``flows/partitioned.py``): a worker process computes rows
``[start, start + size)`` exactly as a run would, but its commits are collected in memory and
written to a staging file (temporary name, fsync, rename); its payloads go to its own pack. The run's
owner later publishes staging files strictly in row order. Nothing here touches the landscape or a
sink, and nothing here imports Prefect or Dask.
"""

from __future__ import annotations

import itertools
import os
import pickle
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


class StagingSession(RunSession):
    """A session whose commits are collected in memory instead of written anywhere."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.staged: list[tuple[ChunkRecords, dict[str, list[dict[str, Any]]]]] = []

    def commit(self, *, checkpoint: bool = True, final: bool = False) -> None:
        rows = {name: pending for name, pending in self._sink_rows.items() if pending}
        if self.records.is_empty() and not rows:
            return
        # No fsync here: the payload pack is synced once, before the staging file is written.
        self.staged.append((self.records, rows))
        self.records = ChunkRecords()
        self._sink_rows = {name: [] for name in self.graph.sinks}


def compute_partition_rows(
    settings: dict[str, Any],
    run_id: str,
    config_hash: str,
    index: int,
    start: int,
    size: int,
    staging_dir: str,
) -> dict[str, Any]:
    """Compute rows [start, start + size) into a staging file; returns its path and counts."""
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
        attempt=PARTITION_PACK_BASE + index,
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
        session.payloads.sync()
        path = Path(staging_dir) / f"{start:012d}.pkl"
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        with open(tmp, "wb") as handle:
            pickle.dump(session.staged, handle, protocol=pickle.HIGHEST_PROTOCOL)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        return {
            "path": str(path),
            "start": start,
            "rows": session.rows_ingested - start,
            "exhausted": session.source_exhausted,
        }
    finally:
        session.close()
