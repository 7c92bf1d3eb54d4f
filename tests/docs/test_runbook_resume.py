"""The resume runbook is true: its SQL and its ``elspeth`` commands run against a real landscape.

``docs/runbooks/resume-failed-run.md`` is parsed. Every fenced ``sql`` block is executed VERBATIM with
the ``sqlite3`` module (only ``:run_id`` is bound) against the landscape of a run crashed with fault
injection and against the landscape of a run crashed and then resumed to completion. Each block's
first line is a ``-- title`` comment; the titles below say what the query must return for each run,
and every one of them must still be in the runbook.

Every ``elspeth`` command of the ``bash`` blocks is run through the real CLI after replacing the
runbook's documented placeholders (``RUN_ID``, ``sqlite:///runs/audit.db``, ``settings.yaml``):
- a command whose trailing comment says ``exit 3`` is a refusal the runbook shows: it runs against
  the completed run and must exit 3 with an ``Error:`` and a ``Hint:`` line;
- a command with ``--execute`` changes the run, so it gets a crashed run of its own, and must exit 0
  and leave the landscape as the runbook promises;
- any other command only reads: it runs against the crashed run and must exit 0.
"""

from __future__ import annotations

import re
import shlex
import signal
import sqlite3
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from elspeth_core import errors
from examples.generate import generate
from tests.support.cli import (
    REPO,
    assert_landscape_invariants,
    gate_pipeline,
    query,
    run_cli,
    run_ids,
    write_settings,
)

RUNBOOK = REPO / "docs" / "runbooks" / "resume-failed-run.md"
ROWS = 2_000
# Read 400 rows, all of them buffered in an open batch of 1,000 when the run is killed.
CRASH = "after_commit:5"
AGGREGATION = {
    "name": "window",
    "plugin": "batch_replicate",
    "trigger": {"count": 1000},
    "output_mode": "passthrough",
    "options": {"default_copies": 1},
}
PLACEHOLDER_URL = "sqlite:///runs/audit.db"
SINK_FILES = {
    "normal": "normal.csv",
    "high": "high.csv",
    "flagged": "flagged.jsonl",
    "quarantine": "quarantine.jsonl",
}
SINKS = set(SINK_FILES)


def _blocks(language: str) -> list[str]:
    text = RUNBOOK.read_text(encoding="utf-8")
    return re.findall(rf"^```{language}\n(.*?)^```", text, flags=re.DOTALL | re.MULTILINE)


def _title(sql: str) -> str:
    first = sql.strip().splitlines()[0]
    assert first.startswith("-- "), f"a runbook SQL block must open with a '-- title': {first!r}"
    return first[3:].strip()


SQL_BLOCKS = {_title(sql): sql for sql in _blocks("sql")}
COMMANDS = [
    line.strip()
    for block in _blocks("bash")
    for line in block.splitlines()
    if line.strip().startswith("elspeth ")
]


# ---------------------------------------------------------------------------------- landscapes
@dataclass(frozen=True)
class Landscape:
    work: Path
    settings: Path
    run_id: str

    @property
    def db(self) -> Path:
        return self.work / "audit.db"

    @property
    def url(self) -> str:
        return f"sqlite:///{self.db}"


def _pipeline(work: Path) -> Path:
    work.mkdir(parents=True, exist_ok=True)
    generate(str(work / "in.csv"), ROWS, seed=3, bad_every=97)
    data = gate_pipeline(work, work / "in.csv", aggregations=[AGGREGATION])
    return write_settings(work / "settings.yaml", data)


def _crashed(work: Path) -> Landscape:
    settings = _pipeline(work)
    result = run_cli(
        "run", "-s", str(settings), "-x", cwd=work, env={"ELSPETH_FAULT_INJECT": CRASH}
    )
    assert result.code == -signal.SIGKILL, (result.code, result.stderr)
    (run_id,) = run_ids(work / "audit.db")
    return Landscape(work, settings, run_id)


@pytest.fixture(scope="module")
def crashed(tmp_path_factory: pytest.TempPathFactory) -> Landscape:
    return _crashed(tmp_path_factory.mktemp("crashed"))


@pytest.fixture(scope="module")
def completed(tmp_path_factory: pytest.TempPathFactory) -> Landscape:
    landscape = _crashed(tmp_path_factory.mktemp("completed"))
    result = run_cli("resume", landscape.run_id, "-d", landscape.url, "-x", cwd=landscape.work)
    assert result.code == 0, result.stderr
    assert_landscape_invariants(landscape.db, landscape.run_id, ROWS)
    return landscape


