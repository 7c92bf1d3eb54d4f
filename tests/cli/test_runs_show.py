"""``elspeth runs list|show`` through the real CLI: counts match the landscape and the sink files.

A completed run, a crashed run (SIGKILL after its fifth commit, lease left behind) and that run
resumed: the summaries must tell them apart (status, pending tokens, attempts, checkpoints,
lease) and every count must equal what the sink files and the tables hold. Every test runs on
both landscape backends (SQLite and PostgreSQL).
"""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import pytest

from examples.generate import generate
from tests.support.cli import gate_pipeline, run_cli, url_query, url_run_ids, write_settings
from tests.support.landscape_fixtures import Landscapes

ROWS = 600
BAD_EVERY = 97


Completed = tuple[Path, str, str]  # work directory, run ID, landscape URL


def _settings(work: Path, url: str) -> Path:
    work.mkdir(parents=True, exist_ok=True)
    generate(str(work / "in.csv"), ROWS, seed=4, bad_every=BAD_EVERY)
    data = gate_pipeline(work, work / "in.csv", landscape={"url": url})
    return write_settings(work / "settings.yaml", data)


def _show(work: Path, url: str, run: str) -> dict[str, Any]:
    result = run_cli("runs", "show", run, "--json", "-d", url, cwd=work)
    assert result.code == 0, result.stderr
    return json.loads(result.stdout)


def _lines(path: Path) -> int:
    count = path.read_bytes().count(b"\n")
    return count - 1 if path.suffix == ".csv" else count


@pytest.fixture(scope="module")
def completed(tmp_path_factory: pytest.TempPathFactory, landscapes: Landscapes) -> Completed:
    work = tmp_path_factory.mktemp("completed")
    url = landscapes.new(work)
    result = run_cli("run", "-s", str(_settings(work, url)), "-x", cwd=work)
    assert result.code == 0, result.stderr
    (run_id,) = url_run_ids(url)
    return work, run_id, url


def test_runs_show_counts_match_sink_files_and_tables(completed: Completed) -> None:
    work, run_id, url = completed
    data = _show(work, url, run_id)
    assert data["run_id"] == run_id
    assert data["status"] == data["recorded_status"] == "completed"
    assert data["rows"] == data["tokens"] == data["source_rows_ingested"] == ROWS
    assert data["source_exhausted"] is True and data["pending_tokens"] == 0
    quarantined = ROWS // BAD_EVERY
    assert data["quarantined"] == data["validation_errors"] == quarantined
    assert data["failed"] == 0 and data["transform_errors"] == 0
    assert sum(data["terminal_outcomes"].values()) == ROWS
    assert data["terminal_outcomes"]["quarantined"] == quarantined
    files = {
        "normal": "normal.csv",
        "high": "high.csv",
        "flagged": "flagged.jsonl",
        "quarantine": "quarantine.jsonl",
    }
    assert data["sinks"] == {sink: _lines(work / "out" / name) for sink, name in files.items()}
    assert data["terminal_outcomes"]["completed"] == data["sinks"]["normal"]
    assert data["terminal_outcomes"]["routed"] == data["sinks"]["high"] + data["sinks"]["flagged"]
    assert [(a["attempt"], a["kind"], a["status"]) for a in data["attempts"]] == [
        (1, "run", "completed")
    ]
    assert data["resumes"] == 0
    assert data["checkpoints"] == 0 and data["latest_checkpoint"] is None
    assert data["lease"] == {
        "owner": None,
        "expires_at": None,
        "live": False,
        "heartbeat_at": data["lease"]["heartbeat_at"],
    }
    artifacts = {a["sink_name"]: a for a in data["artifacts"]}
    assert set(artifacts) == set(files)
    for sink, artifact in artifacts.items():
        assert artifact["rows_written"] == data["sinks"][sink]
        assert artifact["path_or_uri"] == str(work / "out" / files[sink])
    ((config_hash,),) = url_query(url, "SELECT config_hash FROM runs")
    assert data["config_hash"] == config_hash


