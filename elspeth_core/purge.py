"""Payload retention: delete the payloads of completed runs past retention, keep their hashes.

Key contracts:
- A purge removes row content everywhere the landscape keeps it: payload references of rows and
  batch members, and the copy of quarantined rows in ``validation_errors.row_data_json``.
- Only ``completed`` runs are purged, by ``completed_at``: a failed or interrupted run may still
  be resumed, and resume needs its payloads.
- The landscape is changed first (references cleared in one transaction), the files second. A
  crash in between leaves unreferenced files, which the next purge deletes; it never leaves a
  reference to deleted bytes. Hashes stay, so ``explain`` keeps working ("payload purged").
- Retention is ``--retention-days`` when given, else each run's recorded
  ``payload_store.retention_days``; the payload folder is ``--payloads`` when given, else each run's
  recorded ``payload_store.base_path`` (relative paths against the current directory, as the run
  resolved them).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from elspeth_core.landscape import LandscapeDB, LandscapeRecorder
from elspeth_core.landscape.retention import RetentionQueries, clear_quarantined_data
from elspeth_core.payloads import PayloadStore

DEFAULT_RETENTION_DAYS = 90


@dataclass
class PurgeItem:
    """One completed run whose payloads are past retention and still present."""

    run_id: str
    completed_at: datetime
    retention_days: int
    payload_dir: Path
    refs_present: bool
    files_present: bool
    size_bytes: int
    rows: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "completed_at": self.completed_at,
            "age_days": round((datetime.now(UTC) - self.completed_at).total_seconds() / 86400, 2),
            "retention_days": self.retention_days,
            "payload_dir": str(self.payload_dir),
            "refs_present": self.refs_present,
            "files_present": self.files_present,
            "size_bytes": self.size_bytes,
            "rows": self.rows,
        }


def plan_purge(
    db: LandscapeDB,
    *,
    retention_days: int | None,
    payloads_path: str | Path | None,
    now: datetime | None = None,
) -> list[PurgeItem]:
    """The runs a purge would touch, oldest first (nothing is changed).

    A run already purged (no references left, no folder) is not listed.
    """
    queries = RetentionQueries(db)
    moment = now or datetime.now(UTC)
    items = []
    for run in queries.completed_runs():
        settings = _settings(run["settings_json"])
        keep = retention_days if retention_days is not None else _recorded_retention(settings)
        if run["completed_at"] > moment - timedelta(days=keep):
            continue
        base = Path(payloads_path) if payloads_path else Path(_recorded_base(settings))
        folder = base / run["run_id"]
        refs = queries.has_payload_refs(run["run_id"])
        files = folder.is_dir()
        if not refs and not files:
            continue
        size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) if files else 0
        items.append(
            PurgeItem(
                run_id=run["run_id"],
                completed_at=run["completed_at"],
                retention_days=keep,
                payload_dir=folder,
                refs_present=refs,
                files_present=files,
                size_bytes=size,
                rows=int(run["source_rows_ingested"]),
            )
        )
    return items


def execute_purge(db: LandscapeDB, items: list[PurgeItem]) -> int:
    """Purge each planned run: clear its references, then delete its payload folder.

    Returns:
        The number of bytes of payload files deleted.
    """
    recorder = LandscapeRecorder(db)
    freed = 0
    for item in items:
        if item.refs_present:
            recorder.clear_payload_refs([item.run_id])
        clear_quarantined_data(db, item.run_id)  # idempotent: also finishes an interrupted purge
        if item.files_present:
            store = PayloadStore(item.payload_dir.parent)
            store.delete_run(item.run_id)
            freed += item.size_bytes
    return freed


def _settings(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except (TypeError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _recorded_retention(settings: dict[str, Any]) -> int:
    store = settings.get("payload_store")
    days = store.get("retention_days") if isinstance(store, dict) else None
    return int(days) if isinstance(days, int) else DEFAULT_RETENTION_DAYS


def _recorded_base(settings: dict[str, Any]) -> str:
    store = settings.get("payload_store")
    base = store.get("base_path") if isinstance(store, dict) else None
    return str(base) if base else ".elspeth/payloads"
