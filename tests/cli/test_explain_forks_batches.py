"""``elspeth explain`` on the fork/coalesce and batch-aggregation examples, run verbatim.

``examples/fork_coalesce`` forks payments of 500 or more into three branches, two of which join
again (nested merge) while ``audit`` goes to its own sink; ``examples/batch_aggregation`` turns
every ten sales into one row of statistics. Each example is copied with its input into a
temporary directory and run there with the real CLI (its paths are relative), then explained by
output line and by row; the aggregation is also crashed while its first batch is executing and
resumed, so the batch is retried as attempt 2.

On SQLite the examples run verbatim (their landscape is ``sqlite:///runs/audit.db``); on PostgreSQL
``ELSPETH_LANDSCAPE__URL`` points the same settings at a fresh database.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.cli import REPO, run_cli, url_run_ids
from tests.support.landscape_fixtures import Landscapes

DB = "sqlite:///runs/audit.db"


@dataclass(frozen=True)
class Landscape:
    cli: str  # what the CLI is given with -d (relative to the work directory on SQLite)
    url: str  # the same landscape for the test's own queries
    env: dict[str, str]  # what points the example's settings at it


@pytest.fixture
def db(landscapes: Landscapes, tmp_path: Path, request: pytest.FixtureRequest) -> Landscape:
    if landscapes.backend == "sqlite":
        return Landscape(DB, f"sqlite:///{tmp_path / 'runs' / 'audit.db'}", {})
    url = landscapes.new(tmp_path, request=request)
    return Landscape(url, url, {"ELSPETH_LANDSCAPE__URL": url})


def _example(
    tmp_path: Path, db: Landscape, name: str, env: dict[str, str] | None = None
) -> tuple[str, int]:
    target = tmp_path / "examples" / name
    shutil.copytree(REPO / "examples" / name, target, ignore=shutil.ignore_patterns("out"))
    settings = f"examples/{name}/settings.yaml"
    result = run_cli("run", "-s", settings, "-x", cwd=tmp_path, env={**db.env, **(env or {})})
    (run_id,) = url_run_ids(db.url)
    return run_id, result.code


def _explain(work: Path, db: Landscape, *args: str) -> dict[str, Any]:
    result = run_cli("explain", *args, "--json", "-d", db.cli, cwd=work)
    assert result.code == 0, result.stderr
    return json.loads(result.stdout)


def _by_id(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {t["token_id"]: t for t in doc["tokens"]}


def test_explain_forked_and_joined_row(tmp_path: Path, db: Landscape) -> None:
    run_id, code = _example(tmp_path, db, "fork_coalesce")
    assert code == 0
    out = tmp_path / "examples" / "fork_coalesce" / "out"
    lines = [json.loads(line) for line in (out / "payments.jsonl").read_text().splitlines()]
    line = next(n for n, row in enumerate(lines, 1) if "ledger" in row)  # a merged payment
    payment_id = lines[line - 1]["ledger"]["id"]

    doc = _explain(tmp_path, db, "--run", run_id, "--sink", "payments", "--line", str(line))
    tokens = _by_id(doc)
    merged = tokens[doc["focus_token_id"]]
    assert merged["terminal_outcome"]["outcome"] == "completed"
    assert merged["terminal_outcome"]["sink_line"] == line
    assert merged["join_group_id"] is not None
    branches = [tokens[p["token_id"]] for p in merged["parents"]]
    assert [b["branch_name"] for b in branches] == ["fraud_check", "ledger"]
    assert {b["relation"] for b in branches} == {"ancestor"}
    assert {b["terminal_outcome"]["outcome"] for b in branches} == {"coalesced"}
    assert len({b["fork_group_id"] for b in branches}) == 1
    (parent_id,) = {p["token_id"] for b in branches for p in b["parents"]}
    parent = tokens[parent_id]
    assert parent["relation"] == "ancestor"
    assert parent["terminal_outcome"]["outcome"] == "forked"
    assert len(parent["children"]) == 3  # fraud_check, ledger and audit
    (route,) = parent["routing"]
    assert (route["condition"], route["result"], route["destination"], route["mode"]) == (
        "row['amount'] >= 500",
        True,
        "fork",
        "copy",
    )
    assert doc["row"]["payload"]["data"]["id"] == str(payment_id)

    # By row: the whole family, the unjoined audit branch included, with its own sink line.
    by_row = _explain(tmp_path, db, "--run", run_id, "--row", doc["row"]["row_id"])
    family = _by_id(by_row)
    assert set(tokens) < set(family) and len(family) == 5
    assert {t["relation"] for t in family.values()} == {"row"}
    (audit,) = [t for t in family.values() if t["branch_name"] == "audit"]
    assert audit["terminal_outcome"]["outcome"] == "routed"
    assert audit["terminal_outcome"]["sink_name"] == "audit"
    audit_rows = list(csv.DictReader(io.StringIO((out / "audit.csv").read_text())))
    assert audit_rows[audit["terminal_outcome"]["sink_line"] - 1]["id"] == str(payment_id)
    assert sorted((o["sink_name"], o["outcome"]) for o in by_row["outputs"]) == [
        ("audit", "routed"),
        ("payments", "completed"),
    ]


def test_explain_aggregated_row_and_the_batch_output_line(tmp_path: Path, db: Landscape) -> None:
    run_id, code = _example(tmp_path, db, "batch_aggregation")
    assert code == 0
    out = tmp_path / "examples" / "batch_aggregation" / "out" / "batches.csv"
    lines = list(csv.DictReader(io.StringIO(out.read_text())))
    doc = _explain(tmp_path, db, "--run", run_id, "--sink", "batches", "--line", "2")
    output = _by_id(doc)[doc["focus_token_id"]]
    (made_by,) = output["batches"]
    assert made_by["role"] == "output" and made_by["status"] == "completed"
    assert made_by["aggregation_name"] == "every_ten_sales"
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
    by_row = _explain(tmp_path, db, "--run", run_id, "--row", member_row)
    assert sorted(t["relation"] for t in by_row["tokens"]) == ["descendant", "row"]
    assert [(o["sink_name"], o["sink_line"]) for o in by_row["outputs"]] == [("batches", 2)]


def test_explain_member_of_a_batch_retried_after_a_crash(tmp_path: Path, db: Landscape) -> None:
    run_id, code = _example(
        tmp_path, db, "batch_aggregation", env={"ELSPETH_FAULT_INJECT": "batch_executing:1"}
    )
    assert code == -signal.SIGKILL
    resumed = run_cli("resume", run_id, "-x", "-d", db.cli, cwd=tmp_path)
    assert resumed.code == 0, resumed.stderr
    doc = _explain(tmp_path, db, "--run", run_id, "--sink", "batches", "--line", "1")
    members = [t for t in doc["tokens"] if t["relation"] == "ancestor"]
    assert len(members) == 10
    attempts = sorted((b["attempt"], b["status"]) for b in members[0]["batches"])
    assert attempts == [(1, "failed"), (2, "completed")]
    first = next(b for b in members[0]["batches"] if b["attempt"] == 1)
    second = next(b for b in members[0]["batches"] if b["attempt"] == 2)
    assert second["retry_of_batch_id"] == first["batch_id"]
    assert first["retried_by"] == [second["batch_id"]]
    output = _by_id(doc)[doc["focus_token_id"]]
    assert [b["batch_id"] for b in output["batches"]] == [second["batch_id"]]
    assert [(a["attempt"], a["kind"]) for a in doc["run"]["attempts"]] == [
        (1, "run"),
        (2, "resume"),
    ]
