"""The ``database`` sink: table creation, append/replace, and exactly-once publication.

Every test writes into a real target database of both kinds: a SQLite file, and a fresh database
on the throwaway PostgreSQL server. "Crashes" are simulated as the engine sees them: rows flushed
to the target (durable) whose publication the landscape never recorded; ``restore`` with the last
recorded publication must cut them away. (Real SIGKILLs of a run writing to a database sink, on
both backends, are in ``tests/recovery/test_aggregation_crash_suite.py``.)
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect

from elspeth_core.errors import ConfigError, SinkError
from elspeth_core.plugins.database_sink import LEDGER_TABLE, DatabaseSink
from elspeth_core.plugins.protocols import Publication
from elspeth_core.plugins.registry import PluginRegistry
from tests.support.cli import url_execute, url_query
from tests.support.landscape_fixtures import Landscapes


@pytest.fixture
def target(landscapes: Landscapes, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    """The URL of an empty target database: ``tmp_path/target/out.db`` (its folder not yet
    made: the sink makes it), or a fresh PostgreSQL database."""
    if landscapes.backend == "sqlite":
        return f"sqlite:///{tmp_path / 'target' / 'out.db'}"
    return landscapes.new(tmp_path, request=request)


def _sink(url: str, table: str = "orders", if_exists: str = "append") -> DatabaseSink:
    return DatabaseSink({"url": url, "table": table, "if_exists": if_exists})


def _rows(url: str, table: str = "orders") -> list[tuple]:
    return url_query(url, f"SELECT * FROM {table} ORDER BY _elspeth_run_id, _elspeth_seq")


def _ledger(url: str) -> list[tuple]:
    return url_query(
        url, f"SELECT run_id, table_name, rows_committed FROM {LEDGER_TABLE} ORDER BY run_id"
    )


def _has_table(url: str, table: str) -> bool:
    engine = create_engine(url)
    try:
        return inspect(engine).has_table(table)
    finally:
        engine.dispose()


def _column_types(url: str, table: str) -> list[tuple[str, str]]:
    """(name, declared type) of each column in order, as the database itself reports them."""
    if url.startswith("sqlite"):
        return [(c[1], c[2]) for c in url_query(url, f"PRAGMA table_info({table})")]
    return url_query(
        url,
        """SELECT column_name, data_type FROM information_schema.columns
           WHERE table_name = :t ORDER BY ordinal_position""",
        t=table,
    )


def _round_trip(publication: Publication) -> Publication:
    data = json.loads(
        json.dumps(
            {
                "uri": publication.uri,
                "rows": publication.rows,
                "size_bytes": publication.size_bytes,
                "state": publication.state,
            }
        )
    )
    return Publication(data["uri"], data["rows"], data["size_bytes"], data["state"])


def test_registered_as_the_database_sink() -> None:
    assert PluginRegistry.builtin(entry_points=False).get("sink", "database") is DatabaseSink


SQLITE_TYPES = ["BIGINT", "FLOAT", "BOOLEAN", "TEXT", "TEXT", "VARCHAR(64)", "BIGINT"]
POSTGRES_TYPES = [
    "bigint",
    "double precision",
    "boolean",
    "text",
    "text",
    "character varying",
    "bigint",
]


def test_table_is_created_from_the_first_row_with_typed_columns(target: str) -> None:
    sink = _sink(target)
    sink.restore(None, run_id="r1")
    sink.write([{"id": 1, "amount": 2.5, "ok": True, "name": "é", "tags": ["a", {"b": 1}]}])
    sink.write([{"name": "second", "id": 2}])  # fields in any order; missing ones are NULL
    assert not _has_table(target, "orders")  # nothing before flush, not even the table
    publication = sink.flush()
    assert publication.rows == 2
    assert publication.uri == f"{target}#orders"
    assert _rows(target) == [
        (1, 2.5, True, "é", '["a",{"b":1}]', "r1", 1),
        (2, None, None, "second", None, "r1", 2),
    ]
    types = SQLITE_TYPES if target.startswith("sqlite") else POSTGRES_TYPES
    names = ["id", "amount", "ok", "name", "tags", "_elspeth_run_id", "_elspeth_seq"]
    assert _column_types(target, "orders") == list(zip(names, types, strict=True))
    assert _ledger(target) == [("r1", "orders", 2)]
    assert sink.finish().rows == 2
    sink.close()


def test_restore_deletes_rows_published_after_the_recorded_publication(target: str) -> None:
    sink = _sink(target)
    sink.restore(None, run_id="r1")
    sink.write([{"id": i} for i in range(3)])
    recorded = _round_trip(sink.flush())  # the landscape commits this one...
    sink.write([{"id": i} for i in range(3, 7)])
    sink.flush()  # ...but the process dies before recording this one
    sink.close()
    assert len(_rows(target)) == 7
    assert _ledger(target) == [("r1", "orders", 7)]

    resumed = _sink(target)
    resumed.restore(recorded, run_id="r1")
    assert [r[0] for r in _rows(target)] == [0, 1, 2]
    assert _ledger(target) == [("r1", "orders", 3)]
    resumed.write([{"id": i} for i in range(3, 7)])
    final = resumed.finish()
    assert final.rows == 7
    assert [(r[0], r[2]) for r in _rows(target)] == [(i, i + 1) for i in range(7)]
    assert _ledger(target) == [("r1", "orders", 7)]
    resumed.close()


def test_a_flush_the_database_refuses_changes_neither_rows_nor_ledger(target: str) -> None:
    # A stale writer of the same run (it restored before the other published) collides with
    # the rows already there on the primary key: its whole flush, ledger included, rolls back.
    stale = _sink(target)
    stale.restore(None, run_id="r1")
    live = _sink(target)
    live.restore(None, run_id="r1")
    live.write([{"id": 1}, {"id": 2}])
    live.flush()
    stale.write([{"id": 10}, {"id": 20}, {"id": 30}])
    with pytest.raises(SinkError, match="cannot write to"):
        stale.flush()
    assert [(r[0], r[2]) for r in _rows(target)] == [(1, 1), (2, 2)]
    assert _ledger(target) == [("r1", "orders", 2)]
    live.write([{"id": 3}])
    assert live.finish().rows == 3
    assert _ledger(target) == [("r1", "orders", 3)]
    stale.close()
    live.close()


def test_rows_of_other_runs_are_kept_in_append_mode(target: str) -> None:
    first = _sink(target)
    first.restore(None, run_id="r1")
    first.write([{"id": 1}])
    first.finish()
    first.close()
    second = _sink(target)
    second.restore(None, run_id="r2")
    second.write([{"id": 2}, {"id": 3}])
    recorded = second.flush()
    second.write([{"id": 4}])
    second.flush()
    second.close()
    again = _sink(target)
    again.restore(recorded, run_id="r2")  # cuts r2 back, never touches r1
    again.close()
    assert [(r[0], r[1]) for r in _rows(target)] == [(1, "r1"), (2, "r2"), (3, "r2")]
    assert _ledger(target) == [("r1", "orders", 1), ("r2", "orders", 2)]


def test_replace_drops_the_table_when_a_run_starts(target: str) -> None:
    old = _sink(target, if_exists="replace")
    old.restore(None, run_id="r1")
    old.write([{"id": 1, "old_column": "x"}])
    old.finish()
    old.close()
    new = _sink(target, if_exists="replace")
    new.restore(None, run_id="r2")
    new.write([{"id": 2, "name": "fresh"}])
    new.finish()
    new.close()
    assert _rows(target) == [(2, "fresh", "r2", 1)]


def test_resuming_a_replace_run_keeps_its_published_rows(target: str) -> None:
    # replace drops the table only when a run starts (no publication yet), never on resume.
    sink = _sink(target, if_exists="replace")
    sink.restore(None, run_id="r1")
    sink.write([{"id": 1}, {"id": 2}])
    recorded = sink.flush()
    sink.write([{"id": 3}])
    sink.flush()
    sink.close()
    resumed = _sink(target, if_exists="replace")
    resumed.restore(recorded, run_id="r1")
    resumed.write([{"id": 3}])
    assert resumed.finish().rows == 3
    resumed.close()
    assert [(r[0], r[2]) for r in _rows(target)] == [(1, 1), (2, 2), (3, 3)]


def test_restoring_more_rows_than_the_table_holds_is_refused(target: str) -> None:
    sink = _sink(target)
    sink.restore(None, run_id="r1")
    sink.write([{"id": 1}, {"id": 2}])
    recorded = sink.flush()
    sink.close()
    url_execute(target, "DELETE FROM orders WHERE id = 2")
    with pytest.raises(SinkError, match="holds 1 rows of run r1, but the audit trail says 2"):
        _sink(target).restore(recorded, run_id="r1")


def test_a_publication_for_another_table_is_refused(target: str) -> None:
    sink = _sink(target, table="a")
    sink.restore(None, run_id="r1")
    recorded = sink.flush()
    sink.close()
    with pytest.raises(SinkError, match="publication is for"):
        _sink(target, table="b").restore(recorded, run_id="r1")


def test_an_existing_table_without_the_hidden_columns_is_refused(target: str) -> None:
    if target.startswith("sqlite"):
        Path(target.removeprefix("sqlite:///")).parent.mkdir(parents=True)
    url_execute(target, "CREATE TABLE orders (id INTEGER)")
    with pytest.raises(SinkError, match="_elspeth_run_id, _elspeth_seq"):
        _sink(target).restore(None, run_id="r1")


def test_unknown_fields_and_non_finite_numbers_are_refused(target: str) -> None:
    sink = _sink(target)
    sink.restore(None, run_id="r1")
    sink.write([{"id": 1}])
    sink.flush()
    sink.write([{"id": 2, "extra": True}])
    with pytest.raises(SinkError, match="field 'extra' that is not a column"):
        sink.flush()
    with pytest.raises(SinkError, match="nan"):
        sink.write([{"id": float("nan")}])
    sink.close()
    assert _rows(target) == [(1, "r1", 1)]
    assert _ledger(target) == [("r1", "orders", 1)]


def test_a_fraction_for_an_integer_column_is_refused_never_rounded(target: str) -> None:
    # PostgreSQL would cast 99.5 to the BIGINT column typed from the first row's 100 and store
    # 100: a row different from the one the audit trail hashed. A whole float is stored as is.
    sink = _sink(target)
    sink.restore(None, run_id="r1")
    sink.write([{"id": 1, "amount": 100}, {"id": 2, "amount": 101.0}])
    sink.flush()
    sink.write([{"id": 3, "amount": 7}, {"id": 4, "amount": 99.5}])
    with pytest.raises(SinkError, match="'amount' is 99.5, but column amount .* holds integers"):
        sink.flush()
    sink.close()
    assert _rows(target) == [(1, 100, "r1", 1), (2, 101, "r1", 2)]
    assert _ledger(target) == [("r1", "orders", 2)]


def test_writing_before_restore_or_after_finish_is_refused(target: str) -> None:
    sink = _sink(target)
    with pytest.raises(SinkError, match="call restore"):
        sink.write([{"id": 1}])
    sink.restore(None, run_id="r1")
    sink.finish()
    with pytest.raises(SinkError, match="already finished"):
        sink.write([{"id": 1}])
    sink.close()


def test_content_hash_covers_this_runs_rows_in_order(target: str) -> None:
    hashes = []
    for table, order in (("a", [1, 2, 3]), ("b", [1, 2, 3]), ("c", [3, 2, 1])):
        sink = _sink(target, table=table)
        sink.restore(None, run_id="r1")
        sink.write([{"id": i, "amount": i / 2, "ok": i > 1, "tags": [i]} for i in order])
        sink.finish()
        hashes.append(sink.content_hash())
        sink.close()
    assert hashes[0] == hashes[1] != hashes[2]
    assert hashes[0] is not None and len(hashes[0]) == 64


@pytest.mark.postgres
def test_content_hash_is_the_same_on_both_kinds_of_target(tmp_path: Path, pg_url: str) -> None:
    # The audit trail's hash of a table's rows must not depend on where the table lives.
    hashes = []
    for url in (f"sqlite:///{tmp_path / 'out.db'}", pg_url):
        sink = _sink(url)
        sink.restore(None, run_id="r1")
        sink.write(
            [{"id": i, "amount": i / 3, "ok": i > 1, "tags": [i], "n": "é"} for i in range(9)]
        )
        sink.finish()
        hashes.append(sink.content_hash())
        sink.close()
    assert hashes[0] is not None and hashes[0] == hashes[1]


def test_options_are_validated() -> None:
    with pytest.raises(ConfigError, match="if_exists"):
        DatabaseSink({"url": "sqlite://", "table": "t", "if_exists": "fail"})
    with pytest.raises(ConfigError, match="not a database URL"):
        DatabaseSink({"url": "no url at all", "table": "t"})
