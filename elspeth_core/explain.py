"""Row-level lineage: the ``elspeth.explain/v1`` document for a row, a token or a sink line.

``explain`` answers "why is this row in this output?" from the audit trail alone: the run and its
configuration hash, the source row (payload from the payload store, verified against its hash; the
hash alone once purged), every token of the row's family with each node state, routing decision,
batch membership (all attempts) and outcome, and the sink line and artifact each output went to.
The document's shape is a public contract, documented in ``docs/explain-json.md``: add keys, never
rename or remove them without a new ``schema`` version.

This module reads through ``landscape.lineage`` and ``payloads``; it must not write anything.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from elspeth_core.errors import ElspethError, RunNotFound
from elspeth_core.landscape import LandscapeDB
from elspeth_core.landscape.lineage import LineageQueries, LineageRecords
from elspeth_core.landscape.records import Record
from elspeth_core.payloads import PayloadIntegrityError, PayloadStore

SCHEMA = "elspeth.explain/v1"


class LineageNotFound(ElspethError):
    """The row, token or sink line asked for is not in the run."""


@dataclass(frozen=True)
class ExplainTarget:
    """What to explain: exactly one of a row, a token, or a sink's data line."""

    run: str
    row_id: str | None = None
    token_id: str | None = None
    sink: str | None = None
    line: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "run": self.run,
            "row_id": self.row_id,
            "token_id": self.token_id,
            "sink": self.sink,
            "line": self.line,
        }


def explain(
    db: LandscapeDB,
    target: ExplainTarget,
    *,
    payloads_path: str | Path | None = None,
    max_tokens: int | None = None,
) -> dict[str, Any]:
    """Build the lineage document of one row, token or sink line.

    Args:
        db: the landscape.
        target: the run (an ID or ``latest``) and what to explain in it.
        payloads_path: the payload store's base path; the run's recorded
            ``payload_store.base_path`` when omitted.
        max_tokens: bound on the token family (a default of 1,000 when omitted).

    Returns:
        The ``elspeth.explain/v1`` document (JSON-serialisable but for datetimes).

    Raises:
        RunNotFound: no such run (or no run at all for ``latest``).
        LineageNotFound: the row, token or sink line is not in that run.
    """
    with LineageQueries(db).snapshot() as queries:
        run = _resolve_run(queries, target.run)
        run_id = run["run_id"]
        focus_token, row_id = _resolve_focus(queries, run_id, target)
        start = [focus_token] if focus_token else queries.token_ids_of_row(row_id)
        family = queries.family(
            start,
            ancestors=focus_token is not None,
            **({"max_tokens": max_tokens} if max_tokens else {}),
        )
        records = queries.records(run_id, family, [row_id])
        attempts = queries.attempts(run_id)
    base = payloads_path or _recorded_payload_path(run)
    return {
        "schema": SCHEMA,
        "query": target.as_dict(),
        "run": _run_section(run, attempts),
        "row": _row_section(records, row_id, attempts, base),
        "focus_token_id": focus_token,
        "tokens": _token_sections(records, start, focus_token is not None),
        "source_rows": _source_rows(records),
        "outputs": _outputs(records),
        "truncated": family.truncated,
    }


# ---------------------------------------------------------------------- resolving the query
def _resolve_run(queries: LineageQueries, wanted: str) -> Record:
    run_id = queries.latest_run_id() if wanted == "latest" else wanted
    run = queries.run(run_id) if run_id else None
    if run is None:
        missing = RunNotFound(wanted if wanted != "latest" else "latest (the landscape has no run)")
        # Same phrase and hint as everywhere, but a lookup that finds nothing is exit 1 here.
        raise LineageNotFound(missing.message, hint=missing.hint)
    return run


def _resolve_focus(
    queries: LineageQueries, run_id: str, target: ExplainTarget
) -> tuple[str | None, str]:
    """(focus token or None for a whole row, row ID)."""
    if target.row_id is not None:
        row = queries.row(target.row_id)
        _check_in_run(row, run_id, f"row {target.row_id}")
        assert row is not None
        return None, str(row["row_id"])
    if target.token_id is not None:
        token = queries.token(target.token_id)
        _check_in_run(token, run_id, f"token {target.token_id}")
        assert token is not None
        return str(token["token_id"]), str(token["row_id"])
    if target.sink is None or target.line is None:
        raise LineageNotFound(
            "nothing to explain",
            hint="Give --row ROW_ID, --token TOKEN_ID or --sink NAME --line N.",
        )
    outcome = queries.outcome_at_sink_line(run_id, target.sink, target.line)
    if outcome is None:
        lines = queries.sink_line_count(run_id, target.sink)
        detail = f"it has {lines} data line(s)" if lines else "no line of it is on record"
        raise LineageNotFound(
            f"no token of run {run_id} wrote data line {target.line} of sink '{target.sink}' "
            f"({detail})",
            hint="Lines are 1-based data lines, not counting a CSV header; check the sink name "
            "with 'elspeth runs show RUN_ID'.",
            run_id=run_id,
        )
    token = queries.token(outcome["token_id"])
    assert token is not None
    return str(token["token_id"]), str(token["row_id"])


