"""``landscape.export`` at run end, through the real ``elspeth`` CLI in a subprocess.

A run with ``landscape.export: {enabled: true, sign: true}`` must leave a signed export that
``elspeth verify`` accepts and that holds exactly the run's records; a missing key must refuse the
run before anything exists (no landscape, no sink file); the export sink takes no rows (a route to
it is a validation error); a run killed mid-way and resumed is exported once, at the end of the
resume, covering every row; an export that fails after the run completed leaves the run completed,
exits 2 and names the command that writes the export again. The tests that record a run do so on
both landscape backends (SQLite and PostgreSQL); validation-only tests open no landscape.
"""

from __future__ import annotations

import csv
import json
import shlex
import signal
from pathlib import Path
from typing import Any

import pytest
import yaml

from elspeth_core.config import load_settings_from_dict
from elspeth_core.dag import build_graph
from examples.generate import generate
from tests.support.cli import (
    Result,
    gate_pipeline,
    run_cli,
    sink_files,
    url_invariants,
    url_query,
    url_run_ids,
    write_settings,
)

ROWS = 600
KEY = {"ELSPETH_SIGNING_KEY": "run-end-audit-key-0123456789"}
RUN_TABLES = (
    "runs",
    "run_attempts",
    "nodes",
    "edges",
    "rows",
    "tokens",
    "node_states",
    "routing_events",
    "token_outcomes",
    "batches",
    "artifacts",
    "validation_errors",
    "transform_errors",
)


def _settings(work: Path, url: str | None = None, *, fmt: str = "json", sign: bool = True) -> Path:
    """The gate pipeline of ``tests.support.cli`` plus an ``audit`` sink used by the export.

    ``url``: the landscape (default: ``audit.db`` in ``work``).
    """
    work.mkdir(parents=True, exist_ok=True)
    generate(str(work / "in.csv"), ROWS, seed=11, bad_every=53)
    data = gate_pipeline(work, work / "in.csv")
    if url is not None:
        data["landscape"]["url"] = url
    suffix = "jsonl" if fmt == "json" else "csv"
    data["sinks"]["audit"] = {
        "plugin": fmt,
        "options": {"path": str(work / "exports" / f"audit.{suffix}")},
    }
    data["landscape"]["export"] = {"enabled": True, "sink": "audit", "format": fmt, "sign": sign}
    return write_settings(work / "settings.yaml", data)


def _export_path(work: Path, fmt: str = "json") -> Path:
    return work / "exports" / ("audit.jsonl" if fmt == "json" else "audit.csv")


def _manifest(path: Path) -> dict[str, Any]:
    last = path.read_text().splitlines()[-1]
    if path.suffix == ".csv":
        return dict(json.loads(next(csv.reader([last]))[3]))
    return dict(json.loads(last)["manifest"])


def _landscape_counts(url: str, run_id: str) -> dict[str, int]:
    counts = {
        t: url_query(url, f"SELECT count(*) FROM {t} WHERE run_id = :r", r=run_id)[0][0]
        for t in RUN_TABLES
    }
    counts["token_parents"] = url_query(url, "SELECT count(*) FROM token_parents")[0][0]
    counts["batch_members"] = counts["batch_outputs"] = 0
    return counts


def _one_error_line(result: Result) -> tuple[str, str]:
    assert "Traceback" not in result.stderr + result.stdout
    lines = [line for line in result.stderr.strip().splitlines() if not line.startswith("Run ")]
    assert len(lines) == 2, result.stderr
    reason, hint = lines
    assert reason.startswith("Error: ") and hint.startswith("Hint: "), result.stderr
    return reason, hint


