"""``elspeth purge`` through the real CLI: refuses without --yes, dry-runs, purges, explain survives.

A purge deletes a completed run's payload folder and clears ``rows.source_data_ref`` (and batch
members' ``data_ref``) while every hash stays; ``explain`` then shows the hash and says the payload
was purged. Runs that are not completed, or still within retention, are never touched. Every test
runs on both landscape backends (SQLite and PostgreSQL).
"""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

from examples.generate import generate
from tests.support.cli import (
    gate_pipeline,
    run_cli,
    url_execute,
    url_query,
    url_run_ids,
    write_settings,
)

ROWS = 200


def _run(work: Path, url: str, *, env: dict[str, str] | None = None) -> str:
    work.mkdir(parents=True, exist_ok=True)
    generate(str(work / "in.csv"), ROWS, seed=6, bad_every=50)
    data = gate_pipeline(work, work / "in.csv", landscape={"url": url})
    settings = write_settings(work / "settings.yaml", data)
    result = run_cli("run", "-s", str(settings), "-x", cwd=work, env=env)
    assert result.code == (0 if env is None else -signal.SIGKILL), result.stderr
    return url_run_ids(url)[-1]


def _purge(work: Path, url: str, *args: str) -> Any:
    return run_cli("purge", *args, "-d", url, cwd=work)


def _state(work: Path, url: str) -> dict[str, Any]:
    return {
        "refs": url_query(url, "SELECT count(*) FROM rows WHERE source_data_ref IS NOT NULL")[0][0],
        "hashes": url_query(url, "SELECT row_id, source_data_hash FROM rows ORDER BY row_id"),
        "folders": sorted(p.name for p in (work / "payloads").iterdir()),
    }


def test_purge_without_yes_refuses_and_dry_run_changes_nothing(
    tmp_path: Path, landscape_url: str
) -> None:
    url = landscape_url
    run_id = _run(tmp_path, url)
    before = _state(tmp_path, url)
    assert before["refs"] == ROWS and before["folders"] == [run_id]

    refused = _purge(tmp_path, url, "--retention-days", "0")
    assert refused.code == 1
    assert f"Would purge run {run_id}" in refused.stdout
    lines = refused.stderr.strip().splitlines()
    assert lines[0].startswith("Error: purge refused: 1 run(s)")
    assert lines[1].startswith("Hint: ") and "--yes" in lines[1]
    assert _state(tmp_path, url) == before

    dry = _purge(tmp_path, url, "--retention-days", "0", "--dry-run", "--json")
    assert dry.code == 0, dry.stderr
    report = json.loads(dry.stdout)
    assert report["purged"] is False and report["bytes_freed"] == 0
    (item,) = report["runs"]
    assert item["run_id"] == run_id and item["rows"] == ROWS and item["refs_present"] is True
    assert item["payload_dir"] == str(tmp_path / "payloads" / run_id)
    assert item["size_bytes"] == sum(
        f.stat().st_size for f in (tmp_path / "payloads" / run_id).iterdir()
    )
    assert _state(tmp_path, url) == before

    # Within retention (the settings' 90 days, or --retention-days 30): nothing to do.
    for args in ([], ["--retention-days", "30"]):
        kept = _purge(tmp_path, url, *args, "--yes")
        assert kept.code == 0 and "Nothing to purge" in kept.stdout
    assert _state(tmp_path, url) == before


