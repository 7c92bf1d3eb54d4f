"""The resume dry run (``elspeth resume RUN_ID`` without ``--execute``) labels every batch with
what the resume will really do — checked against what the resume then does.

The states are built with real ``elspeth`` processes: runs and resumes SIGKILLed at named points
(``ELSPETH_FAULT_INJECT``), and aggregations that raise on a bad row. After each dry run, the next
resume is executed and the landscape must show exactly the predicted retries. Every landscape test
runs on both backends (SQLite and PostgreSQL).
"""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import pytest

from elspeth_core.checkpoint.plan import plan_batches
from tests.support.cli import (
    Result,
    assert_landscape_invariants,
    query,
    run_cli,
    run_ids,
    write_settings,
)
from tests.support.landscape_fixtures import Landscapes
from tests.support.pipelines import make_csv, outputs, pipeline

ROWS = 600


def _window_then_stats(work: Path, landscape: str) -> Path:
    """Two passthrough aggregations in a chain: ``window`` (count 100) → ``stats`` (count 250)."""
    work.mkdir(parents=True, exist_ok=True)
    source = make_csv(work / "in.csv", ROWS)
    data = pipeline(
        work,
        source,
        landscape=landscape,
        aggregations=[
            {
                "name": "window",
                "plugin": "batch_replicate",
                "trigger": {"count": 100},
                "output_mode": "passthrough",
                "options": {"default_copies": 1},
            },
            {
                "name": "stats",
                "plugin": "batch_stats",
                "trigger": {"count": 250},
                "output_mode": "passthrough",
                "options": {"value_field": "amount"},
            },
        ],
    )
    return write_settings(work / "settings.yaml", data)


def _killed(result: Result) -> None:
    assert result.code == -signal.SIGKILL, (result.code, result.stderr)


def _dry_run(work: Path, db: str, run_id: str) -> tuple[str, dict[str, Any]]:
    """The text and the JSON plan; both must be produced without changing anything."""
    before = _batches(db)
    text = run_cli("resume", run_id, "-d", db, cwd=work)
    assert text.code == 0, text.stderr
    as_json = run_cli("resume", run_id, "-d", db, "--json", cwd=work)
    assert as_json.code == 0, as_json.stderr
    assert _batches(db) == before
    return text.stdout, json.loads(as_json.stdout)["resume_plan"]


def _resume(work: Path, db: str, run_id: str, crash: str | None = None) -> Result:
    env = {"ELSPETH_FAULT_INJECT": crash} if crash else None
    return run_cli("resume", run_id, "-d", db, "-x", cwd=work, env=env)


def _batches(db: str) -> list[tuple[str, int, str, str | None]]:
    """(aggregation, attempt, status, retry_of) of every batch, oldest first."""
    return [
        tuple(row)
        for row in query(
            db,
            "SELECT aggregation_name, attempt, status, retry_of_batch_id FROM batches "
            "ORDER BY created_at, batch_id",
        )
    ]


def _by_action(plan: dict[str, Any]) -> list[tuple[str, int, str, str]]:
    return [(b["aggregation"], b["attempt"], b["status"], b["action"]) for b in plan["batches"]]


def _line(text: str, batch_id: str) -> str:
    (line,) = [line for line in text.splitlines() if f"batch {batch_id} " in line]
    return line.strip()