def test_runs_show_latest_and_text_output(completed: Completed) -> None:
    work, run_id, url = completed
    assert _show(work, url, "latest")["run_id"] == run_id
    text = run_cli("runs", "show", run_id, "-d", url, cwd=work)
    assert text.code == 0
    assert f"Run {run_id}: completed" in text.stdout
    assert f"rows {ROWS}" in text.stdout and "outcome quarantined" in text.stdout
    assert "attempt 1 run" in text.stdout and "lease free" in text.stdout


def test_runs_show_unknown_run_is_refused(completed: Completed) -> None:
    work, _, url = completed
    result = run_cli("runs", "show", "nope", "-d", url, cwd=work)
    assert result.code == 3
    assert result.stderr.startswith("Error: Run not found: nope")
    assert "Hint: " in result.stderr


def test_runs_of_a_crashed_then_resumed_run(tmp_path: Path, landscape_url: str) -> None:
    url = landscape_url
    settings = _settings(tmp_path, url)
    crash = run_cli(
        "run",
        "-s",
        str(settings),
        "-x",
        cwd=tmp_path,
        env={"ELSPETH_FAULT_INJECT": "after_commit:5"},
    )
    assert crash.code == -signal.SIGKILL
    (run_id,) = url_run_ids(url)
    crashed = _show(tmp_path, url, run_id)
    # Its process is dead: shown interrupted although the column still says running.
    assert crashed["recorded_status"] == "running" and crashed["status"] == "interrupted"
    assert crashed["lease"]["owner"] is not None and crashed["lease"]["live"] is False
    assert 0 < crashed["rows"] < ROWS and crashed["source_exhausted"] is False
    assert crashed["checkpoints"] == 1
    assert crashed["latest_checkpoint"]["rows_ingested"] == crashed["rows"]
    assert crashed["pending_tokens"] == crashed["tokens"] - sum(
        crashed["terminal_outcomes"].values()
    )
    assert [(a["attempt"], a["status"]) for a in crashed["attempts"]] == [(1, "running")]

    listed = run_cli("runs", "list", "--json", "-d", url, cwd=tmp_path)
    (entry,) = json.loads(listed.stdout)
    assert entry["status"] == "interrupted" and entry["rows"] == crashed["rows"]

    resumed = run_cli("resume", run_id, "-x", "-d", url, cwd=tmp_path)
    assert resumed.code == 0, resumed.stderr
    done = _show(tmp_path, url, run_id)
    assert done["status"] == "completed" and done["rows"] == ROWS
    assert done["pending_tokens"] == 0 and done["checkpoints"] == 0
    assert [(a["attempt"], a["kind"], a["status"]) for a in done["attempts"]] == [
        (1, "run", "interrupted"),
        (2, "resume", "completed"),
    ]
    assert done["resumes"] == 1
    assert done["attempts"][1]["rows_before"] == crashed["rows"]


def test_runs_list_filters_and_orders(tmp_path: Path, landscape_url: str) -> None:
    url = landscape_url
    settings = _settings(tmp_path, url)
    for _ in range(2):
        assert run_cli("run", "-s", str(settings), "-x", cwd=tmp_path).code == 0
    first, newest = url_run_ids(url)
    listed = json.loads(run_cli("runs", "list", "--json", "-d", url, cwd=tmp_path).stdout)
    assert [r["run_id"] for r in listed] == [newest, first]
    assert [r["rows"] for r in listed] == [ROWS, ROWS]
    limited = json.loads(
        run_cli("runs", "list", "--json", "--limit", "1", "-d", url, cwd=tmp_path).stdout
    )
    assert [r["run_id"] for r in limited] == [newest]
    none = json.loads(
        run_cli("runs", "list", "--json", "--status", "failed", "-d", url, cwd=tmp_path).stdout
    )
    assert none == []
    text = run_cli("runs", "list", "-d", url, cwd=tmp_path).stdout.splitlines()
    assert text[0].startswith(newest) and f"rows={ROWS}" in text[0]
    assert text[1].startswith(first)
