"""Every resume refusal of SPEC §4–§5, through the real ``elspeth`` CLI in a subprocess, on both
landscape backends (the tests that freeze a live SQLite writer or need a missing SQLite file are
SQLite-only; a resume racing a live run on PostgreSQL is in tests/recovery).

Each refusal must exit 3, print the runbook's exact phrase as ONE ``Error:`` line followed by ONE
``Hint:`` line on stderr (no traceback), and write nothing: the sink files' bytes, every other file
of the work directory, the landscape's row counts and the runs' status/lease columns are
snapshotted before and after the refused command and must be equal. Where it makes sense, the run
is then resumed to completion to prove the refusal left it resumable, and its outputs are compared
byte for byte with a crash-free run over the same input.

Runs are crashed with ``ELSPETH_FAULT_INJECT=after_commit:5``: with ``checkpoint_interval: 100`` the
fifth commit (the first one records the sinks' starting points) leaves 400 of the 2,000 rows read.
"""

from __future__ import annotations

import hashlib
import json
import signal
import sqlite3
import subprocess
import time
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from examples.generate import generate
from tests.support.cli import (
    Result,
    assert_landscape_invariants,
    gate_pipeline,
    popen_cli,
    query,
    run_cli,
    run_ids,
    sink_files,
    url_execute,
    write_settings,
)
from tests.support.landscape_fixtures import Landscapes

ROWS = 2_000
READ_AT_CRASH = 400
CRASH = "after_commit:5"
SEED = 5
BAD_EVERY = 97

LANDSCAPE_TABLES = (
    "runs",
    "run_attempts",
    "nodes",
    "edges",
    "rows",
    "tokens",
    "token_parents",
    "node_states",
    "routing_events",
    "token_outcomes",
    "batches",
    "batch_members",
    "batch_outputs",
    "artifacts",
    "checkpoints",
    "validation_errors",
    "transform_errors",
)
RUN_COLUMNS = (
    "run_id, status, completed_at, lease_owner, lease_expires_at, heartbeat_at, error, "
    "superseded_by, source_rows_ingested, source_exhausted"
)


# ---------------------------------------------------------------------------------------- helpers
def _url(db: Path) -> str:
    return f"sqlite:///{db}"


def _make_input(work: Path, rows: int = ROWS) -> Path:
    path = work / "in.csv"
    generate(str(path), rows, seed=SEED, bad_every=BAD_EVERY)
    return path


def _crash_run(
    work: Path, rows: int = ROWS, *, landscape: str | None = None, **overrides: Any
) -> tuple[Path, str]:
    """A gate + sinks run over ``rows`` generated rows, SIGKILLed after its fifth commit; its
    landscape is ``landscape`` (default: ``work/audit.db``)."""
    work.mkdir(parents=True, exist_ok=True)
    if landscape is not None:
        overrides["landscape"] = {"url": landscape}
    data = gate_pipeline(work, _make_input(work, rows), **overrides)
    settings = write_settings(work / "settings.yaml", data)
    result = run_cli(
        "run", "-s", str(settings), "-x", cwd=work, env={"ELSPETH_FAULT_INJECT": CRASH}
    )
    assert result.code == -signal.SIGKILL, (result.code, result.stderr)
    (run_id,) = run_ids(landscape or work / "audit.db")
    return settings, run_id


