"""Resume and the payload store, through the real ``elspeth`` CLI in subprocesses.

What a resume reads from the payload store: the members of the batches it restores or retries
(their data at buffer time, verified against ``batch_members.data_hash``). Source rows it does
NOT read from there: it re-reads the source, verifying every recorded row against
``rows.source_data_hash`` (a mismatch is "Source changed", tested in tests/cli).

So a batch member's payload altered on disk must refuse the resume — one ``Error:`` line, one
``Hint:`` line, exit 1 — before anything is written: the sinks' bytes, the landscape (rows,
batches, attempts, lease, status) and the payload packs stay as the crash left them, and the run
resumes to the crash-free outputs once the payload is restored. A row's payload altered on disk
never reaches a sink (the resume takes rows from the source); ``elspeth explain`` reports it.

Runs are SIGKILLed at a crash point (``ELSPETH_FAULT_INJECT=<point>:<n>``, see
``elspeth_core/engine/faults.py``) with a ``batch_stats`` aggregation over 2,000 rows. Every test
runs on both landscape backends (SQLite and PostgreSQL).
"""

from __future__ import annotations

import hashlib
import json
import signal
from pathlib import Path
from typing import Any

import pytest

from tests.support.cli import assert_landscape_invariants, query, run_cli, url_query
from tests.support.landscape_fixtures import Landscapes
from tests.support.pipelines import (
    csv_sink,
    make_csv,
    only_run,
    outputs,
    pipeline,
    resume,
    run_pipeline,
)

ROWS = 2_000
TABLES = ("rows", "tokens", "token_outcomes", "batches", "batch_members", "checkpoints")
AGGREGATION = {
    "name": "stats",
    "plugin": "batch_stats",
    "trigger": {"count": 1000},
    "output_mode": "single",
    "options": {"value_field": "amount", "compute_mean": True},
}


def _settings(work: Path, landscape: str) -> dict[str, Any]:
    source = make_csv(work / "in.csv", ROWS)
    return pipeline(
        work,
        source,
        aggregations=[AGGREGATION],
        sinks={"out": csv_sink(work, "out")},
        landscape=landscape,
    )


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, landscapes: Landscapes) -> dict[str, Any]:
    """The outputs of a crash-free run of the same pipeline over the same input."""
    work = tmp_path_factory.mktemp("reference")
    result = run_pipeline(work, _settings(work, landscapes.new(work)))
    assert result.code == 0, result.stderr
    found = outputs(work)
    assert found["out.csv"].count(b"\n") == 1 + ROWS // 1000  # header + one row per batch
    return found


def _crash(work: Path, landscape: str, point: str) -> str:
    result = run_pipeline(work, _settings(work, landscape), env={"ELSPETH_FAULT_INJECT": point})
    assert result.code == -signal.SIGKILL, (result.code, result.stderr)
    return only_run(landscape)


def _pack_slice(work: Path, ref: str) -> tuple[Path, int, int]:
    name, offset, length = ref.rsplit(":", 2)
    return work / "payloads" / name, int(offset), int(length)


def _alter(work: Path, ref: str, change: Any) -> bytes:
    """Rewrite the payload bytes of ``ref`` in place; returns the pack's original bytes."""
    path, offset, length = _pack_slice(work, ref)
    original = path.read_bytes()
    old = original[offset : offset + length]
    new = change(old)
    assert new != old and len(new) == len(old)
    path.write_bytes(original[:offset] + new + original[offset + length :])
    return original


