"""Writes to the landscape: runs and leases, chunk commits, batches, checkpoints.

Key contracts:
- ``commit_chunk`` writes one chunk's records, the sinks' publication states, the run's ingest
  position and the checkpoint in ONE transaction, after the sinks have made their bytes durable.
  So either all of a chunk's outcomes are recorded together with the sink offsets that contain its
  rows, or none is (and resume cuts the sinks back).
- Every write made on behalf of a running process is *fenced* by its lease: the transaction first
  updates ``runs`` where ``lease_owner`` is this process; if another process took the run over,
  the update touches no row and the transaction is rolled back with ``LeaseLostError``.
- Writes are batched (executemany); never one commit per record.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

from sqlalchemy import (
    Connection,
    RootTransaction,
    and_,
    bindparam,
    delete,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.sql import ClauseElement

from elspeth_core.errors import LandscapeError, LeaseLostError, RunInProgress, RunNotFound
from elspeth_core.ids import new_id
from elspeth_core.landscape import schema as t
from elspeth_core.landscape.database import LandscapeDB
from elspeth_core.landscape.records import ChunkRecords, Record
from elspeth_core.landscape.statements import CompiledStatement, CopyInsert, MultiRowInsert

BATCH_STATUSES = ("draft", "executing", "completed", "failed")


def utcnow() -> datetime:
    return datetime.now(UTC)


class LandscapeRecorder:
    """All writes to one landscape database."""

    def __init__(self, db: LandscapeDB) -> None:
        self.db = db
        self._statements: dict[tuple[Any, ...], CompiledStatement] = {}
        # PostgreSQL takes a chunk's records with COPY (several times faster than executemany).
        self._copy_inserts = db.engine.dialect.name == "postgresql"
        self._copies: dict[tuple[str, tuple[str, ...]], CopyInsert] = {}
        self._multi_row: dict[tuple[str, tuple[str, ...]], MultiRowInsert] = {}

    def _compiled(
        self,
        key: tuple[Any, ...],
        build: Callable[[], ClauseElement],
        column_keys: Sequence[str] | None = None,
    ) -> CompiledStatement:
        """The statement for ``key``, compiled on first use (``build`` makes it)."""
        found = self._statements.get(key)
        if found is None:
            found = CompiledStatement(build(), self.db.engine.dialect, column_keys)
            self._statements[key] = found
        return found

    # ------------------------------------------------------------------ runs and leases
    def begin_run(
        self,
        run: Record,
        nodes: Sequence[Record],
        edges: Sequence[Record],
        *,
        lease_owner: str,
        lease_seconds: float,
        checkpoint: Record | None,
    ) -> None:
        """Create the run (status ``running``, lease held), its graph, attempt 1 and checkpoint 0."""
        now = utcnow()
        run = {
            **run,
            "status": "running",
            "started_at": now,
            "lease_owner": lease_owner,
            "lease_expires_at": now + timedelta(seconds=lease_seconds),
            "heartbeat_at": now,
        }
        with self.db.begin() as conn:
            conn.execute(insert(t.runs), [run])
            conn.execute(insert(t.nodes), list(nodes))
            if edges:
                conn.execute(insert(t.edges), list(edges))
            conn.execute(
                insert(t.run_attempts),
                [
                    {
                        "run_id": run["run_id"],
                        "attempt": 1,
                        "kind": "run",
                        "status": "running",
                        "lease_owner": lease_owner,
                        "prefect_flow_run_id": run.get("prefect_flow_run_id"),
                        "rows_before": 0,
                        "started_at": now,
                    }
                ],
            )
            if checkpoint is not None:
                conn.execute(insert(t.checkpoints), [checkpoint])

    def acquire_lease(
        self,
        run_id: str,
        *,
        owner: str,
        lease_seconds: float,
        dead_owner: str | None,
        kind: str,
        flow_run_id: str | None = None,
    ) -> int:
        """Take over a run for ``resume``: atomically, only if its lease is free or expired.

        Args:
            dead_owner: an owner known to be dead (its process is gone), whose lease may be taken
                before it expires.

        Returns:
            The new attempt number.

        Raises:
            RunInProgress: another live process holds the lease.
        """
        now = utcnow()
        free = or_(
            t.runs.c.lease_owner.is_(None),
            t.runs.c.lease_expires_at < now,
            t.runs.c.lease_owner == (dead_owner or ""),
        )
        with self.db.begin() as conn:
            row = conn.execute(select(t.runs).where(t.runs.c.run_id == run_id)).mappings().first()
            if row is None:
                raise RunNotFound(run_id)
            values: dict[str, Any] = {
                "lease_owner": owner,
                "lease_expires_at": now + timedelta(seconds=lease_seconds),
                "heartbeat_at": now,
                "status": "running",
                "completed_at": None,
                "error": None,
            }
            if flow_run_id:
                values["prefect_flow_run_id"] = flow_run_id
            result = conn.execute(
                update(t.runs).where(and_(t.runs.c.run_id == run_id, free)).values(**values)
            )
            if result.rowcount != 1:
                raise RunInProgress(run_id, str(row["lease_owner"]), _iso(row["lease_expires_at"]))
            attempt = (
                conn.execute(
                    select(func.max(t.run_attempts.c.attempt)).where(
                        t.run_attempts.c.run_id == run_id
                    )
                ).scalar_one_or_none()
                or 0
            ) + 1
            conn.execute(
                update(t.run_attempts)
                .where(
                    and_(t.run_attempts.c.run_id == run_id, t.run_attempts.c.status == "running")
                )
                .values(status="interrupted", ended_at=now)
            )
            conn.execute(
                insert(t.run_attempts),
                [
                    {
                        "run_id": run_id,
                        "attempt": attempt,
                        "kind": kind,
                        "status": "running",
                        "lease_owner": owner,
                        "prefect_flow_run_id": flow_run_id,
                        "rows_before": row["source_rows_ingested"],
                        "started_at": now,
                    }
                ],
            )
        return attempt

    def heartbeat(self, run_id: str, owner: str, lease_seconds: float) -> bool:
        """Extend the lease; False when this process no longer holds it."""
        now = utcnow()
        with self.db.begin() as conn:
            result = conn.execute(
                update(t.runs)
                .where(and_(t.runs.c.run_id == run_id, t.runs.c.lease_owner == owner))
                .values(heartbeat_at=now, lease_expires_at=now + timedelta(seconds=lease_seconds))
            )
            return result.rowcount == 1

    def _fence(
        self, conn: Connection, run_id: str, owner: str, lease_seconds: float, **values: Any
    ) -> None:
        now = utcnow()
        names = tuple(sorted(values))
        params = {
            "w_run_id": run_id,
            "w_owner": owner,
            "v_heartbeat_at": now,
            "v_lease_expires_at": now + timedelta(seconds=lease_seconds),
            **{f"v_{name}": value for name, value in values.items()},
        }
        statement = self._compiled(("fence", names), partial(_fence_update, names))
        result = statement.execute(conn, params)
        if result.rowcount != 1:
            raise LeaseLostError(
                f"lease on run {run_id} lost: another process took it over",
                hint="This process stops writing; the other process continues the run.",
                run_id=run_id,
            )

    def finish_run(
        self,
        run_id: str,
        *,
        owner: str,
        status: str,
        error: str | None = None,
        delete_checkpoints: bool,
    ) -> None:
        """End the run (``completed`` / ``failed``), release the lease, close the attempt.

        A completed run's checkpoints are deleted in the same transaction (SPEC §4 rule 7).
        """
        now = utcnow()
        with self.db.begin() as conn:
            self._fence(conn, run_id, owner, 0)
            conn.execute(
                update(t.runs)
                .where(t.runs.c.run_id == run_id)
                .values(
                    status=status,
                    completed_at=now,
                    error=error,
                    lease_owner=None,
                    lease_expires_at=None,
                )
            )
            conn.execute(
                update(t.run_attempts)
                .where(
                    and_(
                        t.run_attempts.c.run_id == run_id,
                        t.run_attempts.c.lease_owner == owner,
                        t.run_attempts.c.status == "running",
                    )
                )
                .values(status=status, ended_at=now, error=error)
            )
            if delete_checkpoints:
                conn.execute(delete(t.checkpoints).where(t.checkpoints.c.run_id == run_id))

    def mark_run(
        self, run_id: str, status: str, *, reason: str | None, owner: str | None = None
    ) -> bool:
        """Mark a non-completed run ``failed`` or ``interrupted`` (hooks, reaping, --force-new).

        When ``owner`` is given only that lease holder's run is touched. The lease is released.
        Returns True when a row changed.
        """
        now = utcnow()
        cond = and_(t.runs.c.run_id == run_id, t.runs.c.status != "completed")
        if owner is not None:
            cond = and_(cond, t.runs.c.lease_owner == owner)
        with self.db.begin() as conn:
            result = conn.execute(
                update(t.runs)
                .where(cond)
                .values(status=status, error=reason, lease_owner=None, lease_expires_at=None)
            )
            conn.execute(
                update(t.run_attempts)
                .where(
                    and_(t.run_attempts.c.run_id == run_id, t.run_attempts.c.status == "running")
                )
                .values(status=status, ended_at=now, error=reason)
            )
            return result.rowcount == 1

    def set_superseded(self, run_id: str, new_run_id: str) -> None:
        with self.db.begin() as conn:
            conn.execute(
                update(t.runs).where(t.runs.c.run_id == run_id).values(superseded_by=new_run_id)
            )

    # ------------------------------------------------------------------ chunk commits
    def commit_chunk(
        self,
        run_id: str,
        records: ChunkRecords,
        *,
        owner: str,
        lease_seconds: float,
        before_commit: Callable[[], None] | None = None,
    ) -> None:
        """Write one chunk's audit records, publications and checkpoint in one transaction.

        Raises:
            LeaseLostError: the lease was taken over; nothing was written.
            LandscapeError: a uniqueness rule was broken (e.g. a second terminal outcome).
        """
        staged = self.stage_chunk(run_id, records, owner=owner, lease_seconds=lease_seconds)
        staged.commit(before_commit)

    def stage_chunk(
        self, run_id: str, records: ChunkRecords, *, owner: str, lease_seconds: float
    ) -> StagedChunk:
        """Write one chunk's records into an open transaction; :meth:`StagedChunk.commit` ends it.

        Every statement runs here, so the fence and the uniqueness rules are checked by the
        caller's thread; what is left for ``commit`` is the durable COMMIT itself, which may run on
        another thread (one at a time: the connection is not shared). Until then the transaction
        holds the database's write lock (SQLite) or its rows' locks (PostgreSQL).

        Raises:
            LeaseLostError: the lease was taken over; nothing was written.
            LandscapeError: a uniqueness rule was broken (e.g. a second terminal outcome).
        """
        progress: dict[str, Any] = {}
        if records.rows_ingested is not None:
            progress["source_rows_ingested"] = records.rows_ingested
            # Always written with the count, so a stale position never outlives a commit.
            progress["source_position_json"] = records.source_position_json
        if records.source_exhausted:
            progress["source_exhausted"] = True
        conn, transaction = self.db.open_write()
        try:
            self._fence(conn, run_id, owner, lease_seconds, **progress)
            self._insert_records(conn, records)
            self._apply_batch_updates(conn, records.batch_updates)
            self._upsert_artifacts(conn, run_id, records.artifacts)
            if records.checkpoint is not None:
                self._replace_checkpoint(conn, records.checkpoint)
        except BaseException as exc:
            transaction.rollback()
            conn.close()
            if isinstance(exc, IntegrityError):
                raise _refused_chunk(run_id, exc) from exc
            raise
        return StagedChunk(run_id, conn, transaction)

    def _insert_records(self, conn: Connection, records: ChunkRecords) -> None:
        for table, values in (
            (t.rows, records.rows),
            (t.tokens, records.tokens),
            (t.token_parents, records.token_parents),
            (t.node_states, records.node_states),
            (t.routing_events, records.routing_events),
            (t.batches, records.batches),
            (t.batch_members, records.batch_members),
            (t.batch_outputs, records.batch_outputs),
            (t.token_outcomes, records.token_outcomes),
            (t.validation_errors, records.validation_errors),
            (t.transform_errors, records.transform_errors),
        ):
            if values:
                self._bulk_insert(conn, table, values)

    def _bulk_insert(self, conn: Connection, table: Any, values: list[Record]) -> None:
        """One bulk write of ``values`` (same columns): COPY on PostgreSQL, else multi-row INSERTs.

        ``conn.execute(insert(table), values)`` re-processes every parameter dict in Python, which
        costs more than the database write itself at tens of thousands of records per second; see
        :mod:`~elspeth_core.landscape.statements`.
        """
        keys = tuple(values[0])
        if self._copy_inserts:
            copier = self._copies.get((table.name, keys))
            if copier is None:
                copier = self._copies[(table.name, keys)] = CopyInsert(table, conn.dialect, keys)
            copier.executemany(conn, values)
            return
        if len(values) > 1:
            many = self._multi_row.get((table.name, keys))
            if many is None:
                many = self._multi_row[(table.name, keys)] = MultiRowInsert(
                    table, conn.dialect, keys
                )
            many.executemany(conn, values)
            return
        statement = self._compiled(("insert", table.name, keys), lambda: insert(table), keys)
        statement.executemany(conn, values)

    def _apply_batch_updates(self, conn: Connection, updates: list[Record]) -> None:
        for change in updates:
            names = tuple(k for k in change if k != "batch_id")
            statement = self._compiled(("batch_update", names), partial(_batch_update, names))
            params = {f"v_{name}": change[name] for name in names}
            statement.execute(conn, {"w_batch_id": change["batch_id"], **params})

    def _upsert_artifacts(
        self, conn: Connection, run_id: str, artifacts: dict[str, Record]
    ) -> None:
        now = utcnow()
        for sink_name, values in artifacts.items():
            values = {**values, "updated_at": now}
            names = tuple(values)
            statement = self._compiled(("artifact_update", names), partial(_artifact_update, names))
            params = {f"v_{name}": value for name, value in values.items()}
            result = statement.execute(
                conn, {"w_run_id": run_id, "w_sink_name": sink_name, **params}
            )
            if result.rowcount == 0:
                record = {
                    "artifact_id": new_id(),
                    "run_id": run_id,
                    "sink_name": sink_name,
                    **values,
                }
                self._bulk_insert(conn, t.artifacts, [record])

    def _replace_checkpoint(self, conn: Connection, checkpoint: Record) -> None:
        # Only the newest checkpoint matters; older ones are superseded in the same transaction.
        statement = self._compiled(("checkpoint_supersede",), _checkpoint_supersede)
        statement.execute(
            conn,
            {"w_run_id": checkpoint["run_id"], "w_sequence_number": checkpoint["sequence_number"]},
        )
        self._bulk_insert(conn, t.checkpoints, [checkpoint])

    # ------------------------------------------------------------------ batches (plan API)
    def create_batch(
        self, run_id: str, aggregation_node_id: str, aggregation_name: str, *, attempt: int = 1
    ) -> str:
        """Create a ``draft`` batch and return its ID."""
        batch = new_batch_record(run_id, aggregation_node_id, aggregation_name, attempt=attempt)
        with self.db.begin() as conn:
            conn.execute(insert(t.batches), [batch])
        return str(batch["batch_id"])

    def add_batch_member(self, batch_id: str, token_id: str, ordinal: int) -> None:
        with self.db.begin() as conn:
            conn.execute(
                insert(t.batch_members),
                [{"batch_id": batch_id, "token_id": token_id, "ordinal": ordinal}],
            )

    def update_batch_status(
        self,
        batch_id: str,
        status: str,
        *,
        trigger_type: str | None = None,
        trigger_reason: str | None = None,
        error: str | None = None,
    ) -> None:
        """Move a batch along draft → executing → completed | failed."""
        if status not in BATCH_STATUSES:
            raise ValueError(f"unknown batch status {status!r} (allowed: {BATCH_STATUSES})")
        values: dict[str, Any] = {"status": status}
        if trigger_type is not None:
            values["trigger_type"] = trigger_type
        if trigger_reason is not None:
            values["trigger_reason"] = trigger_reason
        if error is not None:
            values["error"] = error
        if status in ("completed", "failed"):
            values["completed_at"] = utcnow()
        with self.db.begin() as conn:
            result = conn.execute(
                update(t.batches).where(t.batches.c.batch_id == batch_id).values(**values)
            )
            if result.rowcount != 1:
                raise LandscapeError(f"batch not found: {batch_id}", batch_id=batch_id)

    def get_batch(self, batch_id: str) -> Record | None:
        with self.db.connect() as conn:
            row = conn.execute(select(t.batches).where(t.batches.c.batch_id == batch_id))
            found = row.mappings().first()
            return dict(found) if found else None

    def get_batches(self, run_id: str, *, status: str | None = None) -> list[Record]:
        query = select(t.batches).where(t.batches.c.run_id == run_id)
        if status is not None:
            query = query.where(t.batches.c.status == status)
        with self.db.connect() as conn:
            found = conn.execute(query.order_by(t.batches.c.created_at, t.batches.c.batch_id))
            return [dict(r) for r in found.mappings()]

    def get_batch_members(self, batch_id: str) -> list[Record]:
        with self.db.connect() as conn:
            found = conn.execute(
                select(t.batch_members)
                .where(t.batch_members.c.batch_id == batch_id)
                .order_by(t.batch_members.c.ordinal)
            )
            return [dict(r) for r in found.mappings()]

    def get_incomplete_batches(self, run_id: str) -> list[Record]:
        """Draft, executing and failed batches of a run, oldest first (recovery's work list)."""
        with self.db.connect() as conn:
            found = conn.execute(
                select(t.batches)
                .where(
                    and_(
                        t.batches.c.run_id == run_id,
                        t.batches.c.status.in_(("draft", "executing", "failed")),
                    )
                )
                .order_by(t.batches.c.created_at, t.batches.c.batch_id)
            )
            return [dict(r) for r in found.mappings()]

    def retry_batch(self, batch_id: str, conn: Connection | None = None) -> str:
        """Create attempt+1 of a FAILED batch: a new draft with the same node and members in order.

        Raises:
            LandscapeError: the batch does not exist, or is not ``failed``.
        """
        if conn is None:
            with self.db.begin() as own:
                return self.retry_batch(batch_id, own)
        batch = conn.execute(select(t.batches).where(t.batches.c.batch_id == batch_id))
        original = batch.mappings().first()
        if original is None:
            raise LandscapeError(f"batch not found: {batch_id}", batch_id=batch_id)
        if original["status"] != "failed":
            raise LandscapeError(
                f"batch {batch_id} is {original['status']}, only a failed batch can be retried",
                batch_id=batch_id,
            )
        retry = new_batch_record(
            original["run_id"],
            original["aggregation_node_id"],
            original["aggregation_name"],
            attempt=original["attempt"] + 1,
        )
        retry["retry_of_batch_id"] = batch_id
        retry["trigger_type"] = original["trigger_type"]
        retry["trigger_reason"] = original["trigger_reason"]
        conn.execute(insert(t.batches), [retry])
        members = conn.execute(
            select(t.batch_members)
            .where(t.batch_members.c.batch_id == batch_id)
            .order_by(t.batch_members.c.ordinal)
        ).mappings()
        copies = [{**dict(m), "batch_id": retry["batch_id"]} for m in members]
        if copies:
            conn.execute(insert(t.batch_members), copies)
        return str(retry["batch_id"])

    def fail_executing_batches(self, run_id: str, conn: Connection, reason: str) -> list[str]:
        """Mark a run's ``executing`` batches ``failed`` (their process died mid-flush)."""
        found = conn.execute(
            select(t.batches.c.batch_id).where(
                and_(t.batches.c.run_id == run_id, t.batches.c.status == "executing")
            )
        ).scalars()
        ids = list(found)
        if ids:
            conn.execute(
                update(t.batches)
                .where(t.batches.c.batch_id.in_(ids))
                .values(status="failed", error=reason, completed_at=utcnow())
            )
        return ids

    def delete_checkpoints(self, run_id: str) -> int:
        """Delete every checkpoint of a run; returns how many there were."""
        with self.db.begin() as conn:
            result = conn.execute(delete(t.checkpoints).where(t.checkpoints.c.run_id == run_id))
            return int(result.rowcount or 0)

    # ------------------------------------------------------------------ purge
    def clear_payload_refs(self, run_ids: Sequence[str]) -> int:
        with self.db.begin() as conn:
            result = conn.execute(
                update(t.rows)
                .where(t.rows.c.run_id.in_(list(run_ids)))
                .values(source_data_ref=None)
            )
            conn.execute(
                update(t.batch_members)
                .where(
                    t.batch_members.c.batch_id.in_(
                        select(t.batches.c.batch_id).where(t.batches.c.run_id.in_(list(run_ids)))
                    )
                )
                .values(data_ref=None)
            )
            return int(result.rowcount or 0)


# Statements of the commit path, compiled once per recorder (see ``statements``). Bind names carry
# a prefix: SQLAlchemy reserves bare column names for the SET clause.
def _fence_update(names: tuple[str, ...]) -> ClauseElement:
    return (
        update(t.runs)
        .where(
            and_(
                t.runs.c.run_id == bindparam("w_run_id"),
                t.runs.c.lease_owner == bindparam("w_owner"),
            )
        )
        .values(
            heartbeat_at=bindparam("v_heartbeat_at"),
            lease_expires_at=bindparam("v_lease_expires_at"),
            **{name: bindparam(f"v_{name}") for name in names},
        )
    )


def _batch_update(names: tuple[str, ...]) -> ClauseElement:
    return (
        update(t.batches)
        .where(t.batches.c.batch_id == bindparam("w_batch_id"))
        .values(**{name: bindparam(f"v_{name}") for name in names})
    )


def _artifact_update(names: tuple[str, ...]) -> ClauseElement:
    return (
        update(t.artifacts)
        .where(
            and_(
                t.artifacts.c.run_id == bindparam("w_run_id"),
                t.artifacts.c.sink_name == bindparam("w_sink_name"),
            )
        )
        .values(**{name: bindparam(f"v_{name}") for name in names})
    )


def _checkpoint_supersede() -> ClauseElement:
    return delete(t.checkpoints).where(
        and_(
            t.checkpoints.c.run_id == bindparam("w_run_id"),
            t.checkpoints.c.sequence_number < bindparam("w_sequence_number"),
        )
    )


def new_batch_record(
    run_id: str, aggregation_node_id: str, aggregation_name: str, *, attempt: int = 1
) -> Record:
    return {
        "batch_id": new_id(),
        "run_id": run_id,
        "aggregation_node_id": aggregation_node_id,
        "aggregation_name": aggregation_name,
        "attempt": attempt,
        "status": "draft",
        "created_at": utcnow(),
    }


def _iso(value: Any) -> str:
    return value.isoformat() if isinstance(value, datetime) else str(value)


_dumps = json.JSONEncoder(
    ensure_ascii=False, separators=(",", ":"), sort_keys=True, default=str
).encode


def dumps(value: Any) -> str:
    """Compact JSON for ``*_json`` columns."""
    return _dumps(value)


class StagedChunk:
    """A chunk's transaction with every statement executed, waiting for its COMMIT."""

    def __init__(self, run_id: str, conn: Connection, transaction: RootTransaction) -> None:
        self.run_id = run_id
        self._conn = conn
        self._transaction = transaction

    def commit(self, before_commit: Callable[[], None] | None = None) -> None:
        """Make the chunk durable (``before_commit`` runs inside the transaction, first).

        Raises:
            LandscapeError: the database refused the commit (a deferred uniqueness rule).
        """
        try:
            if before_commit is not None:
                before_commit()
            self._transaction.commit()
        except IntegrityError as exc:
            raise _refused_chunk(self.run_id, exc) from exc
        finally:
            self.release()

    def release(self) -> None:
        """Roll back if not committed and give the connection back (idempotent)."""
        if self._transaction.is_active:
            self._transaction.rollback()
        self._conn.close()


def _refused_chunk(run_id: str, exc: IntegrityError) -> LandscapeError:
    # PostgreSQL's message has a DETAIL line (the key): keep it, on the same line.
    reason = "; ".join(part.strip() for part in str(exc.orig).splitlines() if part.strip())
    return LandscapeError(
        f"landscape refused chunk of run {run_id}: {reason}",
        hint="This is an engine invariant violation; report it with the run ID.",
        run_id=run_id,
    )
