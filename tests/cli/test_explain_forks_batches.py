"""``elspeth explain`` on forked/joined and aggregated rows, and on a batch retried after a crash.

There is no fork or aggregation example under ``examples/`` yet and those engine features are
being worked on, so these tests build their own pipelines and are marked ``xfail(strict=False)``:
they report XPASS while the engine produces the lineage they check.
"""

from __future__ import annotations

import csv
import io
import json
import signal
from pathlib import Path
from typing import Any

import pytest

from examples.generate import generate
from tests.support.cli import run_cli, run_ids, write_settings

ROWS = 60
pytestmark = pytest.mark.xfail(
    strict=False,
    reason="forks/coalesce and aggregations are being changed by another engineer and no "
    "examples/ pipeline for them exists yet",
)


def _pipeline(work: Path, **steps: Any) -> dict[str, Any]:
    generate(str(work / "in.csv"), ROWS, seed=8)
    out = work / "out"
    data: dict[str, Any] = {
        "datasource": {
            "plugin": "csv",
            "options": {
                "path": str(work / "in.csv"),
                "schema": {"mode": "free", "fields": ["id: int", "amount: float", "status: str"]},
            },
        },
        "sinks": {"normal": {"plugin": "csv", "options": {"path": str(out / "normal.csv")}}},
        "output_sink": "normal",
        "landscape": {"url": f"sqlite:///{work / 'audit.db'}"},
        "checkpoint": {"enabled": True, "frequency": "every_n", "checkpoint_interval": 10},
        "payload_store": {"base_path": str(work / "payloads")},
    }
    data.update(steps)
    return data


def _run(work: Path, data: dict[str, Any], env: dict[str, str] | None = None) -> tuple[str, int]:
    settings = write_settings(work / "settings.yaml", data)
    result = run_cli("run", "-s", str(settings), "-x", cwd=work, env=env)
    (run_id,) = run_ids(work / "audit.db")
    return run_id, result.code


def _explain(work: Path, *args: str) -> dict[str, Any]:
    result = run_cli("explain", *args, "--json", "-d", f"sqlite:///{work / 'audit.db'}", cwd=work)
    assert result.code == 0, result.stderr
    return json.loads(result.stdout)


def _normal(work: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO((work / "out" / "normal.csv").read_text())))


FORK = {
    "gates": [
        {
            "name": "split",
            "condition": "row['amount'] >= 0",
            "routes": {"true": "fork", "false": "continue"},
            "fork_to": ["a", "b"],
        }
    ],
    "coalesce": [
        {"name": "merge", "branches": ["a", "b"], "policy": "require_all", "merge": "union"}
    ],
}


def test_explain_forked_and_joined_row(tmp_path: Path) -> None:
    run_id, code = _run(tmp_path, _pipeline(tmp_path, **FORK))
    assert code == 0
    doc = _explain(tmp_path, "--run", run_id, "--sink", "normal", "--line", "3")
    tokens = {t["token_id"]: t for t in doc["tokens"]}
    merged = tokens[doc["focus_token_id"]]
    assert merged["terminal_outcome"]["outcome"] == "completed"
    assert merged["terminal_outcome"]["sink_line"] == 3
    assert merged["join_group_id"] is not None
    branches = [tokens[p["token_id"]] for p in merged["parents"]]
    assert sorted(b["branch_name"] for b in branches) == ["a", "b"]
    assert all(b["relation"] == "ancestor" for b in branches)
    assert {b["terminal_outcome"]["outcome"] for b in branches} == {"coalesced"}
    assert len({b["fork_group_id"] for b in branches}) == 1
    (parent_id,) = {p["token_id"] for b in branches for p in b["parents"]}
    parent = tokens[parent_id]
    assert parent["terminal_outcome"]["outcome"] == "forked"
    assert sorted(parent["children"]) == sorted(b["token_id"] for b in branches)
    (route,) = parent["routing"]
    assert route["destination"] == "fork" and route["mode"] == "copy"
    assert doc["row"]["payload"]["data"]["id"] == _normal(tmp_path)[2]["id"]
    # By row, the same family: the parent, both branches and the merged token.
    by_row = _explain(tmp_path, "--run", run_id, "--row", doc["row"]["row_id"])
    assert {t["token_id"] for t in by_row["tokens"]} == set(tokens)
    assert {t["relation"] for t in by_row["tokens"]} == {"row"}


BATCH = {
    "aggregations": [
        {
            "name": "stats",
            "plugin": "batch_stats",
            "trigger": {"count": 10},
            "output_mode": "single",
            "options": {"value_field": "amount"},
        }
    ],
}


def test_explain_aggregated_row_and_the_batch_output_line(tmp_path: Path) -> None:
    run_id, code = _run(tmp_path, _pipeline(tmp_path, **BATCH))
    assert code == 0
    lines = _normal(tmp_path)
    assert len(lines) == ROWS // 10
    doc = _explain(tmp_path, "--run", run_id, "--sink", "normal", "--line", "2")
    output = next(t for t in doc["tokens"] if t["token_id"] == doc["focus_token_id"])
    (made_by,) = output["batches"]
    assert made_by["role"] == "output" and made_by["status"] == "completed"
    assert made_by["members"] == 10 and made_by["trigger_type"] == "count"
    members = [t for t in doc["tokens"] if t["relation"] == "ancestor"]
    assert len(members) == 10
    assert {t["terminal_outcome"]["outcome"] for t in members} == {"consumed_in_batch"}
    assert {t["batches"][0]["batch_id"] for t in members} == {made_by["batch_id"]}
    assert sorted(t["batches"][0]["ordinal"] for t in members) == list(range(10))
    assert [r["row_index"] for r in doc["source_rows"]] == list(range(10, 20))
    assert lines[1]["count"] == "10"
    # By one member's row: its token was consumed, and the batch output is its descendant.
    member_row = next(t["row_id"] for t in members if t["batches"][0]["ordinal"] == 3)
    by_row = _explain(tmp_path, "--run", run_id, "--row", member_row)
    relations = sorted(t["relation"] for t in by_row["tokens"])
    assert relations == ["descendant", "row"]
    assert by_row["outputs"][0]["sink_line"] == 2


def test_explain_member_of_a_batch_retried_after_a_crash(tmp_path: Path) -> None:
    run_id, code = _run(
        tmp_path, _pipeline(tmp_path, **BATCH), env={"ELSPETH_FAULT_INJECT": "batch_executing:1"}
    )
    assert code == -signal.SIGKILL
    resumed = run_cli(
        "resume", run_id, "-x", "-d", f"sqlite:///{tmp_path / 'audit.db'}", cwd=tmp_path
    )
    assert resumed.code == 0, resumed.stderr
    doc = _explain(tmp_path, "--run", run_id, "--sink", "normal", "--line", "1")
    members = [t for t in doc["tokens"] if t["relation"] == "ancestor"]
    assert len(members) == 10
    attempts = sorted((b["attempt"], b["status"]) for b in members[0]["batches"])
    assert attempts == [(1, "failed"), (2, "completed")]
    first = next(b for b in members[0]["batches"] if b["attempt"] == 1)
    second = next(b for b in members[0]["batches"] if b["attempt"] == 2)
    assert second["retry_of_batch_id"] == first["batch_id"]
    assert first["retried_by"] == [second["batch_id"]]
    output = next(t for t in doc["tokens"] if t["token_id"] == doc["focus_token_id"])
    assert [b["batch_id"] for b in output["batches"]] == [second["batch_id"]]
    assert [(a["attempt"], a["kind"]) for a in doc["run"]["attempts"]] == [
        (1, "run"),
        (2, "resume"),
    ]