@pytest.mark.parametrize("fmt", ["json", "csv"])
def test_signed_export_at_run_end_verifies_and_names_a_tampered_record(
    tmp_path: Path, fmt: str, landscape_url: str
) -> None:
    url = landscape_url
    settings = _settings(tmp_path, url, fmt=fmt)
    result = run_cli("run", "-s", str(settings), "-x", cwd=tmp_path, env=KEY)
    assert result.code == 0, result.stderr
    (run_id,) = url_run_ids(url)
    path = _export_path(tmp_path, fmt)
    assert f"audit export: {path}" in result.stdout
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no .partial left

    manifest = _manifest(path)
    assert manifest["run_id"] == run_id and manifest["algorithm"] == "hmac-sha256-chain-v1"
    assert manifest["tables"] == _landscape_counts(url, run_id)
    assert manifest["tables"]["rows"] == ROWS
    # The exported runs record is the final one (the export is written after finish_run).
    assert url_query(url, "SELECT status FROM runs")[0][0] == "completed"
    # The export sink is no pipeline node: no node, no artifact, no rows routed to it.
    assert url_query(url, "SELECT count(*) FROM nodes WHERE name = 'audit'")[0][0] == 0
    assert url_query(url, "SELECT count(*) FROM token_outcomes WHERE sink_name = 'audit'") == [(0,)]
    assert set(sink_files(tmp_path)) == {
        "normal.csv",
        "high.csv",
        "flagged.jsonl",
        "quarantine.jsonl",
    }

    verified = run_cli("verify", str(path), cwd=tmp_path, env=KEY)
    assert verified.code == 0, verified.stderr
    assert verified.stdout.startswith(f"verified {manifest['records']} records of run {run_id}")

    if fmt == "csv":
        return  # tampering a CSV export is covered by test_export_verify
    lines = path.read_text().splitlines()
    target = next(i for i, line in enumerate(lines) if '"table":"token_outcomes"' in line) + 3
    entry = json.loads(lines[target])
    entry["record"]["sink_name"] = "high" if entry["record"]["sink_name"] != "high" else "normal"
    lines[target] = json.dumps(entry)
    tampered = tmp_path / "tampered.jsonl"
    tampered.write_text("\n".join(lines) + "\n")
    result = run_cli("verify", str(tampered), cwd=tmp_path, env=KEY)
    assert result.code == 1
    reason, _hint = _one_error_line(result)
    assert reason == (
        f"Error: record {target} (token_outcomes {entry['id']}) does not match its signature: "
        "tampered"
    )


def test_missing_key_refuses_the_run_before_anything_is_written(
    tmp_path: Path, landscape_url: str
) -> None:
    settings = _settings(tmp_path, landscape_url)
    for command in (["validate", "-s", str(settings)], ["run", "-s", str(settings), "-x"]):
        result = run_cli(*command, cwd=tmp_path)
        assert result.code == 1, (command, result.stdout, result.stderr)
        reason, hint = _one_error_line(result)
        line = next(
            n for n, text in enumerate(settings.read_text().splitlines(), 1) if "sign:" in text
        )
        assert reason == (
            f"Error: {settings}:{line}: landscape.export.sign: a signed run-end audit export "
            "needs a signing key, and ELSPETH_SIGNING_KEY is not set"
        ), reason
        assert "ELSPETH_SIGNING_KEY" in hint
    # Nothing was created: no landscape (so no run row), no sink file, no export, no payloads.
    assert url_run_ids(landscape_url) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.csv", "settings.yaml"]


@pytest.mark.parametrize(
    ("change", "key"),
    [
        (lambda d: d["gates"][1]["routes"].update(true="audit"), "gates[1].routes.true"),
        (lambda d: d.update(output_sink="audit"), "output_sink"),
        (
            lambda d: d["datasource"]["options"].update(on_validation_failure="audit"),
            "datasource.options.on_validation_failure",
        ),
        (lambda d: d["row_plugins"][0].update(on_error="audit"), "row_plugins[0].on_error"),
        (
            lambda d: d["gates"][0].update(
                routes={"true": "fork", "false": "continue"}, fork_to=["high", "audit"]
            ),
            "gates[0].fork_to[1]",
        ),
    ],
)
def test_a_route_to_the_export_sink_is_a_validation_error(
    tmp_path: Path, change: Any, key: str
) -> None:
    settings = _settings(tmp_path)
    data = yaml.safe_load(settings.read_text())
    change(data)
    write_settings(settings, data)
    result = run_cli("validate", "-s", str(settings), cwd=tmp_path, env=KEY)
    assert result.code == 1, result.stdout
    reason, _hint = _one_error_line(result)
    assert reason.startswith(f"Error: {settings}:"), reason
    assert reason.endswith(
        f": {key}: sends rows to 'audit', the audit export sink (landscape.export.sink), which "
        "receives only the run's audit export, never rows"
    ), reason