def _check_in_run(record: Record | None, run_id: str, what: str) -> None:
    if record is None:
        raise LineageNotFound(
            f"{what} not found in the landscape",
            hint="Check the ID: 'elspeth runs show RUN_ID' shows the run; IDs are 28 hex characters.",
            run_id=run_id,
        )
    if record["run_id"] != run_id:
        raise LineageNotFound(
            f"{what} belongs to run {record['run_id']}, not to run {run_id}",
            hint=f"Use --run {record['run_id']}.",
            run_id=run_id,
        )


# ---------------------------------------------------------------------- sections
def _run_section(run: Record, attempts: list[Record]) -> dict[str, Any]:
    return {
        "run_id": run["run_id"],
        "status": run["status"],
        "config_hash": run["config_hash"],
        "topology_hash": run["topology_hash"],
        "canonical_version": run["canonical_version"],
        "settings_path": run["settings_path"],
        "started_at": run["started_at"],
        "completed_at": run["completed_at"],
        "error": run["error"],
        "attempts": [
            {
                "attempt": a["attempt"],
                "kind": a["kind"],
                "status": a["status"],
                "started_at": a["started_at"],
                "ended_at": a["ended_at"],
                "rows_before": a["rows_before"],
            }
            for a in attempts
        ],
    }


def _row_section(
    records: LineageRecords, row_id: str, attempts: list[Record], base: str | Path | None
) -> dict[str, Any]:
    row = records.rows[row_id]
    node = records.nodes.get(row["source_node_id"], {})
    return {
        "row_id": row["row_id"],
        "row_index": row["row_index"],
        "source_node": {
            "node_id": row["source_node_id"],
            "name": node.get("name"),
            "plugin_name": node.get("plugin_name"),
        },
        "source_data_hash": row["source_data_hash"],
        "created_at": row["created_at"],
        "recorded_by_attempt": attempt_at(attempts, row["created_at"]),
        "payload": read_payload(base, row["source_data_ref"], row["source_data_hash"]),
        "validation_errors": [
            {
                "node_id": v["node_id"],
                "reason": v["reason"],
                "destination": v["destination"],
                "row_hash": v["row_hash"],
                "created_at": v["created_at"],
            }
            for v in records.validation_errors
            if v["row_id"] == row_id
        ],
    }


def read_payload(base: str | Path | None, ref: str | None, digest: str) -> dict[str, Any]:
    """The payload of a row, verified against its recorded hash, or why it is not available."""
    if not ref:
        return {
            "status": "purged",
            "data": None,
            "detail": "payload purged (retention); only its hash is kept",
        }
    if base is None:
        return {"status": "missing", "data": None, "detail": "payload store path unknown"}
    store = PayloadStore(base)
    try:
        data = store.get(ref, digest)
    except PayloadIntegrityError as exc:
        return {"status": "corrupt", "data": None, "detail": exc.message}
    except (OSError, ValueError) as exc:
        return {"status": "missing", "data": None, "detail": f"unreadable: {exc}"}
    finally:
        store.close()
    if data is None:
        return {
            "status": "missing",
            "data": None,
            "detail": f"pack file not found under {base} (ref {ref})",
        }
    return {"status": "available", "data": data, "detail": "verified against source_data_hash"}


