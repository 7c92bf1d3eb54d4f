"""PostgreSQL landscape under operations: server restarts mid-run, many concurrent runs."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from examples.generate import generate
from tests.support.cli import (
    gate_pipeline,
    popen_cli,
    run_cli,
    sink_files,
    url_invariants,
    url_query,
    url_run_ids,
    write_settings,
)

pytestmark = [pytest.mark.postgres, pytest.mark.slow]
ROWS = 20_000
RUNS_AT_ONCE = 8  # more writer processes than cores: commits and leases interleave


@pytest.fixture(scope="module")
def input_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("pg-input") / "in.csv"
    generate(str(path), ROWS, seed=5, bad_every=499)
    return path


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, input_csv: Path) -> dict[str, bytes]:
    work = tmp_path_factory.mktemp("pg-reference")
    settings = write_settings(work / "s.yaml", gate_pipeline(work, input_csv))
    assert run_cli("run", "-s", str(settings), "-x", cwd=work).code == 0
    return sink_files(work)


def _wait_for_rows(url: str, minimum: int, proc: object, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        # Until the run's process has created the landscape there is no runs table to read.
        found = url_run_ids(url) and url_query(
            url, "SELECT coalesce(max(source_rows_ingested), 0) FROM runs"
        )
        if found and found[0][0] >= minimum:
            return
        assert proc.poll() is None, "run ended before the restart"  # type: ignore[attr-defined]
        time.sleep(0.1)
    raise AssertionError(f"run did not reach {minimum} rows")


def test_server_restart_mid_run_fails_cleanly_and_resumes(
    tmp_path: Path,
    input_csv: Path,
    reference: dict[str, bytes],
    pg_server,
    pg_url: str,  # noqa: ANN001
) -> None:
    settings = write_settings(
        tmp_path / "s.yaml", gate_pipeline(tmp_path, input_csv, landscape={"url": pg_url})
    )
    proc = popen_cli("run", "-s", str(settings), "-x", cwd=tmp_path)
    _wait_for_rows(pg_url, 3_000, proc)
    pg_server.restart(mode="fast")
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 2, stderr
    assert "Traceback" not in stderr
    assert "landscape database error" in stderr or "lease" in stderr, stderr
    (run_id,) = url_run_ids(pg_url)
    resumed = run_cli("resume", run_id, "-d", pg_url, "-x", cwd=tmp_path)
    assert resumed.code == 0, resumed.stderr
    assert sink_files(tmp_path) == reference
    url_invariants(pg_url, run_id, ROWS)


def test_many_runs_write_one_landscape_at_once(
    tmp_path: Path, input_csv: Path, reference: dict[str, bytes], pg_url: str
) -> None:
    procs = []
    for i in range(RUNS_AT_ONCE):
        work = tmp_path / f"w{i}"
        work.mkdir()
        settings = write_settings(
            work / "s.yaml", gate_pipeline(work, input_csv, landscape={"url": pg_url})
        )
        procs.append((work, popen_cli("run", "-s", str(settings), "-x", cwd=work)))
    for work, proc in procs:
        _, stderr = proc.communicate(timeout=600)
        assert proc.returncode == 0, stderr
        assert sink_files(work) == reference
    ids = url_run_ids(pg_url)
    assert len(ids) == RUNS_AT_ONCE
    for run_id in ids:
        url_invariants(pg_url, run_id, ROWS)


def test_resume_racing_a_live_run_is_refused(
    tmp_path: Path, input_csv: Path, reference: dict[str, bytes], pg_url: str
) -> None:
    settings = write_settings(
        tmp_path / "s.yaml", gate_pipeline(tmp_path, input_csv, landscape={"url": pg_url})
    )
    proc = popen_cli("run", "-s", str(settings), "-x", cwd=tmp_path)
    _wait_for_rows(pg_url, 1_000, proc)
    (run_id,) = url_run_ids(pg_url)
    refused = run_cli("resume", run_id, "-d", pg_url, "-x", cwd=tmp_path)
    assert refused.code == 3
    assert "Run already in progress" in refused.stderr
    _, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr
    assert sink_files(tmp_path) == reference
    url_invariants(pg_url, run_id, ROWS)


def test_killed_lease_holder_is_taken_over(
    tmp_path: Path, input_csv: Path, reference: dict[str, bytes], pg_url: str
) -> None:
    settings = write_settings(
        tmp_path / "s.yaml", gate_pipeline(tmp_path, input_csv, landscape={"url": pg_url})
    )
    proc = popen_cli("run", "-s", str(settings), "-x", cwd=tmp_path)
    _wait_for_rows(pg_url, 2_000, proc)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    (run_id,) = url_run_ids(pg_url)
    (owner,) = url_query(pg_url, "SELECT lease_owner FROM runs")[0]
    assert owner, "the dead process still holds the lease on record"
    resumed = run_cli("resume", run_id, "-d", pg_url, "-x", cwd=tmp_path)
    assert resumed.code == 0, resumed.stderr
    assert sink_files(tmp_path) == reference
    url_invariants(pg_url, run_id, ROWS)
