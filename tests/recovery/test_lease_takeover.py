"""Lease takeover and fencing with real `elspeth` processes, SQLite and PostgreSQL (SPEC §4.5).

The crash suite takes a killed run over at once because its owner is provably dead on this host.
What a multi-worker deployment relies on is tested here:

- a lease whose owner names **another host** cannot be checked by PID: while it is live, `resume`
  is refused ("Run already in progress", exit 3) and writes nothing; once it has expired (no
  heartbeat within the lease timeout, ``ELSPETH_LEASE_TIMEOUT``), the same command takes the run
  over and completes it, with outputs byte-identical to a crash-free run;
- **fencing**: a process that is alive but paused (SIGSTOP) while its lease expires and another
  process takes the run over must, when it continues, write nothing more (no sink byte, no table
  row, no landscape record) and exit with the lease-lost error (exit 3). The landscape fence alone
  is not enough: sinks are written before the commit's transaction, so the session checks its
  lease before every write (``LeaseKeeper.check``). Without that check the continued process
  rewrote every sink file, and its rows in a database sink made the new holder's inserts fail.

Processes pause themselves at a named point with ``ELSPETH_FAULT_INJECT=<point>:<n>:stop``.
"""

from __future__ import annotations

import csv
import os
import random
import signal
import socket
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, text, update

from elspeth_core.engine.lease import LeaseKeeper
from elspeth_core.landscape import LandscapeDB, LandscapeQueries, LandscapeRecorder
from elspeth_core.landscape import schema as t
from tests.support.cli import (
    gate_pipeline,
    popen_cli,
    run_cli,
    sink_files,
    url_invariants,
    url_run_ids,
    write_settings,
)

pytestmark = pytest.mark.slow

ROWS = 6_000  # 60 commits of 100 rows: a few seconds of processing per run
LEASE_SECONDS = 2.0
LEASE_ENV = {"ELSPETH_LEASE_TIMEOUT": str(LEASE_SECONDS)}
FOREIGN_HOST = "worker-on-another-host"
FOREIGN_LEASE_SECONDS = 3.0  # the foreign worker's own lease timeout


def _write_input(path: Path, rows: int) -> None:
    """Deterministic rows for the gate pipeline: every route, and a bad row now and then."""
    rng = random.Random(5)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["id", "amount", "status", "note"])
        for i in range(rows):
            amount = "n/a" if i % 499 == 498 else f"{rng.uniform(0, 1000):.2f}"
            status = rng.choice(["ok", "ok", "pending", "flagged"])
            writer.writerow([i, amount, status, f"row {i} é"])


@pytest.fixture(scope="module")
def input_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("input") / "in.csv"
    _write_input(path, ROWS)
    return path


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, input_csv: Path) -> dict[str, bytes]:
    """The sink files of a crash-free run of the same pipeline."""
    work = tmp_path_factory.mktemp("reference")
    settings = write_settings(work / "settings.yaml", gate_pipeline(work, input_csv))
    result = run_cli("run", "-s", str(settings), "-x", cwd=work)
    assert result.code == 0, result.stderr
    files = sink_files(work)
    assert set(files) == {"normal.csv", "high.csv", "flagged.jsonl", "quarantine.jsonl"}
    assert files["quarantine.jsonl"].count(b"\n") == ROWS // 499
    return files


