"""``python -m benchmarks.explain_latency [--rows N] [--samples K] [--reuse]``: explain on a big run.

Builds a landscape by running the real ``elspeth`` CLI on a generated CSV (1,000,000 rows by
default) through the threshold-gate pipeline (schema, a field mapper, two gates, four sinks, a
quarantine every 997 rows), then times ``explain`` in-process, the way the CLI calls it:
- ``by_row``: ``--row`` for K random rows (seeded), the whole document including the payload read;
- ``by_sink_line``: ``--sink high --line N`` for K random data lines of ``high.csv``, checked
  against the file (the explained row is the row on that line);
- ``cold``: one warm-up call of each kind first, in a fresh process (statement caches empty);
- ``cli``: a few complete ``elspeth explain --json`` processes (interpreter start-up included),
  and one ``elspeth runs show`` (its counts scan the run's outcomes).
Writes ``benchmarks/results/explain_latency.json``. The landscape is kept under
``benchmarks/work/explain_latency/`` and ``--reuse`` skips the build when it already holds a
completed run of the same size.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from elspeth_core.explain import ExplainTarget, explain
from elspeth_core.landscape.access import open_existing
from elspeth_core.landscape.lineage import LineageQueries
from examples.generate import generate

REPO = Path(__file__).resolve().parents[1]
WORK = REPO / "benchmarks" / "work" / "explain_latency"
RESULT = REPO / "benchmarks" / "results" / "explain_latency.json"
TARGET_MS = 100.0


def settings(work: Path) -> dict[str, Any]:
    out = work / "out"
    return {
        "datasource": {
            "plugin": "csv",
            "options": {
                "path": str(work / "input.csv"),
                "schema": {"mode": "free", "fields": ["id: int", "amount: float", "status: str"]},
                "on_validation_failure": "quarantine",
            },
        },
        "row_plugins": [{"plugin": "field_mapper", "options": {"mapping": {"status": "state"}}}],
        "gates": [
            {
                "name": "flagged",
                "condition": "row['state'] == 'flagged'",
                "routes": {"true": "flagged", "false": "continue"},
            },
            {
                "name": "big_amount",
                "condition": "row['amount'] >= 500",
                "routes": {"true": "high", "false": "continue"},
            },
        ],
        "sinks": {
            "normal": {"plugin": "csv", "options": {"path": str(out / "normal.csv")}},
            "high": {"plugin": "csv", "options": {"path": str(out / "high.csv")}},
            "flagged": {"plugin": "json", "options": {"path": str(out / "flagged.jsonl")}},
            "quarantine": {"plugin": "json", "options": {"path": str(out / "quarantine.jsonl")}},
        },
        "output_sink": "normal",
        "landscape": {"url": f"sqlite:///{work / 'audit.db'}"},
        "checkpoint": {"enabled": True, "frequency": "every_n", "checkpoint_interval": 1000},
        "payload_store": {"base_path": str(work / "payloads")},
    }


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ELSPETH_")}
    env["DO_NOT_TRACK"] = "1"
    return subprocess.run(
        [sys.executable, "-m", "elspeth_core.cli.app", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )


def _existing_run(work: Path, rows: int) -> str | None:
    if not (work / "audit.db").is_file():
        return None
    found = _cli("runs", "list", "--json", "-d", f"sqlite:///{work / 'audit.db'}", cwd=work)
    if found.returncode != 0:
        return None
    for run in json.loads(found.stdout):
        if run["status"] == "completed" and run["rows"] == rows:
            return str(run["run_id"])
    return None


def build(work: Path, rows: int) -> dict[str, Any]:
    """Generate the input and run the pipeline through the CLI; returns timings."""
    if work.exists():
        for path in sorted(work.rglob("*"), reverse=True):
            path.unlink() if path.is_file() else path.rmdir()
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    generate(str(work / "input.csv"), rows, seed=20261125, bad_every=997)
    generated = time.perf_counter() - started
    (work / "settings.yaml").write_text(yaml.safe_dump(settings(work), sort_keys=False))
    started = time.perf_counter()
    result = _cli("run", "-s", "settings.yaml", "-x", "--json", cwd=work)
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"the benchmark run failed: {result.stderr.strip()}")
    report = json.loads(result.stdout)
    return {
        "generate_seconds": round(generated, 1),
        "run_seconds": round(elapsed, 1),
        "run_rows_per_second": round(rows / elapsed),
        "run_id": report["run_id"],
    }


def _stats(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    p95 = ordered[max(0, int(round(0.95 * len(ordered))) - 1)]
    return {
        "n": len(ordered),
        "median_ms": round(statistics.median(ordered), 2),
        "p95_ms": round(p95, 2),
        "min_ms": round(ordered[0], 2),
        "max_ms": round(ordered[-1], 2),
        "mean_ms": round(statistics.fmean(ordered), 2),
    }


def measure(work: Path, run_id: str, rows: int, samples: int) -> dict[str, Any]:
    rng = random.Random(7)
    with open(work / "out" / "high.csv", newline="", encoding="utf-8") as handle:
        high_ids = [r["id"] for r in csv.DictReader(handle)]
    url = f"sqlite:///{work / 'audit.db'}"
    with open_existing(url) as db:
        picked = rng.sample(range(rows), samples + 1)
        row_ids = _row_ids(db, run_id, picked[1:])
        warm_up = {
            "by_row": ExplainTarget(run=run_id, row_id=_row_ids(db, run_id, picked[:1])[0]),
            "by_sink_line": ExplainTarget(run=run_id, sink="high", line=len(high_ids)),
        }
        by_row, by_line = [], []
        cold: dict[str, float] = {}
        for kind, targets in (
            ("by_row", [ExplainTarget(run=run_id, row_id=r) for r in row_ids]),
            (
                "by_sink_line",
                [
                    ExplainTarget(run=run_id, sink="high", line=n)
                    for n in rng.sample(range(1, len(high_ids) + 1), samples)
                ],
            ),
        ):
            timings = by_row if kind == "by_row" else by_line
            started = time.perf_counter()
            _check(explain(db, warm_up[kind]), warm_up[kind], high_ids)
            cold[kind] = round((time.perf_counter() - started) * 1000, 2)
            for target in targets:
                started = time.perf_counter()
                doc = explain(db, target)
                timings.append((time.perf_counter() - started) * 1000)
                _check(doc, target, high_ids)
    cli = []
    for row_id in row_ids[:5]:
        started = time.perf_counter()
        result = _cli("explain", "--run", run_id, "--row", row_id, "--json", "-d", url, cwd=work)
        cli.append((time.perf_counter() - started) * 1000)
        assert result.returncode == 0, result.stderr
    started = time.perf_counter()
    shown = _cli("runs", "show", run_id, "--json", "-d", url, cwd=work)
    runs_show_ms = round((time.perf_counter() - started) * 1000, 1)
    assert shown.returncode == 0 and json.loads(shown.stdout)["rows"] == rows, shown.stderr
    return {
        "runs_show_process_ms": runs_show_ms,
        "by_row": _stats(by_row),
        "by_sink_line": _stats(by_line),
        "cold_first_call_ms": cold,
        "cli_process_ms": _stats(cli),
    }


def _previous_build(path: Path, rows: int, run_id: str) -> dict[str, Any]:
    """The build figures of the result that built this very landscape (kept across --reuse)."""
    try:
        previous = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    build = previous.get("build", {})
    if previous.get("rows") == rows and build.get("run_id") == run_id:
        return {k: v for k, v in build.items() if k != "reused"}
    return {}


def _row_ids(db: Any, run_id: str, indexes: list[int]) -> list[str]:
    by_index = LineageQueries(db).row_ids_at(run_id, indexes)
    return [by_index[i] for i in indexes]


def _check(doc: dict[str, Any], target: ExplainTarget, high_ids: list[str]) -> None:
    assert doc["tokens"], target
    if target.line is not None:
        assert doc["row"]["row_index"] == int(high_ids[target.line - 1]), target
    else:
        assert doc["row"]["row_id"] == target.row_id


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--samples", type=int, default=50)
    parser.add_argument("--reuse", action="store_true", help="Keep an existing landscape.")
    parser.add_argument("--output", type=Path, default=RESULT)
    args = parser.parse_args()
    run_id = _existing_run(WORK, args.rows) if args.reuse else None
    built: dict[str, Any] = {"reused": run_id is not None}
    if run_id is not None:
        built.update(_previous_build(args.output, args.rows, run_id))
    else:
        built.update(build(WORK, args.rows))
        run_id = built["run_id"]
    print(f"landscape: {args.rows:,} rows, run {run_id} ({built})", flush=True)
    figures = measure(WORK, run_id, args.rows, args.samples)
    result = {
        "benchmark": "explain_latency",
        "recorded_at": datetime.now(UTC).isoformat(),
        "rows": args.rows,
        "samples": args.samples,
        "target_ms": TARGET_MS,
        "meets_target": figures["by_row"]["p95_ms"] < TARGET_MS
        and figures["by_sink_line"]["p95_ms"] < TARGET_MS,
        "build": built,
        "landscape_bytes": (WORK / "audit.db").stat().st_size,
        "pipeline": "csv -> field_mapper -> 2 gates -> 4 sinks (quarantine every 997 rows)",
        "machine": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
        },
        "note": "by_row/by_sink_line: in-process explain() calls (queries + payload read + "
        "document) after one warm-up call per kind, which is reported as cold_first_call_ms "
        "(empty statement caches); cli_process_ms is a whole 'elspeth explain --json' process, "
        "interpreter start-up and imports included.",
        **figures,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(
        json.dumps(
            {
                k: result[k]
                for k in (
                    "by_row",
                    "by_sink_line",
                    "cold_first_call_ms",
                    "cli_process_ms",
                    "runs_show_process_ms",
                    "meets_target",
                )
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
