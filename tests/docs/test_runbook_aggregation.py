"""The aggregation crash-recovery runbook is true: every snippet in it runs.

``docs/runbooks/aggregation-crash-recovery.md`` is parsed. Its placeholders (``RUN_ID``,
``sqlite:///runs/audit.db``, ``settings.yaml``) are replaced with a real run's values, then:
- every ``sql`` block runs verbatim (``:run_id`` bound) against a run killed right after a batch's
  ``executing`` commit, and against the same run resumed to completion; each block opens with a
  ``-- title`` that says what it must return;
- every ``elspeth`` command of the ``bash`` blocks runs through the real CLI (one with
  ``--execute`` gets a crashed run of its own and must complete it);
- both ``python`` blocks run in a fresh interpreter against crashed runs of their own (one killed
  after ``executing``, one killed while a batch was buffering) and must complete them with the
  outputs of a run that never crashed.
"""

from __future__ import annotations

import re
import shlex
import signal
import sqlite3
import subprocess
import sys
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.cli import (
    REPO,
    assert_landscape_invariants,
    cli_env,
    run_cli,
    run_ids,
    write_settings,
)
from tests.support.pipelines import make_csv, outputs, pipeline

RUNBOOK = REPO / "docs" / "runbooks" / "aggregation-crash-recovery.md"
ROWS = 1_200
STATS = {
    "name": "per_hundred",
    "plugin": "batch_stats",
    "trigger": {"count": 100},
    "output_mode": "single",
    "options": {"value_field": "amount", "group_by": "status"},
}
AFTER_EXECUTING = "batch_executing:4"  # the 4th batch is marked executing, then the kill
# Killed right after the commit of rows 301-330: 30 members of the 4th batch are durable. A kill
# while reading a row would leave that commit possibly in flight on the commit thread. The commits
# up to it: the sinks' starting point (1); rows 30, 60, 90 (2-4); batch 1 at row 100, before and
# after it runs (5, 6); rows 130, 160, 190 (7-9); batch 2 (10, 11); rows 230, 260, 290 (12-14);
# batch 3 (15, 16); rows 301-330 (17).
WHILE_BUFFERING = "after_commit:17"
URL = "sqlite:///runs/audit.db"


def _blocks(language: str) -> list[str]:
    text = RUNBOOK.read_text(encoding="utf-8")
    return re.findall(rf"^```{language}\n(.*?)^```", text, flags=re.DOTALL | re.MULTILINE)


SQL = {block.strip().splitlines()[0][3:].strip(): block for block in _blocks("sql")}
PYTHON = _blocks("python")
COMMANDS = [
    line.strip()
    for block in _blocks("bash")
    for line in block.splitlines()
    if line.strip().startswith("elspeth ")
]


@dataclass(frozen=True)
class Run:
    work: Path
    run_id: str

    @property
    def db(self) -> Path:
        return self.work / "audit.db"

    def substitute(self, text: str) -> str:
        return (
            text.replace("RUN_ID", self.run_id)
            .replace(URL, f"sqlite:///{self.db}")
            .replace("settings.yaml", str(self.work / "settings.yaml"))
        )


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_csv(tmp_path_factory.mktemp("input") / "in.csv", ROWS, seed=21)


def _settings(work: Path, source: Path) -> Path:
    data = pipeline(work, source, aggregations=[STATS], interval=30)
    return write_settings(work / "settings.yaml", data)


def _crashed(work: Path, source: Path, plan: str) -> Run:
    work.mkdir(parents=True, exist_ok=True)
    settings = _settings(work, source)
    result = run_cli("run", "-s", str(settings), "-x", cwd=work, env={"ELSPETH_FAULT_INJECT": plan})
    assert result.code == -signal.SIGKILL, result.stderr
    (run_id,) = run_ids(work / "audit.db")
    return Run(work, run_id)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, source: Path) -> dict[str, Any]:
    work = tmp_path_factory.mktemp("reference")
    assert run_cli("run", "-s", str(_settings(work, source)), "-x", cwd=work).code == 0
    return outputs(work)


@pytest.fixture(scope="module")
def crashed(tmp_path_factory: pytest.TempPathFactory, source: Path) -> Run:
    return _crashed(tmp_path_factory.mktemp("crashed"), source, AFTER_EXECUTING)


@pytest.fixture(scope="module")
def completed(tmp_path_factory: pytest.TempPathFactory, source: Path) -> Run:
    run = _crashed(tmp_path_factory.mktemp("completed"), source, AFTER_EXECUTING)
    result = run_cli("resume", run.run_id, "-d", f"sqlite:///{run.db}", "-x", cwd=run.work)
    assert result.code == 0, result.stderr
    return run


