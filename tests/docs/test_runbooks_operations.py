"""The operations runbooks are true: every ``bash`` command and ``sql`` query in them runs verbatim.

For each runbook of ``RUNBOOKS``, a project directory laid out as the runbooks assume (settings
with relative paths, ``runs/audit.db``, ``.elspeth/payloads``, ``out/``) is built by running the
real CLI, and the runbook is executed in document order:
- every line of a ```bash block runs with ``bash -c`` in that directory, after replacing the
  documented placeholders (``RUN_ID``, ``ROW_ID``, ``DAYS``); a trailing ``# exit N`` comment is
  the exit code the runbook promises (0 otherwise), and a refusal must print ``Error:`` and
  ``Hint:``;
- every ```sql block runs with the ``sqlite3`` module against ``runs/audit.db`` with ``:run_id``,
  ``:row_id`` and ``:cutoff`` bound; its first line is a ``-- title`` and the titles in ``SQL``
  below say what the query must return.
Every test builds its own project (a landscape records absolute sink paths, so a copy of a
project is not the same project). The change runbook runs each section on its own interrupted
run (its sections are alternatives); the restore runbook loses ``runs/``, ``.elspeth/`` and ``out/`` between the backup
and the restore sections, as a disk would.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from examples.generate import generate
from tests.support.cli import REPO, cli_env, gate_pipeline, run_cli, run_ids, write_settings

RUNBOOKS_DIR = REPO / "docs" / "runbooks"
ROWS = 300
BAD_EVERY = 97  # three quarantined rows
SIGNING_KEY = "runbook-test-signing-key"


# ------------------------------------------------------------------------------- the runbooks
@dataclass
class Step:
    section: str
    language: str
    text: str


def steps(name: str) -> list[Step]:
    found, section, block, language = [], "", None, ""
    for line in (RUNBOOKS_DIR / name).read_text(encoding="utf-8").splitlines():
        if block is None and line.startswith("## "):
            section = line[3:].strip()
        elif block is None and line in ("```bash", "```sql"):
            block, language = [], line[3:]
        elif block is not None and line == "```":
            found.append(Step(section, language, "\n".join(block)))
            block = None
        elif block is not None:
            block.append(line)
    return found


def commands(step: Step) -> list[str]:
    joined = step.text.replace("\\\n", " ")
    return [
        line.strip()
        for line in joined.splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]


def title(step: Step) -> str:
    first = step.text.strip().splitlines()[0]
    assert first.startswith("-- "), f"a runbook SQL block must open with a '-- title': {first!r}"
    return first[3:].strip()


# ------------------------------------------------------------------------------- landscapes
@dataclass
class Project:
    work: Path
    run_id: str
    row_id: str  # the first quarantined row
    outputs: list[tuple[str, int, str]] = field(default_factory=list)  # command, code, stdout


def _settings(work: Path) -> dict[str, Any]:
    data = gate_pipeline(Path("."), Path("input.csv"))
    data["landscape"] = {"url": "sqlite:///runs/audit.db"}
    data["payload_store"] = {"base_path": ".elspeth/payloads"}
    return data


def _template(root: Path, *, crash: str | None) -> Project:
    work = root / "project"
    work.mkdir()
    generate(str(work / "input.csv"), ROWS, seed=3, bad_every=BAD_EVERY)
    data = _settings(work)
    write_settings(work / "settings.yaml", data)
    changed = _settings(work)
    changed["gates"][1]["condition"] = "row['amount'] >= 800"
    for sink in changed["sinks"].values():
        sink["options"]["path"] = sink["options"]["path"].replace("out/", "out-v2/")
    write_settings(work / "changed.yaml", changed)
    tuned = _settings(work)
    tuned["checkpoint"]["checkpoint_interval"] = 50
    tuned["retry"] = {"max_attempts": 5}
    tuned["concurrency"] = {"max_workers": 2}
    write_settings(work / "tuned.yaml", tuned)
    env = {"ELSPETH_FAULT_INJECT": crash} if crash else None
    result = run_cli("run", "-s", "settings.yaml", "-x", cwd=work, env=env)
    assert result.code == (-signal.SIGKILL if crash else 0), result.stderr
    (run_id,) = run_ids(work / "runs" / "audit.db")
    with closing(sqlite3.connect(work / "runs" / "audit.db")) as conn:
        (row_id,) = conn.execute(
            "SELECT row_id FROM validation_errors ORDER BY row_index LIMIT 1"
        ).fetchone()
    return Project(work, run_id, row_id)


def completed(tmp_path: Path) -> Project:
    return _template(tmp_path, crash=None)


def crashed(tmp_path: Path) -> Project:
    return _template(tmp_path, crash="after_commit:3")


# ------------------------------------------------------------------------------- execution
def _env() -> dict[str, str]:
    env = cli_env({"ELSPETH_SIGNING_KEY": SIGNING_KEY})
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def _substitute(command: str, project: Project) -> str:
    for placeholder, value in (
        ("RUN_ID", project.run_id),
        ("ROW_ID", project.row_id),
        ("DAYS", "0"),
    ):
        command = re.sub(rf"\b{placeholder}\b", value, command)
    return command


def _expected(command: str) -> int:
    found = re.search(r"#.*\bexit (\d+)\b", command)
    return int(found.group(1)) if found else 0


def run_bash(step: Step, project: Project) -> None:
    for command in commands(step):
        line = _substitute(command, project)
        proc = subprocess.run(
            ["bash", "-c", line],
            cwd=project.work,
            env=_env(),
            capture_output=True,
            text=True,
            timeout=600,
        )
        expected = _expected(command)
        assert "Traceback" not in proc.stdout + proc.stderr, (line, proc.stderr)
        assert proc.returncode == expected, (line, proc.returncode, proc.stdout, proc.stderr)
        if expected:
            lines = proc.stderr.strip().splitlines()
            assert lines[0].startswith("Error: ") and lines[-1].startswith("Hint: "), proc.stderr
        project.outputs.append((command, proc.returncode, proc.stdout))


def run_sql(step: Step, project: Project) -> list[dict[str, Any]]:
    cutoff = (datetime.now(UTC) + timedelta(seconds=1)).strftime("%Y-%m-%d %H:%M:%S")
    params = {"run_id": project.run_id, "row_id": project.row_id, "cutoff": cutoff}
    with closing(sqlite3.connect(project.work / "runs" / "audit.db")) as conn:
        cursor = conn.execute(step.text, params)
        names = [column[0] for column in cursor.description]
        rows = [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
    check = SQL.get(title(step))
    if check is not None:
        check(rows, project)
    return rows


def execute(step: Step, project: Project) -> None:
    if step.language == "bash":
        run_bash(step, project)
    else:
        run_sql(step, project)


def output_of(project: Project, fragment: str, *, first: bool = False) -> str:
    """The stdout of the last (or first) command with ``fragment`` (and not ``--json``)."""
    found = [
        out
        for command, _code, out in project.outputs
        if fragment in command and "--json" not in command
    ]
    assert found, f"no command with {fragment!r} ran"
    return found[0] if first else found[-1]


# ------------------------------------------------------------------------ what queries return
Rows = list[dict[str, Any]]


def _quarantine_reasons(rows: Rows, p: Project) -> None:
    assert sum(r["row_count"] for r in rows) == ROWS // BAD_EVERY
    assert all("amount" in r["reason"] and r["destination"] == "quarantine" for r in rows)


def _quarantined_rows(rows: Rows, p: Project) -> None:
    assert [r["row_index"] for r in rows] == [96, 193, 290]
    assert rows[0]["row_id"] == p.row_id


def _quarantined_lines(rows: Rows, p: Project) -> None:
    assert [(r["sink_name"], r["sink_line"]) for r in rows] == [
        ("quarantine", n) for n in (1, 2, 3)
    ]
    lines = (p.work / "out" / "quarantine.jsonl").read_text().splitlines()
    for row in rows:  # the line in the file is that row
        assert f'"id":"{row["row_index"]}"' in lines[row["sink_line"] - 1].replace(" ", "")


def _no_rows(rows: Rows, p: Project) -> None:
    assert rows == []


def _one_row(rows: Rows, p: Project) -> None:
    (row,) = rows
    assert row["row_id"] == p.row_id and "amount" in row["reason"]


def _configurations(rows: Rows, p: Project) -> None:
    mine = [r for r in rows if r["run_id"] == p.run_id]
    assert len(mine) == 1 and len(mine[0]["config_hash"]) == 64


def _superseded(rows: Rows, p: Project) -> None:
    (row,) = rows
    assert row["status"] == "failed" and row["superseded_by"] in run_ids(
        p.work / "runs" / "audit.db"
    )


def _past_retention(rows: Rows, p: Project) -> None:
    assert p.run_id in [r["run_id"] for r in rows]


def _payload_state(rows: Rows, p: Project) -> None:
    mine = next(r for r in rows if r["run_id"] == p.run_id)
    assert mine["row_count"] == ROWS and mine["purged_rows"] in (0, ROWS)


def _purged(rows: Rows, p: Project) -> None:
    assert rows == [{"purged_rows": ROWS}]


def _artifacts(rows: Rows, p: Project) -> None:
    assert {r["sink_name"] for r in rows} == {"normal", "high", "flagged", "quarantine"}
    for row in rows:  # the restored files are the ones the run recorded
        data = (p.work / row["path_or_uri"]).read_bytes()  # recorded absolute: the restored file
        assert hashlib.sha256(data).hexdigest() == row["content_hash"]
        assert len(data) == row["size_bytes"]


SQL: dict[str, Callable[[Rows, Project], None]] = {
    "Quarantine reasons, most frequent first": _quarantine_reasons,
    "Quarantined rows of a run": _quarantined_rows,
    "Quarantined tokens and their line in the quarantine sink": _quarantined_lines,
    "Transform failures of a run": _no_rows,
    "One row: hash, payload reference and validation error": _one_row,
    "Configuration of recent runs": _configurations,
    "Which run superseded which": _superseded,
    "Completed runs past retention": _past_retention,
    "Payload state per run": _payload_state,
    "Rows of a run whose payload was purged": _purged,
    "Sink artifacts with their recorded content hash": _artifacts,
    "Tokens without exactly one terminal outcome": _no_rows,
}

RUNBOOKS = (
    "investigate-quarantined-row.md",
    "change-pipeline-safely.md",
    "purge-and-retention.md",
    "restore-after-disk-loss.md",
)


# ----------------------------------------------------------------------------------- the tests
@pytest.mark.parametrize("name", RUNBOOKS)
def test_runbook_documents_its_placeholders_and_titles_its_queries(name: str) -> None:
    text = (RUNBOOKS_DIR / name).read_text(encoding="utf-8")
    placeholders = text.split("## Placeholders", 1)[1].split("\n## ", 1)[0]
    found = steps(name)
    assert any(s.language == "bash" for s in found) and "`sqlite:///runs/audit.db`" in placeholders
    used = " ".join(s.text for s in found)
    for placeholder in ("RUN_ID", "ROW_ID", "DAYS", ":run_id", ":row_id", ":cutoff"):
        if re.search(rf"(?<![\w.]){re.escape(placeholder)}\b", used):
            assert f"`{placeholder}`" in placeholders, f"{name}: {placeholder} not documented"
    for step in found:
        if step.language == "sql":
            assert title(step) in SQL, f"{name}: no expectation for query {title(step)!r}"


def test_every_expected_query_is_still_in_a_runbook() -> None:
    titles = {title(s) for name in RUNBOOKS for s in steps(name) if s.language == "sql"}
    assert set(SQL) <= titles, sorted(set(SQL) - titles)


def test_investigate_quarantined_row_runbook(tmp_path: Path) -> None:
    project = completed(tmp_path)
    for step in steps("investigate-quarantined-row.md"):
        execute(step, project)
    tree = " ".join(output_of(project, "--row ROW_ID --database").split())
    assert "quarantined → quarantine" in tree and "not-a-number" in tree
    assert "sink quarantine line 1" in output_of(project, "--sink quarantine --line 1")
    assert len(run_ids(project.work / "runs" / "audit.db")) == 2  # reprocessed as a new run


@pytest.mark.parametrize(
    "section",
    [s for s in dict.fromkeys(step.section for step in steps("change-pipeline-safely.md"))],
)
def test_change_pipeline_safely_runbook_section(tmp_path: Path, section: str) -> None:
    project = crashed(tmp_path)
    for step in steps("change-pipeline-safely.md"):
        if step.section == section:
            execute(step, project)
    db = project.work / "runs" / "audit.db"
    with closing(sqlite3.connect(db)) as conn:
        runs = dict(conn.execute("SELECT run_id, status FROM runs").fetchall())
    if section.startswith("3."):  # finished as configured, then the new pipeline as a new run
        assert runs.pop(project.run_id) == "completed"
        assert list(runs.values()) == ["completed"]
        assert (project.work / "out-v2" / "high.csv").exists()
    elif section.startswith("4."):
        assert runs.pop(project.run_id) == "failed" and list(runs.values()) == ["completed"]
    elif section.startswith("5."):
        assert runs == {project.run_id: "completed"}
    else:
        assert runs == {project.run_id: "running"}  # refused and dry runs change nothing


def test_purge_and_retention_runbook(tmp_path: Path) -> None:
    project = completed(tmp_path)
    for step in steps("purge-and-retention.md"):
        execute(step, project)
    assert "Nothing to purge" in output_of(project, "purge --dry-run --database")
    assert f"Would purge run {project.run_id}" in output_of(
        project, "--retention-days DAYS --dry-run"
    )
    assert f"Purged run {project.run_id}" in output_of(
        project, "--retention-days DAYS --yes", first=True
    )
    assert "Nothing to purge" in output_of(project, "--retention-days DAYS --yes")  # idempotent
    assert "payload purged" in output_of(project, "explain --run RUN_ID --row ROW_ID")
    assert output_of(project, "elspeth verify").startswith("verified ")
    assert not (project.work / ".elspeth" / "payloads" / project.run_id).exists()


def test_restore_after_disk_loss_runbook(tmp_path: Path) -> None:
    project = completed(tmp_path)
    lost = False
    for step in steps("restore-after-disk-loss.md"):
        if step.section.startswith("2.") and not lost:
            for folder in ("runs", ".elspeth", "out"):  # the disk is gone
                shutil.rmtree(project.work / folder)
            lost = True
        execute(step, project)
    assert lost
    assert output_of(project, "elspeth health").strip().endswith("healthy")
    assert f"Run {project.run_id}: completed" in output_of(project, "runs show RUN_ID")
    assert "payload {" in output_of(project, "explain --run RUN_ID --sink high --line 1")
    assert output_of(project, "elspeth verify backup/").startswith("verified ")
    recorded = {}
    with closing(sqlite3.connect(project.work / "runs" / "audit.db")) as conn:
        recorded = {
            str((project.work / path).resolve()): digest
            for path, digest in conn.execute("SELECT path_or_uri, content_hash FROM artifacts")
        }
    checked = output_of(project, "sha256sum").splitlines()
    assert len(checked) == len(recorded) == 4
    for line in checked:
        digest, path = line.split()
        assert recorded[str((project.work / path).resolve())] == digest