# ------------------------------------------------------------------------------------- the SQL
Rows = list[dict[str, Any]]


def _run_sql(landscape: Landscape, sql: str) -> Rows:
    with closing(sqlite3.connect(landscape.db)) as conn:
        cursor = conn.execute(sql, {"run_id": landscape.run_id})
        names = [column[0] for column in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def _runs_view(rows: Rows, landscape: Landscape, kind: str) -> None:
    mine = [r for r in rows if r["run_id"] == landscape.run_id]
    assert len(mine) == 1
    assert {"status", "lease_owner", "lease_expires_at", "heartbeat_at"} <= mine[0].keys()
    assert mine[0]["status"] == ("running" if kind == "crashed" else "completed")
    if kind == "crashed":
        assert mine[0]["lease_owner"] is not None


def _one_run(rows: Rows, landscape: Landscape, kind: str) -> None:
    assert len(rows) == 1 and rows[0]["run_id"] == landscape.run_id
    assert rows[0]["source_exhausted"] == (kind == "completed")


def _checkpoint(rows: Rows, landscape: Landscape, kind: str) -> None:
    if kind == "completed":
        assert rows == []  # a completed run's checkpoints are deleted
        return
    assert len(rows) == 1
    (checkpoint,) = rows
    assert checkpoint["row_id"] is not None
    assert checkpoint["sequence_number"] >= 1
    assert checkpoint["row_index"] == checkpoint["rows_ingested"] - 1 == 399


def _nonterminal(rows: Rows, landscape: Landscape, kind: str) -> None:
    if kind == "completed":
        assert rows == []
        return
    assert len(rows) == 396  # 400 read, 4 of them quarantined, the rest buffered
    assert {r["last_outcome"] for r in rows} == {"buffered"}


def _empty(rows: Rows, landscape: Landscape, kind: str) -> None:
    assert rows == []


def _batches(rows: Rows, landscape: Landscape, kind: str) -> None:
    if kind == "completed":
        assert rows == []
        return
    assert [(r["aggregation_name"], r["status"], r["members"]) for r in rows] == [
        ("window", "draft", 396)
    ]


def _per_sink(rows: Rows, landscape: Landscape, kind: str) -> None:
    counts = {(r["sink_name"], r["outcome"]): r["tokens"] for r in rows}
    if kind == "crashed":
        assert counts == {("quarantine", "quarantined"): 4}
        return
    assert {sink for sink, _outcome in counts} == SINKS
    assert sum(counts.values()) == ROWS
    for (sink, _outcome), tokens in counts.items():
        path = landscape.work / "out" / SINK_FILES[sink]
        lines = path.read_bytes().count(b"\n")
        assert tokens == (lines - 1 if path.suffix == ".csv" else lines), sink


def _publications(rows: Rows, landscape: Landscape, kind: str) -> None:
    assert {r["sink_name"] for r in rows} == SINKS
    for row in rows:
        assert Path(row["path_or_uri"]).parent == landscape.work / "out"


def _quarantined(rows: Rows, landscape: Landscape, kind: str) -> None:
    assert len(rows) == (4 if kind == "crashed" else ROWS // 97)
    assert all("amount" in r["reason"] for r in rows)
    assert {r["destination"] for r in rows} == {"quarantine"}


def _attempts(rows: Rows, landscape: Landscape, kind: str) -> None:
    if kind == "crashed":
        assert [(r["attempt"], r["kind"], r["status"]) for r in rows] == [(1, "run", "running")]
    else:
        assert [(r["attempt"], r["kind"]) for r in rows] == [(1, "run"), (2, "resume")]
        assert rows[-1]["status"] == "completed"


def _not_exactly_one(rows: Rows, landscape: Landscape, kind: str) -> None:
    if kind == "completed":
        assert rows == []
    else:
        assert len(rows) == 396 and {r["terminal_outcomes"] for r in rows} == {0}


Check = Callable[[Rows, Landscape, str], None]
EXPECTED: dict[str, Check] = {
    "Runs with their status and lease": _runs_view,
    "One run": _one_run,
    "Newest checkpoint of a run": _checkpoint,
    "Tokens without a terminal outcome": _nonterminal,
    "Rows without tokens": _empty,
    "Aggregation batches in flight": _batches,
    "Terminal outcomes per sink": _per_sink,
    "Sink publications": _publications,
    "Quarantined rows with reasons": _quarantined,
    "Transform failures": _empty,
    "Run attempts": _attempts,
    "Tokens without exactly one terminal outcome": _not_exactly_one,
}


def test_the_runbook_keeps_every_query_operators_rely_on() -> None:
    missing = EXPECTED.keys() - SQL_BLOCKS.keys()
    assert not missing, f"queries gone from the runbook: {sorted(missing)}"
    assert "c.row_id" in SQL_BLOCKS["Newest checkpoint of a run"]
    assert "c.sequence_number" in SQL_BLOCKS["Newest checkpoint of a run"]
    for title, sql in SQL_BLOCKS.items():
        if title != "Runs with their status and lease":
            assert ":run_id" in sql, f"{title!r} must be bound to :run_id"


@pytest.mark.parametrize("kind", ["crashed", "completed"])
@pytest.mark.parametrize("title", list(SQL_BLOCKS))
def test_runbook_sql_runs_verbatim(
    title: str, kind: str, crashed: Landscape, completed: Landscape
) -> None:
    landscape = crashed if kind == "crashed" else completed
    rows = _run_sql(landscape, SQL_BLOCKS[title])
    check = EXPECTED.get(title)
    if check is not None:
        check(rows, landscape, kind)


# ------------------------------------------------------------------------------- the commands
def _argv(command: str, landscape: Landscape) -> list[str]:
    words = shlex.split(command, comments=True)
    assert words[0] == "elspeth"
    replace = {
        "RUN_ID": landscape.run_id,
        PLACEHOLDER_URL: landscape.url,
        "settings.yaml": str(landscape.settings),
    }
    return [replace.get(word, word) for word in words[1:]]


def _expected_code(command: str) -> int:
    return 3 if re.search(r"#.*\bexit 3\b", command) else 0


def _changes_state(command: str) -> bool:
    words = shlex.split(command, comments=True)
    return "--execute" in words or "-x" in words


def _command_id(command: str) -> str:
    words = shlex.join(shlex.split(command, comments=True))
    return f"refused: {words}" if _expected_code(command) == 3 else words


def test_the_runbook_documents_its_placeholders_and_every_refusal() -> None:
    text = RUNBOOK.read_text(encoding="utf-8")
    placeholders = text.split("## Placeholders", 1)[1].split("\n## ", 1)[0]
    for placeholder in ("`RUN_ID`", f"`{PLACEHOLDER_URL}`", "`settings.yaml`", "`:run_id`"):
        assert placeholder in placeholders
    refusals = {
        "Run not found": errors.RunNotFound("R"),
        "Run already completed": errors.RunAlreadyCompleted("R"),
        "Run already in progress": errors.RunInProgress("R", "host:1:2:n", "T"),
        "No checkpoint available": errors.NoCheckpoint("R"),
        "Configuration mismatch": errors.ConfigurationMismatch("R", ["x: 1 != 2"]),
        "Source changed": errors.SourceChanged("R", "row 1 differs"),
    }
    for phrase, refusal in refusals.items():
        assert phrase in refusal.message, "the runbook phrase is the product's message"
        assert refusal.exit_code == 3
        assert f"`{phrase}` (3)" in text, f"the runbook lacks {phrase!r}"
    assert "Retry from the Prefect UI resumes the same ELSPETH run" in text
    assert any(_expected_code(c) == 3 for c in COMMANDS)
    assert any("--force-new" in c for c in COMMANDS)
    assert any("--settings" in c and "--force-new" not in c for c in COMMANDS)


@pytest.mark.parametrize("command", COMMANDS, ids=_command_id)
def test_runbook_command_runs(
    command: str,
    crashed: Landscape,
    completed: Landscape,
    tmp_path: Path,
) -> None:
    expected = _expected_code(command)
    if expected == 3:
        landscape = completed
    elif _changes_state(command):
        landscape = _crashed(tmp_path)
    else:
        landscape = crashed
    before = run_ids(landscape.db)
    result = run_cli(*_argv(command, landscape), cwd=landscape.work)
    assert "Traceback" not in result.stdout + result.stderr
    assert result.code == expected, (command, result.code, result.stdout, result.stderr)
    if expected == 3:
        lines = result.stderr.strip().splitlines()
        assert lines[0].startswith("Error: ") and lines[-1].startswith("Hint: "), result.stderr
        return
    if not _changes_state(command):
        return
    db, old = landscape.db, landscape.run_id
    if "--force-new" in command:
        (new,) = [r for r in run_ids(db) if r not in before]
        assert query(db, f"SELECT status, superseded_by FROM runs WHERE run_id = '{old}'") == [
            ("failed", new)
        ]
        assert_landscape_invariants(db, new, ROWS)
    else:
        assert run_ids(db) == [old]  # resumed under the same run ID
        assert_landscape_invariants(db, old, ROWS)
