"""``elspeth export`` / ``elspeth verify``: signed audit exports, and tampering named by verify.

The export of a real run must hold exactly the run's records (counted table by table in the
landscape). Then one record is changed, one removed, two swapped, the tail cut off, the manifest
edited: ``verify`` must exit 1 and name the first bad record by index, table and primary key.
The exported run is recorded on both landscape backends (SQLite and PostgreSQL).
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import pytest

from elspeth_core.config import load_settings
from elspeth_core.export import SigningKeyMissing, check_export_ready, export_if_configured
from elspeth_core.landscape import LandscapeDB
from examples.generate import generate
from tests.support.cli import gate_pipeline, run_cli, url_query, url_run_ids, write_settings
from tests.support.landscape_fixtures import Landscapes

ROWS = 150
KEY = {"ELSPETH_SIGNING_KEY": "test-audit-key-0123456789"}
TABLES = (
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


Run = tuple[Path, str, str]  # work directory, run ID, landscape URL


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, landscapes: Landscapes) -> Run:
    work = tmp_path_factory.mktemp("export")
    url = landscapes.new(work)
    generate(str(work / "in.csv"), ROWS, seed=2, bad_every=40)
    data = gate_pipeline(work, work / "in.csv", landscape={"url": url})
    settings = write_settings(work / "settings.yaml", data)
    assert run_cli("run", "-s", str(settings), "-x", cwd=work).code == 0
    (run_id,) = url_run_ids(url)
    return work, run_id, url


def _export(run: Run, name: str, *args: str, env: dict[str, str] | None = KEY) -> Path:
    work, run_id, url = run
    out = work / "exports" / name
    result = run_cli(
        "export",
        run_id,
        "--output",
        str(out),
        *args,
        "-d",
        url,
        cwd=work,
        env=env,
    )
    assert result.code == 0, result.stderr
    return out


def _verify(work: Path, path: Path, env: dict[str, str] | None = KEY) -> Any:
    return run_cli("verify", str(path), cwd=work, env=env)


def _expected_counts(url: str, run_id: str) -> dict[str, int]:
    counts = {
        t: url_query(url, f"SELECT count(*) FROM {t} WHERE run_id = :r", r=run_id)[0][0]
        for t in TABLES
    }
    counts["token_parents"] = url_query(url, "SELECT count(*) FROM token_parents")[0][0]
    counts["batch_members"] = counts["batch_outputs"] = 0
    return counts


def test_signed_json_export_holds_every_record_and_verifies(run: Run) -> None:
    work, run_id, url = run
    path = _export(run, "audit.jsonl", "--sign")
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    records, manifest = lines[:-1], lines[-1]
    expected = _expected_counts(url, run_id)
    assert manifest["manifest"]["tables"] == expected
    assert manifest["manifest"]["records"] == len(records) == sum(expected.values())
    assert manifest["manifest"]["run_id"] == run_id
    assert manifest["manifest"]["algorithm"] == "hmac-sha256-chain-v1"
    assert [r["index"] for r in records] == list(range(len(records)))
    assert records[0]["table"] == "runs" and records[0]["id"] == run_id
    assert all(len(r["signature"]) == 64 for r in records)
    # A record is the row as stored: compare one node state with the landscape.
    state = next(r for r in records if r["table"] == "node_states")
    ((status, digest),) = url_query(
        url, "SELECT status, input_hash FROM node_states WHERE state_id = :s", s=state["id"]
    )
    assert (state["record"]["status"], state["record"]["input_hash"]) == (status, digest)

    reported = run_cli(
        "export",
        run_id,
        "--output",
        str(path),
        "--sign",
        "--json",
        "-d",
        url,
        cwd=work,
        env=KEY,
    )
    assert json.loads(reported.stdout)["records"] == len(records)
    verified = _verify(work, path)
    assert verified.code == 0, verified.stderr
    assert verified.stdout.startswith(f"verified {len(records)} records of run {run_id} (signed")


def test_signed_csv_export_verifies_and_names_a_tampered_record(run: Run) -> None:
    work, run_id, url = run
    path = _export(run, "audit.csv", "--format", "csv", "--sign")
    rows = list(csv.reader(io.StringIO(path.read_text())))
    assert rows[0] == ["index", "table", "id", "record", "signature"]
    assert rows[-1][0] == "manifest"
    assert _verify(work, path).code == 0

    target = next(i for i, r in enumerate(rows) if r[1] == "token_outcomes")
    record = json.loads(rows[target][3])
    record["sink_name"] = "normal" if record["sink_name"] != "normal" else "high"
    rows[target][3] = json.dumps(record)
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    bad = path.with_name("tampered.csv")
    bad.write_text(buffer.getvalue())
    result = _verify(work, bad)
    assert result.code == 1
    index = target - 1  # the header is not a record
    assert result.stderr.startswith(
        f"Error: record {index} (token_outcomes {rows[target][2]}) does not match its signature"
    )
    assert "Hint: " in result.stderr and "Traceback" not in result.stderr


def _rewrite(path: Path, name: str, change: Any) -> Path:
    lines = path.read_text().splitlines()
    change(lines)
    out = path.with_name(name)
    out.write_text("\n".join(lines) + "\n")
    return out


@pytest.mark.parametrize("kind", ["edit", "remove", "swap", "truncate", "manifest", "append"])
def test_verify_names_the_first_tampered_record(run: Run, kind: str) -> None:
    work, run_id, url = run
    path = _export(run, "audit.jsonl", "--sign")
    records = [json.loads(line) for line in path.read_text().splitlines()[:-1]]
    target = next(i for i, r in enumerate(records) if r["table"] == "rows") + 5
    victim = records[target]

    def edit(lines: list[str]) -> None:
        entry = json.loads(lines[target])
        entry["record"]["source_data_hash"] = "0" * 64
        lines[target] = json.dumps(entry)

    changes = {
        "edit": edit,
        "remove": lambda lines: lines.pop(target),
        "swap": lambda lines: lines.insert(target, lines.pop(target + 1)),
        "truncate": lambda lines: lines.pop(),
        "manifest": lambda lines: lines.__setitem__(
            -1, lines[-1].replace(f'"run_id":"{run_id}"', '"run_id":"someone-else"')
        ),
        "append": lambda lines: lines.append(lines[3]),
    }
    bad = _rewrite(path, f"{kind}.jsonl", changes[kind])
    result = _verify(work, bad)
    assert result.code == 1, (kind, result.stdout)
    error = result.stderr.splitlines()[0]
    nxt = records[target + 1]
    expected = {
        "edit": f"record {target} (rows {victim['id']}) does not match its signature",
        "remove": f"record {target} (rows {nxt['id']}) carries index {target + 1}",
        "swap": f"record {target} (rows {nxt['id']}) carries index {target + 1}",
        "truncate": f"the export has no manifest: it was cut off after {len(records)} record(s)",
        "manifest": "the manifest does not match its signature",
        "append": f"entry {len(records) + 1} follows the manifest",
    }[kind]
    assert error.startswith("Error: ") and expected in error, error


def test_verify_with_the_wrong_or_no_key(run: Run) -> None:
    work, run_id, url = run
    path = _export(run, "audit.jsonl", "--sign")
    wrong = _verify(work, path, env={"ELSPETH_SIGNING_KEY": "another-key"})
    assert wrong.code == 1 and "signed with another key" in wrong.stderr
    missing = _verify(work, path, env={})
    assert missing.code == 1 and "ELSPETH_SIGNING_KEY is not set" in missing.stderr


def test_signing_without_a_key_is_a_clear_error(run: Run) -> None:
    work, run_id, url = run
    out = work / "exports" / "nokey.jsonl"
    result = run_cli(
        "export",
        run_id,
        "--output",
        str(out),
        "--sign",
        "-d",
        url,
        cwd=work,
    )
    assert result.code == 1
    lines = result.stderr.strip().splitlines()
    assert lines[0] == (
        "Error: a signed audit export needs a signing key, and ELSPETH_SIGNING_KEY is not set"
    )
    assert lines[1].startswith("Hint: ") and not out.exists()


def test_unsigned_export_verifies_as_integrity_only(run: Run) -> None:
    work, run_id, url = run
    path = _export(run, "plain.jsonl", env=None)
    result = _verify(work, path, env=None)
    assert result.code == 0
    assert "UNSIGNED" in result.stdout
    edited = _rewrite(
        path,
        "plain-edited.jsonl",
        lambda lines: lines.__setitem__(2, lines[2].replace('"node_type":"', '"node_type":"x')),
    )
    assert _verify(work, edited, env=None).code == 1


def test_export_if_configured_writes_the_export_sink(
    run: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    work, run_id, url = run
    data = gate_pipeline(work, work / "in.csv")
    data["sinks"]["audit"] = {
        "plugin": "csv",
        "options": {"path": str(work / "exports" / "run-end.csv")},
    }
    data["landscape"]["export"] = {"enabled": True, "sink": "audit", "format": "csv", "sign": True}
    settings = load_settings(write_settings(work / "export-settings.yaml", data)).settings
    monkeypatch.setenv("ELSPETH_SIGNING_KEY", KEY["ELSPETH_SIGNING_KEY"])
    with LandscapeDB(url, create=False) as db:
        path = export_if_configured(db, run_id, settings)
        assert path == work / "exports" / "run-end.csv"
        data["landscape"]["export"]["enabled"] = False
        disabled = load_settings(write_settings(work / "off.yaml", data)).settings
        assert export_if_configured(db, run_id, disabled) is None
    result = _verify(work, path)
    assert result.code == 0, result.stderr
    assert f"of run {run_id} (signed" in result.stdout


def test_check_export_ready_refuses_before_a_run(tmp_path: Path) -> None:
    data = gate_pipeline(tmp_path, tmp_path / "in.csv")
    data["sinks"]["audit"] = {"plugin": "json", "options": {"path": str(tmp_path / "a.jsonl")}}
    data["landscape"]["export"] = {"enabled": True, "sink": "audit", "sign": True}
    settings = load_settings(write_settings(tmp_path / "s.yaml", data)).settings
    with pytest.raises(SigningKeyMissing, match="ELSPETH_SIGNING_KEY is not set"):
        check_export_ready(settings, environ={})
    check_export_ready(settings, environ=KEY)  # ready
