"""A run session: the live state of ONE process working on ONE run, and the row processor.

The session reads the source, drives each row's tokens through transforms, aggregations, gates,
forks and coalesces to the sinks, and collects every audit record of the current commit unit in a
``ChunkRecords``. ``commit()`` is the only place where effects become durable, always in this order:

1. sinks write their pending rows and fsync (publication state returned),
2. the payload pack is fsynced,
3. ONE landscape transaction records the rows, tokens, states, outcomes, the sinks' publication
   states and the checkpoint, fenced by the lease.

A crash before (3) leaves sink bytes the landscape does not vouch for: resume cuts them off. A crash
after (3) loses nothing. So outcome ``completed`` is never recorded before its sink write is durable,
and no sink write is ever repeated. The session holds no state that is not derivable from the
landscape at a commit boundary: a new process restores it with ``restore()``.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from elspeth_core.dag import ExecutionGraph, Node
from elspeth_core.engine.expressions import Expression
from elspeth_core.engine.faults import FaultInjector
from elspeth_core.engine.progress import NullProgress, Progress
from elspeth_core.engine.tokens import Token
from elspeth_core.errors import ElspethError, PluginError, SourceChanged, TransientError
from elspeth_core.hashing import CANONICAL_VERSION, stable_hash
from elspeth_core.ids import new_id
from elspeth_core.landscape.records import ChunkRecords
from elspeth_core.landscape.recorder import LandscapeRecorder, dumps, new_batch_record
from elspeth_core.payloads import PayloadStore
from elspeth_core.plugins.protocols import BadRow, Publication, TransformResult
from elspeth_core.plugins.registry import PluginRegistry
from elspeth_core.plugins.schema import RowSchema

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 1
MAX_ROWS_PER_COMMIT = 10_000


def now() -> datetime:
    return datetime.now(UTC)


class Clock:
    """Wall/monotonic time source; tests inject a fake one to drive timeout triggers."""

    def monotonic(self) -> float:
        return time.monotonic()


@dataclass
class AggBuffer:
    """An aggregation's open (draft) batch: members in ordinal order and its trigger state."""

    node: Node
    batch_id: str
    members: list[Token] = field(default_factory=list)
    opened_at: float = 0.0  # monotonic, this process only; persisted as elapsed age

    def age(self, clock: Clock) -> float:
        return max(0.0, clock.monotonic() - self.opened_at)


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
        self.keeper: Any = None
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
        self.buffers: dict[str, AggBuffer] = {}
        self.pending_joins: dict[str, dict[str, Any]] = {}
        self._sink_rows: dict[str, list[dict[str, Any]]] = {name: [] for name in graph.sinks}
        self._sink_counts: dict[str, int] = {name: 0 for name in graph.sinks}
        self._published: set[str] = set()
        payloads.open_pack(run_id, attempt)

    # ------------------------------------------------------------------ construction
    def _build_plugins(self, registry: PluginRegistry) -> None:
        g = self.graph
        src_opts = dict(g.source.options)
        self.source = registry.create("source", g.source.plugin_name, src_opts)
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
            trigger = node.settings.trigger
            condition = (
                Expression.parse(
                    trigger.condition, names=frozenset({"row", "batch_count", "batch_age_seconds"})
                )
                if trigger.condition
                else None
            )
            self.aggregations.append((node, plugin, condition))
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
        """Cut every sink back to its last committed publication (or start it afresh)."""
        for name, sink in self.sinks.items():
            found = publications.get(name)
            pub = None
            if found is not None:
                data = found["publication"]
                pub = Publication(data["uri"], data["rows"], data["size_bytes"], data["state"])
                self._sink_counts[name] = pub.rows
                self._published.add(name)
            sink.restore(pub, run_id=self.run_id)

    def close(self) -> None:
        for sink in self.sinks.values():
            sink.close()
        self.payloads.close()
        close = getattr(self.source, "close", None)
        if close:
            close()

    # ------------------------------------------------------------------ source
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
            self._ingest(raw, self.rows_ingested)
            self.rows_ingested += 1
            done += 1
            self._rows_since_commit += 1
            if self._commit_due():
                self.commit()
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
            self._state(token, node, position, attempt=attempt, status="failed", started=started,
                        error={"reason": result.error})
            self._row_error(token, node, result.error, on_error)
            return False
        if result.rows is not None:
            self._state(token, node, position, attempt=attempt, started=started, output_hash=None)
            self._expand(token, node, result.rows, position)
            return False
        assert result.row is not None
        input_hash = token.digest()
        token.replace_data(result.row)
        self._state(token, node, position, attempt=attempt, started=started,
                    input_hash=input_hash, output_hash=token.digest())
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
                self._state(token, node, position, attempt=attempt, status="failed",
                            started=started, error=error)
                if attempt >= policy.max_attempts:
                    self._row_error(token, node, f"{exc} (after {attempt} attempts)",
                                    self._on_error_of(node))
                    return None, attempt, started
                delay = min(
                    policy.initial_delay_seconds * policy.exponential_base ** (attempt - 1),
                    policy.max_delay_seconds,
                )
                time.sleep(delay)
                attempt += 1
            except Exception as exc:  # noqa: BLE001 - a plugin bug fails the row, recorded
                error = {"type": type(exc).__name__, "reason": str(exc), "transient": False}
                self._state(token, node, position, attempt=attempt, status="failed",
                            started=started, error=error)
                self._row_error(token, node, f"{type(exc).__name__}: {exc}",
                                self._on_error_of(node))
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
            child = self._new_token(parent.row_id, parent.row_index, data, None, parents=[parent],
                                    expand_group_id=group, step_index=position + 1)
            self._drive(child, position + 1)

    def _gate(self, token: Token, index: int, position: int) -> bool:
        node, expression = self.gates[index]
        started = time.perf_counter()
        try:
            result = expression.evaluate({"row": token.data})
        except ElspethError as exc:
            self._state(token, node, position, status="failed", started=started,
                        error={"reason": str(exc)})
            self._row_error(token, node, str(exc), None)
            return False
        label = ("true" if result else "false") if isinstance(result, bool) else str(result)
        dest = node.settings.routes.get(label)
        if dest is None:
            reason = f"gate '{node.name}': no route for result {label!r}"
            self._state(token, node, position, status="failed", started=started,
                        error={"reason": reason})
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
        for branch in node.settings.fork_to:
            child = self._new_token(
                parent.row_id, parent.row_index, copy.deepcopy(parent.data), parent.data_hash,
                parents=[parent], branch=branch, fork_group_id=group, step_index=position + 1,
            )
            child.fork_group_id = group
            kind, name = self.graph.branch_destination(branch)
            if kind == "coalesce":
                self._arrive(child, name)
            else:
                self._to_sink(child, name, "completed" if name == self.graph.output_sink else "routed")

    def _arrive(self, token: Token, coalesce: str) -> None:
        node = self.graph.coalesces[coalesce]
        key = f"{coalesce}:{token.fork_group_id}"
        self._state(token, node, len(self.steps), started=time.perf_counter())
        join = self.pending_joins.setdefault(
            key, {"coalesce": coalesce, "arrived": {}, "merged": False, "opened": self.clock.monotonic()}
        )
        if join["merged"]:
            self._outcome(token, "coalesced", reason="late arrival: this join already merged")
            return
        join["arrived"][token.branch] = token
        if self._join_ready(node, join):
            self._merge(node, key, join)

    @staticmethod
    def _join_ready(node: Node, join: dict[str, Any]) -> bool:
        cfg = node.settings
        count = len(join["arrived"])
        if cfg.policy == "first":
            return count >= 1
        if cfg.policy == "quorum":
            return count >= (cfg.quorum_count or len(cfg.branches))
        return count >= len(cfg.branches)

    def _merge(self, node: Node, key: str, join: dict[str, Any]) -> None:
        cfg = node.settings
        arrived: dict[str, Token] = join["arrived"]
        ordered = [arrived[b] for b in cfg.branches if b in arrived]
        if cfg.merge == "nested":
            data: dict[str, Any] = {t.branch or "": t.data for t in ordered}
        elif cfg.merge == "select":
            chosen = arrived.get(cfg.select_branch) or ordered[0]
            data = dict(chosen.data)
        else:
            data = {}
            for t in ordered:
                data.update(t.data)
        group = new_id()
        for t in ordered:
            self._outcome(t, "coalesced", join_group_id=group)
        first = ordered[0]
        merged = self._new_token(first.row_id, first.row_index, data, None, parents=ordered,
                                 join_group_id=group, step_index=len(self.steps) + 1)
        join["merged"] = True
        join["arrived"] = {}
        if len(ordered) >= len(cfg.branches):
            self.pending_joins.pop(key, None)
        self._to_sink(merged, self.graph.output_sink, "completed")

    def _close_joins(self) -> None:
        """End of source: merge or fail every join still waiting."""
        for key, join in list(self.pending_joins.items()):
            node = self.graph.coalesces[join["coalesce"]]
            arrived = join["arrived"]
            if arrived and node.settings.policy in ("best_effort", "quorum", "first") and (
                node.settings.policy == "best_effort" or self._join_ready(node, join)
            ):
                self._merge(node, key, join)
            else:
                for token in arrived.values():
                    self.stats.failed += 1
                    self._outcome(token, "failed",
                                  reason=f"coalesce '{node.name}' incomplete at end of source")
            self.pending_joins.pop(key, None)

    # ------------------------------------------------------------------ aggregations
    def _buffer(self, token: Token, index: int, position: int) -> None:
        node, _plugin, condition = self.aggregations[index]
        buffer = self.buffers.get(node.node_id)
        if buffer is None:
            buffer = self._open_batch(node)
        ordinal = len(buffer.members)
        buffer.members.append(token)
        self._state(token, node, position, started=time.perf_counter())
        self.records.batch_members.append(
            {
                "batch_id": buffer.batch_id,
                "token_id": token.token_id,
                "ordinal": ordinal,
                "data_ref": self.payloads.put(token.data),
                "data_hash": token.digest(),
            }
        )
        mode = node.settings.output_mode
        if mode == "passthrough":
            self._outcome(token, "buffered", batch_id=buffer.batch_id, terminal=False)
        else:
            self._outcome(token, "consumed_in_batch", batch_id=buffer.batch_id)
        fired = self._trigger(node, buffer, token, condition)
        if fired:
            self._flush(index, *fired)

    def _open_batch(self, node: Node) -> AggBuffer:
        record = new_batch_record(self.run_id, node.node_id, node.name)
        self.records.batches.append(record)
        buffer = AggBuffer(node, str(record["batch_id"]), [], self.clock.monotonic())
        self.buffers[node.node_id] = buffer
        return buffer

    def _trigger(
        self, node: Node, buffer: AggBuffer, token: Token | None, condition: Expression | None
    ) -> tuple[str, str] | None:
        trigger = node.settings.trigger
        count = len(buffer.members)
        age = buffer.age(self.clock)
        if trigger.count and count >= trigger.count:
            return "count", f"batch_count {count} >= {trigger.count}"
        if trigger.timeout_seconds is not None and age >= trigger.timeout_seconds:
            return "timeout", f"batch_age_seconds {age:.3f} >= {trigger.timeout_seconds}"
        if condition is not None and token is not None:
            env = {"row": token.data, "batch_count": count, "batch_age_seconds": age}
            if condition.evaluate(env):
                return "condition", f"condition true: {condition.source}"
        return None

    def check_timeouts(self) -> None:
        """Flush batches whose timeout elapsed (called between chunks)."""
        for index, (node, _plugin, _cond) in enumerate(self.aggregations):
            buffer = self.buffers.get(node.node_id)
            if buffer and buffer.members:
                fired = self._trigger(node, buffer, None, None)
                if fired and fired[0] == "timeout":
                    self._flush(index, *fired)

    def _flush(self, index: int, trigger_type: str, reason: str) -> None:
        """Run one batch: commit the prefix, mark executing, aggregate, drive outputs, commit."""
        node, _plugin, _cond = self.aggregations[index]
        self.commit()  # members durable, batch still draft in the checkpoint
        buffer = self.buffers.pop(node.node_id)
        self._commit_batch_status(buffer.batch_id, "executing", trigger_type, reason)
        self.faults.hit("batch_executing")
        self.execute_batch(index, buffer.batch_id, buffer.members)
        self.faults.hit("after_flush")
        self.commit()

    def _commit_batch_status(self, batch_id: str, status: str, kind: str, reason: str) -> None:
        self.records.batch_updates.append(
            {"batch_id": batch_id, "status": status, "trigger_type": kind, "trigger_reason": reason}
        )
        self.commit(checkpoint=False)

    def execute_batch(self, index: int, batch_id: str, members: list[Token]) -> None:
        """Aggregate a batch's members and drive its outputs downstream (records only)."""
        node, plugin, _cond = self.aggregations[index]
        position = len(self.transforms) + index
        mode = node.settings.output_mode
        self.stats.batches += 1
        try:
            outputs = plugin.aggregate([m.data for m in members], mode)
            _check_output_count(mode, len(members), len(outputs))
        except Exception as exc:  # noqa: BLE001 - recorded as a failed batch, run ends failed
            reason = f"{type(exc).__name__}: {exc}"
            self.records.batch_updates.append(
                {"batch_id": batch_id, "status": "failed", "error": reason, "completed_at": now()}
            )
            for member in members:
                if mode == "passthrough":
                    self.stats.failed += 1
                    self._outcome(member, "failed", reason=f"batch failed: {reason}")
            self.stats.failed += 0 if mode == "passthrough" else 1
            log.error("aggregation %s batch %s failed: %s", node.name, batch_id, reason)
            return
        self.records.batch_updates.append(
            {"batch_id": batch_id, "status": "completed", "completed_at": now()}
        )
        if mode == "passthrough":
            for ordinal, (member, data) in enumerate(zip(members, outputs, strict=True)):
                self.records.batch_outputs.append(
                    {"batch_id": batch_id, "token_id": member.token_id, "ordinal": ordinal}
                )
                member.replace_data(data)
                self._drive(member, position + 1)
            return
        first = members[0]
        for ordinal, data in enumerate(outputs):
            child = self._new_token(first.row_id, first.row_index, data, None, parents=members,
                                    step_index=position + 1)
            self.records.batch_outputs.append(
                {"batch_id": batch_id, "token_id": child.token_id, "ordinal": ordinal}
            )
            if ordinal == 0:
                self.faults.hit("mid_flush")
            self._drive(child, position + 1)

    def flush_all_batches(self) -> None:
        """End of source: every open batch fires."""
        for index, (node, _plugin, _cond) in enumerate(self.aggregations):
            buffer = self.buffers.get(node.node_id)
            if buffer and buffer.members:
                self._flush(index, "end_of_source", "end of source")
            elif buffer:
                self.buffers.pop(node.node_id)
                self.records.batch_updates.append(
                    {"batch_id": buffer.batch_id, "status": "completed", "completed_at": now(),
                     "trigger_type": "end_of_source", "trigger_reason": "empty at end of source"}
                )

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
                # A token has at most one non-terminal and one terminal outcome.
                "outcome_id": f"{token.token_id}-{'t' if terminal else 'n'}",
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
        self._state(token, node, len(self.steps) + 1, started=time.perf_counter(),
                    output_hash=token.digest())
        pending = self._sink_rows[sink]
        pending.append(token.data)
        line = self._sink_counts[sink] + len(pending)
        self._outcome(token, outcome, sink_name=sink, sink_line=line, reason=reason)

    # ------------------------------------------------------------------ commit
    def commit(self, *, checkpoint: bool = True, final: bool = False) -> None:
        """Make everything recorded so far durable (see the module docstring for the order)."""
        touched = [name for name, rows in self._sink_rows.items() if rows]
        if final:
            touched = list(self.sinks)
        elif not self._published:
            touched = list(self.sinks)  # the first commit records every sink's starting point
        progressed = (self.rows_ingested, self.source_exhausted) != self._committed_position
        if not touched and self.records.is_empty() and not progressed:
            return
        for name in touched:
            sink = self.sinks[name]
            rows = self._sink_rows[name]
            if rows:
                sink.write(rows)
            publication = sink.finish() if final else sink.flush()
            self._sink_counts[name] += len(rows)
            self._sink_rows[name] = []
            self.records.artifacts[name] = {
                "sink_node_id": self.graph.sinks[name].node_id,
                "path_or_uri": publication.uri,
                "size_bytes": publication.size_bytes,
                "rows_written": publication.rows,
                "content_hash": sink.content_hash() if final else None,
                "publication_json": dumps(
                    {"uri": publication.uri, "rows": publication.rows,
                     "size_bytes": publication.size_bytes, "state": publication.state}
                ),
            }
            self._published.add(name)
        if touched:
            self.faults.hit("after_sink_write")
        self.payloads.sync()
        self.records.rows_ingested = self.rows_ingested
        self.records.source_exhausted = self.source_exhausted
        if checkpoint and self.checkpoint_on:
            self.records.checkpoint = self._checkpoint_record()
        self.recorder.commit_chunk(
            self.run_id, self.records, owner=self.owner, lease_seconds=self.lease_seconds,
            before_commit=lambda: self.faults.hit("during_commit"),
        )
        self.stats.commits += 1
        self.progress.advance(self._rows_since_commit, run_id=self.run_id)
        self._rows_since_commit = 0
        self.records = ChunkRecords()
        self._recorded_at = now()
        self._committed_position = (self.rows_ingested, self.source_exhausted)
        self.faults.hit("after_commit")

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
            "aggregation_state_json": json.dumps(self.aggregation_state(), sort_keys=True),
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
                    "batch_id": buffer.batch_id,
                    "count": len(buffer.members),
                    "elapsed_seconds": buffer.age(self.clock),
                    "members": [m.token_id for m in buffer.members],
                }
                for node_id, buffer in self.buffers.items()
            },
            "joins": {
                key: {
                    "coalesce": join["coalesce"],
                    "merged": join["merged"],
                    "elapsed_seconds": max(0.0, self.clock.monotonic() - join["opened"]),
                    "arrived": {
                        branch: {"token_id": tok.token_id, "row_id": tok.row_id,
                                 "row_index": tok.row_index, "data": tok.data,
                                 "fork_group_id": tok.fork_group_id}
                        for branch, tok in join["arrived"].items()
                    },
                }
                for key, join in self.pending_joins.items()
            },
        }

    def restore_state(self, state: dict[str, Any], members: dict[str, list[Token]]) -> None:
        """Rebuild open batches and joins from a checkpoint's state and recorded members."""
        by_id = {node.node_id: node for node, _p, _c in self.aggregations}
        for node_id, saved in state.get("aggregations", {}).items():
            node = by_id[node_id]
            buffer = AggBuffer(node, saved["batch_id"], members.get(saved["batch_id"], []),
                               self.clock.monotonic() - float(saved["elapsed_seconds"]))
            self.buffers[node_id] = buffer
        for key, saved in state.get("joins", {}).items():
            arrived = {
                branch: Token(t["token_id"], t["row_id"], t["row_index"], t["data"], None, branch,
                              t.get("fork_group_id"))
                for branch, t in saved["arrived"].items()
            }
            self.pending_joins[key] = {
                "coalesce": saved["coalesce"], "merged": saved["merged"], "arrived": arrived,
                "opened": self.clock.monotonic() - float(saved["elapsed_seconds"]),
            }

    def finish(self) -> None:
        """End of source: fire open batches, close joins, complete the sinks (one final commit)."""
        self.flush_all_batches()
        self._close_joins()
        self.commit(final=True)


def _check_output_count(mode: str, members: int, outputs: int) -> None:
    if mode == "single" and outputs != 1:
        raise PluginError(f"single output mode needs exactly 1 output row, got {outputs}")
    if mode == "passthrough" and outputs != members:
        raise PluginError(
            f"passthrough output mode needs one output per member ({members}), got {outputs}"
        )


def _chain_one(first: Any, rest: Iterator[Any]) -> Iterator[Any]:
    yield first
    yield from rest


def _raw_hash(raw: Any) -> str:
    if isinstance(raw, BadRow):
        return stable_hash({"raw": raw.raw})
    return stable_hash(raw)