@pytest.fixture(params=["sqlite", "postgres"])
def landscape(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The landscape URL: a SQLite file, or a fresh database on the throwaway PostgreSQL server."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'audit.db'}"
    return str(request.getfixturevalue("pg_url"))


# ---------------------------------------------------------------------------------- helpers


@contextmanager
def _landscape(url: str) -> Iterator[LandscapeDB]:
    db = LandscapeDB(url, create=False)
    try:
        yield db
    finally:
        db.close()


def _run(url: str, run_id: str) -> dict[str, Any]:
    with _landscape(url) as db:
        run = LandscapeQueries(db).get_run(run_id)
    assert run is not None
    return run


def _attempts(url: str, run_id: str) -> list[tuple[Any, ...]]:
    with _landscape(url) as db, db.connect() as conn:
        a = t.run_attempts.c
        query = select(a.attempt, a.kind, a.status, a.lease_owner).where(a.run_id == run_id)
        return [tuple(r) for r in conn.execute(query.order_by(a.attempt))]


def _files(work: Path) -> dict[str, tuple[int, int, bytes]]:
    """Every sink and payload file: size, modification time (ns) and content."""
    found = {}
    for folder in ("out", "payloads"):
        for path in sorted((work / folder).rglob("*")):
            if path.is_file():
                stat = path.stat()
                found[str(path.relative_to(work))] = (
                    stat.st_size,
                    stat.st_mtime_ns,
                    path.read_bytes(),
                )
    return found


def _snapshot(url: str, work: Path, *, volatile: tuple[str, ...] = ()) -> dict[str, Any]:
    """What a process could have written: every landscape table and every file of the run.

    ``volatile`` names ``runs`` columns left out (a heartbeat the test itself keeps sending).
    """
    with _landscape(url) as db, db.connect() as conn:
        counts = {
            name: conn.execute(select(func.count()).select_from(table)).scalar_one()
            for name, table in t.metadata.tables.items()
        }
        runs = [
            {k: v for k, v in row.items() if k not in volatile}
            for row in conn.execute(select(t.runs).order_by(t.runs.c.run_id)).mappings()
        ]
        attempts = [dict(r) for r in conn.execute(select(t.run_attempts)).mappings()]
        artifacts = [dict(r) for r in conn.execute(select(t.artifacts)).mappings()]
    return {
        "counts": counts,
        "runs": runs,
        "attempts": attempts,
        "artifacts": artifacts,
        "files": _files(work),
    }


def _wait_for_expiry(url: str, run_id: str, timeout: float = 30.0) -> None:
    """Wait until the run's lease has expired by the wall clock (nobody extends it any more)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        expires = _run(url, run_id)["lease_expires_at"]
        if expires is not None and expires < datetime.now(UTC) - timedelta(seconds=0.2):
            return
        time.sleep(0.2)
    raise AssertionError(f"lease of run {run_id} did not expire within {timeout} s")


def _check_outputs(work: Path, reference: dict[str, bytes], url: str, run_id: str) -> None:
    files = sink_files(work)
    assert files.keys() == reference.keys()
    for name, content in reference.items():
        assert files[name] == content, f"{name} differs from the crash-free run"
    url_invariants(url, run_id, ROWS)


def _process_state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().rsplit(")", 1)[1].split()[0]


def _wait_until_stopped(proc: subprocess.Popen[str], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"process exited ({proc.returncode}): {proc.communicate()[1]}")
        if _process_state(proc.pid) == "T":
            return
        time.sleep(0.05)
    raise AssertionError(f"process {proc.pid} did not stop within {timeout} s")


def _paused(proc: subprocess.Popen[str], url: str) -> str:
    """Wait until ``proc`` froze itself at its fault point, holding no landscape lock; its run ID.

    The main thread stops between transactions, but the heartbeat thread may be inside one (a
    paused lock holder blocks everyone, as it would in production): then let it run a moment and
    pause it again from outside, until it holds no lock.
    """
    _wait_until_stopped(proc)
    (run_id,) = url_run_ids(url)
    for _ in range(20):
        if not _landscape_locked(url, run_id):
            return run_id
        os.kill(proc.pid, signal.SIGCONT)
        time.sleep(0.02)
        os.kill(proc.pid, signal.SIGSTOP)
        _wait_until_stopped(proc)
    raise AssertionError("the paused process always held a landscape lock")


def _landscape_locked(url: str, run_id: str) -> bool:
    """True when a transaction holds the landscape's write lock (SQLite) or the run's row (PG)."""
    if url.startswith("sqlite:///"):
        conn = sqlite3.connect(url.removeprefix("sqlite:///"), timeout=0, isolation_level=None)
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("ROLLBACK")
            return False
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc) or "busy" in str(exc):
                return True
            raise
        finally:
            conn.close()
    with _landscape(url) as db, db.connect() as conn:
        try:
            conn.execute(
                text("SELECT 1 FROM runs WHERE run_id = :r FOR UPDATE NOWAIT"), {"r": run_id}
            )
            return False
        except Exception as exc:  # noqa: BLE001 - only "the row is locked" means locked
            if "could not obtain lock" in str(exc):
                return True
            raise
        finally:
            conn.rollback()


# ------------------------------------------------------------------------- another host


def test_expired_lease_of_another_host_is_taken_over(
    tmp_path: Path, input_csv: Path, reference: dict[str, bytes], landscape: str
) -> None:
    """A live lease held by another host is refused (nothing written); once expired, taken over.

    The killed process's owner string is rewritten to name another host, keeping its pid and start
    ticks: on this host that pid is gone, so a resume that (wrongly) checked the pid of a foreign
    owner would take the run over at once. While the test heartbeats on the foreign owner's
    behalf (a live worker elsewhere), resume must refuse; after the heartbeats stop and the lease
    timeout passes, the same command takes over and completes the run.
    """
    url = landscape
    settings = write_settings(
        tmp_path / "settings.yaml", gate_pipeline(tmp_path, input_csv, landscape={"url": url})
    )
    killed = run_cli(
        "run",
        "-s",
        str(settings),
        "-x",
        cwd=tmp_path,
        env={**LEASE_ENV, "ELSPETH_FAULT_INJECT": "after_commit:8"},
    )
    assert killed.code == -signal.SIGKILL, killed.stderr
    (run_id,) = url_run_ids(url)
    dead_owner = _run(url, run_id)["lease_owner"]
    host, pid, ticks, nonce = dead_owner.split(":")
    assert host == socket.gethostname()
    foreign = f"{FOREIGN_HOST}:{pid}:{ticks}:{nonce}"

    with _landscape(url) as db:
        now = datetime.now(UTC)
        with db.begin() as conn:
            conn.execute(
                update(t.runs)
                .where(t.runs.c.run_id == run_id)
                .values(
                    lease_owner=foreign,
                    heartbeat_at=now,
                    lease_expires_at=now + timedelta(seconds=FOREIGN_LEASE_SECONDS),
                )
            )
        recorder = LandscapeRecorder(db)
        keeper = LeaseKeeper(recorder, run_id, foreign, FOREIGN_LEASE_SECONDS).start()
        try:
            before = _snapshot(url, tmp_path, volatile=("heartbeat_at", "lease_expires_at"))
            refused = run_cli("resume", run_id, "-d", url, "-x", cwd=tmp_path, env=LEASE_ENV)
            assert refused.code == 3, (refused.code, refused.stderr)
            assert "Run already in progress" in refused.stderr
            assert FOREIGN_HOST in refused.stderr
            after = _snapshot(url, tmp_path, volatile=("heartbeat_at", "lease_expires_at"))
            assert after == before, "a refused resume wrote to the landscape or the outputs"
            assert not keeper.lost, "the refused resume took the lease"
        finally:
            keeper.stop()  # the foreign worker dies: no heartbeat any more

    _wait_for_expiry(url, run_id)
    assert _run(url, run_id)["lease_owner"] == foreign  # expired, not released
    resumed = run_cli("resume", run_id, "-d", url, "-x", cwd=tmp_path, env=LEASE_ENV)
    assert resumed.code == 0, resumed.stderr

    _check_outputs(tmp_path, reference, url, run_id)
    attempts = _attempts(url, run_id)
    assert [(a[0], a[1], a[2]) for a in attempts] == [
        (1, "run", "interrupted"),
        (2, "resume", "completed"),
    ]
    assert attempts[1][3].split(":")[0] == socket.gethostname()
    run = _run(url, run_id)
    assert run["lease_owner"] is None and run["lease_expires_at"] is None


# ----------------------------------------------------------------------------------- fencing


@pytest.mark.parametrize(
    "pause_at",
    [
        "after_commit:10",  # between commits: its next rows must not reach a sink
        "after_sink_write:10",  # sink bytes flushed, not committed: its commit must be refused
    ],
)
def test_paused_lease_holder_is_fenced_after_takeover(
    tmp_path: Path, input_csv: Path, reference: dict[str, bytes], landscape: str, pause_at: str
) -> None:
    """A paused process whose lease expired and was taken over writes nothing when it continues.

    The first process freezes itself (SIGSTOP) at a named point; its heartbeat stops with it and
    its lease expires. A resume takes the run over and completes it. Then the frozen process is
    continued (SIGCONT): it must exit with the lease-lost error (exit 3) without touching a sink
    file, a payload file or the landscape, and the outputs stay identical to a crash-free run.
    """
    url = landscape
    settings = write_settings(
        tmp_path / "settings.yaml", gate_pipeline(tmp_path, input_csv, landscape={"url": url})
    )
    holder = popen_cli(
        "run",
        "-s",
        str(settings),
        "-x",
        cwd=tmp_path,
        env={**LEASE_ENV, "ELSPETH_FAULT_INJECT": f"{pause_at}:stop"},
    )
    try:
        run_id = _paused(holder, url)
        paused_owner = _run(url, run_id)["lease_owner"]
        assert paused_owner.split(":")[1] == str(holder.pid)

        _wait_for_expiry(url, run_id)
        assert _process_state(holder.pid) == "T"  # still alive, still paused
        takeover = run_cli("resume", run_id, "-d", url, "-x", cwd=tmp_path, env=LEASE_ENV)
        assert takeover.code == 0, takeover.stderr
        _check_outputs(tmp_path, reference, url, run_id)
        done = _snapshot(url, tmp_path)

        os.kill(holder.pid, signal.SIGCONT)
        _, stderr = holder.communicate(timeout=60)
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.communicate()

    assert holder.returncode == 3, (holder.returncode, stderr)
    assert f"lease on run {run_id} lost" in stderr, stderr
    after = _snapshot(url, tmp_path)
    # Its own payload pack may get the payloads it had buffered before the pause (flushed when
    # it closes): appended after its last committed reference, never read. Nothing else changes.
    own_pack = f"payloads/{run_id}/0001-{holder.pid}.pack"
    size, _, content = done["files"][own_pack]
    assert after["files"].pop(own_pack)[2][:size] == content
    del done["files"][own_pack]
    changed = sorted(n for n in after["files"] if after["files"][n] != done["files"].get(n))
    assert changed == [], f"the fenced process wrote to {changed} after the takeover"
    assert after == done, "the fenced process wrote to the landscape after the takeover"
    _check_outputs(tmp_path, reference, url, run_id)
    attempts = _attempts(url, run_id)
    assert [(a[0], a[1], a[2], a[3]) for a in attempts] == [
        (1, "run", "interrupted", paused_owner),
        (2, "resume", "completed", attempts[1][3]),
    ]


# ------------------------------------------------------------------ fencing a database sink


def _db_pipeline(work: Path, input_csv: Path, url: str) -> dict[str, Any]:
    """The gate pipeline with its main output in a table of a target database."""
    data = gate_pipeline(work, input_csv, landscape={"url": url})
    target = f"sqlite:///{work / 'target.db'}"
    data["sinks"]["normal"] = {"plugin": "database", "options": {"url": target, "table": "normal"}}
    return data


def _table_rows(work: Path) -> list[tuple[Any, ...]]:
    """The target table in publication order, without the run ID column (it differs per run)."""
    with sqlite3.connect(work / "target.db") as conn:
        cursor = conn.execute("SELECT * FROM normal ORDER BY _elspeth_seq")
        keep = [i for i, c in enumerate(cursor.description) if c[0] != "_elspeth_run_id"]
        return [tuple(row[i] for i in keep) for row in cursor.fetchall()]


@pytest.fixture(scope="module")
def db_reference(
    tmp_path_factory: pytest.TempPathFactory, input_csv: Path
) -> tuple[dict[str, bytes], list[tuple[Any, ...]]]:
    """Sink files and target table of a crash-free run of the database-sink pipeline."""
    work = tmp_path_factory.mktemp("db-reference")
    url = f"sqlite:///{work / 'audit.db'}"
    settings = write_settings(work / "settings.yaml", _db_pipeline(work, input_csv, url))
    result = run_cli("run", "-s", str(settings), "-x", cwd=work)
    assert result.code == 0, result.stderr
    rows = _table_rows(work)
    assert len(rows) > 1000
    return sink_files(work), rows


def test_paused_holder_cannot_publish_into_the_new_holders_table(
    tmp_path: Path,
    input_csv: Path,
    db_reference: tuple[dict[str, bytes], list[tuple[Any, ...]]],
    landscape: str,
) -> None:
    """A fenced process's late rows must not reach a database sink the new holder publishes to.

    The new holder is paused right after its takeover (sinks restored, no row written yet) while
    the old, paused holder is continued. A holder that wrote its next chunk into the table before
    its landscape commit was refused would take sequence numbers the new holder publishes next:
    the new holder's insert would then fail on the table's primary key and the run would fail.
    The old holder must stop before writing; the new one, whose own lease expired while it was
    paused but was not taken over, extends it and completes the run.
    """
    url = landscape
    settings = write_settings(tmp_path / "settings.yaml", _db_pipeline(tmp_path, input_csv, url))
    env = {**LEASE_ENV, "ELSPETH_FAULT_INJECT": "after_commit:10:stop"}
    holder = popen_cli("run", "-s", str(settings), "-x", cwd=tmp_path, env=env)
    successor: subprocess.Popen[str] | None = None
    try:
        run_id = _paused(holder, url)
        _wait_for_expiry(url, run_id)
        env = {**LEASE_ENV, "ELSPETH_FAULT_INJECT": "source_read:1:stop"}
        successor = popen_cli("resume", run_id, "-d", url, "-x", cwd=tmp_path, env=env)
        _paused(successor, url)
        assert _run(url, run_id)["lease_owner"].split(":")[1] == str(successor.pid)
        published = _table_rows(tmp_path)

        os.kill(holder.pid, signal.SIGCONT)
        _, stderr = holder.communicate(timeout=60)
        assert holder.returncode == 3, (holder.returncode, stderr)
        assert f"lease on run {run_id} lost" in stderr, stderr
        assert _table_rows(tmp_path) == published, "the fenced process published rows"

        os.kill(successor.pid, signal.SIGCONT)
        _, stderr = successor.communicate(timeout=120)
        assert successor.returncode == 0, (successor.returncode, stderr)
    finally:
        for proc in (holder, successor):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.communicate()

    files, rows = db_reference
    assert _table_rows(tmp_path) == rows
    assert sink_files(tmp_path) == files
    url_invariants(url, run_id, ROWS)
