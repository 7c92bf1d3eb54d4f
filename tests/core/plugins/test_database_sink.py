"""The ``database`` sink: table creation, append/replace, and exactly-once publication.

Runs against real SQLite target databases. "Crashes" are simulated as the engine sees them: rows
flushed to the target (durable) whose publication the landscape never recorded; ``restore`` with
the last recorded publication must cut them away.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from elspeth_core.errors import ConfigError, SinkError
from elspeth_core.plugins.database_sink import LEDGER_TABLE, DatabaseSink
from elspeth_core.plugins.protocols import Publication
from elspeth_core.plugins.registry import PluginRegistry


def _sink(db: Path, table: str = "orders", if_exists: str = "append") -> DatabaseSink:
    return DatabaseSink({"url": f"sqlite:///{db}", "table": table, "if_exists": if_exists})


def _rows(db: Path, table: str = "orders") -> list[tuple]:
    with sqlite3.connect(db) as conn:
        return conn.execute(
            f"SELECT * FROM {table} ORDER BY _elspeth_run_id, _elspeth_seq"
        ).fetchall()


def _ledger(db: Path) -> list[tuple]:
    with sqlite3.connect(db) as conn:
        return conn.execute(
            f"SELECT run_id, table_name, rows_committed FROM {LEDGER_TABLE} ORDER BY run_id"
        ).fetchall()


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


def test_table_is_created_from_the_first_row_with_typed_columns(tmp_path: Path) -> None:
    db = tmp_path / "target" / "out.db"  # the directory is created
    sink = _sink(db)
    sink.restore(None, run_id="r1")
    sink.write([{"id": 1, "amount": 2.5, "ok": True, "name": "é", "tags": ["a", {"b": 1}]}])
    sink.write([{"name": "second", "id": 2}])  # fields in any order; missing ones are NULL
    with sqlite3.connect(db) as conn:  # nothing before flush, not even the table
        assert conn.execute("SELECT name FROM sqlite_master WHERE name = 'orders'").fetchall() == []
    publication = sink.flush()
    assert publication.rows == 2
    assert publication.uri == f"sqlite:///{db}#orders"
    assert _rows(db) == [
        (1, 2.5, 1, "é", '["a",{"b":1}]', "r1", 1),
        (2, None, None, "second", None, "r1", 2),
    ]
    with sqlite3.connect(db) as conn:
        columns = [(c[1], c[2]) for c in conn.execute("PRAGMA table_info(orders)")]
    assert columns == [
        ("id", "BIGINT"),
        ("amount", "FLOAT"),
        ("ok", "BOOLEAN"),
        ("name", "TEXT"),
        ("tags", "TEXT"),
        ("_elspeth_run_id", "VARCHAR(64)"),
        ("_elspeth_seq", "BIGINT"),
    ]
    assert _ledger(db) == [("r1", "orders", 2)]
    assert sink.finish().rows == 2
    sink.close()


def test_restore_deletes_rows_published_after_the_recorded_publication(tmp_path: Path) -> None:
    db = tmp_path / "out.db"
    sink = _sink(db)
    sink.restore(None, run_id="r1")
    sink.write([{"id": i} for i in range(3)])
    recorded = _round_trip(sink.flush())  # the landscape commits this one...
    sink.write([{"id": i} for i in range(3, 7)])
    sink.flush()  # ...but the process dies before recording this one
    sink.close()
    assert len(_rows(db)) == 7

    resumed = _sink(db)
    resumed.restore(recorded, run_id="r1")
    assert [r[0] for r in _rows(db)] == [0, 1, 2]
    assert _ledger(db) == [("r1", "orders", 3)]
    resumed.write([{"id": i} for i in range(3, 7)])
    final = resumed.finish()
    assert final.rows == 7
    assert [(r[0], r[2]) for r in _rows(db)] == [(i, i + 1) for i in range(7)]
    resumed.close()


def test_rows_of_other_runs_are_kept_in_append_mode(tmp_path: Path) -> None:
    db = tmp_path / "out.db"
    first = _sink(db)
    first.restore(None, run_id="r1")
    first.write([{"id": 1}])
    first.finish()
    first.close()
    second = _sink(db)
    second.restore(None, run_id="r2")
    second.write([{"id": 2}, {"id": 3}])
    recorded = second.flush()
    second.write([{"id": 4}])
    second.flush()
    second.close()
    again = _sink(db)
    again.restore(recorded, run_id="r2")  # cuts r2 back, never touches r1
    again.close()
    assert [(r[0], r[1]) for r in _rows(db)] == [(1, "r1"), (2, "r2"), (3, "r2")]
    assert _ledger(db) == [("r1", "orders", 1), ("r2", "orders", 2)]


def test_replace_drops_the_table_when_a_run_starts(tmp_path: Path) -> None:
    db = tmp_path / "out.db"
    old = _sink(db, if_exists="replace")
    old.restore(None, run_id="r1")
    old.write([{"id": 1, "old_column": "x"}])
    old.finish()
    old.close()
    new = _sink(db, if_exists="replace")
    new.restore(None, run_id="r2")
    new.write([{"id": 2, "name": "fresh"}])
    new.finish()
    new.close()
    assert _rows(db) == [(2, "fresh", "r2", 1)]


def test_restoring_more_rows_than_the_table_holds_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "out.db"
    sink = _sink(db)
    sink.restore(None, run_id="r1")
    sink.write([{"id": 1}, {"id": 2}])
    recorded = sink.flush()
    sink.close()
    with sqlite3.connect(db) as conn:
        conn.execute("DELETE FROM orders WHERE id = 2")
    with pytest.raises(SinkError, match="holds 1 rows of run r1, but the audit trail says 2"):
        _sink(db).restore(recorded, run_id="r1")


def test_a_publication_for_another_table_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "out.db"
    sink = _sink(db, table="a")
    sink.restore(None, run_id="r1")
    recorded = sink.flush()
    sink.close()
    with pytest.raises(SinkError, match="publication is for"):
        _sink(db, table="b").restore(recorded, run_id="r1")


def test_an_existing_table_without_the_hidden_columns_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "out.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE orders (id INTEGER)")
    with pytest.raises(SinkError, match="_elspeth_run_id, _elspeth_seq"):
        _sink(db).restore(None, run_id="r1")


def test_unknown_fields_and_non_finite_numbers_are_refused(tmp_path: Path) -> None:
    sink = _sink(tmp_path / "out.db")
    sink.restore(None, run_id="r1")
    sink.write([{"id": 1}])
    sink.flush()
    sink.write([{"id": 2, "extra": True}])
    with pytest.raises(SinkError, match="field 'extra' that is not a column"):
        sink.flush()
    with pytest.raises(SinkError, match="nan"):
        sink.write([{"id": float("nan")}])
    sink.close()


def test_writing_before_restore_or_after_finish_is_refused(tmp_path: Path) -> None:
    sink = _sink(tmp_path / "out.db")
    with pytest.raises(SinkError, match="call restore"):
        sink.write([{"id": 1}])
    sink.restore(None, run_id="r1")
    sink.finish()
    with pytest.raises(SinkError, match="already finished"):
        sink.write([{"id": 1}])
    sink.close()


def test_content_hash_covers_this_runs_rows_in_order(tmp_path: Path) -> None:
    hashes = []
    for name, order in (("a.db", [1, 2, 3]), ("b.db", [1, 2, 3]), ("c.db", [3, 2, 1])):
        sink = _sink(tmp_path / name)
        sink.restore(None, run_id="r1")
        sink.write([{"id": i} for i in order])
        sink.finish()
        hashes.append(sink.content_hash())
        sink.close()
    assert hashes[0] == hashes[1] != hashes[2]
    assert hashes[0] is not None and len(hashes[0]) == 64


def test_options_are_validated() -> None:
    with pytest.raises(ConfigError, match="if_exists"):
        DatabaseSink({"url": "sqlite://", "table": "t", "if_exists": "fail"})
    with pytest.raises(ConfigError, match="not a database URL"):
        DatabaseSink({"url": "no url at all", "table": "t"})
