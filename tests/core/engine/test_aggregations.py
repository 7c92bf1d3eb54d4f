"""Aggregations through the real ``elspeth run`` / ``elspeth resume``: output modes, triggers,
chained aggregations, failed batches and their retries, and what the landscape records.

Expected outputs are computed here from the input file, independently of the engine.
"""

from __future__ import annotations

import math
from pathlib import Path

from tests.support.cli import query
from tests.support.pipelines import (
    assert_every_token_terminal_once,
    assert_sinks_match_outcomes,
    make_csv,
    only_run,
    outcome_counts,
    pipeline,
    plugin_site,
    python_path,
    read_csv,
    resume,
    run_pipeline,
)


def _stats_agg(count: int | None = None, mode: str = "single", **trigger: object) -> dict:
    return {
        "name": "stats",
        "plugin": "batch_stats",
        "trigger": {**({"count": count} if count else {}), **trigger},
        "output_mode": mode,
        "options": {"value_field": "amount", "group_by": "status"},
    }


def _chunks(items: list, size: int) -> list[list]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def _assert_stats(row: dict[str, str], members: list[dict[str, str]]) -> None:
    values = [float(m["amount"]) for m in members]
    assert int(row["count"]) == len(members)
    assert int(row["batch_size"]) == len(members)
    assert float(row["sum"]) == math.fsum(values)
    assert float(row["mean"]) == math.fsum(values) / len(values)
    assert row["status"] == members[0]["status"]


def _batches(db: Path | str, run_id: str) -> list[tuple]:
    return query(
        db,
        f"""SELECT b.status, b.attempt, b.trigger_type, count(m.token_id)
                         FROM batches b JOIN batch_members m ON m.batch_id = b.batch_id
                         WHERE b.run_id = '{run_id}' GROUP BY b.batch_id
                         ORDER BY b.created_at, b.batch_id""",
    )


def test_single_mode_emits_one_row_per_batch_with_lineage(
    tmp_path: Path, landscape_url: str
) -> None:
    source = make_csv(tmp_path / "in.csv", 10)
    result = run_pipeline(
        tmp_path, pipeline(tmp_path, source, landscape=landscape_url, aggregations=[_stats_agg(4)])
    )
    assert result.code == 0, result.stderr
    rows = read_csv(tmp_path / "out" / "out.csv")
    members = _chunks(read_csv(source), 4)
    assert len(rows) == 3
    for row, batch in zip(rows, members, strict=True):
        _assert_stats(row, batch)

    db, run_id = landscape_url, only_run(landscape_url)
    assert _batches(db, run_id) == [
        ("completed", 1, "count", 4),
        ("completed", 1, "count", 4),
        ("completed", 1, "end_of_source", 2),
    ]
    assert outcome_counts(db, run_id) == {"consumed_in_batch": 10, "completed": 3}
    assert_every_token_terminal_once(db, run_id)
    # Each output token's parents are its batch's members, in ordinal order.
    lineage = query(
        db,
        f"""SELECT o.batch_id, o.token_id, p.parent_token_id, p.ordinal,
                                   m.token_id, m.ordinal
                            FROM batch_outputs o
                            JOIN token_parents p ON p.token_id = o.token_id
                            JOIN batch_members m ON m.batch_id = o.batch_id
                                                 AND m.ordinal = p.ordinal
                            JOIN batches b ON b.batch_id = o.batch_id
                            WHERE b.run_id = '{run_id}'""",
    )
    assert len(lineage) == 10
    assert all(parent == member for _b, _t, parent, _o, member, _mo in lineage)


def test_transform_mode_replicates_members_as_new_tokens(
    tmp_path: Path, landscape_url: str
) -> None:
    source = make_csv(tmp_path / "in.csv", 12)
    agg = {
        "name": "copies",
        "plugin": "batch_replicate",
        "trigger": {"count": 5},
        "output_mode": "transform",
        "options": {"copies_field": "copies", "include_copy_index": True},
    }
    result = run_pipeline(
        tmp_path, pipeline(tmp_path, source, landscape=landscape_url, aggregations=[agg])
    )
    assert result.code == 0, result.stderr
    expected = [(row["id"], str(i)) for row in read_csv(source) for i in range(int(row["copies"]))]
    rows = read_csv(tmp_path / "out" / "out.csv")
    assert [(r["id"], r["copy_index"]) for r in rows] == expected

    db, run_id = landscape_url, only_run(landscape_url)
    assert outcome_counts(db, run_id) == {"consumed_in_batch": 12, "completed": len(expected)}
    assert query(db, f"SELECT count(*) FROM tokens WHERE run_id = '{run_id}'") == [
        (12 + len(expected),)
    ]
    assert_every_token_terminal_once(db, run_id)