def _snapshot(work: Path, url: str) -> dict[str, Any]:
    """Everything a refused resume must leave alone (the landscape at ``url``, and the files)."""
    counts = {t: url_query(url, f"SELECT count(*) FROM {t}")[0][0] for t in TABLES}
    runs = url_query(
        url,
        "SELECT status, error, lease_owner, lease_expires_at, source_rows_ingested FROM runs "
        "ORDER BY run_id",
    )
    attempts = url_query(url, "SELECT attempt, status FROM run_attempts ORDER BY attempt")
    batches = url_query(url, "SELECT batch_id, status, attempt FROM batches ORDER BY batch_id")
    files = {
        str(p.relative_to(work)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(work.rglob("*"))
        if p.is_file() and not p.name.startswith("audit.db")
    }
    return {"counts": counts, "runs": runs, "attempts": attempts, "batches": batches, **files}


def _member_ref(url: str, ordinal: int) -> str:
    ((ref,),) = query(
        url,
        f"SELECT m.data_ref FROM batch_members m JOIN batches b ON b.batch_id = m.batch_id "
        f"WHERE b.attempt = 1 AND m.ordinal = {ordinal} ORDER BY b.created_at LIMIT 1",
    )
    return str(ref)


def _one_error(stderr: str) -> tuple[str, str]:
    lines = stderr.strip().splitlines()
    assert len(lines) == 2, f"expected a reason and a hint, got: {stderr!r}"
    reason, hint = lines
    assert reason.startswith("Error: ") and hint.startswith("Hint: "), stderr
    return reason, hint


@pytest.mark.parametrize(
    ("crash", "batch_status"),
    [("after_commit:5", "draft"), ("batch_executing:1", "executing")],
)
def test_an_altered_batch_member_payload_refuses_the_resume_and_writes_nothing(
    tmp_path: Path, reference: dict[str, Any], crash: str, batch_status: str, landscape_url: str
) -> None:
    db = landscape_url
    run_id = _crash(tmp_path, db, crash)
    assert query(db, "SELECT status FROM batches") == [(batch_status,)]
    ref = _member_ref(db, 3)
    original = _alter(tmp_path, ref, lambda b: b.replace(b'"id":3,', b'"id":4,'))
    before = _snapshot(tmp_path, db)

    result = resume(tmp_path, run_id, landscape=db)
    assert result.code == 1, (result.code, result.stdout, result.stderr)
    assert "Traceback" not in result.stdout + result.stderr
    reason, hint = _one_error(result.stderr)
    assert f"payload {ref} does not match its recorded hash" in reason, reason
    assert "payload store was modified" in hint
    assert _snapshot(tmp_path, db) == before  # no sink byte, landscape row or lease changed

    # The refusal left the run as the crash did: with the payload restored it resumes, and its
    # outputs are those of the crash-free run.
    path, _offset, _length = _pack_slice(tmp_path, ref)
    path.write_bytes(original)
    resumed = resume(tmp_path, run_id, landscape=db)
    assert resumed.code == 0, resumed.stderr
    assert outputs(tmp_path) == reference
    assert_landscape_invariants(db, run_id, ROWS)


def test_a_batch_member_payload_that_no_longer_decodes_refuses_the_resume(
    tmp_path: Path, landscape_url: str
) -> None:
    db = landscape_url
    run_id = _crash(tmp_path, db, "after_commit:5")
    ref = _member_ref(db, 0)
    _alter(tmp_path, ref, lambda b: b"#" + b[1:])
    before = _snapshot(tmp_path, db)
    result = resume(tmp_path, run_id, landscape=db)
    assert result.code == 1, (result.code, result.stdout, result.stderr)
    assert "Traceback" not in result.stdout + result.stderr
    reason, _hint = _one_error(result.stderr)
    assert f"payload {ref} is damaged: " in reason, reason
    assert "internal error" not in reason
    assert _snapshot(tmp_path, db) == before


def test_an_altered_row_payload_never_reaches_a_sink(
    tmp_path: Path, reference: dict[str, Any], landscape_url: str
) -> None:
    """Resume re-reads rows from the source (hash-verified), not from the payload store."""
    db = landscape_url
    run_id = _crash(tmp_path, db, "after_commit:5")
    ((row_id, ref),) = query(db, "SELECT row_id, source_data_ref FROM rows WHERE row_index = 3")
    _alter(tmp_path, ref, lambda b: b.replace(b'"id":"3",', b'"id":"4",'))

    resumed = resume(tmp_path, run_id, landscape=db)
    assert resumed.code == 0, resumed.stderr
    assert outputs(tmp_path) == reference
    assert_landscape_invariants(db, run_id, ROWS)

    explained = run_cli(
        "explain", "--run", run_id, "--row", row_id, "--json", "-d", db,
        cwd=tmp_path,
    )  # fmt: skip
    assert explained.code == 0, explained.stderr
    payload = json.loads(explained.stdout)["row"]["payload"]
    assert payload["status"] == "corrupt", payload
    assert "does not match its recorded hash" in payload["detail"]
