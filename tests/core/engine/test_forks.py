"""Forks and coalesces through the real CLI: policies, merges, branch sinks, late arrivals, and
joins still pending when the process is killed."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from tests.support.cli import query
from tests.support.landscape_fixtures import Landscapes
from tests.support.pipelines import (
    assert_every_token_terminal_once,
    csv_sink,
    jsonl_sink,
    make_csv,
    only_run,
    outcome_counts,
    outputs,
    pipeline,
    read_csv,
    read_jsonl,
    resume,
    run_pipeline,
)

ROWS = 40


def _fork_gate(branches: list[str]) -> dict:
    return {
        "name": "split",
        "condition": "row['amount'] >= 500",
        "routes": {"true": "fork", "false": "continue"},
        "fork_to": branches,
    }


def _join(branches: list[str], **options: object) -> dict:
    return {"name": "join", "branches": branches, **options}


def _run(
    tmp_path: Path,
    landscape: str,
    gates: list[dict],
    coalesce: list[dict],
    sinks: dict | None = None,
) -> tuple[str, str, list[dict[str, str]]]:
    source = make_csv(tmp_path / "in.csv", ROWS)
    data = pipeline(
        tmp_path,
        source,
        landscape=landscape,
        gates=gates,
        coalesce=coalesce,
        sinks=sinks or {"out": jsonl_sink(tmp_path, "out")},
    )
    result = run_pipeline(tmp_path, data)
    assert result.code == 0, result.stderr
    db, run_id = landscape, only_run(landscape)
    assert_every_token_terminal_once(db, run_id)
    return db, run_id, read_csv(source)


def _typed(row: dict[str, str]) -> dict:
    return {
        "id": int(row["id"]),
        "amount": float(row["amount"]),
        "status": row["status"],
        "copies": int(row["copies"]),
        "note": row["note"],
    }


def _merged_parents(db: str, run_id: str) -> list[list[str]]:
    """For each merged token (in creation order): its parents' branches, by parent ordinal."""
    found = query(
        db,
        f"""SELECT m.token_id, c.branch_name FROM tokens m
                          JOIN token_parents p ON p.token_id = m.token_id
                          JOIN tokens c ON c.token_id = p.parent_token_id
                          WHERE m.run_id = '{run_id}' AND m.join_group_id IS NOT NULL
                          ORDER BY m.token_id, p.ordinal""",
    )
    merged: dict[str, list[str]] = {}
    for token, branch in found:
        merged.setdefault(token, []).append(branch)
    return list(merged.values())


def test_require_all_union_merges_every_forked_row_once(tmp_path: Path, landscape_url: str) -> None:
    db, run_id, source = _run(
        tmp_path, landscape_url, [_fork_gate(["a", "b"])], [_join(["a", "b"])]
    )
    big = [r for r in source if float(r["amount"]) >= 500]
    rows = read_jsonl(tmp_path / "out" / "out.jsonl")
    # Unforked rows go straight on; merged rows (identical branch copies) follow source order.
    assert rows == [_typed(r) for r in source]
    assert outcome_counts(db, run_id) == {
        "completed": ROWS,
        "forked": len(big),
        "coalesced": 2 * len(big),
    }
    assert _merged_parents(db, run_id) == [["a", "b"]] * len(big)
    assert query(
        db,
        f"""SELECT count(*) FROM routing_events WHERE run_id = '{run_id}'
                         AND destination = 'fork' AND mode = 'copy'""",
    ) == [(len(big),)]


def test_nested_merge_keys_rows_by_branch(tmp_path: Path, landscape_url: str) -> None:
    _db, _run_id, source = _run(
        tmp_path,
        landscape_url,
        [_fork_gate(["left", "right"])],
        [_join(["left", "right"], merge="nested")],
    )
    rows = read_jsonl(tmp_path / "out" / "out.jsonl")
    expected = [
        {"left": _typed(r), "right": _typed(r)} if float(r["amount"]) >= 500 else _typed(r)
        for r in source
    ]
    assert rows == expected


def test_select_merge_keeps_the_selected_branch(tmp_path: Path, landscape_url: str) -> None:
    db, run_id, source = _run(
        tmp_path,
        landscape_url,
        [_fork_gate(["a", "b"])],
        [_join(["a", "b"], merge="select", select_branch="b")],
    )
    assert read_jsonl(tmp_path / "out" / "out.jsonl") == [_typed(r) for r in source]
    assert _merged_parents(db, run_id)[0] == ["a", "b"]


