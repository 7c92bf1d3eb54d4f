"""Uniqueness rules of the landscape, through the recorder, on SQLite and PostgreSQL.

At most one terminal outcome per token — SPEC §3, "enforced by a unique index". The index
(``uq_token_outcomes_terminal``) covers only rows with ``is_terminal``, so a token may collect any
number of non-terminal outcomes (``buffered``, once per passthrough aggregation). A second terminal
outcome written through the recorder must surface as the project's ``LandscapeError`` (one line,
naming the run) and roll the whole chunk back.

One recorded row per source position: ``row_index`` is unique per run
(``uq_rows_run_id_row_index``) and ``row_id`` is the primary key. Rows are identified by their
position in the source (resume compares the source with the recorded rows position by position),
so these two rules are why a run can never hold two rows of the same identity.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.exc import IntegrityError

from elspeth_core.errors import LandscapeError
from elspeth_core.landscape import LandscapeDB, LandscapeQueries, LandscapeRecorder
from elspeth_core.landscape.recorder import utcnow
from elspeth_core.landscape.records import ChunkRecords
from tests.support.cli import url_query

RUN = "run-terminal-index"
OWNER = "test-host:1:1:owner"
SOURCE = "source-source-0123456789ab"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def landscape_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'audit.db'}"
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture
def recorder(landscape_url: str) -> Iterator[LandscapeRecorder]:
    db = LandscapeDB(landscape_url)
    recorder = LandscapeRecorder(db)
    recorder.begin_run(
        {
            "run_id": RUN,
            "config_hash": "c" * 64,
            "topology_hash": "t" * 64,
            "settings_json": "{}",
            "canonical_version": "sha256-rfc8785-v1",
        },
        [
            {
                "run_id": RUN,
                "node_id": SOURCE,
                "node_type": "source",
                "name": "source",
                "plugin_name": "csv",
                "plugin_version": "1.0.0",
                "config_hash": "n" * 64,
                "config_json": "{}",
                "sequence": 0,
            }
        ],
        [],
        lease_owner=OWNER,
        lease_seconds=300,
        checkpoint=None,
    )
    yield recorder
    db.close()


def _row_and_token(index: int) -> tuple[dict[str, Any], dict[str, Any]]:
    row_id, token_id = f"row-{index}", f"tok-{index}"
    row = {
        "row_id": row_id,
        "run_id": RUN,
        "source_node_id": SOURCE,
        "row_index": index,
        "source_data_hash": "h" * 64,
        "source_data_ref": None,
        "created_at": utcnow(),
    }
    token = {"token_id": token_id, "row_id": row_id, "run_id": RUN, "step_index": 0}
    return row, token


def _outcome(outcome_id: str, token_id: str, outcome: str, terminal: bool) -> dict[str, Any]:
    return {
        "outcome_id": outcome_id,
        "run_id": RUN,
        "token_id": token_id,
        "outcome": outcome,
        "is_terminal": terminal,
        "sink_name": "out" if outcome == "completed" else None,
        "recorded_at": utcnow(),
    }


def _commit(recorder: LandscapeRecorder, records: ChunkRecords) -> None:
    recorder.commit_chunk(RUN, records, owner=OWNER, lease_seconds=300)


def _outcomes(url: str, token_id: str) -> list[tuple[str, bool]]:
    found = url_query(
        url,
        "SELECT outcome, is_terminal FROM token_outcomes WHERE token_id = :t ORDER BY outcome",
        t=token_id,
    )
    return [(outcome, bool(terminal)) for outcome, terminal in found]


def test_a_second_terminal_outcome_is_refused_with_the_projects_error(
    recorder: LandscapeRecorder, landscape_url: str
) -> None:
    row, token = _row_and_token(0)
    _commit(
        recorder,
        ChunkRecords(
            rows=[row],
            tokens=[token],
            token_outcomes=[_outcome("tok-0-t", "tok-0", "completed", True)],
        ),
    )
    # A later chunk that also carries innocent records: all of it must be rolled back.
    other_row, other_token = _row_and_token(1)
    late = ChunkRecords(
        rows=[other_row],
        tokens=[other_token],
        token_outcomes=[
            _outcome("tok-1-t", "tok-1", "completed", True),
            _outcome("tok-0-again", "tok-0", "failed", True),  # another ID: only the index refuses
        ],
        rows_ingested=2,
    )
    with pytest.raises(LandscapeError) as caught:
        _commit(recorder, late)
    error = caught.value
    assert not isinstance(error, IntegrityError)
    assert isinstance(error.__cause__, IntegrityError)  # raised ``from`` the database's refusal
    assert error.context["run_id"] == RUN
    assert f"landscape refused chunk of run {RUN}" in error.message
    assert "\n" not in error.message, error.message  # the CLI prints it as one line
    if landscape_url.startswith("postgresql"):  # names the index, and the key from DETAIL
        assert 'unique constraint "uq_token_outcomes_terminal"' in error.message, error.message
        assert "Key (token_id)=(tok-0) already exists" in error.message, error.message
    else:
        assert "UNIQUE constraint failed: token_outcomes.token_id" in error.message, error.message
    assert error.hint and "invariant" in error.hint
    assert error.exit_code == 2
    assert _outcomes(landscape_url, "tok-0") == [("completed", True)]
    assert _outcomes(landscape_url, "tok-1") == []
    assert url_query(landscape_url, "SELECT count(*) FROM rows") == [(1,)]
    queries = LandscapeQueries(recorder.db)
    assert queries.get_run(RUN)["source_rows_ingested"] == 0  # type: ignore[index]
    assert queries.tokens_per_row_violations(RUN) == 0


def test_two_terminal_outcomes_in_one_chunk_are_refused(
    recorder: LandscapeRecorder, landscape_url: str
) -> None:
    row, token = _row_and_token(0)
    records = ChunkRecords(
        rows=[row],
        tokens=[token],
        token_outcomes=[
            _outcome("a", "tok-0", "routed", True),
            _outcome("b", "tok-0", "completed", True),
        ],
    )
    with pytest.raises(LandscapeError):
        _commit(recorder, records)
    assert url_query(landscape_url, "SELECT count(*) FROM token_outcomes") == [(0,)]
    assert url_query(landscape_url, "SELECT count(*) FROM tokens") == [(0,)]


def test_non_terminal_outcomes_may_repeat_before_and_beside_the_terminal_one(
    recorder: LandscapeRecorder, landscape_url: str
) -> None:
    row, token = _row_and_token(0)
    _commit(
        recorder,
        ChunkRecords(
            rows=[row],
            tokens=[token],
            token_outcomes=[
                _outcome("buffered-1", "tok-0", "buffered", False),
                _outcome("buffered-2", "tok-0", "buffered", False),
            ],
        ),
    )
    queries = LandscapeQueries(recorder.db)
    assert [t["token_id"] for t in queries.nonterminal_tokens(RUN)] == ["tok-0"]
    _commit(
        recorder,
        ChunkRecords(
            token_outcomes=[
                _outcome("buffered-3", "tok-0", "buffered", False),
                _outcome("tok-0-t", "tok-0", "completed", True),
            ]
        ),
    )
    _commit(recorder, ChunkRecords(token_outcomes=[_outcome("late", "tok-0", "buffered", False)]))
    assert _outcomes(landscape_url, "tok-0") == [
        ("buffered", False),
        ("buffered", False),
        ("buffered", False),
        ("buffered", False),
        ("completed", True),
    ]
    assert queries.nonterminal_tokens(RUN) == []
    assert queries.tokens_per_row_violations(RUN) == 0
    assert queries.outcome_counts(RUN) == {"completed": 1}


def test_the_index_is_partial_on_is_terminal(
    landscape_url: str, recorder: LandscapeRecorder
) -> None:
    """The schema really holds the index the SPEC promises (operators rely on its name)."""
    from sqlalchemy import inspect

    indexes = {i["name"]: i for i in inspect(recorder.db.engine).get_indexes("token_outcomes")}
    index = indexes["uq_token_outcomes_terminal"]
    assert index["unique"] and index["column_names"] == ["token_id"]
    if landscape_url.startswith("postgresql"):
        (definition,) = url_query(
            landscape_url,
            "SELECT indexdef FROM pg_indexes WHERE indexname = 'uq_token_outcomes_terminal'",
        )[0]
        assert "WHERE is_terminal" in definition, definition
    else:
        ((sql,),) = url_query(
            landscape_url,
            "SELECT sql FROM sqlite_master WHERE name = 'uq_token_outcomes_terminal'",
        )
        assert "WHERE is_terminal = 1" in sql, sql


# ----------------------------------------------------------------------------------- row identity
def test_a_second_row_at_a_recorded_position_is_refused(
    recorder: LandscapeRecorder, landscape_url: str
) -> None:
    row, token = _row_and_token(0)
    _commit(recorder, ChunkRecords(rows=[row], tokens=[token], rows_ingested=1))
    again, again_token = _row_and_token(1)
    again["row_index"] = 0  # a new row ID at a position already recorded
    with pytest.raises(LandscapeError) as caught:
        _commit(recorder, ChunkRecords(rows=[again], tokens=[again_token], rows_ingested=2))
    assert isinstance(caught.value.__cause__, IntegrityError)
    assert "\n" not in caught.value.message
    assert url_query(landscape_url, "SELECT row_id, row_index FROM rows") == [("row-0", 0)]
    assert url_query(landscape_url, "SELECT source_rows_ingested FROM runs") == [(1,)]


def test_a_row_id_is_recorded_once(recorder: LandscapeRecorder, landscape_url: str) -> None:
    row, token = _row_and_token(0)
    _commit(recorder, ChunkRecords(rows=[row], tokens=[token], rows_ingested=1))
    again = {**row, "row_index": 1}  # the same row ID at the next position
    with pytest.raises(LandscapeError):
        _commit(recorder, ChunkRecords(rows=[again], rows_ingested=2))
    assert url_query(landscape_url, "SELECT row_id, row_index FROM rows") == [("row-0", 0)]


def test_a_large_chunk_is_stored_record_for_record(
    recorder: LandscapeRecorder, landscape_url: str
) -> None:
    """150 records a table: SQLite writes them 64 to a statement plus a remainder of 22."""
    count = 150
    pairs = [_row_and_token(i) for i in range(count)]
    outcomes = [
        _outcome(f"tok-{i}-t", f"tok-{i}", "completed" if i % 3 else "failed", True)
        for i in range(count)
    ]
    _commit(
        recorder,
        ChunkRecords(
            rows=[row for row, _token in pairs],
            tokens=[token for _row, token in pairs],
            token_outcomes=outcomes,
            rows_ingested=count,
        ),
    )
    rows = url_query(
        landscape_url,
        "SELECT row_index, row_id, token_id FROM rows JOIN tokens USING (row_id) "
        "WHERE rows.run_id = :r ORDER BY row_index",
        r=RUN,
    )
    assert rows == [(i, f"row-{i}", f"tok-{i}") for i in range(count)]
    stored = url_query(
        landscape_url,
        "SELECT token_id, outcome, is_terminal, sink_name FROM token_outcomes WHERE run_id = :r",
        r=RUN,
    )
    assert sorted((t, o, bool(term), s) for t, o, term, s in stored) == sorted(
        (o["token_id"], o["outcome"], True, o["sink_name"]) for o in outcomes
    )


def test_a_duplicate_inside_a_large_chunk_rolls_the_whole_chunk_back(
    recorder: LandscapeRecorder, landscape_url: str
) -> None:
    pairs = [_row_and_token(i) for i in range(150)]
    rows = [row for row, _token in pairs]
    rows[100] = {**rows[100], "row_index": 3}  # the second 64-row statement breaks the rule
    with pytest.raises(LandscapeError):
        _commit(recorder, ChunkRecords(rows=rows, rows_ingested=150))
    assert url_query(landscape_url, "SELECT count(*) FROM rows WHERE run_id = :r", r=RUN) == [(0,)]