def test_passthrough_mode_enriches_the_same_tokens(tmp_path: Path, landscape_url: str) -> None:
    source = make_csv(tmp_path / "in.csv", 7)
    result = run_pipeline(
        tmp_path,
        pipeline(
            tmp_path, source, landscape=landscape_url, aggregations=[_stats_agg(3, "passthrough")]
        ),
    )
    assert result.code == 0, result.stderr
    rows = read_csv(tmp_path / "out" / "out.csv")
    source_rows = read_csv(source)
    assert [r["id"] for r in rows] == [r["id"] for r in source_rows]
    for batch_out, batch_in in zip(_chunks(rows, 3), _chunks(source_rows, 3), strict=True):
        total = math.fsum(float(m["amount"]) for m in batch_in)
        assert {float(r["batch_sum"]) for r in batch_out} == {total}
        assert {int(r["batch_count"]) for r in batch_out} == {len(batch_in)}

    db, run_id = landscape_url, only_run(landscape_url)
    assert query(db, f"SELECT count(*) FROM tokens WHERE run_id = '{run_id}'") == [(7,)]
    assert outcome_counts(db, run_id) == {"completed": 7}
    assert query(
        db,
        f"""SELECT count(*) FROM token_outcomes WHERE run_id = '{run_id}'
                         AND outcome = 'buffered' AND NOT is_terminal""",
    ) == [(7,)]
    assert_every_token_terminal_once(db, run_id)


def test_condition_trigger_over_row_and_batch_count(tmp_path: Path, landscape_url: str) -> None:
    source = make_csv(tmp_path / "in.csv", 40)
    agg = _stats_agg(condition="row['status'] == 'flagged' or batch_count >= 6")
    result = run_pipeline(
        tmp_path, pipeline(tmp_path, source, landscape=landscape_url, aggregations=[agg])
    )
    assert result.code == 0, result.stderr
    expected, current = [], []
    for row in read_csv(source):
        current.append(row)
        if row["status"] == "flagged" or len(current) >= 6:
            expected.append(current)
            current = []
    if current:
        expected.append(current)
    rows = read_csv(tmp_path / "out" / "out.csv")
    assert len(rows) == len(expected)
    for row, batch in zip(rows, expected, strict=True):
        _assert_stats(row, batch)
    triggers = [t for _s, _a, t, _n in _batches(landscape_url, only_run(landscape_url))]
    assert set(triggers[:-1]) == {"condition"}


def test_chained_aggregations_feed_each_other_in_order(tmp_path: Path, landscape_url: str) -> None:
    """A transform-mode batch's outputs fill the next aggregation, whose count trigger fires while
    the first batch's outputs are still being driven (the nested batch runs after it)."""
    source = make_csv(tmp_path / "in.csv", 50)
    replicate = {
        "name": "copies",
        "plugin": "batch_replicate",
        "trigger": {"count": 3},
        "output_mode": "transform",
        "options": {"copies_field": "copies"},
    }
    result = run_pipeline(
        tmp_path,
        pipeline(
            tmp_path, source, landscape=landscape_url, aggregations=[replicate, _stats_agg(4)]
        ),
    )
    assert result.code == 0, result.stderr
    replicated = [row for row in read_csv(source) for _ in range(int(row["copies"]))]
    expected = _chunks(replicated, 4)
    rows = read_csv(tmp_path / "out" / "out.csv")
    assert len(rows) == len(expected)
    for row, batch in zip(rows, expected, strict=True):
        _assert_stats(row, batch)
    db, run_id = landscape_url, only_run(landscape_url)
    assert_every_token_terminal_once(db, run_id)
    assert query(
        db,
        f"""SELECT count(*) FROM batches WHERE run_id = '{run_id}'
                         AND status != 'completed'""",
    ) == [(0,)]


def test_aggregation_outputs_pass_gates_to_their_sinks(tmp_path: Path, landscape_url: str) -> None:
    source = make_csv(tmp_path / "in.csv", 60)
    gate = {
        "name": "big",
        "condition": "row['sum'] >= 2000",
        "routes": {"true": "big", "false": "continue"},
    }
    sinks = {
        "out": {"plugin": "csv", "options": {"path": str(tmp_path / "out" / "out.csv")}},
        "big": {"plugin": "csv", "options": {"path": str(tmp_path / "out" / "big.csv")}},
    }
    data = pipeline(
        tmp_path,
        source,
        landscape=landscape_url,
        aggregations=[_stats_agg(5)],
        gates=[gate],
        sinks=sinks,
    )
    assert run_pipeline(tmp_path, data).code == 0
    sums = [math.fsum(float(m["amount"]) for m in b) for b in _chunks(read_csv(source), 5)]
    big = read_csv(tmp_path / "out" / "big.csv")
    small = read_csv(tmp_path / "out" / "out.csv")
    assert [float(r["sum"]) for r in big] == [s for s in sums if s >= 2000]
    assert [float(r["sum"]) for r in small] == [s for s in sums if s < 2000]
    db, run_id = landscape_url, only_run(landscape_url)
    assert_sinks_match_outcomes(db, run_id, {"big": len(big), "out": len(small)})


