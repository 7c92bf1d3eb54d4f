"""``elspeth explain`` through the real CLI: routed, quarantined, retried-after-crash, by sink line.

Each test runs a real pipeline (gate + four sinks over generated rows), then asks ``explain`` for
the lineage and checks the ``elspeth.explain/v1`` document against the landscape and the sink
files themselves: the data line N of ``high.csv`` must really be the row explain names. Every
test runs on both landscape backends (SQLite and PostgreSQL).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import signal
from pathlib import Path
from typing import Any

import pytest

from examples.generate import generate
from tests.support.cli import gate_pipeline, run_cli, url_query, url_run_ids, write_settings
from tests.support.landscape_fixtures import Landscapes

ROWS = 300
BAD_EVERY = 97  # rows 96, 193, 290 have amount "not-a-number": quarantined


Completed = tuple[Path, str, str]  # work directory, run ID, landscape URL


def _make_run(work: Path, url: str, env: dict[str, str] | None = None) -> tuple[str, int]:
    work.mkdir(parents=True, exist_ok=True)
    generate(str(work / "in.csv"), ROWS, seed=3, bad_every=BAD_EVERY)
    data = gate_pipeline(work, work / "in.csv", landscape={"url": url})
    settings = write_settings(work / "settings.yaml", data)
    result = run_cli("run", "-s", str(settings), "-x", cwd=work, env=env)
    (run_id,) = url_run_ids(url)
    return run_id, result.code


def explain_json(work: Path, url: str, *args: str) -> dict[str, Any]:
    result = run_cli("explain", *args, "--json", "-d", url, cwd=work)
    assert result.code == 0, result.stderr
    assert "Traceback" not in result.stderr
    return json.loads(result.stdout)


def csv_lines(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(path.read_text(encoding="utf-8"))))


def source_rows(work: Path) -> dict[str, dict[str, str]]:
    return {r["id"]: r for r in csv_lines(work / "in.csv")}


@pytest.fixture(scope="module")
def completed(tmp_path_factory: pytest.TempPathFactory, landscapes: Landscapes) -> Completed:
    work = tmp_path_factory.mktemp("explain")
    url = landscapes.new(work)
    run_id, code = _make_run(work, url)
    assert code == 0
    return work, run_id, url


# ------------------------------------------------------------------------------------ routed row
def test_explain_routed_row_shows_every_node_state_and_both_gate_decisions(
    completed: Completed,
) -> None:
    work, run_id, url = completed
    high = csv_lines(work / "out" / "high.csv")
    wanted_id = high[4]["id"]  # data line 5 of high.csv
    ((row_id,),) = url_query(url, "SELECT row_id FROM rows WHERE row_index = :i", i=int(wanted_id))
    doc = explain_json(work, url, "--run", run_id, "--row", row_id)

    assert doc["schema"] == "elspeth.explain/v1"
    assert doc["query"] == {
        "run": run_id,
        "row_id": row_id,
        "token_id": None,
        "sink": None,
        "line": None,
    }
    ((config_hash, status),) = url_query(
        url, "SELECT config_hash, status FROM runs WHERE run_id = :r", r=run_id
    )
    assert doc["run"]["run_id"] == run_id
    assert (
        doc["run"]["config_hash"] == config_hash and status == doc["run"]["status"] == "completed"
    )
    assert [(a["attempt"], a["kind"], a["status"]) for a in doc["run"]["attempts"]] == [
        (1, "run", "completed")
    ]

    row = doc["row"]
    assert row["row_id"] == row_id and row["row_index"] == int(wanted_id)
    assert row["source_node"]["plugin_name"] == "csv"
    assert row["payload"]["status"] == "available"
    assert row["payload"]["data"] == source_rows(work)[wanted_id]  # the raw source row
    ((recorded_hash,),) = url_query(
        url, "SELECT source_data_hash FROM rows WHERE row_id = :r", r=row_id
    )
    assert row["source_data_hash"] == recorded_hash
    assert row["recorded_by_attempt"] == 1
    assert row["validation_errors"] == []

    assert doc["focus_token_id"] is None
    (token,) = doc["tokens"]
    assert token["relation"] == "row" and token["row_id"] == row_id
    assert token["parents"] == [] and token["children"] == []
    steps = [
        (
            s["step_index"],
            s["node"]["name"],
            s["node"]["node_type"],
            s["node"]["plugin_name"],
            s["status"],
            s["attempt"],
        )
        for s in token["node_states"]
    ]
    assert steps == [
        (1, "field_mapper_0", "transform", "field_mapper", "completed", 1),
        (2, "flagged", "gate", "gate", "completed", 1),
        (3, "big", "gate", "gate", "completed", 1),
        (5, "high", "sink", "csv", "completed", 1),
    ]
    mapper = token["node_states"][0]
    assert mapper["input_hash"] != mapper["output_hash"]  # status was renamed to state
    assert all(s["duration_ms"] >= 0 and s["error"] is None for s in token["node_states"])
    assert [
        (r["node"]["name"], r["condition"], r["result"], r["edge_label"], r["destination"])
        for r in token["routing"]
    ] == [
        ("flagged", "row['state'] == 'flagged'", False, "false", "continue"),
        ("big", "row['amount'] >= 500", True, "true", "high"),
    ]
    assert token["batches"] == [] and token["transform_errors"] == []

    terminal = token["terminal_outcome"]
    assert terminal["outcome"] == "routed" and terminal["is_terminal"] is True
    assert terminal["sink_name"] == "high" and terminal["sink_line"] == 5
    artifact = terminal["artifact"]
    high_path = work / "out" / "high.csv"
    assert artifact["path_or_uri"] == str(high_path)
    assert artifact["content_hash"] == hashlib.sha256(high_path.read_bytes()).hexdigest()
    assert artifact["rows_written"] == len(high)
    assert doc["outputs"] == [
        {
            "token_id": token["token_id"],
            "outcome": "routed",
            "sink_name": "high",
            "sink_line": 5,
            "path_or_uri": str(high_path),
            "content_hash": artifact["content_hash"],
        }
    ]
    assert doc["truncated"] is False

    # The same token asked for directly: the same lineage, with the token as the focus.
    by_token = explain_json(work, url, "--run", run_id, "--token", token["token_id"])
    assert by_token["focus_token_id"] == token["token_id"]
    assert by_token["row"]["row_id"] == row_id
    (focus,) = by_token["tokens"]
    assert focus["relation"] == "focus"
    assert focus["node_states"] == token["node_states"] and focus["routing"] == token["routing"]


def test_explain_tree_on_a_terminal_names_gates_sink_line_and_payload(
    completed: Completed,
) -> None:
    work, run_id, url = completed
    result = run_cli(
        "explain",
        "--run",
        "latest",
        "--sink",
        "high",
        "--line",
        "2",
        "-d",
        url,
        cwd=work,
    )
    assert result.code == 0, result.stderr
    text = " ".join(result.stdout.split())  # the tree wraps long lines
    second = csv_lines(work / "out" / "high.csv")[1]
    assert f"Run {run_id} completed" in text
    assert "row['amount'] >= 500 → true → high" in text
    assert "sink high line 2" in text
    assert f'"id": "{second["id"]}"' in text  # the payload
    assert "(focus)" in text


# --------------------------------------------------------------------------------- by sink line
@pytest.mark.parametrize("sink", ["high", "normal", "flagged"])
def test_explain_by_sink_line_finds_the_row_written_on_that_line(
    completed: Completed, sink: str
) -> None:
    work, run_id, url = completed
    path = work / "out" / (f"{sink}.csv" if sink != "flagged" else "flagged.jsonl")
    if path.suffix == ".csv":
        lines = [r["id"] for r in csv_lines(path)]
    else:
        lines = [str(json.loads(line)["id"]) for line in path.read_text().splitlines()]
    for line in (1, len(lines) // 2, len(lines)):
        doc = explain_json(work, url, "--run", run_id, "--sink", sink, "--line", str(line))
        assert doc["query"]["sink"] == sink and doc["query"]["line"] == line
        focus = next(t for t in doc["tokens"] if t["token_id"] == doc["focus_token_id"])
        assert focus["relation"] == "focus"
        assert focus["terminal_outcome"]["sink_name"] == sink
        assert focus["terminal_outcome"]["sink_line"] == line
        # The row explain names is the row on that data line of the file.
        assert doc["row"]["payload"]["data"]["id"] == lines[line - 1]
        assert doc["row"]["row_index"] == int(lines[line - 1])


def test_explain_a_line_past_the_end_is_refused_with_a_hint(completed: Completed) -> None:
    work, run_id, url = completed
    high = len(csv_lines(work / "out" / "high.csv"))
    result = run_cli(
        "explain",
        "--run",
        run_id,
        "--sink",
        "high",
        "--line",
        str(high + 1),
        "-d",
        url,
        cwd=work,
    )
    assert result.code == 1
    lines = result.stderr.strip().splitlines()
    assert lines[0].startswith("Error: ") and f"data line {high + 1} of sink 'high'" in lines[0]
    assert f"it has {high} data line(s)" in lines[0]
    assert lines[1].startswith("Hint: ") and len(lines) == 2


# ------------------------------------------------------------------------------ quarantined row
def test_explain_quarantined_row_shows_reason_and_quarantine_line(
    completed: Completed,
) -> None:
    work, run_id, url = completed
    bad_index = BAD_EVERY - 1
    ((row_id,),) = url_query(url, "SELECT row_id FROM rows WHERE row_index = :i", i=bad_index)
    doc = explain_json(work, url, "--run", "latest", "--row", row_id)
    row = doc["row"]
    assert row["payload"]["data"]["amount"] == "not-a-number"
    (error,) = row["validation_errors"]
    assert "amount" in error["reason"] and error["destination"] == "quarantine"
    assert error["row_hash"] == row["source_data_hash"]
    (token,) = doc["tokens"]
    assert [s["node"]["name"] for s in token["node_states"]] == ["quarantine"]
    assert token["routing"] == []
    terminal = token["terminal_outcome"]
    assert terminal["outcome"] == "quarantined" and terminal["sink_name"] == "quarantine"
    assert "amount" in terminal["reason"]
    written = (work / "out" / "quarantine.jsonl").read_text().splitlines()
    assert terminal["sink_line"] == 1  # the first bad row is the first quarantined line
    assert "not-a-number" in written[terminal["sink_line"] - 1]


# ---------------------------------------------------------------------- retried after a crash
def test_explain_row_retried_after_a_crash_names_the_resume_attempt(
    tmp_path: Path, landscape_url: str
) -> None:
    work, url = tmp_path, landscape_url
    run_id, code = _make_run(work, url, env={"ELSPETH_FAULT_INJECT": "after_sink_write:3"})
    assert code == -signal.SIGKILL
    committed = url_query(url, "SELECT count(*) FROM rows")[0][0]
    # The killed process had written rows past the committed ones into high.csv: find one.
    before = csv_lines(work / "out" / "high.csv")
    lost = next(r["id"] for r in before if int(r["id"]) >= committed)
    resumed = run_cli("resume", run_id, "-x", "-d", url, cwd=work)
    assert resumed.code == 0, resumed.stderr

    after = [r["id"] for r in csv_lines(work / "out" / "high.csv")]
    assert after.count(lost) == 1  # rewritten once, not duplicated
    line = after.index(lost) + 1
    doc = explain_json(work, url, "--run", run_id, "--sink", "high", "--line", str(line))
    assert [
        (a["attempt"], a["kind"], a["status"], a["rows_before"]) for a in doc["run"]["attempts"]
    ] == [
        (1, "run", "interrupted", 0),
        (2, "resume", "completed", committed),
    ]
    assert doc["row"]["row_index"] == int(lost)
    assert doc["row"]["payload"]["data"]["id"] == lost
    assert doc["row"]["recorded_by_attempt"] == 2
    (token,) = doc["tokens"]
    assert token["terminal_outcome"]["sink_line"] == line
    assert [s["attempt"] for s in token["node_states"]] == [1, 1, 1, 1]  # one pass, no leftovers
    # A row committed before the crash is attributed to the first attempt.
    ((early,),) = url_query(url, "SELECT row_id FROM rows WHERE row_index = 0")
    assert (
        explain_json(work, url, "--run", run_id, "--row", early)["row"]["recorded_by_attempt"] == 1
    )


# ------------------------------------------------------------------------------------ refusals
def test_explain_needs_exactly_one_target(completed: Completed) -> None:
    work, _run_id, url = completed
    for args in ([], ["--row", "a", "--token", "b"], ["--sink", "high"], ["--line", "3"]):
        result = run_cli("explain", "--run", "latest", *args, "-d", url, cwd=work)
        assert result.code == 1, args
        assert result.stderr.startswith("Error: explain needs exactly one of")
        assert "Traceback" not in result.stderr


def test_explain_unknown_run_row_or_token_is_a_clear_error(completed: Completed) -> None:
    work, run_id, url = completed
    cases = [
        (["--run", "nope", "--row", "x"], "Run not found: nope"),
        (["--run", run_id, "--row", "x"], "row x not found"),
        (["--run", run_id, "--token", "y"], "token y not found"),
    ]
    for args, phrase in cases:
        result = run_cli("explain", *args, "-d", url, cwd=work)
        assert result.code == 1, (args, result.stderr)
        assert phrase in result.stderr and "Hint: " in result.stderr


def test_explain_against_a_missing_landscape_creates_nothing(
    tmp_path: Path, landscapes: Landscapes, request: pytest.FixtureRequest
) -> None:
    """A SQLite file that does not exist, or a PostgreSQL database without a landscape."""
    url = landscapes.new(tmp_path / "none", request=request)
    result = run_cli("explain", "--run", "latest", "--row", "x", "-d", url, cwd=tmp_path)
    assert result.code == 1
    assert "no landscape found" in result.stderr
    assert not (tmp_path / "none").exists()
    if landscapes.backend == "postgres":
        tables = "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'"
        assert url_query(url, tables) == [(0,)]
