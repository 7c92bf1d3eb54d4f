"""Speed-up of partitioned execution on Dask: 2 workers against 1, on a CPU-heavy transform.

    python -m benchmarks.dask_speedup [--rows N] [--rounds R]

Runs the same pipeline (CSV -> field_mapper -> pseudonymize(R PBKDF2 rounds) -> gate -> sinks) three
ways in one session: the CLI (single process), the partitioned flow on a local Dask cluster of 1
worker, and of 2 workers; checks the outputs are byte-identical; prints and writes the ratios to
benchmarks/results/dask_speedup.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "benchmarks" / "work" / "dask"


def _settings(work: Path, source: Path, rounds: int) -> dict:
    sys.path.insert(0, str(ROOT))
    from tests.support.cli import gate_pipeline

    data = gate_pipeline(work, source)
    data["row_plugins"].append(
        {"plugin": "pseudonymize", "options": {"fields": ["note"], "rounds": rounds}}
    )
    return data


def _flow(work: Path, settings: Path, workers: int) -> float:
    code = (
        "import sys, yaml, time; from flows.partitioned import run_on_dask; "
        f"s = yaml.safe_load(open({str(settings)!r})); t = time.perf_counter(); "
        f"r = run_on_dask(settings=s, workers={workers}); "
        "print('ELAPSED', time.perf_counter() - t, r['status'], r['partitions'])"
    )
    env = dict(
        os.environ,
        DO_NOT_TRACK="1",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="180",
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True
    ).stdout
    line = next(x for x in out.splitlines() if x.startswith("ELAPSED"))
    _, seconds, status, _parts = line.split()
    assert status == "completed", out
    return float(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=8_000)
    parser.add_argument("--rounds", type=int, default=1_500)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from examples.generate import generate

    WORK.mkdir(parents=True, exist_ok=True)
    source = WORK / "in.csv"
    generate(str(source), args.rows, seed=1)
    timings: dict[str, float] = {}
    outputs = {}
    for mode in ("cli", "dask-1", "dask-2"):
        work = WORK / mode
        subprocess.run(["rm", "-rf", str(work)], check=True)
        work.mkdir(parents=True)
        settings = work / "settings.yaml"
        settings.write_text(yaml.safe_dump(_settings(work, source, args.rounds)))
        if mode == "cli":
            started = time.perf_counter()
            subprocess.run(
                [sys.executable, "-m", "elspeth_core.cli.app", "run", "-s", str(settings), "-x"],
                cwd=ROOT,
                check=True,
                capture_output=True,
            )
            timings[mode] = time.perf_counter() - started
        else:
            timings[mode] = _flow(work, settings, int(mode.split("-")[1]))
        outputs[mode] = {p.name: p.read_bytes() for p in sorted((work / "out").iterdir())}
    identical = outputs["cli"] == outputs["dask-1"] == outputs["dask-2"]
    result = {
        "rows": args.rows,
        "pbkdf2_rounds": args.rounds,
        "seconds": {k: round(v, 2) for k, v in timings.items()},
        "speedup_2_over_1_workers": round(timings["dask-1"] / timings["dask-2"], 2),
        "dask_2_over_cli": round(timings["cli"] / timings["dask-2"], 2),
        "outputs_identical": identical,
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "loadavg": os.getloadavg(),
        },
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    out = ROOT / "benchmarks" / "results" / "dask_speedup.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