# ------------------------------------------------------------------------------ the runbook text
def test_the_runbook_has_its_sections_and_snippets() -> None:
    text = RUNBOOK.read_text(encoding="utf-8")
    for heading in (
        "## 1. Symptoms",
        "## 2. How recovery decides",
        "## 3. The Python API path",
        "## 4. How plugins read restored state",
        "## 5. Monitoring SQL",
    ):
        assert heading in text
    for rule in ("| `draft` |", "| `executing` |", "| `failed` without a retry |"):
        assert rule in text
    assert "attempt + 1" in text and "same members in the same order" in text
    assert set(SQL) == {
        "Batches of a run",
        "Retried batches and their failed attempts",
        "Batches needing attention",
    }
    assert "SELECT batch_id, status, attempt, created_at" in SQL["Batches of a run"]
    assert len(PYTHON) == 2
    assert "RecoveryManager(db, checkpoint_manager)" in PYTHON[0]
    assert "Orchestrator(db, checkpoint_manager).resume(resume_point, config, graph)" in PYTHON[0]
    assert "get_restored_state(node.node_id)" in PYTHON[1]
    placeholders = text.split("## Placeholders", 1)[1].split("\n## ", 1)[0]
    for name in ("`RUN_ID`", f"`{URL}`", "`settings.yaml`", "`:run_id`"):
        assert name in placeholders


# ----------------------------------------------------------------------------------- the SQL
def _sql(run: Run, title: str) -> list[dict[str, Any]]:
    with closing(sqlite3.connect(run.db)) as conn:
        cursor = conn.execute(SQL[title], {"run_id": run.run_id})
        names = [c[0] for c in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def test_batches_of_a_crashed_run(crashed: Run) -> None:
    rows = _sql(crashed, "Batches of a run")
    assert [(r["status"], r["attempt"]) for r in rows] == [("completed", 1)] * 3 + [
        ("executing", 1)
    ]
    assert all(r["created_at"] for r in rows)
    assert _sql(crashed, "Retried batches and their failed attempts") == []
    attention = _sql(crashed, "Batches needing attention")
    assert [(r["status"], r["attempt"], r["aggregation_name"]) for r in attention] == [
        ("executing", 1, "per_hundred")
    ]


def test_batches_of_the_resumed_run_show_the_failed_attempt_and_its_retry(
    completed: Run, reference: dict[str, Any]
) -> None:
    rows = _sql(completed, "Batches of a run")
    statuses = [(r["status"], r["attempt"]) for r in rows]
    assert statuses.count(("failed", 1)) == 1
    assert statuses.count(("completed", 2)) == 1
    assert statuses.count(("completed", 1)) == ROWS // 100 - 1
    (retry,) = _sql(completed, "Retried batches and their failed attempts")
    assert (retry["failed_attempt"], retry["retry_attempt"], retry["retry_status"]) == (
        1,
        2,
        "completed",
    )
    assert retry["error"] == "process died while executing"
    assert retry["members"] == retry["same_members"] == 100
    assert _sql(completed, "Batches needing attention") == []
    assert outputs(completed.work) == reference
    assert_landscape_invariants(completed.db, completed.run_id, ROWS)


# ------------------------------------------------------------------------------ the commands
@pytest.mark.parametrize("command", COMMANDS)
def test_runbook_command_runs(
    command: str, crashed: Run, source: Path, reference: dict[str, Any], tmp_path: Path
) -> None:
    words = shlex.split(command, comments=True)
    changes = "--execute" in words
    run = _crashed(tmp_path, source, AFTER_EXECUTING) if changes else crashed
    argv = [run.substitute(word) for word in words[1:]]
    result = run_cli(*argv, cwd=run.work)
    assert result.code == 0, (command, result.stdout, result.stderr)
    if words[1] == "resume" and not changes:
        assert re.search(r"batches to retry\s+1", result.stdout), result.stdout
    if changes:
        assert run_ids(run.db) == [run.run_id]
        assert outputs(run.work) == reference
        assert_landscape_invariants(run.db, run.run_id, ROWS)


# -------------------------------------------------------------------------------- the Python
def _python(run: Run, code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", run.substitute(code)],
        cwd=run.work,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_python_api_resume_path(tmp_path: Path, source: Path, reference: dict[str, Any]) -> None:
    run = _crashed(tmp_path, source, AFTER_EXECUTING)
    result = _python(run, PYTHON[0])
    assert result.returncode == 0, result.stderr
    assert f"run {run.run_id}: completed (attempt 2)" in result.stdout
    assert "open batches: 0" in result.stdout
    assert outputs(run.work) == reference
    assert_landscape_invariants(run.db, run.run_id, ROWS)
    assert [(r["status"], r["attempt"]) for r in _sql(run, "Batches of a run")].count(
        ("completed", 2)
    ) == 1


def test_plugins_read_restored_state(
    tmp_path: Path, source: Path, reference: dict[str, Any]
) -> None:
    run = _crashed(tmp_path, source, WHILE_BUFFERING)
    (draft,) = _sql(run, "Batches needing attention")
    assert draft["status"] == "draft"
    result = _python(run, PYTHON[1])
    assert result.returncode == 0, result.stderr
    assert f"per_hundred: batch {draft['batch_id']} reopened with 30 members" in result.stdout
    assert f"run {run.run_id}: completed" in result.stdout
    assert outputs(run.work) == reference
    assert_landscape_invariants(run.db, run.run_id, ROWS)