def _token_sections(
    records: LineageRecords, start: list[str], by_token: bool
) -> list[dict[str, Any]]:
    relation = _relations(records, start, by_token)
    children: dict[str, list[str]] = {}
    parents: dict[str, list[Record]] = {}
    for link in records.family.parent_links:
        children.setdefault(link["parent_token_id"], []).append(link["token_id"])
        parents.setdefault(link["token_id"], []).append(link)
    states = _group(records.node_states)
    routing = _group(records.routing_events)
    outcomes = _group(records.token_outcomes)
    errors = _group(records.transform_errors)
    batches = _batch_entries(records)
    row_index = {row_id: row["row_index"] for row_id, row in records.rows.items()}
    all_tokens = {**records.outside_parents, **records.family.tokens}
    sections = []
    for token_id in sorted(records.family.tokens):
        token = records.family.tokens[token_id]
        token_outcomes = [_outcome(o, records) for o in outcomes.get(token_id, [])]
        sections.append(
            {
                "token_id": token_id,
                "relation": relation[token_id],
                "row_id": token["row_id"],
                "row_index": row_index.get(token["row_id"]),
                "branch_name": token["branch_name"],
                "fork_group_id": token["fork_group_id"],
                "join_group_id": token["join_group_id"],
                "expand_group_id": token["expand_group_id"],
                "step_index": token["step_index"],
                "parents": [
                    {
                        "token_id": link["parent_token_id"],
                        "row_id": all_tokens.get(link["parent_token_id"], {}).get("row_id"),
                        "ordinal": link["ordinal"],
                        "in_family": link["parent_token_id"] in records.family.tokens,
                    }
                    for link in parents.get(token_id, [])
                ],
                "children": sorted(children.get(token_id, [])),
                "node_states": [_state(s, records) for s in states.get(token_id, [])],
                "routing": [_routing(r, records) for r in routing.get(token_id, [])],
                "batches": batches.get(token_id, []),
                "outcomes": token_outcomes,
                "terminal_outcome": next((o for o in token_outcomes if o["is_terminal"]), None),
                "transform_errors": [
                    _transform_error(e, records) for e in errors.get(token_id, [])
                ],
            }
        )
    return sections


def _relations(records: LineageRecords, start: list[str], by_token: bool) -> dict[str, str]:
    """How each token relates to what was asked: focus/row, ancestor or descendant."""
    down: dict[str, list[str]] = {}
    up: dict[str, list[str]] = {}
    for link in records.family.parent_links:
        down.setdefault(link["parent_token_id"], []).append(link["token_id"])
        up.setdefault(link["token_id"], []).append(link["parent_token_id"])
    relation = {token_id: ("focus" if by_token else "row") for token_id in start}
    for kind, edges in (("descendant", down), ("ancestor", up)):
        frontier = list(start)
        while frontier:
            nxt = []
            for token_id in frontier:
                for other in edges.get(token_id, []):
                    if other in records.family.tokens and other not in relation:
                        relation[other] = kind
                        nxt.append(other)
            frontier = nxt
    for token_id in records.family.tokens:
        relation.setdefault(token_id, "related")
    return relation


def _group(records: Iterable[Record]) -> dict[str, list[Record]]:
    grouped: dict[str, list[Record]] = {}
    for record in records:
        grouped.setdefault(record["token_id"], []).append(record)
    return grouped


def _node(records: LineageRecords, node_id: str) -> dict[str, Any]:
    node = records.nodes.get(node_id, {})
    return {
        "node_id": node_id,
        "name": node.get("name"),
        "node_type": node.get("node_type"),
        "plugin_name": node.get("plugin_name"),
        "plugin_version": node.get("plugin_version"),
    }


def _state(state: Record, records: LineageRecords) -> dict[str, Any]:
    return {
        "state_id": state["state_id"],
        "node": _node(records, state["node_id"]),
        "step_index": state["step_index"],
        "attempt": state["attempt"],
        "status": state["status"],
        "input_hash": state["input_hash"],
        "output_hash": state["output_hash"],
        "duration_ms": round(float(state["duration_ms"]), 3),
        "error": _loads(state["error_json"]),
    }


def _routing(event: Record, records: LineageRecords) -> dict[str, Any]:
    reason = _loads(event["reason_json"]) or {}
    return {
        "node": _node(records, event["node_id"]),
        "state_id": event["state_id"],
        "condition": reason.get("condition"),
        "result": reason.get("result"),
        "edge_label": event["edge_label"],
        "destination": event["destination"],
        "mode": event["mode"],
    }


