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

from tests.support.cli import REPO, cli_env


def test_quick_benchmark_runs_and_writes_results(tmp_path: Path) -> None:
    out = tmp_path / "results"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.run",
            "--quick",
            "--output",
            str(out),
            "--workdir",
            str(tmp_path / "work"),
        ],
        cwd=REPO,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
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