def test_purge_deletes_payloads_keeps_hashes_and_explain_says_purged(
    tmp_path: Path, landscape_url: str
) -> None:
    url = landscape_url
    run_id = _run(tmp_path, url)
    before = _state(tmp_path, url)
    assert url_query(url, "SELECT count(row_data_json) FROM validation_errors") == [(ROWS // 50,)]
    high_first = (tmp_path / "out" / "high.csv").read_text().splitlines()[1].split(",")[0]
    explained = run_cli(
        "explain",
        "--run",
        run_id,
        "--sink",
        "high",
        "--line",
        "1",
        "--json",
        "-d",
        url,
        cwd=tmp_path,
    )
    assert json.loads(explained.stdout)["row"]["payload"]["status"] == "available"

    done = _purge(tmp_path, url, "--retention-days", "0", "--yes", "--json")
    assert done.code == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["purged"] is True and [r["run_id"] for r in report["runs"]] == [run_id]
    assert report["bytes_freed"] > 0
    after = _state(tmp_path, url)
    assert after["refs"] == 0 and after["folders"] == []
    assert after["hashes"] == before["hashes"]  # every hash kept
    # Quarantined rows' content kept with their validation error goes too; their hash stays.
    assert url_query(
        url, "SELECT count(*), count(row_data_json), count(row_hash) FROM validation_errors"
    ) == [(ROWS // 50, 0, ROWS // 50)]

    result = run_cli(
        "explain",
        "--run",
        run_id,
        "--sink",
        "high",
        "--line",
        "1",
        "--json",
        "-d",
        url,
        cwd=tmp_path,
    )
    assert result.code == 0, result.stderr
    doc = json.loads(result.stdout)
    payload = doc["row"]["payload"]
    assert payload["status"] == "purged" and payload["data"] is None
    assert "only its hash is kept" in payload["detail"]
    ((row_hash,),) = url_query(
        url, "SELECT source_data_hash FROM rows WHERE row_id = :r", r=doc["row"]["row_id"]
    )
    assert doc["row"]["source_data_hash"] == row_hash
    assert doc["row"]["row_index"] == int(high_first)
    assert doc["source_rows"][0]["payload_purged"] is True
    assert doc["tokens"][0]["terminal_outcome"]["sink_line"] == 1
    text = run_cli(
        "explain",
        "--run",
        run_id,
        "--sink",
        "high",
        "--line",
        "1",
        "-d",
        url,
        cwd=tmp_path,
    )
    assert "payload purged" in text.stdout

    again = _purge(tmp_path, url, "--retention-days", "0", "--yes")
    assert again.code == 0 and "Nothing to purge" in again.stdout


def test_purge_never_touches_a_run_that_can_still_be_resumed(
    tmp_path: Path, landscape_url: str
) -> None:
    url = landscape_url
    done = _run(tmp_path / "a", url)
    crashed = _run(tmp_path / "a", url, env={"ELSPETH_FAULT_INJECT": "after_commit:2"})
    assert crashed != done
    result = _purge(tmp_path / "a", url, "--retention-days", "0", "--yes", "--json")
    assert result.code == 0, result.stderr
    assert [r["run_id"] for r in json.loads(result.stdout)["runs"]] == [done]
    assert sorted(p.name for p in (tmp_path / "a" / "payloads").iterdir()) == [crashed]
    refs = url_query(
        url, "SELECT count(*) FROM rows WHERE run_id = :r AND source_data_ref IS NULL", r=crashed
    )
    assert refs == [(0,)]
    # The crashed run still resumes from its payloads.
    resumed = run_cli("resume", crashed, "-x", "-d", url, cwd=tmp_path / "a")
    assert resumed.code == 0, resumed.stderr


def test_purge_with_payloads_option_and_leftover_folder(tmp_path: Path, landscape_url: str) -> None:
    """A purge interrupted between the landscape and the files is finished by the next one."""
    url = landscape_url
    run_id = _run(tmp_path, url)
    moved = tmp_path / "elsewhere"
    (tmp_path / "payloads").rename(moved)
    refused = _purge(tmp_path, url, "--retention-days", "0", "--payloads", str(moved), "--dry-run")
    assert f"in {moved / run_id}" in refused.stdout
    url_execute(url, "UPDATE rows SET source_data_ref = NULL")  # refs already gone
    result = _purge(tmp_path, url, "--retention-days", "0", "--payloads", str(moved), "--yes")
    assert result.code == 0, result.stderr
    assert f"Purged run {run_id}" in result.stdout
    assert not (moved / run_id).exists()
