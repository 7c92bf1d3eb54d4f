"""The Orchestrator: starts, continues, finishes and resumes runs — stateless between calls.

Each public step (``begin_run``, ``process_chunk``, ``finalize``, ``open_for_resume``) takes or
returns a :class:`RunSession`; everything a later step needs is either in that session or durable
in the landscape, so Prefect tasks can wrap the steps, and a new process can pick a run up where a
dead one stopped. ``run`` and ``resume`` chain the steps for the CLI.

The run-end audit export (``landscape.export``) is checked before a run is recorded or resumed,
and written by ``finalize`` once the final status is on record, so it is written exactly once per
run end, whether the run ended in one go or after any number of crashes and resumes.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from elspeth_core.checkpoint import CheckpointManager, RecoveryManager, ResumePoint
from elspeth_core.checkpoint.plan import RERUN_ACTIONS
from elspeth_core.config import (
    LoadedSettings,
    config_hash,
    diff_settings,
    fingerprint_key,
    load_settings_from_dict,
    resolve_for_audit,
)
from elspeth_core.dag import ExecutionGraph, build_graph
from elspeth_core.engine.faults import FaultInjector
from elspeth_core.engine.lease import LeaseKeeper, lease_seconds_from_env, make_owner, owner_is_dead
from elspeth_core.engine.progress import NullProgress, Progress
from elspeth_core.engine.session import Clock, RunSession, now
from elspeth_core.engine.tokens import Token
from elspeth_core.errors import (
    ConfigurationMismatch,
    ElspethError,
    LandscapeError,
    LeaseLostError,
    ResumeRefused,
    SourceChanged,
)
from elspeth_core.export import (
    RunExportFailed,
    check_export_ready,
    export_command_for,
    export_if_configured,
)
from elspeth_core.hashing import CANONICAL_VERSION
from elspeth_core.ids import new_id
from elspeth_core.landscape import LandscapeDB, LandscapeQueries, LandscapeRecorder
from elspeth_core.landscape.recorder import dumps
from elspeth_core.payloads import PayloadStore
from elspeth_core.plugins.registry import PluginRegistry

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    run_id: str
    status: str
    rows: int
    quarantined: int
    failed: int
    batches: int
    duration_seconds: float
    attempt: int
    sinks: dict[str, int] = field(default_factory=dict)
    outcomes: dict[str, int] = field(default_factory=dict)
    export_path: str | None = None  # the run-end audit export, when landscape.export is enabled

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.duration_seconds if self.duration_seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "rows_per_second": round(self.rows_per_second, 1)}


class Orchestrator:
    """Builds sessions from settings or from the landscape; never keeps run state itself.

    Args:
        db: the landscape.
        checkpoint_manager: defaults to one on ``db``.
        registry: plugins (built-ins + entry points by default).
        progress, clock, faults: ports (null progress, real clock, no fault injection by default).
        lease_seconds: lease timeout (``ELSPETH_LEASE_TIMEOUT`` or 30 s by default).
    """

    def __init__(
        self,
        db: LandscapeDB,
        checkpoint_manager: CheckpointManager | None = None,
        *,
        registry: PluginRegistry | None = None,
        progress: Progress | None = None,
        clock: Clock | None = None,
        faults: FaultInjector | None = None,
        lease_seconds: float | None = None,
    ) -> None:
        self.db = db
        self.checkpoints = checkpoint_manager or CheckpointManager(db)
        self.recovery = RecoveryManager(db, self.checkpoints)
        self.recorder = LandscapeRecorder(db)
        self.queries = LandscapeQueries(db)
        self.registry = registry or PluginRegistry.builtin()
        self.progress = progress or NullProgress()
        self.clock = clock or Clock()
        self.faults = faults or FaultInjector()
        self.lease_seconds = lease_seconds or lease_seconds_from_env()

    # ------------------------------------------------------------------ whole runs
    def run(self, loaded: LoadedSettings, *, flow_run_id: str | None = None) -> RunResult:
        """Run a pipeline from start to end (new run ID)."""
        session = self.begin_run(loaded, flow_run_id=flow_run_id)
        return self._drive_to_end(session)

    def resume(
        self,
        resume_point: ResumePoint,
        config: LoadedSettings | None = None,
        graph: ExecutionGraph | None = None,
        *,
        flow_run_id: str | None = None,
    ) -> RunResult:
        """Resume a run under its own run ID: only unprocessed rows and incomplete batches."""
        session = self.open_for_resume(
            resume_point.run_id, config, flow_run_id=flow_run_id, graph=graph
        )
        return self._drive_to_end(session)

    def _drive_to_end(self, session: RunSession) -> RunResult:
        try:
            while not session.source_exhausted:
                self.process_chunk(session, None)
            return self.finalize(session)
        except RunExportFailed:
            raise  # the run has ended and its final status is recorded: nothing to abort
        except BaseException as exc:
            self.abort(session, exc)
            raise

    # ------------------------------------------------------------------ steps
    def begin_run(self, loaded: LoadedSettings, *, flow_run_id: str | None = None) -> RunSession:
        """Record a new run (settings, graph, lease, checkpoint 0 if enabled) and open its session.

        Raises:
            ExportError: the run-end audit export could not be written (e.g. ``sign`` without
                ``ELSPETH_SIGNING_KEY``); nothing is recorded then.
        """
        settings = loaded.settings
        graph = build_graph(settings)
        check_export_ready(settings)
        resolved = resolve_for_audit(settings, fingerprint_key())
        digest = config_hash(resolved)
        run_id = new_id()
        owner = make_owner()
        acquired_at = time.monotonic()
        self.recorder.begin_run(
            {
                "run_id": run_id,
                "config_hash": digest,
                "topology_hash": graph.topology_hash,
                "settings_json": dumps(resolved),
                "settings_path": str(loaded.path) if loaded.path else None,
                "canonical_version": CANONICAL_VERSION,
                "prefect_flow_run_id": flow_run_id,
            },
            _node_records(run_id, graph),
            _edge_records(run_id, graph),
            lease_owner=owner,
            lease_seconds=self.lease_seconds,
            # ``checkpoint.enabled: false`` means no checkpoint at all, not even checkpoint 0:
            # such a run is not resumable ("No checkpoint available"), as the operator chose.
            checkpoint=(
                _initial_checkpoint(run_id, graph, digest) if settings.checkpoint.enabled else None
            ),
        )
        log.info("run %s started (config %s)", run_id, digest[:12])
        session = self._session(run_id, settings, graph, owner, 1, digest, acquired_at)
        session.restore_sinks({})
        session.commit()  # every sink's starting point is on record before any row is written
        return session

    def process_chunk(self, session: RunSession, max_rows: int | None = None) -> int:
        """Process up to ``max_rows`` more source rows (all when None); commits as it goes."""
        done = session.process_rows(max_rows)
        session.check_timeouts()
        return done

    def finalize(self, session: RunSession) -> RunResult:
        """End of source: flush batches, close joins and sinks, mark the run completed/failed.

        Then, with ``landscape.export`` enabled, write the run's audit export (it holds the final
        status, so it comes after ``finish_run``).

        Raises:
            RunExportFailed: the run ended and its status is recorded, but the export failed; the
                error carries the :class:`RunResult` and the command that writes the export again.
        """
        try:
            session.finish()
            outcomes = self.queries.outcome_counts(session.run_id)
            retried = self._successors(session.run_id)
            failed_batches = [
                b
                for b in self.recorder.get_batches(session.run_id, status="failed")
                if b["batch_id"] not in retried
            ]
            failed = outcomes.get("failed", 0) + len(failed_batches)
            status = "failed" if failed else "completed"
            error = (
                f"{outcomes.get('failed', 0)} token(s) and {len(failed_batches)} batch(es) failed"
                if failed
                else None
            )
            self.recorder.finish_run(
                session.run_id,
                owner=session.owner,
                status=status,
                error=error,
                delete_checkpoints=status == "completed",
            )
        finally:
            self._release(session)
        result = RunResult(
            run_id=session.run_id,
            status=status,
            rows=session.stats.rows,
            quarantined=outcomes.get("quarantined", 0),
            failed=failed,
            batches=session.stats.batches,
            duration_seconds=time.perf_counter() - session.started,
            attempt=session.attempt,
            sinks=self.queries.sink_counts(session.run_id),
            outcomes=outcomes,
        )
        self._export(session, result)
        return result

    def _export(self, session: RunSession, result: RunResult) -> None:
        """The run-end audit export; a failure cannot undo the run, so it is reported, not undone.

        The run's outputs are durable and its final status is committed before this runs; a crash
        or an error here leaves a complete run without its export (at most a ``.partial`` file),
        which ``elspeth export`` writes again from the landscape.
        """
        try:
            path = export_if_configured(self.db, session.run_id, session.settings)
        except Exception as exc:  # noqa: BLE001 - any failure here is reported the same way
            settings = session.settings
            reason = (
                exc.message if isinstance(exc, ElspethError) else f"{type(exc).__name__}: {exc}"
            )
            redo = export_command_for(session.run_id, settings, self.db.url)
            raise RunExportFailed(
                f"run {session.run_id} {result.status} ({result.rows} rows), but its audit export "
                f"(landscape.export, sink {settings.landscape.export.sink!r}) failed: {reason}",
                run_id=session.run_id,
                status=result.status,
                result=result,
                hint="The run has ended; its outputs and audit trail are durable. Fix the cause, "
                f"then write the export with: {redo}",
            ) from exc
        if path is not None:
            result.export_path = str(path)
            log.info("run %s: audit export written to %s", session.run_id, path)

    def abort(self, session: RunSession, exc: BaseException) -> None:
        """A run stopped by an error or signal: mark it failed/interrupted (still resumable)."""
        session.settle(quiet=True)  # the chunk in flight ends (committed or not) before the mark
        try:
            if not isinstance(exc, LeaseLostError):
                status = (
                    "interrupted" if isinstance(exc, KeyboardInterrupt | SystemExit) else "failed"
                )
                self.recorder.mark_run(
                    session.run_id,
                    status,
                    reason=f"{type(exc).__name__}: {exc}",
                    owner=session.owner,
                )
        except Exception:  # noqa: BLE001 - the original error matters more
            log.exception("could not mark run %s after an error", session.run_id)
        finally:
            self._release(session)

    def _release(self, session: RunSession) -> None:
        keeper = getattr(session, "keeper", None)
        if keeper is not None:
            keeper.stop()
        session.close()

    def _session(
        self,
        run_id: str,
        settings: Any,
        graph: ExecutionGraph,
        owner: str,
        attempt: int,
        digest: str,
        acquired_at: float,
    ) -> RunSession:
        session = RunSession(
            run_id=run_id,
            settings=settings,
            graph=graph,
            recorder=self.recorder,
            registry=self.registry,
            payloads=PayloadStore(settings.payload_store.base_path),
            owner=owner,
            lease_seconds=self.lease_seconds,
            attempt=attempt,
            progress=self.progress,
            clock=self.clock,
            faults=self.faults,
            config_hash=digest,
        )
        session.started = time.perf_counter()
        session.keeper = LeaseKeeper(
            self.recorder, run_id, owner, self.lease_seconds, acquired_at=acquired_at
        ).start()
        return session

    # ------------------------------------------------------------------ resume
    def settings_for_resume(
        self, run: dict[str, Any], given: LoadedSettings | None
    ) -> LoadedSettings:
        """The run's own settings, or ``given`` if (and only if) its configuration hash matches.

        Raises:
            ConfigurationMismatch: the given settings differ from the recorded ones.
            ResumeRefused: the recorded settings hold secrets, so ``--settings`` is needed.
        """
        stored = json.loads(run["settings_json"])
        if given is None:
            if _has_fingerprint(stored):
                raise ResumeRefused(
                    f"the recorded settings of run {run['run_id']} contain secrets (stored only as "
                    "fingerprints)",
                    hint="Pass the original settings file with --settings; its configuration hash "
                    "must match.",
                    run_id=run["run_id"],
                )
            given = load_settings_from_dict(stored, source_name=f"run {run['run_id']}")
        resolved = resolve_for_audit(given.settings, fingerprint_key())
        if config_hash(resolved) != run["config_hash"]:
            differences = diff_settings(stored, resolved) or ["configuration hash differs"]
            raise ConfigurationMismatch(run["run_id"], differences)
        return given

    def open_for_resume(
        self,
        run_id: str,
        config: LoadedSettings | None = None,
        *,
        flow_run_id: str | None = None,
        graph: ExecutionGraph | None = None,
    ) -> RunSession:
        """Verify, take over and restore a run; nothing is written before the checks pass.

        Raises:
            ResumeRefused (and subclasses): not found, completed, in progress, no checkpoint,
                configuration mismatch, source changed.
            PayloadIntegrityError: a payload the restore needs (a batch member) is damaged.
            ExportError: the run-end audit export could not be written (e.g. ``sign`` without
                ``ELSPETH_SIGNING_KEY``).
        """
        run = self.recovery.check_resumable(run_id)
        point = self.recovery.get_resume_point(run_id)
        loaded = self.settings_for_resume(run, config)
        check_export_ready(loaded.settings)
        graph = graph or build_graph(loaded.settings)
        if graph.topology_hash != run["topology_hash"]:
            raise ConfigurationMismatch(
                run_id, ["pipeline graph differs from the recorded one (plugins or routes changed)"]
            )
        owner = make_owner()
        attempt = len(self.queries.attempts(run_id)) + 1
        session = RunSession(
            run_id=run_id,
            settings=loaded.settings,
            graph=graph,
            recorder=self.recorder,
            registry=self.registry,
            payloads=PayloadStore(loaded.settings.payload_store.base_path),
            owner=owner,
            lease_seconds=self.lease_seconds,
            attempt=attempt,
            progress=self.progress,
            clock=self.clock,
            faults=self.faults,
            config_hash=run["config_hash"],
        )
        try:
            self._verify_source(session, run)
            self._verify_held_payloads(session, run, point)
            acquired_at = time.monotonic()
            attempt = self.recorder.acquire_lease(
                run_id,
                owner=owner,
                lease_seconds=self.lease_seconds,
                dead_owner=run["lease_owner"] if owner_is_dead(run["lease_owner"]) else None,
                kind="resume",
                flow_run_id=flow_run_id,
            )
        except BaseException:
            session.close()
            raise
        session.attempt = attempt
        session.started = time.perf_counter()
        session.keeper = LeaseKeeper(
            self.recorder, run_id, owner, self.lease_seconds, acquired_at=acquired_at
        ).start()
        try:
            self.faults.hit("resume_start")
            self._restore(session, point)
        except BaseException as exc:
            self.abort(session, exc)
            raise
        log.info("run %s resumed (attempt %d) after row %d", run_id, attempt, session.rows_ingested)
        return session

    def _verify_source(self, session: RunSession, run: dict[str, Any]) -> None:
        recorded = int(run["source_rows_ingested"])
        if self.queries.count_rows(session.run_id) != recorded:
            raise LandscapeError(
                f"run {session.run_id}: rows table and ingest position disagree",
                hint="The landscape was modified by hand; start a fresh run with --force-new.",
            )
        position = json.loads(run.get("source_position_json") or "null")
        if position and position.get("rows") == recorded and session.seek_source(position):
            log.info(
                "run %s: the %d recorded rows verified by one digest over the source's first "
                "%d bytes",
                session.run_id,
                recorded,
                position["offset"],
            )
        else:
            session.position_source(self.queries.iter_row_hashes(session.run_id), recorded)
        if run["source_exhausted"] and session.peek_more():
            raise SourceChanged(session.run_id, f"the source now has more than {recorded} rows")

    def _verify_held_payloads(
        self, session: RunSession, run: dict[str, Any], point: ResumePoint
    ) -> None:
        """Read every batch member the restore will read, before the resume writes anything.

        A damaged or purged payload then refuses the resume while the run is still exactly as the
        crash left it (resumable again once the payload store is restored), instead of after the
        lease, the attempt and the batches' retries were recorded.

        Raises:
            PayloadIntegrityError: a member's stored payload is damaged or differs from its hash.
            LandscapeError: a member's payload was purged.
        """
        for action in self.recovery.batch_actions(run, point):
            if action.action in (*RERUN_ACTIONS, "restore"):
                self._members(session, action.batch_id)

    def _restore(self, session: RunSession, point: ResumePoint) -> None:
        """Rebuild a session from the landscape: sinks, open batches, joins, then run retries.

        Batches (SPEC §4 rule 4): ``executing`` ones are marked ``failed`` (their process died
        mid-aggregation) and every ``failed`` batch without a retry yet gets one (attempt + 1,
        same members in the same order); retries run first, in pipeline order. ``draft`` batches
        are restored with their members and elapsed trigger age and keep buffering.
        """
        run_id = session.run_id
        session.sequence = point.sequence_number
        session.source_exhausted = bool((self.queries.get_run(run_id) or {})["source_exhausted"])
        session._committed_position = (session.rows_ingested, session.source_exhausted)
        retries = self._retry_batches(session)
        session.restore_sinks(self.queries.publications(run_id))
        drafts = self._open_drafts(run_id)
        members = {b["batch_id"]: self._members(session, b["batch_id"]) for b in drafts}
        saved = point.aggregation_state.get("aggregations", {})
        state = {
            "aggregations": {
                b["aggregation_node_id"]: {
                    "batch_id": b["batch_id"],
                    "elapsed_seconds": _elapsed_for(saved, b),
                }
                for b in drafts
            },
            "joins": point.aggregation_state.get("joins", {}),
        }
        session.restore_state(state, members)
        retry_members = {b["batch_id"]: self._members(session, b["batch_id"]) for b in retries}
        self._check_work_accounted(session, retry_members)
        for batch in retries:
            session.enqueue_batch(
                batch["aggregation_node_id"], batch["batch_id"], retry_members[batch["batch_id"]]
            )
        session.run_closed_batches()

    def _open_drafts(self, run_id: str) -> list[dict[str, Any]]:
        """Draft batches still buffering (not retries), at most one per aggregation."""
        drafts = [
            b
            for b in self.recorder.get_incomplete_batches(run_id)
            if b["status"] == "draft" and not b.get("retry_of_batch_id")
        ]
        nodes = [b["aggregation_node_id"] for b in drafts]
        if len(set(nodes)) != len(nodes):
            raise LandscapeError(
                f"run {run_id}: an aggregation has more than one open draft batch",
                hint="The landscape is inconsistent; start a fresh run with --force-new.",
            )
        return drafts

    def _retry_batches(self, session: RunSession) -> list[dict[str, Any]]:
        """Executing → failed; failed (without a retry yet) → retried; the retries, in run order.

        Each step is its own transaction and is idempotent, so a crash anywhere in here (or in
        the retry's execution) leaves a run that the next resume continues: a failed batch that
        has no retry gets one; a retry that is still a draft is run; a retry that was executing
        fails and is retried again (attempt + 2).
        """
        run_id = session.run_id
        with self.db.begin() as conn:
            self.recorder.fail_executing_batches(run_id, conn, "process died while executing")
        batches = self.recorder.get_batches(run_id)
        retried = {b["retry_of_batch_id"] for b in batches if b.get("retry_of_batch_id")}
        nonterminal = {t["token_id"] for t in self.queries.nonterminal_tokens(run_id)}
        for batch in batches:
            if (
                batch["status"] == "failed"
                and batch["batch_id"] not in retried
                and self._retryable(session, batch, nonterminal)
            ):
                self.recorder.retry_batch(batch["batch_id"])
        pending = [
            b
            for b in self.recorder.get_incomplete_batches(run_id)
            if b["status"] == "draft" and b.get("retry_of_batch_id")
        ]
        order = session.aggregation_order()
        return sorted(
            pending, key=lambda b: (order[b["aggregation_node_id"]], b["created_at"], b["batch_id"])
        )

    def _retryable(self, session: RunSession, batch: dict[str, Any], nonterminal: set[str]) -> bool:
        """A failed batch can be retried unless its members' failure is already final.

        A passthrough batch whose aggregation raised recorded ``failed`` for every member (no token
        is left buffered forever); emitting those members again would give them a second terminal
        outcome, so such a batch stays failed. Members of ``single``/``transform`` batches were
        consumed when buffered; their batch is retried.
        """
        if session.output_mode(batch["aggregation_node_id"]) != "passthrough":
            return True
        members = self.recorder.get_batch_members(batch["batch_id"])
        return any(m["token_id"] in nonterminal for m in members)

    def _successors(self, run_id: str) -> set[str]:
        return {
            b["retry_of_batch_id"]
            for b in self.recorder.get_batches(run_id)
            if b.get("retry_of_batch_id")
        }

    def _members(self, session: RunSession, batch_id: str) -> list[Token]:
        """A recorded batch's member tokens in ordinal order, with their data at buffer time."""
        rows = self.queries.batch_members_with_data(batch_id)
        owners = self.queries.token_rows([m["token_id"] for m in rows])
        index_of = self.queries.row_indexes(list(set(owners.values())))
        tokens = []
        for member in rows:
            data = session.payloads.get(member["data_ref"], member["data_hash"])
            if data is None:
                raise LandscapeError(
                    f"batch {batch_id}: payload of member {member['token_id']} was purged",
                    hint="The batch cannot be retried; start a fresh run with --force-new.",
                )
            row_id = owners[member["token_id"]]
            tokens.append(
                Token(member["token_id"], row_id, index_of[row_id], data, member["data_hash"])
            )
        return tokens

    def _check_work_accounted(
        self, session: RunSession, retry_members: dict[str, list[Token]]
    ) -> None:
        """Every non-terminal token must be held by a batch or a join we restored."""
        held = {m.token_id for b in session.buffers.values() for m in b.members}
        for members in retry_members.values():
            held.update(m.token_id for m in members)
        for join in session.pending_joins.values():
            held.update(t.token_id for t in join.arrived.values())
        loose = [
            t for t in self.queries.nonterminal_tokens(session.run_id) if t["token_id"] not in held
        ]
        if loose:
            raise LandscapeError(
                f"run {session.run_id}: {len(loose)} token(s) without a terminal outcome are not "
                f"held by any batch or join (first: {loose[0]['token_id']})",
                hint="The landscape is inconsistent; start a fresh run with --force-new.",
            )

    def force_new(self, run_id: str, config: LoadedSettings | None) -> RunResult:
        """Start a fresh run from the old run's (or the given) settings; mark the old one failed."""
        run = self.queries.get_run(run_id)
        if run is None:
            from elspeth_core.errors import RunNotFound

            raise RunNotFound(run_id)
        if config is None:
            config = load_settings_from_dict(
                json.loads(run["settings_json"]), source_name=f"run {run_id}"
            )
        session = self.begin_run(config)
        self.recorder.mark_run(
            run_id, "failed", reason=f"superseded by run {session.run_id} (--force-new)"
        )
        self.recorder.set_superseded(run_id, session.run_id)
        return self._drive_to_end(session)


def _elapsed_for(saved: dict[str, Any], batch: dict[str, Any]) -> float:
    entry = saved.get(batch["aggregation_node_id"])
    if entry and entry.get("batch_id") == batch["batch_id"]:
        return float(entry.get("elapsed_seconds", 0.0))
    return 0.0


def _has_fingerprint(value: Any) -> bool:
    if isinstance(value, dict):
        if set(value) == {"fingerprint"}:
            return True
        return any(_has_fingerprint(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_fingerprint(v) for v in value)
    return isinstance(value, str) and "hmac-sha256:" in value


def _node_records(run_id: str, graph: ExecutionGraph) -> list[dict[str, Any]]:
    return [
        {
            "run_id": run_id,
            "node_id": n.node_id,
            "node_type": n.node_type,
            "name": n.name,
            "plugin_name": n.plugin_name,
            "plugin_version": "1.0.0",
            "config_hash": n.config_hash,
            "config_json": dumps(n.options),
            "sequence": n.sequence,
        }
        for n in graph.nodes
    ]


def _edge_records(run_id: str, graph: ExecutionGraph) -> list[dict[str, Any]]:
    return [
        {
            "run_id": run_id,
            "edge_id": e.edge_id,
            "from_node_id": e.from_node_id,
            "to_node_id": e.to_node_id,
            "label": e.label,
            "mode": e.mode,
        }
        for e in graph.edges
    ]


def _initial_checkpoint(run_id: str, graph: ExecutionGraph, digest: str) -> dict[str, Any]:
    return {
        "checkpoint_id": new_id(),
        "run_id": run_id,
        "row_id": None,
        "token_id": None,
        "node_id": graph.source.node_id,
        "sequence_number": 0,
        "rows_ingested": 0,
        "aggregation_state_json": "{}",
        "topology_hash": graph.topology_hash,
        "config_hash": digest,
        "format_version": 1,
        "created_at": now(),
    }