def _batch_entries(records: LineageRecords) -> dict[str, list[dict[str, Any]]]:
    retried_by: dict[str, list[str]] = {}
    for batch in records.batches.values():
        if batch["retry_of_batch_id"]:
            retried_by.setdefault(batch["retry_of_batch_id"], []).append(batch["batch_id"])
    entries: dict[str, list[dict[str, Any]]] = {}
    for role, links in (("member", records.batch_memberships), ("output", records.batch_outputs)):
        for link in links:
            found = records.batches.get(link["batch_id"])
            if found is None:
                continue
            batch = found
            entries.setdefault(link["token_id"], []).append(
                {
                    "batch_id": batch["batch_id"],
                    "role": role,
                    "ordinal": link["ordinal"],
                    "aggregation_name": batch["aggregation_name"],
                    "aggregation_node_id": batch["aggregation_node_id"],
                    "status": batch["status"],
                    "attempt": batch["attempt"],
                    "trigger_type": batch["trigger_type"],
                    "trigger_reason": batch["trigger_reason"],
                    "retry_of_batch_id": batch["retry_of_batch_id"],
                    "retried_by": sorted(retried_by.get(batch["batch_id"], [])),
                    "members": records.batch_sizes.get(batch["batch_id"], 0),
                    "error": batch["error"],
                    "created_at": batch["created_at"],
                    "completed_at": batch["completed_at"],
                }
            )
    for items in entries.values():
        items.sort(key=lambda e: (e["role"] != "member", e["attempt"], e["created_at"]))
    return entries


def _outcome(outcome: Record, records: LineageRecords) -> dict[str, Any]:
    artifact = records.artifacts.get(outcome["sink_name"]) if outcome["sink_name"] else None
    return {
        "outcome": outcome["outcome"],
        "is_terminal": bool(outcome["is_terminal"]),
        "sink_name": outcome["sink_name"],
        "sink_line": outcome["sink_line"],
        "batch_id": outcome["batch_id"],
        "fork_group_id": outcome["fork_group_id"],
        "join_group_id": outcome["join_group_id"],
        "expand_group_id": outcome["expand_group_id"],
        "reason": outcome["reason"],
        "error_hash": outcome["error_hash"],
        "recorded_at": outcome["recorded_at"],
        "artifact": _artifact(artifact) if artifact else None,
    }


def _artifact(artifact: Record) -> dict[str, Any]:
    return {
        "path_or_uri": artifact["path_or_uri"],
        "content_hash": artifact["content_hash"],
        "size_bytes": artifact["size_bytes"],
        "rows_written": artifact["rows_written"],
        "updated_at": artifact["updated_at"],
    }


def _transform_error(error: Record, records: LineageRecords) -> dict[str, Any]:
    return {
        "node": _node(records, error["node_id"]),
        "error": _loads(error["error_json"]),
        "destination": error["destination"],
        "row_hash": error["row_hash"],
        "created_at": error["created_at"],
    }


def _source_rows(records: LineageRecords) -> list[dict[str, Any]]:
    return [
        {
            "row_id": row["row_id"],
            "row_index": row["row_index"],
            "source_data_hash": row["source_data_hash"],
            "payload_purged": row["source_data_ref"] is None,
        }
        for row in sorted(records.rows.values(), key=lambda r: r["row_index"])
    ]


def _outputs(records: LineageRecords) -> list[dict[str, Any]]:
    """Where the family ended up: one entry per terminal outcome that names a sink."""
    found = []
    for outcome in records.token_outcomes:
        if outcome["is_terminal"] and outcome["sink_name"]:
            artifact = records.artifacts.get(outcome["sink_name"])
            found.append(
                {
                    "token_id": outcome["token_id"],
                    "outcome": outcome["outcome"],
                    "sink_name": outcome["sink_name"],
                    "sink_line": outcome["sink_line"],
                    "path_or_uri": artifact["path_or_uri"] if artifact else None,
                    "content_hash": artifact["content_hash"] if artifact else None,
                }
            )
    return sorted(found, key=lambda o: (o["sink_name"], o["sink_line"] or 0))


# ---------------------------------------------------------------------- helpers
def attempt_at(attempts: list[Record], when: datetime | None) -> int | None:
    """The run attempt (1 = the run, 2+ = resumes) that was running at ``when``.

    Attempts of one run never overlap (the lease), so it is the last one started at or before.
    """
    if when is None:
        return None
    found = None
    for attempt in attempts:
        if attempt["started_at"] <= when:
            found = attempt["attempt"]
    return found


def _recorded_payload_path(run: Record) -> str | None:
    try:
        settings = json.loads(run["settings_json"])
    except (TypeError, ValueError):
        return None
    store = settings.get("payload_store") if isinstance(settings, dict) else None
    path = store.get("base_path") if isinstance(store, dict) else None
    return str(path) if path else None


def _loads(text: str | None) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text
