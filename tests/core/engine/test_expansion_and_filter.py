"""``json_explode`` expansions and ``keyword_filter`` routing through the real CLI."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.support.cli import query
from tests.support.pipelines import (
    assert_every_token_terminal_once,
    assert_sinks_match_outcomes,
    csv_sink,
    jsonl_sink,
    make_csv,
    make_jsonl,
    only_run,
    outcome_counts,
    pipeline,
    read_csv,
    read_jsonl,
    run_pipeline,
)

EXPLODE = {
    "plugin": "json_explode",
    "options": {"array_field": "items", "output_field": "item", "include_index": True},
    "on_error": "bad",
}


def _orders(tmp_path: Path, rows: int) -> tuple[Path, list[dict]]:
    source = make_jsonl(tmp_path / "orders.jsonl", rows)
    with source.open("a", encoding="utf-8") as handle:
        handle.write(
            json.dumps({"id": rows, "amount": 1.5, "status": "ok", "items": "oops"}) + "\n"
        )
    return source, read_jsonl(source)


def test_json_explode_makes_one_token_per_element(tmp_path: Path, landscape_url: str) -> None:
    source, records = _orders(tmp_path, 30)
    sinks = {"out": jsonl_sink(tmp_path, "out"), "bad": jsonl_sink(tmp_path, "bad")}
    result = run_pipeline(
        tmp_path,
        pipeline(tmp_path, source, landscape=landscape_url, row_plugins=[EXPLODE], sinks=sinks),
    )
    assert result.code == 0, result.stderr
    expected = [
        {**{k: v for k, v in r.items() if k != "items"}, "item": item, "item_index": i}
        for r in records[:-1]
        for i, item in enumerate(r["items"])
    ]
    assert read_jsonl(tmp_path / "out" / "out.jsonl") == expected
    assert read_jsonl(tmp_path / "out" / "bad.jsonl") == [records[-1]]

    db, run_id = landscape_url, only_run(landscape_url)
    assert outcome_counts(db, run_id) == {"expanded": 30, "completed": len(expected), "routed": 1}
    # Each child names its parent and shares the parent's expand group.
    linked = query(
        db,
        f"""SELECT count(*) FROM tokens c
                           JOIN token_parents p ON p.token_id = c.token_id
                           JOIN token_outcomes o ON o.token_id = p.parent_token_id
                                AND o.outcome = 'expanded'
                           WHERE c.run_id = '{run_id}'
                           AND c.expand_group_id = o.expand_group_id""",
    )
    assert linked == [(len(expected),)]
    assert query(db, f"SELECT destination FROM transform_errors WHERE run_id = '{run_id}'") == [
        ("bad",)
    ]
    assert_every_token_terminal_once(db, run_id)
    assert_sinks_match_outcomes(db, run_id, {"out": len(expected), "bad": 1})


def test_expanded_tokens_feed_an_aggregation(tmp_path: Path, landscape_url: str) -> None:
    source, records = _orders(tmp_path, 25)
    agg = {
        "name": "per5",
        "plugin": "batch_stats",
        "trigger": {"count": 5},
        "output_mode": "single",
        "options": {"value_field": "amount"},
    }
    sinks = {"out": csv_sink(tmp_path, "out"), "bad": jsonl_sink(tmp_path, "bad")}
    data = pipeline(
        tmp_path,
        source,
        landscape=landscape_url,
        row_plugins=[EXPLODE],
        aggregations=[agg],
        sinks=sinks,
    )
    assert run_pipeline(tmp_path, data).code == 0
    children = [r["amount"] for r in records[:-1] for _ in r["items"]]
    sizes = [int(r["batch_size"]) for r in read_csv(tmp_path / "out" / "out.csv")]
    assert sizes == [len(children[i : i + 5]) for i in range(0, len(children), 5)]
    assert_every_token_terminal_once(landscape_url, only_run(landscape_url))


def _keyword_rows(source: Path) -> tuple[list[dict], list[dict]]:
    rows = read_csv(source)
    pattern = re.compile("secret|urgent", re.IGNORECASE)
    matched = [r for r in rows if pattern.search(r["note"])]
    return matched, [r for r in rows if r not in matched]


def _filter(on_error: str | None) -> dict:
    plugin: dict = {
        "plugin": "keyword_filter",
        "options": {"keywords": ["Secret", "URGENT"], "fields": ["note"]},
    }
    if on_error is not None:
        plugin["on_error"] = on_error
    return plugin


def test_keyword_filter_routes_matches_to_on_error(tmp_path: Path, landscape_url: str) -> None:
    source = make_csv(tmp_path / "in.csv", 80)
    sinks = {"out": csv_sink(tmp_path, "out"), "flagged": csv_sink(tmp_path, "flagged")}
    data = pipeline(
        tmp_path,
        source,
        landscape=landscape_url,
        fields=[],
        row_plugins=[_filter("flagged")],
        sinks=sinks,
    )
    assert run_pipeline(tmp_path, data).code == 0
    matched, clean = _keyword_rows(source)
    assert matched and clean
    assert read_csv(tmp_path / "out" / "flagged.csv") == matched
    assert read_csv(tmp_path / "out" / "out.csv") == clean
    db, run_id = landscape_url, only_run(landscape_url)
    assert outcome_counts(db, run_id) == {"routed": len(matched), "completed": len(clean)}
    reasons = query(db, f"SELECT error_json FROM transform_errors WHERE run_id = '{run_id}'")
    assert len(reasons) == len(matched)
    assert all("matched keyword" in r[0] and "'note'" in r[0] for r in reasons)


@pytest.mark.parametrize(
    ("on_error", "outcome", "exit_code"), [("discard", "quarantined", 0), (None, "failed", 2)]
)
def test_keyword_filter_without_a_sink_discards_or_fails_rows(
    tmp_path: Path, landscape_url: str, on_error: str | None, outcome: str, exit_code: int
) -> None:
    source = make_csv(tmp_path / "in.csv", 60)
    data = pipeline(
        tmp_path, source, landscape=landscape_url, fields=[], row_plugins=[_filter(on_error)]
    )
    assert run_pipeline(tmp_path, data).code == exit_code
    matched, clean = _keyword_rows(source)
    assert read_csv(tmp_path / "out" / "out.csv") == clean
    db, run_id = landscape_url, only_run(landscape_url)
    assert outcome_counts(db, run_id) == {outcome: len(matched), "completed": len(clean)}
    assert_every_token_terminal_once(db, run_id)
