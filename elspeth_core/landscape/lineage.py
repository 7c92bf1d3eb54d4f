"""Lineage reads for ``elspeth explain``: one row's or one token's records, by index only.

Key contracts:
- Every query here is an index lookup on a key of the landscape (``rows.row_id``,
  ``tokens.row_id``, ``token_parents`` both ways, ``*.token_id``, the sink-line index), never a
  scan of a run: explaining a row costs the same on a 10-row run and on a 10-million-row run. The
  indexes that make it so are declared in ``schema.py`` with an ``explain:`` comment.
- The token family is walked breadth-first through ``token_parents`` (forks, joins, expansions,
  batch outputs) and is bounded by ``max_tokens``; a walk that hits the bound says so.
- Nothing here writes, reads payloads or shapes output: ``elspeth_core.explain`` does that.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, and_, func, select

from elspeth_core.landscape import schema as t
from elspeth_core.landscape.database import LandscapeDB
from elspeth_core.landscape.records import Record

# Bound for IN (...) lists: far below every backend's parameter limit.
_IN_CHUNK = 500
DEFAULT_MAX_TOKENS = 1_000


@dataclass
class TokenFamily:
    """The tokens related to a starting set, with the parent links between them."""

    tokens: dict[str, Record] = field(default_factory=dict)
    parent_links: list[Record] = field(default_factory=list)
    truncated: bool = False


@dataclass
class LineageRecords:
    """Everything the landscape holds about a token family (plain records, by table)."""

    family: TokenFamily
    outside_parents: dict[str, Record]
    rows: dict[str, Record]
    nodes: dict[str, Record]
    node_states: list[Record]
    routing_events: list[Record]
    token_outcomes: list[Record]
    batch_memberships: list[Record]
    batch_outputs: list[Record]
    batches: dict[str, Record]
    batch_sizes: dict[str, int]
    validation_errors: list[Record]
    transform_errors: list[Record]
    artifacts: dict[str, Record]


class LineageQueries:
    """Index-only reads of one run's lineage.

    Inside ``snapshot()`` every query uses one connection and one read transaction, so a document
    built from several queries sees one consistent state even while a run is committing.
    """

    def __init__(self, db: LandscapeDB) -> None:
        self.db = db
        self._conn: Connection | None = None

    @contextmanager
    def snapshot(self) -> Iterator[LineageQueries]:
        """Run the queries made inside the block on one connection (one read transaction)."""
        with self.db.connect() as conn:
            self._conn = conn
            try:
                yield self
            finally:
                self._conn = None

    @contextmanager
    def _connect(self) -> Iterator[Connection]:
        if self._conn is not None:
            yield self._conn
            return
        with self.db.connect() as conn:
            yield conn

    # ------------------------------------------------------------------ entry points
    def run(self, run_id: str) -> Record | None:
        with self._connect() as conn:
            found = conn.execute(select(t.runs).where(t.runs.c.run_id == run_id)).mappings()
            row = found.first()
            return dict(row) if row else None

    def latest_run_id(self) -> str | None:
        with self._connect() as conn:
            return conn.execute(
                select(t.runs.c.run_id)
                .order_by(t.runs.c.started_at.desc(), t.runs.c.run_id.desc())
                .limit(1)
            ).scalar()

    def attempts(self, run_id: str) -> list[Record]:
        with self._connect() as conn:
            found = conn.execute(
                select(t.run_attempts)
                .where(t.run_attempts.c.run_id == run_id)
                .order_by(t.run_attempts.c.attempt)
            ).mappings()
            return [dict(r) for r in found]

    def row(self, row_id: str) -> Record | None:
        with self._connect() as conn:
            found = conn.execute(select(t.rows).where(t.rows.c.row_id == row_id)).mappings()
            row = found.first()
            return dict(row) if row else None

    def token(self, token_id: str) -> Record | None:
        with self._connect() as conn:
            found = conn.execute(select(t.tokens).where(t.tokens.c.token_id == token_id)).mappings()
            row = found.first()
            return dict(row) if row else None

    def outcome_at_sink_line(self, run_id: str, sink_name: str, line: int) -> Record | None:
        """The terminal outcome that wrote data line ``line`` (1-based) of a sink's output."""
        with self._connect() as conn:
            found = conn.execute(
                select(t.token_outcomes).where(
                    and_(
                        t.token_outcomes.c.run_id == run_id,
                        t.token_outcomes.c.sink_name == sink_name,
                        t.token_outcomes.c.sink_line == line,
                        t.token_outcomes.c.is_terminal,
                    )
                )
            ).mappings()
            row = found.first()
            return dict(row) if row else None

    def sink_line_count(self, run_id: str, sink_name: str) -> int:
        """The highest data line recorded for a sink (for 'line N of M' messages)."""
        with self._connect() as conn:
            found = conn.execute(
                select(func.max(t.token_outcomes.c.sink_line)).where(
                    and_(
                        t.token_outcomes.c.run_id == run_id,
                        t.token_outcomes.c.sink_name == sink_name,
                    )
                )
            ).scalar()
            return int(found or 0)

    def row_ids_at(self, run_id: str, indexes: Sequence[int]) -> dict[int, str]:
        """row_index -> row_id for the given source positions of a run."""
        found: dict[int, str] = {}
        with self._connect() as conn:
            for start in range(0, len(indexes), _IN_CHUNK):
                chunk = list(indexes[start : start + _IN_CHUNK])
                rows = conn.execute(
                    select(t.rows.c.row_index, t.rows.c.row_id).where(
                        and_(t.rows.c.run_id == run_id, t.rows.c.row_index.in_(chunk))
                    )
                ).all()
                found.update({int(index): str(row_id) for index, row_id in rows})
        return found

    def token_ids_of_row(self, row_id: str) -> list[str]:
        with self._connect() as conn:
            found = conn.execute(
                select(t.tokens.c.token_id)
                .where(t.tokens.c.row_id == row_id)
                .order_by(t.tokens.c.token_id)
            ).scalars()
            return [str(token_id) for token_id in found]

    # ------------------------------------------------------------------ the family walk
    def family(
        self,
        start: Sequence[str],
        *,
        ancestors: bool,
        max_tokens: int = DEFAULT_MAX_TOKENS,
    ) -> TokenFamily:
        """The tokens reachable from ``start``: always descendants, ancestors when asked.

        Args:
            start: token IDs to start from (a row's tokens, or one token).
            ancestors: also walk up to parents (for a token or an output line: where it came from).
            max_tokens: stop walking once this many tokens are known (``truncated`` is then set).
        """
        family = TokenFamily()
        with self._connect() as conn:
            known: set[str] = set(start)
            frontier = list(start)
            links: dict[tuple[str, str], Record] = {}
            while frontier and not family.truncated:
                children = _select_in(
                    conn, t.token_parents, t.token_parents.c.parent_token_id, frontier
                )
                frontier = []
                for link in children:
                    links[(link["token_id"], link["parent_token_id"])] = link
                    if link["token_id"] not in known:
                        if len(known) >= max_tokens:
                            family.truncated = True
                            break
                        known.add(link["token_id"])
                        frontier.append(link["token_id"])
            frontier = list(known) if ancestors else []
            while frontier and not family.truncated:
                parents = _select_in(conn, t.token_parents, t.token_parents.c.token_id, frontier)
                frontier = []
                for link in parents:
                    links[(link["token_id"], link["parent_token_id"])] = link
                    if link["parent_token_id"] not in known:
                        if len(known) >= max_tokens:
                            family.truncated = True
                            break
                        known.add(link["parent_token_id"])
                        frontier.append(link["parent_token_id"])
            # Links to and from tokens outside the family (batch members of other rows, the
            # unjoined sibling of a fork) are kept so that every token's parents and children
            # are listed in full, even those that were not walked.
            for column in (t.token_parents.c.token_id, t.token_parents.c.parent_token_id):
                for link in _select_in(conn, t.token_parents, column, list(known)):
                    links[(link["token_id"], link["parent_token_id"])] = link
            for token in _select_in(conn, t.tokens, t.tokens.c.token_id, list(known)):
                family.tokens[token["token_id"]] = token
        family.parent_links = sorted(
            links.values(), key=lambda r: (r["token_id"], r["ordinal"], r["parent_token_id"])
        )
        return family

    # ------------------------------------------------------------------ the records
    def records(self, run_id: str, family: TokenFamily, row_ids: Iterable[str]) -> LineageRecords:
        """Every record of the family's tokens and rows (all index lookups)."""
        token_ids = list(family.tokens)
        with self._connect() as conn:
            outside = {
                link["parent_token_id"]
                for link in family.parent_links
                if link["parent_token_id"] not in family.tokens
            }
            parents_outside = _select_in(conn, t.tokens, t.tokens.c.token_id, sorted(outside))
            wanted_rows = set(row_ids) | {tok["row_id"] for tok in family.tokens.values()}
            wanted_rows |= {tok["row_id"] for tok in parents_outside}
            rows = {r["row_id"]: r for r in _select_in(conn, t.rows, t.rows.c.row_id, wanted_rows)}
            nodes = {
                n["node_id"]: n
                for n in _mappings(conn, select(t.nodes).where(t.nodes.c.run_id == run_id))
            }
            states = _select_in(conn, t.node_states, t.node_states.c.token_id, token_ids)
            routing = _select_in(conn, t.routing_events, t.routing_events.c.token_id, token_ids)
            outcomes = _select_in(conn, t.token_outcomes, t.token_outcomes.c.token_id, token_ids)
            members = _select_in(conn, t.batch_members, t.batch_members.c.token_id, token_ids)
            outputs = _select_in(conn, t.batch_outputs, t.batch_outputs.c.token_id, token_ids)
            batch_ids = {m["batch_id"] for m in members} | {o["batch_id"] for o in outputs}
            batch_ids |= {o["batch_id"] for o in outcomes if o["batch_id"]}
            batches = self._batches_with_retries(conn, batch_ids)
            sizes = _member_counts(conn, list(batches))
            validation = _select_in(
                conn, t.validation_errors, t.validation_errors.c.row_id, list(rows)
            )
            transform = _select_in(
                conn, t.transform_errors, t.transform_errors.c.token_id, token_ids
            )
            sinks = {o["sink_name"] for o in outcomes if o["sink_name"]}
            artifacts = {
                a["sink_name"]: a
                for a in _mappings(
                    conn,
                    select(t.artifacts).where(
                        and_(t.artifacts.c.run_id == run_id, t.artifacts.c.sink_name.in_(sinks))
                    ),
                )
            }
        return LineageRecords(
            family=family,
            outside_parents={tok["token_id"]: tok for tok in parents_outside},
            rows=rows,
            nodes=nodes,
            node_states=sorted(
                states, key=lambda s: (s["token_id"], s["step_index"], s["attempt"])
            ),
            routing_events=sorted(routing, key=lambda r: (r["token_id"], r["event_id"])),
            token_outcomes=sorted(outcomes, key=lambda o: (o["token_id"], o["is_terminal"])),
            batch_memberships=members,
            batch_outputs=outputs,
            batches=batches,
            batch_sizes=sizes,
            validation_errors=sorted(validation, key=lambda v: (v["created_at"], v["error_id"])),
            transform_errors=sorted(transform, key=lambda e: (e["created_at"], e["error_id"])),
            artifacts=artifacts,
        )

    @staticmethod
    def _batches_with_retries(conn: Connection, batch_ids: set[str]) -> dict[str, Record]:
        """The batches, plus every attempt linked to them through ``retry_of_batch_id``."""
        batches: dict[str, Record] = {}
        queried: set[str] = set()
        pending = set(batch_ids)
        while pending:
            queried |= pending
            found = _select_in(conn, t.batches, t.batches.c.batch_id, pending)
            found += _select_in(conn, t.batches, t.batches.c.retry_of_batch_id, pending)
            for batch in found:
                batches[batch["batch_id"]] = batch
            linked = {b["batch_id"] for b in found}
            linked |= {b["retry_of_batch_id"] for b in found if b["retry_of_batch_id"]}
            pending = linked - queried
        return batches


def _chunks(values: Sequence[str]) -> Iterator[Sequence[str]]:
    for start in range(0, len(values), _IN_CHUNK):
        yield values[start : start + _IN_CHUNK]


def _select_in(conn: Connection, table: Any, column: Any, values: Iterable[str]) -> list[Record]:
    found: list[Record] = []
    ordered = sorted(set(values))
    for chunk in _chunks(ordered):
        found.extend(_mappings(conn, select(table).where(column.in_(chunk))))
    return found


def _mappings(conn: Connection, query: Any) -> list[Record]:
    return [dict(r) for r in conn.execute(query).mappings()]


def _member_counts(conn: Connection, batch_ids: list[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for chunk in _chunks(sorted(batch_ids)):
        found = conn.execute(
            select(t.batch_members.c.batch_id, func.count())
            .where(t.batch_members.c.batch_id.in_(chunk))
            .group_by(t.batch_members.c.batch_id)
        ).all()
        counts.update({str(batch_id): int(n) for batch_id, n in found})
    return counts