def test_plan_follows_a_batch_through_crashes_of_the_run_and_of_two_resumes(
    tmp_path: Path, landscape_url: str, landscapes: Landscapes, request: pytest.FixtureRequest
) -> None:
    reference = tmp_path / "reference"
    reference.mkdir()
    reference_db = landscapes.new(reference, request=request)
    ran = run_cli(
        "run", "-s", str(_window_then_stats(reference, reference_db)), "-x", cwd=reference
    )
    assert ran.code == 0, ran.stderr
    work = tmp_path / "crashed"
    db = landscape_url
    settings = _window_then_stats(work, db)

    # 1. Killed once window's 2nd batch is executing; stats buffers window's 1st batch.
    _killed(
        run_cli(
            "run",
            "-s",
            str(settings),
            "-x",
            cwd=work,
            env={"ELSPETH_FAULT_INJECT": "batch_executing:2"},
        )
    )
    (run_id,) = run_ids(db)
    text, plan = _dry_run(work, db, run_id)
    assert _by_action(plan) == [
        ("stats", 1, "draft", "restore"),
        ("window", 1, "executing", "fail_and_retry"),
    ]
    stats, window = plan["batches"]
    assert stats["members"] == 100 and stats["retry_of_batch_id"] is None
    assert window["next_attempt"] == 2 and window["members"] == 100
    assert [b["batch_id"] for b in plan["batches_to_retry"]] == [window["batch_id"]]
    assert [b["batch_id"] for b in plan["draft_batches"]] == [stats["batch_id"]]
    assert "batches to retry     1" in text and "open batches         1" in text
    assert _line(text, window["batch_id"]).endswith(
        "attempt 1 (executing): will mark failed and retry (attempt 2) with 100 members"
    )
    assert "(draft): restore with 100 members and keep buffering" in _line(text, stats["batch_id"])

    # 2. The resume dies inside the commit that would mark the retry executing: the failed
    # attempt is superseded by a retry draft, which is not an open batch.
    _killed(_resume(work, db, run_id, "during_commit:1"))
    assert _batches(db)[-2:] == [
        ("window", 1, "failed", None),
        ("window", 2, "draft", window["batch_id"]),
    ]
    text, plan = _dry_run(work, db, run_id)
    assert _by_action(plan) == [
        ("stats", 1, "draft", "restore"),
        ("window", 1, "failed", "superseded"),
        ("window", 2, "draft", "run_retry_draft"),
    ]
    _stats, failed, retry = plan["batches"]
    assert failed["superseded_by"] == retry["batch_id"]
    assert [b["batch_id"] for b in plan["batches_to_retry"]] == [retry["batch_id"]]
    assert [b["batch_id"] for b in plan["draft_batches"]] == [stats["batch_id"]]
    assert "batches to retry     1" in text and "open batches         1" in text
    assert _line(text, failed["batch_id"]).endswith(
        f"attempt 1 (failed): superseded by attempt 2 (batch {retry['batch_id']}); left as is"
    )
    assert _line(text, retry["batch_id"]).endswith(
        f"attempt 2 (draft): restore retry draft (attempt 2, retrying batch {failed['batch_id']}) "
        "with 100 members and run it"
    )

    # 3. The next resume dies with the retry executing: attempt 2 will fail, attempt 3 runs.
    _killed(_resume(work, db, run_id, "batch_executing:1"))
    text, plan = _dry_run(work, db, run_id)
    assert _by_action(plan) == [
        ("stats", 1, "draft", "restore"),
        ("window", 1, "failed", "superseded"),
        ("window", 2, "executing", "fail_and_retry"),
    ]
    assert plan["batches_to_retry"][0]["next_attempt"] == 3
    assert _line(text, retry["batch_id"]).endswith(
        "attempt 2 (executing): will mark failed and retry (attempt 3) with 100 members"
    )

    # 4. The resume does what the plan said, and the outputs are the crash-free run's.
    assert _resume(work, db, run_id).code == 0
    window_batches = [b for b in _batches(db) if b[0] == "window"]
    assert window_batches[1:4] == [
        ("window", 1, "failed", None),
        ("window", 2, "failed", failed["batch_id"]),
        ("window", 3, "completed", retry["batch_id"]),
    ]
    assert outputs(work) == outputs(reference)
    assert_landscape_invariants(db, run_id, ROWS)


def _failing_batches(work: Path, landscape: str) -> Path:
    """``guard`` (passthrough) raises on row 150, ``copies`` (transform) on row 50."""
    work.mkdir(parents=True, exist_ok=True)
    lines = ["id,amount,c1,c2"]
    for index in range(300):
        c1 = -1 if index == 150 else 1
        c2 = -1 if index == 50 else 2
        lines.append(f"{index},{index * 3 % 1000}.5,{c1},{c2}")
    (work / "in.csv").write_text("\n".join(lines) + "\n")
    data = pipeline(
        work,
        work / "in.csv",
        fields=[],
        landscape=landscape,
        aggregations=[
            {
                "name": "guard",
                "plugin": "batch_replicate",
                "trigger": {"count": 100},
                "output_mode": "passthrough",
                "options": {"copies_field": "c1"},
            },
            {
                "name": "copies",
                "plugin": "batch_replicate",
                "trigger": {"count": 100},
                "output_mode": "transform",
                "options": {"copies_field": "c2"},
            },
        ],
    )
    return write_settings(work / "settings.yaml", data)


