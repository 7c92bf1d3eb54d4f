"""``make bench-quick`` keeps working: the harness runs end to end and writes its results.

No speed is asserted (the machines are shared and noisy); the benchmark's own table is where
figures are read. What is asserted is what would rot: the entry points the harness drives, the
workloads' settings, the baselines, the result file's shape.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.cli import REPO, cli_env


def _run_module(module: str, *args: str) -> None:
    """``python -m module args`` from the repository, as ``make bench`` runs it; must succeed."""
    proc = subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=REPO,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]


def test_quick_benchmark_runs_and_writes_results(tmp_path: Path) -> None:
    out = tmp_path / "results"
    _run_module(
        "benchmarks.run",
        "--quick",
        "--output",
        str(out),
        "--workdir",
        str(tmp_path / "work"),
    )
    document = json.loads((out / "quick.json").read_text())
    assert document["mode"] == "quick"
    assert set(document["workloads"]) == {"A", "B", "C"}
    results = {r["id"]: r for r in document["results"]}
    for workload in ("A", "B", "C"):
        for entry in (f"{workload}/2000/baseline", f"{workload}/2000/sqlite/cli/default"):
            assert results[entry]["status"] == "ok", results[entry]
            assert results[entry]["rows_per_second"] > 0
        engine = results[f"{workload}/2000/sqlite/cli/default"]
        assert engine["extra"]["outputs_match_baseline"] is True
    resumed = results["A/2000/sqlite/resume@90%"]
    assert resumed["status"] == "ok", resumed
    assert resumed["extra"]["outputs_match_full_run"] is True
    flow = results["A/2000/sqlite/flow/default"]
    assert flow["status"] == "ok", flow
    assert flow["rows_per_second"] > 0
    assert {t["name"] for t in document["targets"]}, "targets are evaluated"


def test_large_only_runs_just_the_largest_size(tmp_path: Path) -> None:
    out = tmp_path / "results"
    _run_module(
        "benchmarks.run",
        "--rows",
        "300",
        "1200",
        "--workloads",
        "A",
        "--large-only",
        "--no-postgres",
        "--no-flow",
        "--output",
        str(out),
        "--workdir",
        str(tmp_path / "work"),
    )
    document = json.loads((out / "large.json").read_text())
    results = {r["id"]: r for r in document["results"]}
    assert set(results) == {
        "A/1200/baseline",
        "A/1200/sqlite/cli/default",
        "A/1200/sqlite/resume@90%",
        "A/1200/sqlite/resume@50%",
    }
    assert all(r["status"] == "ok" for r in results.values()), results
    assert results["A/1200/sqlite/resume@90%"]["extra"]["outputs_match_full_run"] is True


@pytest.mark.prefect
def test_dask_step_keeps_to_its_budget(tmp_path: Path) -> None:
    """With no time left, the first 1-worker/2-worker pair still runs; the rest is skipped."""
    output = tmp_path / "dask.json"
    _run_module(
        "benchmarks.dask_speedup",
        "--rows",
        "40",
        "--rounds",
        "10",
        "--budget",
        "1",
        "--output",
        str(output),
    )
    document = json.loads(output.read_text())
    assert set(document["samples"]["seconds"]) == {"dask-1", "dask-2"}
    assert document["skipped"] == ["dask-1", "dask-2", "cli"]
    assert document["dask_2_over_cli"] is None
    assert document["outputs_identical"] is True