def test_a_crashed_then_resumed_run_is_exported_once_at_the_end_of_the_resume(
    tmp_path: Path, landscape_url: str
) -> None:
    url = landscape_url
    settings = _settings(tmp_path, url)
    crashed = run_cli(
        "run",
        "-s",
        str(settings),
        "-x",
        cwd=tmp_path,
        env={**KEY, "ELSPETH_FAULT_INJECT": "after_commit:2"},
    )
    assert crashed.code == -signal.SIGKILL, (crashed.code, crashed.stderr)
    (run_id,) = url_run_ids(url)
    assert 0 < url_query(url, "SELECT count(*) FROM rows")[0][0] < ROWS
    assert not (tmp_path / "exports").exists()  # no export for a run that has not ended

    refused = run_cli("resume", run_id, "-x", "-d", url, cwd=tmp_path)  # no key
    assert refused.code == 1, refused.stderr
    reason, _hint = _one_error_line(refused)
    assert "ELSPETH_SIGNING_KEY is not set" in reason
    assert url_query(url, "SELECT count(*) FROM run_attempts") == [(1,)]  # nothing taken over
    assert not (tmp_path / "exports").exists()

    resumed = run_cli("resume", run_id, "-x", "-d", url, cwd=tmp_path, env=KEY)
    assert resumed.code == 0, resumed.stderr
    path = _export_path(tmp_path)
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]
    url_invariants(url, run_id, ROWS)
    manifest = _manifest(path)
    assert manifest["tables"] == _landscape_counts(url, run_id)
    assert manifest["tables"]["rows"] == ROWS and manifest["tables"]["run_attempts"] == 2
    runs = [json.loads(line) for line in path.read_text().splitlines() if '"table":"runs"' in line]
    assert [r["record"]["status"] for r in runs] == ["completed"]
    verified = run_cli("verify", str(path), cwd=tmp_path, env=KEY)
    assert verified.code == 0, verified.stderr


def test_an_export_that_fails_after_the_run_completed(tmp_path: Path, landscape_url: str) -> None:
    url = landscape_url
    settings = _settings(tmp_path, url)
    (tmp_path / "exports").write_text("a file where the export folder should be\n")
    result = run_cli("run", "-s", str(settings), "-x", cwd=tmp_path, env=KEY)
    assert result.code == 2, (result.stdout, result.stderr)
    (run_id,) = url_run_ids(url)
    reason, hint = _one_error_line(result)
    assert reason.startswith(
        f"Error: run {run_id} completed ({ROWS} rows), but its audit export (landscape.export, "
        "sink 'audit') failed: "
    ), reason
    # The run itself is complete and stays so; its outputs are all there.
    url_invariants(url, run_id, ROWS)
    assert set(sink_files(tmp_path)) == {
        "normal.csv",
        "high.csv",
        "flagged.jsonl",
        "quarantine.jsonl",
    }
    redo = hint.split("write the export with: ", 1)[1]
    args = shlex.split(redo)
    path = _export_path(tmp_path)
    assert args[:6] == ["elspeth", "export", run_id, "--output", str(path), "--sign"], redo

    (tmp_path / "exports").unlink()  # the operator fixes the cause, then runs the hint
    again = run_cli(*args[1:], cwd=tmp_path, env=KEY)
    assert again.code == 0, again.stderr
    verified = run_cli("verify", str(path), cwd=tmp_path, env=KEY)
    assert verified.code == 0, verified.stderr
    assert _manifest(path)["tables"]["rows"] == ROWS


def test_leaving_the_export_sink_out_keeps_every_other_node_id(tmp_path: Path) -> None:
    """Node IDs derive from configuration only: reserving the export sink moves no other node."""
    data = yaml.safe_load(_settings(tmp_path).read_text())
    enabled = build_graph(load_settings_from_dict(data, source_name="on").settings)
    data["landscape"]["export"]["enabled"] = False
    disabled = build_graph(load_settings_from_dict(data, source_name="off").settings)
    assert "audit" not in enabled.sinks and "audit" in disabled.sinks
    assert {n.node_id for n in disabled.nodes} - {n.node_id for n in enabled.nodes} == {
        disabled.sinks["audit"].node_id
    }
    assert enabled.edges == disabled.edges
    again = build_graph(
        load_settings_from_dict(
            yaml.safe_load(_settings(tmp_path).read_text()), source_name="again"
        ).settings
    )
    assert [n.node_id for n in again.nodes] == [n.node_id for n in enabled.nodes]
    assert again.topology_hash == enabled.topology_hash