@pytest.mark.parametrize(
    ("options", "merged_from", "late"),
    [
        ({"policy": "quorum", "quorum_count": 2}, ["a", "b"], 1),
        ({"policy": "first"}, ["a"], 2),
        ({"policy": "best_effort", "timeout_seconds": 30}, ["a", "b", "c"], 0),
        ({"policy": "require_all"}, ["a", "b", "c"], 0),
    ],
)
def test_policies_decide_which_branches_merge_and_late_ones_never_merge_twice(
    tmp_path: Path, landscape_url: str, options: dict, merged_from: list[str], late: int
) -> None:
    db, run_id, source = _run(
        tmp_path, landscape_url, [_fork_gate(["a", "b", "c"])], [_join(["a", "b", "c"], **options)]
    )
    big = sum(1 for r in source if float(r["amount"]) >= 500)
    assert _merged_parents(db, run_id) == [merged_from] * big
    assert query(
        db,
        f"""SELECT count(*) FROM token_outcomes WHERE run_id = '{run_id}'
                         AND outcome = 'coalesced' AND reason LIKE 'late arrival%'""",
    ) == [(late * big,)]
    assert outcome_counts(db, run_id)["completed"] == ROWS
    assert len(read_jsonl(tmp_path / "out" / "out.jsonl")) == ROWS


def test_a_branch_without_a_coalesce_goes_to_the_sink_of_its_name(
    tmp_path: Path, landscape_url: str
) -> None:
    sinks = {"out": csv_sink(tmp_path, "out"), "audit": csv_sink(tmp_path, "audit")}
    db, run_id, source = _run(
        tmp_path, landscape_url, [_fork_gate(["a", "b", "audit"])], [_join(["a", "b"])], sinks
    )
    big = [r for r in source if float(r["amount"]) >= 500]
    assert [_typed(r) for r in read_csv(tmp_path / "out" / "audit.csv")] == [_typed(r) for r in big]
    assert [_typed(r) for r in read_csv(tmp_path / "out" / "out.csv")] == [
        _typed(r) for r in source
    ]
    assert query(
        db,
        f"""SELECT outcome, count(*) FROM token_outcomes WHERE run_id = '{run_id}'
                         AND sink_name = 'audit' GROUP BY outcome""",
    ) == [("routed", len(big))]


def _split_join_pipeline(work: Path, source: Path, landscape: str) -> dict:
    """Even rows fork to 'a' (waits at the coalesce) and 'side'; no row ever reaches 'b', so every
    join stays pending until the end of the source, where best_effort merges 'a' alone."""
    gates = [
        {
            "name": "even",
            "condition": "row['id'] % 2 == 0",
            "routes": {"true": "fork", "false": "continue"},
            "fork_to": ["a", "side"],
        },
        {
            "name": "never",
            "condition": "row['id'] < 0",
            "routes": {"true": "fork", "false": "continue"},
            "fork_to": ["b"],
        },
    ]
    coalesce = [_join(["a", "b"], policy="best_effort", timeout_seconds=60)]
    sinks = {"out": csv_sink(work, "out"), "side": jsonl_sink(work, "side")}
    return pipeline(
        work,
        source,
        landscape=landscape,
        gates=gates,
        coalesce=coalesce,
        sinks=sinks,
        interval=50,
    )


def test_pending_joins_survive_a_crash_and_are_not_re_driven(
    tmp_path: Path, landscapes: Landscapes, request: pytest.FixtureRequest
) -> None:
    source = make_csv(tmp_path / "in.csv", 600)
    reference = tmp_path / "reference"
    reference.mkdir()
    ref_db = landscapes.new(reference, request=request)
    assert run_pipeline(reference, _split_join_pipeline(reference, source, ref_db)).code == 0
    ref_run = only_run(ref_db)
    ref_tokens = query(ref_db, "SELECT count(*) FROM tokens")

    work = tmp_path / "crashed"
    work.mkdir()
    db = landscapes.new(work, request=request)
    crashed = run_pipeline(
        work, _split_join_pipeline(work, source, db), env={"ELSPETH_FAULT_INJECT": "after_commit:6"}
    )
    assert crashed.code == -signal.SIGKILL
    run_id = only_run(db)
    (state,) = query(
        db, f"SELECT aggregation_state_json FROM checkpoints WHERE run_id = '{run_id}'"
    )
    assert '"joins": {"join:' in state[0]  # joins were pending when the process died
    held = query(
        db,
        f"""SELECT count(*) FROM tokens t WHERE t.run_id = '{run_id}'
                         AND t.branch_name = 'a' AND NOT EXISTS (SELECT 1 FROM token_outcomes o
                         WHERE o.token_id = t.token_id AND o.is_terminal)""",
    )[0][0]
    assert held > 0
    assert resume(work, run_id, landscape=db).code == 0

    assert outputs(work) == outputs(reference)
    assert query(db, "SELECT count(*) FROM tokens") == ref_tokens
    assert_every_token_terminal_once(db, run_id)
    assert outcome_counts(db, run_id) == outcome_counts(ref_db, ref_run)