FAULTY_AGGREGATIONS = '''
from pathlib import Path
from elspeth_core.errors import PluginError
from elspeth_core.plugins import PluginConfig


class DropLastOptions(PluginConfig):
    pass


class DropLast:
    """Breaks the passthrough contract: one output fewer than members."""
    name = "drop_last"
    version = "0.1"
    config_model = DropLastOptions

    def __init__(self, options=None):
        pass

    def aggregate(self, rows, output_mode):
        return [dict(r) for r in rows[:-1]]


class FlagOptions(PluginConfig):
    flag: str


class NeedsFlag:
    """Sums ``amount``; raises until the file ``flag`` exists (a problem fixed between runs)."""
    name = "needs_flag"
    version = "0.1"
    config_model = FlagOptions

    def __init__(self, options=None):
        self.flag = Path(FlagOptions.model_validate(options or {}).flag)

    def aggregate(self, rows, output_mode):
        if not self.flag.exists():
            raise PluginError("the reference data is not there yet")
        return [{"first_id": rows[0]["id"], "members": len(rows)}]
'''


def _faulty_site(tmp_path: Path) -> dict[str, str]:
    site = plugin_site(
        tmp_path,
        "faulty_aggs",
        FAULTY_AGGREGATIONS,
        {"drop_last": "DropLast", "needs_flag": "NeedsFlag"},
    )
    return python_path(site)


def test_passthrough_count_mismatch_fails_the_batch_and_its_members(
    tmp_path: Path, landscape_url: str
) -> None:
    env = _faulty_site(tmp_path)
    source = make_csv(tmp_path / "in.csv", 10)
    agg = {
        "name": "broken",
        "plugin": "drop_last",
        "trigger": {"count": 4},
        "output_mode": "passthrough",
    }
    result = run_pipeline(
        tmp_path, pipeline(tmp_path, source, landscape=landscape_url, aggregations=[agg]), env=env
    )
    assert result.code == 2, result.stderr
    db, run_id = landscape_url, only_run(landscape_url)
    assert query(db, f"SELECT status FROM runs WHERE run_id = '{run_id}'") == [("failed",)]
    errors = query(db, f"SELECT status, error FROM batches WHERE run_id = '{run_id}'")
    assert len(errors) == 3
    assert all(status == "failed" and "one output per member" in error for status, error in errors)
    # No token is left buffered: every member ends failed, naming its batch.
    assert outcome_counts(db, run_id) == {"failed": 10}
    assert query(
        db,
        f"""SELECT count(*) FROM token_outcomes WHERE run_id = '{run_id}'
                         AND is_terminal AND batch_id IS NULL""",
    ) == [(0,)]
    assert_every_token_terminal_once(db, run_id)
    assert read_csv(tmp_path / "out" / "out.csv") == []

    # Resuming cannot emit those members again: the failure is final, nothing is duplicated.
    again = resume(tmp_path, run_id, env=env, landscape=landscape_url)
    assert again.code == 2, again.stderr
    assert query(db, f"SELECT count(*) FROM batches WHERE run_id = '{run_id}'") == [(3,)]
    assert outcome_counts(db, run_id) == {"failed": 10}


def test_a_failed_batch_is_retried_on_resume_as_attempt_two(
    tmp_path: Path, landscape_url: str
) -> None:
    env = _faulty_site(tmp_path)
    source = make_csv(tmp_path / "in.csv", 9)
    flag = tmp_path / "flag"
    agg = {
        "name": "guarded",
        "plugin": "needs_flag",
        "trigger": {"count": 4},
        "output_mode": "single",
        "options": {"flag": str(flag)},
    }
    first = run_pipeline(
        tmp_path, pipeline(tmp_path, source, landscape=landscape_url, aggregations=[agg]), env=env
    )
    assert first.code == 2, first.stderr
    db, run_id = landscape_url, only_run(landscape_url)
    assert _batches(db, run_id) == [
        ("failed", 1, "count", 4),
        ("failed", 1, "count", 4),
        ("failed", 1, "end_of_source", 1),
    ]

    flag.write_text("ready")
    second = resume(tmp_path, run_id, env=env, landscape=landscape_url)
    assert second.code == 0, second.stderr
    rows = read_csv(tmp_path / "out" / "out.csv")
    assert [(r["first_id"], r["members"]) for r in rows] == [("0", "4"), ("4", "4"), ("8", "1")]
    retried = query(
        db,
        f"""SELECT o.batch_id, o.attempt, o.status, r.batch_id, r.attempt, r.status
                            FROM batches o JOIN batches r ON r.retry_of_batch_id = o.batch_id
                            WHERE o.run_id = '{run_id}' ORDER BY o.created_at""",
    )
    members = {batch: [] for batch in {row[0] for row in retried} | {row[3] for row in retried}}
    for batch, token, ordinal in query(
        db,
        f"""SELECT m.batch_id, m.token_id, m.ordinal FROM batch_members m
            JOIN batches b ON b.batch_id = m.batch_id WHERE b.run_id = '{run_id}'
            ORDER BY m.batch_id, m.ordinal""",
    ):
        if batch in members:
            members[batch].append((token, ordinal))
    assert len(retried) == 3
    for batch, attempt, status, retry_batch, retry_attempt, retry_status in retried:
        assert (attempt, status, retry_attempt, retry_status) == (1, "failed", 2, "completed")
        assert members[batch] and members[batch] == members[retry_batch]
    assert_every_token_terminal_once(db, run_id)