def test_failed_batches_are_retried_once_and_final_passthrough_failures_stay_failed(
    tmp_path: Path, landscape_url: str
) -> None:
    db = landscape_url
    settings = _failing_batches(tmp_path, db)
    first = run_cli("run", "-s", str(settings), "-x", cwd=tmp_path)
    assert first.code == 2, (first.code, first.stderr)
    (run_id,) = run_ids(db)

    text, plan = _dry_run(tmp_path, db, run_id)
    assert _by_action(plan) == [
        ("copies", 1, "failed", "retry"),
        ("guard", 1, "failed", "stays_failed"),
    ]
    copies, guard = plan["batches"]
    assert [b["batch_id"] for b in plan["batches_to_retry"]] == [copies["batch_id"]]
    assert plan["draft_batches"] == []
    assert "batches to retry     1" in text and "open batches         0" in text
    assert _line(text, copies["batch_id"]).endswith(
        "attempt 1 (failed): will retry (attempt 2) with 100 members"
    )
    assert _line(text, guard["batch_id"]).endswith(
        "attempt 1 (failed): stays failed: every member already has a final outcome"
    )

    # The resume retries exactly the batch the plan named (it fails again: the row is still
    # bad) and leaves the passthrough batch alone.
    assert _resume(tmp_path, db, run_id).code == 2
    retries = query(
        db,
        "SELECT retry_of_batch_id, attempt, status FROM batches WHERE attempt > 1 "
        "ORDER BY created_at, batch_id",
    )
    assert retries == [(copies["batch_id"], 2, "failed")]

    _text, plan = _dry_run(tmp_path, db, run_id)
    assert _by_action(plan) == [
        ("copies", 1, "failed", "superseded"),
        ("guard", 1, "failed", "stays_failed"),
        ("copies", 2, "failed", "retry"),
    ]
    assert plan["batches"][2]["next_attempt"] == 3


# ---------------------------------------------------------------- the rules, without a landscape
def _batch(batch_id: str, status: str, attempt: int = 1, retry_of: str | None = None) -> dict:
    return {
        "batch_id": batch_id,
        "aggregation_name": "agg",
        "aggregation_node_id": "aggregation-agg-0",
        "status": status,
        "attempt": attempt,
        "retry_of_batch_id": retry_of,
    }


def test_plan_batches_rules() -> None:
    batches = [
        _batch("done", "completed"),
        _batch("old", "failed"),
        _batch("old-2", "draft", 2, retry_of="old"),
        _batch("lost", "executing"),
        _batch("final", "failed"),
        _batch("dead", "executing"),
        _batch("open", "draft"),
    ]
    members = {"final": ["t1"], "dead": ["t2"], "lost": ["t3"], "open": ["t4", "t5"]}
    actions = plan_batches(
        batches,
        member_ids=lambda batch_id: members.get(batch_id, ["x"]),
        nonterminal={"t3", "t4", "t5"},
        output_modes={"agg": "passthrough"},
        elapsed={"open": 12.34},
    )
    assert [(a.batch_id, a.action) for a in actions] == [
        ("old", "superseded"),
        ("old-2", "run_retry_draft"),
        ("lost", "fail_and_retry"),
        ("final", "stays_failed"),
        ("dead", "fail_only"),
        ("open", "restore"),
    ]
    assert actions[-1].label == "restore with 2 members and keep buffering (trigger age 12.3 s)"
    # Members of single/transform batches were consumed when buffered: always retried.
    single = plan_batches(
        [_batch("final", "failed")],
        member_ids=lambda _batch_id: ["t1"],
        nonterminal=set(),
        output_modes={},
        elapsed={},
    )
    assert [(a.action, a.next_attempt) for a in single] == [("retry", 2)]