def _snapshot(work: Path, db: Path | str) -> dict[str, Any]:
    """What a refused command must not change: files, table row counts, runs' status and lease.

    ``db``: a SQLite file, or the landscape's URL (either backend).
    """
    counts = {t: query(db, f"SELECT count(*) FROM {t}")[0][0] for t in LANDSCAPE_TABLES}
    runs = query(db, f"SELECT {RUN_COLUMNS} FROM runs ORDER BY run_id")
    attempts = query(
        db,
        "SELECT run_id, attempt, status, lease_owner, ended_at FROM run_attempts "
        "ORDER BY run_id, attempt",
    )
    checkpoints = query(
        db, "SELECT checkpoint_id, sequence_number, row_id FROM checkpoints ORDER BY checkpoint_id"
    )
    db_file = _sqlite_file(db)
    other_files = {
        str(p.relative_to(work)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(work.rglob("*"))
        # The SQLite file itself may be checkpointed by any reader; its content is compared above.
        if p.is_file() and not (db_file and p.name.startswith(db_file))
    }
    return {
        "sinks": sink_files(work),
        "files": other_files,
        "counts": counts,
        "runs": runs,
        "attempts": attempts,
        "checkpoints": checkpoints,
    }


def _sqlite_file(db: Path | str) -> str | None:
    """The name of a SQLite landscape's file (None for PostgreSQL)."""
    if isinstance(db, Path):
        return db.name
    return Path(db.removeprefix("sqlite:///")).name if db.startswith("sqlite:") else None


def _assert_unchanged(before: dict[str, Any], after: dict[str, Any]) -> None:
    assert after["sinks"].keys() == before["sinks"].keys()
    for name, content in before["sinks"].items():
        assert after["sinks"][name] == content, f"sink file {name} changed"
    for key in ("files", "counts", "runs", "attempts", "checkpoints"):
        assert after[key] == before[key], f"{key} changed by a refused command"


def _assert_refused(result: Result, phrase: str) -> tuple[str, str]:
    """Exit 3, one ``Error:`` line holding ``phrase``, one ``Hint:`` line, no traceback."""
    assert result.code == 3, (result.code, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr + result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 2, f"expected a reason and a hint, got: {result.stderr!r}"
    reason, hint = lines
    assert reason.startswith("Error: "), reason
    assert phrase in reason, f"{phrase!r} not in {reason!r}"
    assert hint.startswith("Hint: ") and len(hint) > len("Hint: ") + 10, hint
    return reason, hint


def _assert_matches_reference(
    work: Path, run_id: str, reference: dict[str, bytes], db: str
) -> None:
    files = sink_files(work)
    assert files.keys() == reference.keys()
    for name, content in reference.items():
        assert files[name] == content, f"{name} differs from the crash-free run"
    assert_landscape_invariants(db, run_id, ROWS)


# --------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def completed(
    tmp_path_factory: pytest.TempPathFactory, landscapes: Landscapes
) -> tuple[Path, str, dict[str, bytes], str]:
    """A crash-free run over the same input: the reference outputs and a completed run (work
    dir, run ID, sink files, landscape URL)."""
    work = tmp_path_factory.mktemp("completed")
    db = landscapes.new(work)
    data = gate_pipeline(work, _make_input(work), landscape={"url": db})
    settings = write_settings(work / "settings.yaml", data)
    result = run_cli("run", "-s", str(settings), "-x", cwd=work)
    assert result.code == 0, result.stderr
    (run_id,) = run_ids(db)
    files = sink_files(work)
    assert set(files) == {"normal.csv", "high.csv", "flagged.jsonl", "quarantine.jsonl"}
    return work, run_id, files, db


@pytest.fixture(scope="module")
def crashed(
    tmp_path_factory: pytest.TempPathFactory, landscapes: Landscapes
) -> tuple[Path, Path, str, str]:
    """One crashed run shared by the tests that must not change it (they check that too): work
    dir, settings, run ID, landscape URL."""
    work = tmp_path_factory.mktemp("crashed")
    db = landscapes.new(work)
    settings, run_id = _crash_run(work, landscape=db)
    assert query(db, "SELECT count(*) FROM rows")[0][0] == READ_AT_CRASH
    return work, settings, run_id, db


# ------------------------------------------------------------------------------------------ tests
def test_run_not_found(crashed: tuple[Path, Path, str, str]) -> None:
    work, _settings, _run_id, db = crashed
    before = _snapshot(work, db)
    result = run_cli("resume", "01NOSUCHRUN0000000000000000", "-d", db, "-x", cwd=work)
    reason, hint = _assert_refused(result, "Run not found")
    assert "01NOSUCHRUN0000000000000000" in reason
    assert "elspeth runs list" in hint
    _assert_unchanged(before, _snapshot(work, db))


def test_run_already_completed(completed: tuple[Path, str, dict[str, bytes], str]) -> None:
    work, run_id, _files, db = completed
    before = _snapshot(work, db)
    result = run_cli("resume", run_id, "-d", db, "-x", cwd=work)
    reason, _hint = _assert_refused(result, "Run already completed")
    assert run_id in reason
    _assert_unchanged(before, _snapshot(work, db))


def test_dry_run_prints_the_plan_and_writes_nothing(crashed: tuple[Path, Path, str, str]) -> None:
    work, _settings, run_id, db = crashed
    before = _snapshot(work, db)
    text = run_cli("resume", run_id, "-d", db, cwd=work)
    assert text.code == 0, text.stderr
    assert "Traceback" not in text.stderr
    assert f"Run {run_id}" in text.stdout
    assert "can be resumed" in text.stdout
    assert f"rows recorded        {READ_AT_CRASH}" in text.stdout
    assert f"elspeth resume {run_id} --execute" in text.stdout
    as_json = run_cli("resume", run_id, "-d", db, "--json", cwd=work)
    assert as_json.code == 0, as_json.stderr
    plan = json.loads(as_json.stdout)["resume_plan"]
    assert plan["run_id"] == run_id
    assert plan["rows_recorded"] == READ_AT_CRASH
    assert plan["source_exhausted"] is False
    assert plan["checkpoint_sequence"] >= 1
    assert plan["checkpoint_row_id"] is not None
    _assert_unchanged(before, _snapshot(work, db))


def test_no_checkpoint_available(tmp_path: Path, landscape_url: str) -> None:
    """A crashed run whose landscape holds no checkpoint (here: removed after the crash)."""
    _settings, run_id = _crash_run(tmp_path, landscape=landscape_url)
    url_execute(landscape_url, "DELETE FROM checkpoints WHERE run_id = :r", r=run_id)
    before = _snapshot(tmp_path, landscape_url)
    result = run_cli("resume", run_id, "-d", landscape_url, "-x", cwd=tmp_path)
    _reason, hint = _assert_refused(result, "No checkpoint available")
    assert "new run" in hint
    _assert_unchanged(before, _snapshot(tmp_path, landscape_url))


def test_no_checkpoint_available_when_checkpointing_disabled(
    tmp_path: Path, landscape_url: str
) -> None:
    """``checkpoint.enabled: false`` records no checkpoint at all, so resume is refused."""
    db = landscape_url
    _settings, run_id = _crash_run(tmp_path, landscape=db, checkpoint={"enabled": False})
    assert query(db, "SELECT count(*) FROM checkpoints") == [(0,)]
    before = _snapshot(tmp_path, db)
    result = run_cli("resume", run_id, "-d", db, "-x", cwd=tmp_path)
    _reason, hint = _assert_refused(result, "No checkpoint available")
    assert "new run" in hint
    _assert_unchanged(before, _snapshot(tmp_path, db))


def test_configuration_mismatch_names_the_difference_and_stays_resumable(
    tmp_path: Path, landscape_url: str, completed: tuple[Path, str, dict[str, bytes], str]
) -> None:
    db = landscape_url
    _settings, run_id = _crash_run(tmp_path, landscape=db)
    other = gate_pipeline(tmp_path, tmp_path / "in.csv", landscape={"url": db})
    other["row_plugins"][0]["options"]["mapping"] = {"status": "state", "note": "remark"}
    other_path = write_settings(tmp_path / "other.yaml", other)
    before = _snapshot(tmp_path, db)
    result = run_cli("resume", run_id, "-s", str(other_path), "-x", cwd=tmp_path)
    reason, hint = _assert_refused(result, "Configuration mismatch")
    assert run_id in reason
    assert "row_plugins[0].options.mapping.note" in reason, reason
    assert "--force-new" in hint
    _assert_unchanged(before, _snapshot(tmp_path, db))
    resumed = run_cli("resume", run_id, "-d", db, "-x", cwd=tmp_path)
    assert resumed.code == 0, resumed.stderr
    assert run_ids(db) == [run_id]
    _assert_matches_reference(tmp_path, run_id, completed[2], db)


def _rewrite_row(csv_path: Path, index: int) -> None:
    """Change the ``note`` of data row ``index`` (0-based, after the header)."""
    lines = csv_path.read_bytes().split(b"\n")
    assert lines[index + 1].startswith(b"%d," % index)
    lines[index + 1] = lines[index + 1].replace(b"row %d" % index, b"ROW %d" % index)
    csv_path.write_bytes(b"\n".join(lines))


def test_source_changed_when_a_read_row_differs(
    tmp_path: Path, landscape_url: str, completed: tuple[Path, str, dict[str, bytes], str]
) -> None:
    db = landscape_url
    settings, run_id = _crash_run(tmp_path, landscape=db)
    source = tmp_path / "in.csv"
    original = source.read_bytes()
    _rewrite_row(source, 9)
    before = _snapshot(tmp_path, db)
    result = run_cli("resume", run_id, "-d", db, "-x", cwd=tmp_path)
    reason, hint = _assert_refused(result, "Source changed")
    assert "row 9 " in reason, reason
    assert "--force-new" in hint
    _assert_unchanged(before, _snapshot(tmp_path, db))
    # The refusal left the run resumable: with the original input back, it completes.
    source.write_bytes(original)
    resumed = run_cli("resume", run_id, "-s", str(settings), "-x", cwd=tmp_path)
    assert resumed.code == 0, resumed.stderr
    _assert_matches_reference(tmp_path, run_id, completed[2], db)


def test_source_changed_when_the_source_is_shorter_than_what_was_read(
    tmp_path: Path, landscape_url: str
) -> None:
    db = landscape_url
    _settings, run_id = _crash_run(tmp_path, landscape=db)
    source = tmp_path / "in.csv"
    lines = source.read_bytes().split(b"\n")
    source.write_bytes(b"\n".join(lines[: 1 + 200]) + b"\n")  # header + 200 of the 400 read
    before = _snapshot(tmp_path, db)
    result = run_cli("resume", run_id, "-d", db, "-x", cwd=tmp_path)
    reason, _hint = _assert_refused(result, "Source changed")
    assert "200" in reason and str(READ_AT_CRASH) in reason, reason
    _assert_unchanged(before, _snapshot(tmp_path, db))


# ---------------------------------------------------------------------- a run that is still alive
# SQLite only: freezing the writer between two transactions relies on SQLite's write lock; the
# same refusal against a live writer on PostgreSQL is tested in tests/recovery.
def _process_state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().rsplit(")", 1)[1].split()[0]


def _write_lock_free(db: Path) -> bool:
    with closing(sqlite3.connect(db, timeout=0.05, isolation_level=None)) as conn:
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError:
            return False
        conn.execute("ROLLBACK")
        return True


def _start_and_pause(work: Path, rows: int) -> tuple[subprocess.Popen[str], str]:
    """Start a run in the background and freeze it (SIGSTOP) between two landscape commits.

    A frozen process is still alive and its lease unexpired, exactly like a busy run; unlike a
    busy run it writes nothing meanwhile, so a before/after snapshot can prove that the refused
    command wrote nothing. It is frozen outside a transaction: every landscape transaction takes
    SQLite's write lock (BEGIN IMMEDIATE), so a process frozen inside one would block the resume.
    """
    data = gate_pipeline(work, _make_input(work, rows))
    settings = write_settings(work / "settings.yaml", data)
    # A long lease, so that a slow machine cannot let it expire while the process is frozen.
    proc = popen_cli(
        "run", "-s", str(settings), "-x", cwd=work, env={"ELSPETH_LEASE_TIMEOUT": "300"}
    )
    try:
        return proc, _pause(proc, work / "audit.db")
    except BaseException:
        _kill(proc)
        raise


def _pause(proc: subprocess.Popen[str], db: Path) -> str:
    deadline = time.monotonic() + 60
    # Touch the database only once it is in WAL mode (its -wal file exists): a reader holding a
    # lock while the run switches the journal mode would make that switch fail.
    while not (db.with_name(db.name + "-wal").exists() and run_ids(db)):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the background run never appeared in the runs table"
        time.sleep(0.02)
    for _ in range(500):
        proc.send_signal(signal.SIGSTOP)
        while (state := _process_state(proc.pid)) != "T":
            assert state != "Z", "the background run ended before it could be paused"
            time.sleep(0.001)
        if _write_lock_free(db):
            break
        proc.send_signal(signal.SIGCONT)
        time.sleep(0.005)
    else:
        raise AssertionError("could not pause the background run outside a transaction")
    (run_id,) = run_ids(db)
    assert query(db, f"SELECT status FROM runs WHERE run_id = '{run_id}'") == [("running",)]
    return run_id


def _kill(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)


def test_run_already_in_progress_then_resumable_after_its_process_dies(tmp_path: Path) -> None:
    rows = 5_000
    proc, run_id = _start_and_pause(tmp_path, rows)
    db = tmp_path / "audit.db"
    try:
        before = _snapshot(tmp_path, db)
        result = run_cli("resume", run_id, "-d", _url(db), "-x", cwd=tmp_path)
        reason, _hint = _assert_refused(result, "Run already in progress")
        assert run_id in reason
        assert f":{proc.pid}:" in reason, reason  # names the lease holder
        _assert_unchanged(before, _snapshot(tmp_path, db))
        assert proc.poll() is None
    finally:
        _kill(proc)
    assert proc.returncode == -signal.SIGKILL
    resumed = run_cli("resume", run_id, "-d", _url(db), "-x", cwd=tmp_path)
    assert resumed.code == 0, resumed.stderr
    assert run_ids(db) == [run_id]
    assert_landscape_invariants(db, run_id, rows)
    files = sink_files(tmp_path)
    lines = sum(content.count(b"\n") for content in files.values())
    assert lines == rows + 2  # every row in exactly one sink, plus the two CSV headers


def test_force_new_refuses_a_run_in_progress(tmp_path: Path) -> None:
    proc, run_id = _start_and_pause(tmp_path, 5_000)
    db = tmp_path / "audit.db"
    try:
        before = _snapshot(tmp_path, db)
        result = run_cli("resume", run_id, "-d", _url(db), "--force-new", "-x", cwd=tmp_path)
        _assert_refused(result, "Run already in progress")
        _assert_unchanged(before, _snapshot(tmp_path, db))
    finally:
        _kill(proc)


# ------------------------------------------------------------------ refusals that must not happen
def test_dry_run_with_mismatching_settings_reports_the_mismatch(
    crashed: tuple[Path, Path, str, str], tmp_path: Path
) -> None:
    work, _settings, run_id, db = crashed
    other = gate_pipeline(work, work / "in.csv", landscape={"url": db})
    other["row_plugins"][0]["options"]["mapping"] = {"status": "state", "note": "remark"}
    other_path = write_settings(tmp_path / "other.yaml", other)
    before = _snapshot(work, db)
    result = run_cli("resume", run_id, "-s", str(other_path), cwd=work)
    _assert_unchanged(before, _snapshot(work, db))
    _assert_refused(result, "Configuration mismatch")


def test_resume_against_a_missing_landscape_creates_nothing(tmp_path: Path) -> None:
    # SQLite only: a missing file (a PostgreSQL database without a landscape: test_explain.py).
    missing = tmp_path / "nowhere" / "audit.db"
    result = run_cli(
        "resume", "01NOSUCHRUN0000000000000000", "-d", _url(missing), "-x", cwd=tmp_path
    )
    assert result.code != 0
    assert "Traceback" not in result.stderr
    assert "no landscape found" in result.stderr
    assert not missing.exists()
    assert not missing.parent.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def _aggregation_run(
    work: Path, landscape: str, env: dict[str, str] | None = None
) -> tuple[Result, str]:
    """The gate pipeline behind a passthrough ``batch_replicate`` (count trigger, one copy)."""
    work.mkdir(parents=True, exist_ok=True)
    aggregation = {
        "name": "window",
        "plugin": "batch_replicate",
        "trigger": {"count": 250},
        "output_mode": "passthrough",
        "options": {"default_copies": 1},
    }
    data = gate_pipeline(
        work, _make_input(work), aggregations=[aggregation], landscape={"url": landscape}
    )
    settings = write_settings(work / "settings.yaml", data)
    return run_cli("run", "-s", str(settings), "-x", cwd=work, env=env), landscape


def test_aggregation_run_crashed_after_its_batch_trigger_resumes(
    tmp_path: Path, landscapes: Landscapes, request: pytest.FixtureRequest
) -> None:
    """SIGKILL once the first batch is marked executing; resume retries it (attempt 2).

    The reference is a crash-free run of the SAME aggregation pipeline: ``batch_replicate``
    enriches every member with ``copies``, so the plain gate pipeline's outputs are not it.
    """
    reference_work, work = tmp_path / "reference", tmp_path / "crashed"
    reference_work.mkdir()
    work.mkdir()
    reference, reference_db = _aggregation_run(
        reference_work, landscapes.new(reference_work, request=request)
    )
    assert reference.code == 0, reference.stderr
    reference_files = sink_files(tmp_path / "reference")
    assert b'"copies":1' in reference_files["flagged.jsonl"]  # the enrichment is in the output

    crashed, db = _aggregation_run(
        work,
        landscapes.new(work, request=request),
        env={"ELSPETH_FAULT_INJECT": "batch_executing:1"},
    )
    assert crashed.code == -signal.SIGKILL, crashed.stderr
    (run_id,) = run_ids(db)
    assert query(db, "SELECT status, attempt FROM batches") == [("executing", 1)]

    resumed = run_cli("resume", run_id, "-d", db, "-x", cwd=work)
    assert resumed.code == 0, resumed.stderr
    files = sink_files(work)
    assert files.keys() == reference_files.keys()
    for name, content in reference_files.items():
        assert files[name] == content, f"{name} differs from the crash-free run"
    assert_landscape_invariants(db, run_id, ROWS)
    # Passthrough: no new tokens, so one terminal outcome per source row, as in the reference.
    terminal = "SELECT outcome, sink_name, count(*) FROM token_outcomes WHERE is_terminal "
    terminal += "GROUP BY outcome, sink_name ORDER BY outcome, sink_name"
    assert query(db, terminal) == query(reference_db, terminal)
    assert sum(n for _o, _s, n in query(db, terminal)) == ROWS
    # The batch that was executing failed and was retried once; every later batch ran once.
    batches = query(db, "SELECT status, attempt FROM batches ORDER BY created_at, attempt")
    assert batches[:2] == [("failed", 1), ("completed", 2)]
    assert batches[2:] == [("completed", 1)] * (len(batches) - 2)
    assert len(batches) - 1 == len(query(reference_db, "SELECT batch_id FROM batches"))


def test_a_run_superseded_by_force_new_is_not_resumed(tmp_path: Path, landscape_url: str) -> None:
    db = landscape_url
    _settings, old_run = _crash_run(tmp_path, landscape=db)
    fresh = run_cli("resume", old_run, "-d", db, "--force-new", "-x", cwd=tmp_path)
    assert fresh.code == 0, fresh.stderr
    (new_run,) = [r for r in run_ids(db) if r != old_run]
    assert query(db, f"SELECT status, superseded_by FROM runs WHERE run_id = '{old_run}'") == [
        ("failed", new_run)
    ]
    before = _snapshot(tmp_path, db)
    result = run_cli("resume", old_run, "-d", db, "-x", cwd=tmp_path)
    _assert_unchanged(before, _snapshot(tmp_path, db))
    reason, _hint = _assert_refused(result, old_run)
    assert new_run in reason
