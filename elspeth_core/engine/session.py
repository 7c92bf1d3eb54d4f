"""A run session: the live state of ONE process working on ONE run, and the row processor.

The session reads the source, drives each row's tokens through transforms, aggregations, gates,
forks and coalesces to the sinks, and collects every audit record of the current commit unit in a
``ChunkRecords``. ``commit()`` is the only place where effects become durable, always in this order:

1. sinks write their pending rows and fsync (publication state returned),
2. the payload pack is fsynced,
3. ONE landscape transaction records the rows, tokens, states, outcomes, the sinks' publication
   states and the checkpoint, fenced by the lease.

Before (1) and (2), and before each source row, the session checks that it still holds the lease
(``LeaseKeeper.check``): a process paused until another one took the run over must not write a
byte into sinks the new owner is writing; the landscape fence alone would come too late.

Steps (1)-(3) hand bytes to the OS and run every statement here; what is left — the fsyncs, then
COMMIT — runs on the commit thread for an ``every_n`` commit while the next rows are read, and
every commit first waits for the one in flight (see ``commit``).

A crash before (3) leaves sink bytes the landscape does not vouch for: resume cuts them off. A crash
after (3) loses nothing. So outcome ``completed`` is never recorded before its sink write is durable,
and no sink write is ever repeated. The session holds no state that is not derivable from the
landscape at a commit boundary: a new process restores it with ``restore_state()``.

Commits happen only at *quiescent points* — between source rows, and around batch executions —
never in the middle of driving one row or one batch's outputs (a row that expands into ten tokens
commits all ten or none). Aggregation batches therefore run in two steps:

- when a trigger fires, the batch is *closed*: its ``executing`` status is recorded with its last
  member and it is queued (no commit yet, the row may still be producing tokens);
- at the next quiescent point each queued batch runs: one commit makes its members and its
  ``executing`` status durable, then the aggregation runs and its outputs are driven downstream
  (records only — batches closed meanwhile are queued behind it), then one commit records the
  batch's completion, its outputs' downstream records and the sinks' publications together.

A crash after the first commit leaves an ``executing`` batch, which resume marks ``failed`` and
retries (attempt + 1, same members in the same order); a crash before it leaves nothing of the
batch's execution, and its members are restored from the landscape as an open draft.
"""

from __future__ import annotations

import copy
import json
import logging
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from elspeth_core.dag import ExecutionGraph, Node
from elspeth_core.engine.aggregation import (
    ClosedBatch,
    OpenBatch,
    check_output_count,
    fired_trigger,
    parse_condition,
)
from elspeth_core.engine.coalesce import (
    PendingJoin,
    can_merge_incomplete,
    join_ready,
    join_timed_out,
    merged_data,
    ordered_arrivals,
)
from elspeth_core.engine.expressions import Expression
from elspeth_core.engine.faults import FaultInjector
from elspeth_core.engine.lease import LeaseKeeper
from elspeth_core.engine.progress import NullProgress, Progress
from elspeth_core.engine.tokens import Token
from elspeth_core.errors import ElspethError, SourceChanged, TransientError
from elspeth_core.hashing import stable_hash
from elspeth_core.ids import new_id
from elspeth_core.landscape.recorder import (
    LandscapeRecorder,
    StagedChunk,
    dumps,
    new_batch_record,
)
from elspeth_core.landscape.records import ChunkRecords
from elspeth_core.payloads import PayloadStore
from elspeth_core.plugins.protocols import BadRow, Publication, TransformResult
from elspeth_core.plugins.registry import PluginRegistry
from elspeth_core.plugins.schema import RowSchema

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 1
MAX_ROWS_PER_COMMIT = 10_000
COMMIT_THREAD_SWITCH_INTERVAL = 0.0001  # seconds; see RunSession.commit


def now() -> datetime:
    return datetime.now(UTC)


class Clock:
    """Wall/monotonic time source; tests inject a fake one to drive timeout triggers."""

    def monotonic(self) -> float:
        return time.monotonic()


@dataclass
class SessionStats:
    rows: int = 0
    quarantined: int = 0
    failed: int = 0
    commits: int = 0
    batches: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


