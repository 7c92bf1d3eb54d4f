"""Partitioned execution on a real local Dask cluster (prefect-dask), against the CLI's outputs."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest

from examples.generate import generate
from tests.support.cli import gate_pipeline, run_cli, sink_files, url_invariants, write_settings

pytestmark = [pytest.mark.prefect, pytest.mark.slow]
ROWS = 6_000


def _pipeline(work: Path, source: Path) -> dict:
    data = gate_pipeline(work, source)
    data["row_plugins"] = [
        {"plugin": "field_mapper", "options": {"mapping": {"status": "state"}}},
        {"plugin": "pseudonymize", "options": {"fields": ["note"], "rounds": 300, "salt": "s"}},
    ]
    return data


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("dask-in") / "in.csv"
    generate(str(path), ROWS, seed=9, bad_every=301)
    return path


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, source: Path) -> dict[str, bytes]:
    work = tmp_path_factory.mktemp("dask-ref")
    settings = write_settings(work / "s.yaml", _pipeline(work, source))
    result = run_cli("run", "-s", str(settings), "-x", cwd=work)
    assert result.code == 0, result.stderr
    return sink_files(work)


def _dask_children() -> list[int]:
    me = str(os.getpid())
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        parent = stat.rsplit(")", 1)[1].split()[1]
        # Dask worker processes are spawned children; the resource tracker is not a worker.
        if parent == me and b"spawn_main" in cmdline and b"resource_tracker" not in cmdline:
            found.append(int(entry.name))
    return found


def test_two_dask_workers_match_the_single_process_run(
    prefect_harness: float, tmp_path: Path, source: Path, reference: dict[str, bytes]
) -> None:
    from flows.partitioned import run_on_dask

    result = run_on_dask(settings=_pipeline(tmp_path, source), workers=2, partition_rows=750)
    assert result["status"] == "completed"
    assert result["partitions"] >= 8
    assert sink_files(tmp_path) == reference
    url_invariants(f"sqlite:///{tmp_path / 'audit.db'}", result["run_id"], ROWS)


def test_killing_a_dask_worker_mid_run_changes_nothing(
    prefect_harness: float, tmp_path: Path, source: Path, reference: dict[str, bytes]
) -> None:
    from flows.partitioned import run_on_dask

    killed: list[int] = []

    def assassin() -> None:
        # Kill only once the cluster is up and computing: a worker killed while the cluster is
        # still starting fails the cluster's start-up (Dask's behaviour, not the product's).
        # A staged partition proves both workers registered and work is flowing.
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not killed:
            workers = _dask_children()
            staged = list(tmp_path.glob("payloads/*/staging/*"))
            if len(workers) >= 2 and staged:
                os.kill(workers[0], signal.SIGKILL)
                killed.append(workers[0])
            time.sleep(0.1)

    thread = threading.Thread(target=assassin, daemon=True)
    thread.start()
    result = run_on_dask(settings=_pipeline(tmp_path, source), workers=2, partition_rows=500)
    thread.join(timeout=5)
    assert killed, "no Dask worker was killed"
    assert result["status"] == "completed"
    assert sink_files(tmp_path) == reference
    url_invariants(f"sqlite:///{tmp_path / 'audit.db'}", result["run_id"], ROWS)