class RunSession:
    """Live processing state of one run in this process (see module docstring)."""

    def __init__(
        self,
        *,
        run_id: str,
        settings: Any,
        graph: ExecutionGraph,
        recorder: LandscapeRecorder,
        registry: PluginRegistry,
        payloads: PayloadStore,
        owner: str,
        lease_seconds: float,
        attempt: int,
        progress: Progress | None = None,
        clock: Clock | None = None,
        faults: FaultInjector | None = None,
        config_hash: str = "",
    ) -> None:
        self.run_id = run_id
        self.settings_hash = config_hash
        self.settings = settings
        self.graph = graph
        self.recorder = recorder
        self.payloads = payloads
        self.owner = owner
        self.lease_seconds = lease_seconds
        self.attempt = attempt
        self.progress = progress or NullProgress()
        self.clock = clock or Clock()
        self.faults = faults or FaultInjector()
        self.stats = SessionStats()
        self._reasons: dict[Any, str] = {}
        self._recorded_at = now()
        self.started = time.perf_counter()
        self.keeper: LeaseKeeper | None = None  # set by the orchestrator once the lease is held
        self.records = ChunkRecords()
        self.sequence = 0
        self.rows_ingested = 0
        self.source_exhausted = False
        self._rows_since_commit = 0
        self._committed_position: tuple[int, bool] = (-1, False)
        self._last_row_id: str | None = None
        self._last_token_id: str | None = None
        self._source_iter: Iterator[Any] | None = None
        self._build_plugins(registry)
        self.buffers: dict[str, OpenBatch] = {}
        self._closed: list[ClosedBatch] = []
        self._running_batches = False
        self.pending_joins: dict[str, PendingJoin] = {}
        self._restored: dict[str, dict[str, Any]] = {}
        self._sink_rows: dict[str, list[dict[str, Any]]] = {name: [] for name in graph.sinks}
        self._sink_counts: dict[str, int] = {name: 0 for name in graph.sinks}
        self._published: set[str] = set()
        self._committer: ThreadPoolExecutor | None = None
        self._syncers: ThreadPoolExecutor | None = None
        self._switch_interval = sys.getswitchinterval()
        self._in_flight: Future[None] | None = None
        payloads.open_pack(run_id, attempt)

    # ------------------------------------------------------------------ construction
    def _build_plugins(self, registry: PluginRegistry) -> None:
        g = self.graph
        src_opts = dict(g.source.options)
        self.source = registry.create("source", g.source.plugin_name, src_opts)
        # A seekable source reports its byte position after each record (see position_json).
        self._tracks_position = bool(getattr(self.source, "seekable", False))
        self._source_pos: tuple[int, int] | None = None
        self._source_pos_rows = -1
        self.schema = RowSchema.from_options(src_opts.get("schema"))
        self.quarantine_dest = src_opts.get("on_validation_failure") or "discard"
        self.transforms = []
        for node in g.transforms:
            options = {k: v for k, v in node.options.items() if k not in ("position", "on_error")}
            plugin = registry.create("transform", node.plugin_name, options)
            on_error = node.options.get("on_error") or options.get("on_error")
            self.transforms.append((node, plugin, on_error))
        self.aggregations = []
        for node in g.aggregations:
            plugin = registry.create("aggregation", node.plugin_name, node.options["options"])
            condition = parse_condition(node.settings.trigger.condition)
            self.aggregations.append((node, plugin, condition))
        self._aggregation_index = {
            node.node_id: i for i, (node, _p, _c) in enumerate(self.aggregations)
        }
        self._has_timeouts = any(
            node.settings.trigger.timeout_seconds is not None for node, _p, _c in self.aggregations
        ) or any(
            node.settings.policy == "best_effort" and node.settings.timeout_seconds is not None
            for node in g.coalesces.values()
        )
        self.gates = [(node, Expression.parse(node.settings.condition)) for node in g.gates]
        self.sinks = {
            name: registry.create("sink", node.plugin_name, node.options)
            for name, node in g.sinks.items()
        }
        self.steps: list[tuple[str, int]] = (
            [("transform", i) for i in range(len(self.transforms))]
            + [("aggregation", i) for i in range(len(self.aggregations))]
            + [("gate", i) for i in range(len(self.gates))]
        )
        self.checkpoint_on = self.settings.checkpoint.enabled
        self.frequency = self.settings.checkpoint.frequency
        self.interval = max(1, self.settings.checkpoint.checkpoint_interval)

    # ------------------------------------------------------------------ sinks
    def restore_sinks(self, publications: dict[str, dict[str, Any]]) -> None:
        """Cut every sink back to its last committed publication (or start it afresh).

        A sink that was finished (a run that ended ``failed``, or died after its final commit) is
        reopened at its state just before ``finish``: the resumed run may publish more rows (a
        retried batch) and finishes the output again at its end, byte for byte as before.
        """
        for name, sink in self.sinks.items():
            found = publications.get(name)
            pub = None
            if found is not None:
                data = found["publication"]
                data = data.get("before_finish") or data
                pub = Publication(data["uri"], data["rows"], data["size_bytes"], data["state"])
                self._sink_counts[name] = pub.rows
                self._published.add(name)
            sink.restore(pub, run_id=self.run_id)

    def close(self) -> None:
        self.settle(quiet=True)
        if self._committer is not None:
            self._committer.shutdown()
            if self._syncers is not None:
                self._syncers.shutdown()
            self._committer = self._syncers = None
            sys.setswitchinterval(self._switch_interval)
        for sink in self.sinks.values():
            sink.close()
        self.payloads.close()
        close = getattr(self.source, "close", None)
        if close:
            close()

    # ------------------------------------------------------------------ source
    def seek_source(self, position: dict[str, Any]) -> bool:
        """Continue the source after the recorded rows if the bytes before them are unchanged.

        One SHA-256 over the file's first ``position["offset"]`` bytes stands for every recorded
        row (identical bytes parse to identical rows); False (nothing opened) when the source
        cannot seek or the digest differs, and :meth:`position_source` must check row by row.
        """
        if not self._tracks_position or not self.source.verify_prefix(
            position["offset"], position["sha256"]
        ):
            return False
        start = (int(position["offset"]), int(position["line"]))
        self._source_iter = iter(self.source.read(start=start))
        self.rows_ingested = int(position["rows"])
        self._source_pos, self._source_pos_rows = start, self.rows_ingested
        return True

    def position_json(self) -> str | None:
        """The source's position after ``rows_ingested`` rows, with the digest of the bytes before
        it, for the commit (None when the source cannot seek or the position is not known)."""
        if self._source_pos is None or self._source_pos_rows != self.rows_ingested:
            return None
        offset, line = self._source_pos
        digest = self.source.prefix_digest(offset)
        return dumps({"rows": self.rows_ingested, "offset": offset, "line": line, "sha256": digest})

    def position_source(self, recorded: Iterator[tuple[int, str]], expected: int) -> None:
        """Open the source and skip the ``expected`` rows already recorded, verifying each hash.

        Raises:
            SourceChanged: a recorded row's hash differs, or the source is shorter.
        """
        self._source_iter = iter(self.source.read())
        for index, digest in recorded:
            try:
                raw = next(self._source_iter)
            except StopIteration:
                raise SourceChanged(
                    self.run_id,
                    f"the source now ends after {index} rows but {expected} were recorded",
                ) from None
            actual = _raw_hash(raw)
            if actual != digest:
                raise SourceChanged(
                    self.run_id,
                    f"row {index} differs from the recorded row (hash {actual[:12]}… != "
                    f"{digest[:12]}…)",
                )
        self.rows_ingested = expected

    def peek_more(self) -> bool:
        """True when the positioned source still has rows (used to detect a grown source)."""
        assert self._source_iter is not None
        try:
            first = next(self._source_iter)
        except StopIteration:
            return False
        self._source_iter = _chain_one(first, self._source_iter)
        return True

    def process_rows(self, limit: int | None = None) -> int:
        """Read and process up to ``limit`` more source rows; returns how many were read."""
        if self._source_iter is None:
            self._source_iter = iter(self.source.read())
        done = 0
        while limit is None or done < limit:
            try:
                raw = next(self._source_iter)
            except StopIteration:
                self.source_exhausted = True
                break
            self.faults.hit("source_read")
            self._check_lease()
            self._ingest(raw, self.rows_ingested)
            done += 1
            self._rows_since_commit += 1
            if self._has_timeouts:
                self._close_timed_out()
            if self._closed:
                self.run_closed_batches()  # a batch boundary: commits on its own
            elif self._commit_due():
                # Durable while the next rows are read; every_row asks for each row to be
                # durable before the next one is read.
                self.commit(wait=self.frequency == "every_row")
        self.commit()
        return done

    def _commit_due(self) -> bool:
        if self._rows_since_commit >= MAX_ROWS_PER_COMMIT:
            return True
        if self.frequency == "every_row":
            return True
        if self.frequency == "every_n":
            return self._rows_since_commit >= self.interval
        return False  # aggregation_only: batch boundaries commit on their own

    # ------------------------------------------------------------------ ingest
    def _ingest(self, raw: Any, index: int) -> None:
        row_id = new_id()
        source_id = self.graph.source.node_id
        if isinstance(raw, BadRow):
            stored: Any = {"raw": raw.raw}
            digest = stable_hash(stored)
        else:
            stored = raw
            digest = _raw_hash(raw)
        self.records.rows.append(
            {
                "row_id": row_id,
                "run_id": self.run_id,
                "source_node_id": source_id,
                "row_index": index,
                "source_data_hash": digest,
                "source_data_ref": self.payloads.put(stored),
                "created_at": now(),
            }
        )
        # The ingest position moves with the row record: any commit from here on (a batch run
        # triggered by this row) records both, so ``rows`` and the position never disagree.
        self.rows_ingested = index + 1
        if self._tracks_position:
            self._source_pos, self._source_pos_rows = self.source.position, index + 1
        self._last_row_id = row_id
        self.stats.rows += 1
        if isinstance(raw, BadRow):
            self._quarantine(row_id, index, digest, stored, raw.reason)
            return
        valid, reason = self.schema.validate(raw)
        if valid is None:
            self._quarantine(row_id, index, digest, raw, reason or "schema validation failed")
            return
        token = self._new_token(row_id, index, valid, digest if valid == raw else None)
        self._drive(token, 0)

    def _new_token(
        self,
        row_id: str,
        index: int,
        data: dict[str, Any],
        digest: str | None,
        *,
        parents: list[Token] | None = None,
        branch: str | None = None,
        fork_group_id: str | None = None,
        join_group_id: str | None = None,
        expand_group_id: str | None = None,
        step_index: int = 0,
    ) -> Token:
        token = Token(new_id(), row_id, index, data, digest, branch, fork_group_id)
        self.records.tokens.append(
            {
                "token_id": token.token_id,
                "row_id": row_id,
                "run_id": self.run_id,
                "branch_name": branch,
                "fork_group_id": fork_group_id,
                "join_group_id": join_group_id,
                "expand_group_id": expand_group_id,
                "step_index": step_index,
            }
        )
        for ordinal, parent in enumerate(parents or []):
            self.records.token_parents.append(
                {"token_id": token.token_id, "parent_token_id": parent.token_id, "ordinal": ordinal}
            )
        self._last_token_id = token.token_id
        return token

    def _quarantine(self, row_id: str, index: int, digest: str, data: Any, reason: str) -> None:
        token = self._new_token(row_id, index, data if isinstance(data, dict) else {}, digest)
        dest = self.quarantine_dest
        self.records.validation_errors.append(
            {
                "error_id": new_id(),
                "run_id": self.run_id,
                "node_id": self.graph.source.node_id,
                "row_id": row_id,
                "row_index": index,
                "row_hash": digest,
                "row_data_json": dumps(data),
                "reason": reason,
                "destination": dest,
                "created_at": now(),
            }
        )
        self.stats.quarantined += 1
        if dest == "discard":
            self._outcome(token, "quarantined", reason=reason)
        else:
            self._to_sink(token, dest, "quarantined", reason=reason)

    # ------------------------------------------------------------------ the walk
    def _drive(self, token: Token, position: int) -> None:
        """Move one token forward from step ``position`` until it is terminal or held."""
        while position < len(self.steps):
            kind, index = self.steps[position]
            if kind == "transform":
                if not self._transform(token, index, position):
                    return
            elif kind == "aggregation":
                self._buffer(token, index, position)
                return
            else:
                if not self._gate(token, index, position):
                    return
            position += 1
        self._to_sink(token, self.graph.output_sink, "completed")

    def _state(
        self,
        token: Token,
        node: Node,
        position: int,
        *,
        attempt: int = 1,
        status: str = "completed",
        output_hash: str | None = None,
        started: float,
        error: dict[str, Any] | None = None,
        input_hash: str | None = None,
    ) -> str:
        # Derived, not random: a token passes a node once per attempt (cheaper than a new ID).
        state_id = f"{token.token_id}-{position + 1}-{attempt}"
        self.records.node_states.append(
            {
                "state_id": state_id,
                "run_id": self.run_id,
                "token_id": token.token_id,
                "node_id": node.node_id,
                "step_index": position + 1,
                "attempt": attempt,
                "status": status,
                "input_hash": input_hash or token.digest(),
                "output_hash": output_hash,
                "duration_ms": (time.perf_counter() - started) * 1000.0,
                "error_json": dumps(error) if error else None,
            }
        )
        return state_id

    def _transform(self, token: Token, index: int, position: int) -> bool:
        node, plugin, on_error = self.transforms[index]
        result, attempt, started = self._call_with_retry(token, node, position, plugin.process)
        if result is None:
            return False
        if result.error is not None:
            self._state(
                token,
                node,
                position,
                attempt=attempt,
                status="failed",
                started=started,
                error={"reason": result.error},
            )
            self._row_error(token, node, result.error, on_error)
            return False
        if result.rows is not None:
            self._state(token, node, position, attempt=attempt, started=started, output_hash=None)
            self._expand(token, node, result.rows, position)
            return False
        assert result.row is not None
        input_hash = token.digest()
        token.replace_data(result.row)
        self._state(
            token,
            node,
            position,
            attempt=attempt,
            started=started,
            input_hash=input_hash,
            output_hash=token.digest(),
        )
        return True

    def _call_with_retry(
        self, token: Token, node: Node, position: int, call: Any
    ) -> tuple[TransformResult | None, int, float]:
        policy = self.settings.retry
        attempt = 1
        while True:
            started = time.perf_counter()
            try:
                return call(token.data), attempt, started
            except (TransientError, OSError, TimeoutError) as exc:
                error = {"type": type(exc).__name__, "reason": str(exc), "transient": True}
                self._state(
                    token,
                    node,
                    position,
                    attempt=attempt,
                    status="failed",
                    started=started,
                    error=error,
                )
                if attempt >= policy.max_attempts:
                    self._row_error(
                        token, node, f"{exc} (after {attempt} attempts)", self._on_error_of(node)
                    )
                    return None, attempt, started
                delay = min(
                    policy.initial_delay_seconds * policy.exponential_base ** (attempt - 1),
                    policy.max_delay_seconds,
                )
                time.sleep(delay)
                attempt += 1
            except Exception as exc:  # noqa: BLE001 - a plugin bug fails the row, recorded
                error = {"type": type(exc).__name__, "reason": str(exc), "transient": False}
                self._state(
                    token,
                    node,
                    position,
                    attempt=attempt,
                    status="failed",
                    started=started,
                    error=error,
                )
                self._row_error(
                    token, node, f"{type(exc).__name__}: {exc}", self._on_error_of(node)
                )
                return None, attempt, started

    def _on_error_of(self, node: Node) -> str | None:
        for candidate, _plugin, on_error in self.transforms:
            if candidate is node:
                return on_error
        return None

    def _row_error(self, token: Token, node: Node, reason: str, on_error: str | None) -> None:
        dest = on_error or "fail"
        self.records.transform_errors.append(
            {
                "error_id": new_id(),
                "run_id": self.run_id,
                "token_id": token.token_id,
                "node_id": node.node_id,
                "row_hash": token.digest(),
                "error_json": dumps({"reason": reason}),
                "destination": dest,
                "created_at": now(),
            }
        )
        if on_error == "discard":
            self._outcome(token, "quarantined", reason=reason)
        elif on_error:
            self._to_sink(token, on_error, "routed", reason=reason)
        else:
            self.stats.failed += 1
            self._outcome(token, "failed", reason=reason, error_hash=stable_hash(reason))

    def _expand(self, parent: Token, node: Node, rows: list[dict[str, Any]], position: int) -> None:
        group = new_id()
        self._outcome(parent, "expanded", expand_group_id=group)
        for data in rows:
            child = self._new_token(
                parent.row_id,
                parent.row_index,
                data,
                None,
                parents=[parent],
                expand_group_id=group,
                step_index=position + 1,
            )
            self._drive(child, position + 1)

    def _gate(self, token: Token, index: int, position: int) -> bool:
        node, expression = self.gates[index]
        started = time.perf_counter()
        try:
            result = expression.evaluate({"row": token.data})
        except ElspethError as exc:
            self._state(
                token, node, position, status="failed", started=started, error={"reason": str(exc)}
            )
            self._row_error(token, node, str(exc), None)
            return False
        label = ("true" if result else "false") if isinstance(result, bool) else str(result)
        dest = node.settings.routes.get(label)
        if dest is None:
            reason = f"gate '{node.name}': no route for result {label!r}"
            self._state(
                token, node, position, status="failed", started=started, error={"reason": reason}
            )
            self._row_error(token, node, reason, None)
            return False
        state_id = self._state(token, node, position, started=started, output_hash=token.digest())
        self.records.routing_events.append(
            {
                "event_id": f"{state_id}-r",
                "run_id": self.run_id,
                "state_id": state_id,
                "token_id": token.token_id,
                "node_id": node.node_id,
                "edge_label": label,
                "destination": dest,
                "mode": "copy" if dest == "fork" else "move",
                "reason_json": self._gate_reason(node, result),
            }
        )
        if dest == "continue":
            return True
        if dest == "fork":
            self._fork(token, node, position)
        else:
            self._to_sink(token, dest, "routed")
        return False

    def _gate_reason(self, node: Node, result: Any) -> str:
        key = (node.node_id, type(result).__name__, result if isinstance(result, bool) else None)
        cached = self._reasons.get(key) if key[2] is not None else None
        if cached is None:
            cached = dumps({"condition": node.settings.condition, "result": result})
            if key[2] is not None:
                self._reasons[key] = cached
        return cached

    # ------------------------------------------------------------------ forks and joins
    def _fork(self, parent: Token, node: Node, position: int) -> None:
        group = new_id()
        self._outcome(parent, "forked", fork_group_id=group)
        joins: set[str] = set()
        for branch in node.settings.fork_to:
            child = self._new_token(
                parent.row_id,
                parent.row_index,
                copy.deepcopy(parent.data),
                parent.data_hash,
                parents=[parent],
                branch=branch,
                fork_group_id=group,
                step_index=position + 1,
            )
            kind, name = self.graph.branch_destination(branch)
            if kind == "coalesce":
                joins.add(self._arrive(child, name))
            else:
                self._to_sink(
                    child, name, "completed" if name == self.graph.output_sink else "routed"
                )
        # Every child of this fork has arrived: a merged join can take no more late arrivals, so
        # it need not be carried in checkpoints any longer.
        for key in joins:
            join = self.pending_joins.get(key)
            if join is not None and join.merged:
                del self.pending_joins[key]

    def _arrive(self, token: Token, coalesce: str) -> str:
        """Record a branch token's arrival at a coalesce; merge when the policy allows."""
        node = self.graph.coalesces[coalesce]
        key = f"{coalesce}:{token.fork_group_id}"
        self._state(token, node, len(self.steps), started=time.perf_counter())
        join = self.pending_joins.get(key)
        if join is None:
            join = self.pending_joins[key] = PendingJoin(coalesce, self.clock.monotonic())
        if join.merged:
            self._outcome(token, "coalesced", reason="late arrival: this join already merged")
            return key
        join.arrived[token.branch or ""] = token
        if join_ready(node.settings, join):
            self._merge(node, key, join)
        return key

    def _merge(self, node: Node, key: str, join: PendingJoin) -> None:
        cfg = node.settings
        ordered = ordered_arrivals(cfg, join)
        group = new_id()
        for token in ordered:
            self._outcome(token, "coalesced", join_group_id=group)
        first = ordered[0]
        merged = self._new_token(
            first.row_id,
            first.row_index,
            merged_data(cfg, ordered),
            None,
            parents=ordered,
            join_group_id=group,
            step_index=len(self.steps) + 1,
        )
        join.merged = True
        join.arrived = {}
        if len(ordered) >= len(cfg.branches):
            self.pending_joins.pop(key, None)
        self._to_sink(merged, self.graph.output_sink, "completed")

    def _close_joins(self) -> None:
        """End of source: merge (policy permitting) or fail every join still waiting."""
        for key, join in list(self.pending_joins.items()):
            node = self.graph.coalesces[join.coalesce]
            if can_merge_incomplete(node.settings, join):
                self._merge(node, key, join)
            else:
                for token in join.arrived.values():
                    self.stats.failed += 1
                    self._outcome(
                        token,
                        "failed",
                        reason=f"coalesce '{node.name}' incomplete at end of source",
                    )
            self.pending_joins.pop(key, None)

    # ------------------------------------------------------------------ aggregations
    def _buffer(self, token: Token, index: int, position: int) -> None:
        """Add a token to its aggregation's open batch (recorded), closing the batch on a trigger."""
        node, _plugin, condition = self.aggregations[index]
        batch = self.buffers.get(node.node_id) or self._open_batch(node, index)
        ordinal = len(batch.members)
        batch.members.append(token)
        self._state(token, node, position, started=time.perf_counter())
        self.records.batch_members.append(
            {
                "batch_id": batch.batch_id,
                "token_id": token.token_id,
                "ordinal": ordinal,
                "data_ref": self.payloads.put(token.data),
                "data_hash": token.digest(),
            }
        )
        if node.settings.output_mode == "passthrough":
            # The same token continues after the batch: held, not terminal.
            self._outcome(token, "buffered", batch_id=batch.batch_id, terminal=False)
        else:
            self._outcome(token, "consumed_in_batch", batch_id=batch.batch_id)
        fired = fired_trigger(node, batch, self.clock, token=token, condition=condition)
        if fired:
            self._close_batch(batch, *fired)

    def _open_batch(self, node: Node, index: int) -> OpenBatch:
        record = new_batch_record(self.run_id, node.node_id, node.name)
        self.records.batches.append(record)
        batch = OpenBatch(node, index, str(record["batch_id"]), [], self.clock.monotonic())
        self.buffers[node.node_id] = batch
        return batch

    def _close_batch(self, batch: OpenBatch, trigger_type: str, reason: str) -> None:
        """The trigger fired: record ``executing`` with the batch's last member and queue it."""
        del self.buffers[batch.node.node_id]
        self.records.batch_updates.append(
            {
                "batch_id": batch.batch_id,
                "status": "executing",
                "trigger_type": trigger_type,
                "trigger_reason": reason,
            }
        )
        self._closed.append(ClosedBatch(batch.index, batch.batch_id, batch.members))

    def aggregation_order(self) -> dict[str, int]:
        """Aggregation node ID -> its position among the aggregations (pipeline order)."""
        return dict(self._aggregation_index)

    def output_mode(self, node_id: str) -> str:
        node = self.aggregations[self._aggregation_index[node_id]][0]
        return str(node.settings.output_mode)

    def enqueue_batch(self, node_id: str, batch_id: str, members: list[Token]) -> None:
        """Queue a recorded batch (a resume's retry) to run; its ``executing`` status is recorded."""
        self.records.batch_updates.append({"batch_id": batch_id, "status": "executing"})
        self._closed.append(ClosedBatch(self._aggregation_index[node_id], batch_id, members))

    def _close_timed_out(self) -> None:
        for node, _plugin, _cond in self.aggregations:
            batch = self.buffers.get(node.node_id)
            if batch is not None and batch.members:
                fired = fired_trigger(node, batch, self.clock, token=None, condition=None)
                if fired is not None:
                    self._close_batch(batch, *fired)
        self._merge_timed_out_joins()

    def _merge_timed_out_joins(self) -> None:
        """Merge every best_effort join that waited its ``timeout_seconds`` (records only).

        Called between source rows, never inside a fork: every child of a fork has arrived by
        then, so a join merged here can take no late arrival and leaves the checkpoint state.
        """
        now = self.clock.monotonic()
        for key, join in list(self.pending_joins.items()):
            node = self.graph.coalesces[join.coalesce]
            if join_timed_out(node.settings, join, now):
                self._merge(node, key, join)
                self.pending_joins.pop(key, None)

    def check_timeouts(self) -> None:
        """Run the batches whose timeout elapsed (also called between chunks)."""
        self._close_timed_out()
        self.run_closed_batches()

    def run_closed_batches(self) -> None:
        """Run every queued batch, each between two commits (see the module docstring).

        Batches closed while one runs (its outputs fill a later aggregation) join the queue and
        run after it. Re-entrant calls return at once: only the outermost call drains the queue.
        """
        if self._running_batches:
            return
        self._running_batches = True
        try:
            while self._closed:
                batch = self._closed.pop(0)
                self.commit()  # members and ``executing`` durable before the aggregation runs
                self.faults.hit("batch_executing")
                self.execute_batch(batch.index, batch.batch_id, batch.members)
                self.faults.hit("after_flush")
                self.commit()  # completion + outputs' records + sink publications, together
        finally:
            self._running_batches = False

    def execute_batch(self, index: int, batch_id: str, members: list[Token]) -> None:
        """Aggregate a batch's members and drive its outputs downstream (records only)."""
        node, plugin, _cond = self.aggregations[index]
        position = len(self.transforms) + index
        mode = node.settings.output_mode
        self.stats.batches += 1
        try:
            outputs = plugin.aggregate([m.data for m in members], mode)
            check_output_count(mode, len(members), len(outputs))
        except Exception as exc:  # noqa: BLE001 - recorded as a failed batch; the run ends failed
            self._fail_batch(node, batch_id, members, f"{type(exc).__name__}: {exc}")
            return
        self.records.batch_updates.append(
            {"batch_id": batch_id, "status": "completed", "completed_at": now()}
        )
        for ordinal, data in enumerate(outputs):
            if mode == "passthrough":
                token = members[ordinal]
                token.replace_data(data)
            else:
                # Lineage of a batch's outputs is batch_outputs -> batch -> batch_members. A
                # single output also names every member as a parent; ``transform`` outputs do
                # not (N outputs x M members parent links would dwarf the data itself).
                first = members[0]
                token = self._new_token(
                    first.row_id,
                    first.row_index,
                    data,
                    None,
                    parents=members if mode == "single" else None,
                    step_index=position + 1,
                )
            self.records.batch_outputs.append(
                {"batch_id": batch_id, "token_id": token.token_id, "ordinal": ordinal}
            )
            self._drive(token, position + 1)
            if ordinal == 0:
                self.faults.hit("mid_flush")

    def _fail_batch(self, node: Node, batch_id: str, members: list[Token], reason: str) -> None:
        """A batch whose aggregation raised: recorded failed; passthrough members fail with it."""
        self.records.batch_updates.append(
            {"batch_id": batch_id, "status": "failed", "error": reason, "completed_at": now()}
        )
        if node.settings.output_mode == "passthrough":
            for member in members:  # no token is left buffered forever
                self.stats.failed += 1
                self._outcome(
                    member,
                    "failed",
                    batch_id=batch_id,
                    reason=f"batch failed: {reason}",
                    error_hash=stable_hash(reason),
                )
        else:
            self.stats.failed += 1  # members were consumed; the batch's output is what failed
        log.error("aggregation %s batch %s failed: %s", node.name, batch_id, reason)

    def flush_all_batches(self) -> None:
        """End of source: every open batch fires, in pipeline order, each batch's outputs
        reaching later aggregations before those fire."""
        self.run_closed_batches()
        for node, _plugin, _cond in self.aggregations:
            batch = self.buffers.get(node.node_id)
            if batch is not None and batch.members:
                self._close_batch(batch, "end_of_source", "end of source")
                self.run_closed_batches()

    # ------------------------------------------------------------------ outcomes and sinks
    def _outcome(
        self,
        token: Token,
        outcome: str,
        *,
        terminal: bool = True,
        sink_name: str | None = None,
        sink_line: int | None = None,
        batch_id: str | None = None,
        fork_group_id: str | None = None,
        join_group_id: str | None = None,
        expand_group_id: str | None = None,
        reason: str | None = None,
        error_hash: str | None = None,
    ) -> None:
        self.records.token_outcomes.append(
            {
                # One terminal outcome per token (derived ID, also unique-indexed); non-terminal
                # ones (``buffered``, once per passthrough aggregation) get their own IDs.
                "outcome_id": f"{token.token_id}-t" if terminal else new_id(),
                "run_id": self.run_id,
                "token_id": token.token_id,
                "outcome": outcome,
                "is_terminal": terminal,
                "sink_name": sink_name,
                "sink_line": sink_line,
                "batch_id": batch_id,
                "fork_group_id": fork_group_id,
                "join_group_id": join_group_id,
                "expand_group_id": expand_group_id,
                "error_hash": error_hash,
                "reason": reason,
                "recorded_at": self._recorded_at,
            }
        )
        self._last_token_id = token.token_id

    def _to_sink(self, token: Token, sink: str, outcome: str, reason: str | None = None) -> None:
        node = self.graph.sinks[sink]
        self._state(
            token,
            node,
            len(self.steps) + 1,
            started=time.perf_counter(),
            output_hash=token.digest(),
        )
        pending = self._sink_rows[sink]
        pending.append(token.data)
        line = self._sink_counts[sink] + len(pending)
        self._outcome(token, outcome, sink_name=sink, sink_line=line, reason=reason)

    # ------------------------------------------------------------------ commit
    def commit(self, *, checkpoint: bool = True, final: bool = False, wait: bool = True) -> None:
        """Make everything recorded so far durable (see the module docstring for the order).

        Everything but the waiting is done here, in order: the sinks' bytes go to the OS, the
        payload pack's too, and every landscape statement of the chunk runs (the fence first).
        What is left is :meth:`_make_durable` — fsync the sinks and the pack, then COMMIT — which
        runs before this returns, or with ``wait=False`` on the commit thread while the caller
        reads on. Either way the next commit (and :meth:`settle`) waits for it first, so at most
        one chunk is in flight and the commit order above holds for every chunk.
        """
        self.settle()
        touched = [name for name, rows in self._sink_rows.items() if rows]
        if final:
            touched = list(self.sinks)
        elif not self._published:
            touched = list(self.sinks)  # the first commit records every sink's starting point
        progressed = (self.rows_ingested, self.source_exhausted) != self._committed_position
        if not touched and self.records.is_empty() and not progressed:
            return
        self._check_lease()
        syncs = [self._publish(name, final) for name in touched]
        if touched:
            self.faults.hit("after_sink_write")
        self._check_lease()
        syncs.append(self.payloads.sync_deferred())
        self.records.rows_ingested = self.rows_ingested
        self.records.source_position_json = self.position_json()
        self.records.source_exhausted = self.source_exhausted
        if checkpoint and self.checkpoint_on:
            self.records.checkpoint = self._checkpoint_record()
        sent = time.monotonic()
        staged = self.recorder.stage_chunk(
            self.run_id, self.records, owner=self.owner, lease_seconds=self.lease_seconds
        )
        self.stats.commits += 1
        self.progress.advance(self._rows_since_commit, run_id=self.run_id)
        self._rows_since_commit = 0
        self.records = ChunkRecords()
        self._recorded_at = now()
        self._committed_position = (self.rows_ingested, self.source_exhausted)
        if wait:
            self._make_durable(staged, syncs, sent)
            return
        if self._committer is None:
            self._committer = ThreadPoolExecutor(1, thread_name_prefix=f"commit-{self.run_id}")
            self._syncers = ThreadPoolExecutor(len(self.sinks) + 1, thread_name_prefix="fsync")
            # The commit thread needs the GIL back after each fsync and the COMMIT; at the
            # default 5 ms switch interval it would wait that long each time while this thread
            # computes (a 100k-row run: 13 s against 9.3 s at 0.1 ms). Restored by close().
            self._switch_interval = sys.getswitchinterval()
            sys.setswitchinterval(min(self._switch_interval, COMMIT_THREAD_SWITCH_INTERVAL))
        self._in_flight = self._committer.submit(self._make_durable, staged, syncs, sent)

    def _publish(self, name: str, final: bool) -> Callable[[], None]:
        """Hand one sink's pending rows to the OS and record its publication for the commit.

        Returns the call that makes them durable (a no-op when the sink already is: a sink
        without ``flush_deferred``, or the final publication, which ``finish`` fsyncs).
        """
        sink = self.sinks[name]
        rows = self._sink_rows[name]
        if rows:
            sink.write(rows)
        sync = _durable
        if final:
            state = _publication_json(sink.flush())
            publication = sink.finish()
            state = {**_publication_json(publication), "before_finish": state}
        else:
            deferred = getattr(sink, "flush_deferred", None)
            if deferred is not None:
                publication, sync = deferred()
            else:
                publication = sink.flush()
            state = _publication_json(publication)
        self._sink_counts[name] += len(rows)
        self._sink_rows[name] = []
        self.records.artifacts[name] = {
            "sink_node_id": self.graph.sinks[name].node_id,
            "path_or_uri": publication.uri,
            "size_bytes": publication.size_bytes,
            "rows_written": publication.rows,
            "content_hash": sink.content_hash() if final else None,
            "publication_json": dumps(state),
        }
        self._published.add(name)
        return sync

    def _make_durable(
        self, staged: StagedChunk, syncs: list[Callable[[], None]], sent: float
    ) -> None:
        """fsync the sinks and the payload pack, THEN commit the chunk's landscape transaction."""
        try:
            if self._syncers is not None and len(syncs) > 1:
                # Independent files: their fsyncs overlap (the file system journals them together)
                # instead of queueing one behind the other. A 100k-row run: 9.5 s -> 8.7 s.
                futures = [self._syncers.submit(sync) for sync in syncs]
                wait_futures(futures)
                for future in futures:
                    future.result()
            else:
                for sync in syncs:
                    sync()
        except BaseException:
            staged.release()
            raise
        staged.commit(lambda: self.faults.hit("during_commit"))
        if self.keeper is not None:
            self.keeper.extended(sent)  # the fence extended the lease
        self.faults.hit("after_commit")

    def settle(self, *, quiet: bool = False) -> None:
        """Wait for the commit in flight, if any, and raise its error (log it when ``quiet``)."""
        in_flight, self._in_flight = self._in_flight, None
        if in_flight is None:
            return
        try:
            in_flight.result()
        except Exception:
            if not quiet:
                raise
            log.exception("run %s: the last chunk commit failed", self.run_id)

    def _check_lease(self) -> None:
        """Stop (``LeaseLostError``) before any further effect if the run was taken over."""
        if self.keeper is not None:
            self.keeper.check()

    def _checkpoint_record(self) -> dict[str, Any]:
        self.sequence += 1
        return {
            "checkpoint_id": new_id(),
            "run_id": self.run_id,
            "row_id": self._last_row_id,
            "token_id": self._last_token_id,
            "node_id": self.graph.sinks[self.graph.output_sink].node_id,
            "sequence_number": self.sequence,
            "rows_ingested": self.rows_ingested,
            # Not sort_keys: held tokens' rows must keep their field order (CSV headers).
            "aggregation_state_json": json.dumps(self.aggregation_state(), ensure_ascii=False),
            "topology_hash": self.graph.topology_hash,
            "config_hash": self.settings_hash,
            "format_version": CHECKPOINT_FORMAT,
            "created_at": now(),
        }

    def aggregation_state(self) -> dict[str, Any]:
        """What a new process needs to rebuild open batches and joins (elapsed ages, not clocks)."""
        return {
            "aggregations": {
                node_id: {
                    "batch_id": batch.batch_id,
                    "count": len(batch.members),
                    "elapsed_seconds": batch.age(self.clock),
                    "members": [m.token_id for m in batch.members],
                }
                for node_id, batch in self.buffers.items()
            },
            "joins": {
                key: {
                    "coalesce": join.coalesce,
                    "merged": join.merged,
                    "elapsed_seconds": max(0.0, self.clock.monotonic() - join.opened_at),
                    "arrived": {
                        branch: {
                            "token_id": tok.token_id,
                            "row_id": tok.row_id,
                            "row_index": tok.row_index,
                            "data": tok.data,
                            "fork_group_id": tok.fork_group_id,
                        }
                        for branch, tok in join.arrived.items()
                    },
                }
                for key, join in self.pending_joins.items()
            },
        }

    def restore_state(self, state: dict[str, Any], members: dict[str, list[Token]]) -> None:
        """Rebuild open batches and joins from a checkpoint's state and the recorded members.

        Args:
            state: ``{"aggregations": {node_id: {"batch_id", "elapsed_seconds"}}, "joins": {...}}``
                as saved by :meth:`aggregation_state` (members are taken from ``members``).
            members: each open batch's member tokens, in ordinal order, from the landscape.
        """
        for node_id, saved in state.get("aggregations", {}).items():
            index = self._aggregation_index[node_id]
            node = self.aggregations[index][0]
            batch_members = list(members.get(saved["batch_id"], []))
            elapsed = float(saved.get("elapsed_seconds", 0.0))
            self.buffers[node_id] = OpenBatch(
                node, index, saved["batch_id"], batch_members, self.clock.monotonic() - elapsed
            )
            self._restored[node_id] = {
                "batch_id": saved["batch_id"],
                "count": len(batch_members),
                "elapsed_seconds": elapsed,
                "members": [m.token_id for m in batch_members],
            }
        for key, saved in state.get("joins", {}).items():
            arrived = {
                branch: Token(
                    t["token_id"],
                    t["row_id"],
                    t["row_index"],
                    t["data"],
                    None,
                    branch,
                    t.get("fork_group_id"),
                )
                for branch, t in saved["arrived"].items()
            }
            elapsed = float(saved.get("elapsed_seconds", 0.0))
            self.pending_joins[key] = PendingJoin(
                saved["coalesce"], self.clock.monotonic() - elapsed, arrived, bool(saved["merged"])
            )
            node_id = self.graph.coalesces[saved["coalesce"]].node_id
            joins = self._restored.setdefault(node_id, {"joins": {}})["joins"]
            joins[key] = {
                "elapsed_seconds": elapsed,
                "merged": bool(saved["merged"]),
                "arrived": {b: t.token_id for b, t in arrived.items()},
            }
        for node, plugin, _cond in self.aggregations:
            hook = getattr(plugin, "on_restore", None)
            if callable(hook) and node.node_id in self._restored:
                hook(self.get_restored_state(node.node_id))

    def get_restored_state(self, node_id: str) -> dict[str, Any] | None:
        """What a resume restored for one node, or None when nothing was restored for it.

        For an aggregation: ``{"batch_id", "count", "elapsed_seconds", "members"}`` (member token
        IDs in ordinal order) of its open draft batch. For a coalesce: ``{"joins": {key:
        {"elapsed_seconds", "merged", "arrived": {branch: token_id}}}}``. A copy: changing it
        changes nothing in the session.
        """
        found = self._restored.get(node_id)
        return copy.deepcopy(found) if found is not None else None

    def finish(self) -> None:
        """End of source: fire open batches, close joins, complete the sinks (one final commit)."""
        self.flush_all_batches()
        self._close_joins()
        self.commit(final=True)


def _publication_json(publication: Publication) -> dict[str, Any]:
    return {
        "uri": publication.uri,
        "rows": publication.rows,
        "size_bytes": publication.size_bytes,
        "state": publication.state,
    }


def _durable() -> None:
    return None


def _chain_one(first: Any, rest: Iterator[Any]) -> Iterator[Any]:
    yield first
    yield from rest


def _raw_hash(raw: Any) -> str:
    if isinstance(raw, BadRow):
        return stable_hash({"raw": raw.raw})
    return stable_hash(raw)
