"""``python -m benchmarks.run [--quick] [--rows N ...]``: run the benchmark plan, print the table.

The full plan (``make bench``) measures workloads A, B and C at 100k and 1M rows through the CLI on
SQLite next to their unaudited baselines, a checkpoint-frequency sweep, a crash at 50 % and 90 %
with its resume, workload A on PostgreSQL, and the Prefect flow (a 1-row run for its fixed cost,
and the large run). ``--quick`` (``make bench-quick``, CI) runs small inputs on SQLite: the CLI
for every workload, one crash/resume and one flow run — it checks that the harness works, its
figures are not meant to be compared with anything.

Results go to ``<output>/<name>.json`` (``benchmarks/results/full.json`` or ``quick.json`` by
default); inputs and run directories live under ``benchmarks/work/`` (git-ignored).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

from benchmarks.inputs import input_path
from benchmarks.measure import REPO, load_average
from benchmarks.report import Results, evaluate_targets, table, targets_table
from benchmarks.scenarios import Bench, Result
from benchmarks.workloads import WORKLOADS

FULL_SIZES = (100_000, 1_000_000)
QUICK_SIZES = (2_000,)
DEFAULT_BUDGET_SECONDS = 690  # leaves room for the Dask speed-up in `make bench` (< 15 min in all)


@dataclass
class Plan:
    sizes: tuple[int, ...]
    workloads: tuple[str, ...]
    quick: bool
    postgres: bool
    flow: bool

    @property
    def large(self) -> int:
        return max(self.sizes)

    @property
    def small(self) -> int:
        return min(self.sizes)

    @property
    def every_row_rows(self) -> int:
        """Per-record commits cost a durable commit per row: a small input says enough."""
        return min(self.small, 200 if self.quick else 2_000)

    @property
    def every_ten_rows(self) -> int:
        return min(self.small, 10_000)


Estimate = Callable[["Results"], "float | None"]


@dataclass
class Step:
    """One measurement to take, and how long it should take (for the time budget)."""

    label: str
    call: Callable[[], Result | None]
    skipped: Result  # what the table shows if the budget does not allow this step
    estimate: Estimate | None = None  # None: always run (a reference measurement)


def _reference(small: int) -> dict[str, Any]:
    return {
        "workload": "A",
        "rows": small,
        "entry": "cli",
        "backend": "sqlite",
        "config": "default",
    }


def _estimator(
    small: int,
    equivalent_rows: float,
    fixed: float = 0.0,
    twin: dict[str, Any] | None = None,
    scale: float = 1.0,
) -> Estimate:
    """Seconds a step should take: its measured smaller twin scaled up, or else the reference.

    The reference is workload A's default CLI run at the small size; ``equivalent_rows`` says how
    many of its rows the step costs (from earlier runs of this harness: every_row costs a durable
    commit per row, C explodes 2 rows per basket, a crash + resume replays part of the input).
    """

    def estimate(results: Results) -> float | None:
        if twin is not None:
            found = results.find(**twin)
            if found is not None and found.wall_seconds:
                return (
                    found.wall_seconds + float(found.extra.get("crash_run_seconds", 0.0))
                ) * scale
        ref = results.find(**_reference(small))
        if ref is None or not ref.wall_seconds:
            return None
        return fixed + equivalent_rows * ref.wall_seconds / ref.rows

    return estimate


# Cost of a step relative to workload A's default run, per input row (measured with this harness).
_COST = {
    "B": 1.1,
    "C": 2.5,
    "every_n=10000": 0.7,
    "every_n=1000": 0.7,
    "every_n=10": 4.0,
    "every_row": 20.0,
    "postgresql": 1.5,
    "resume@50%": 1.1,
    "resume@90%": 1.2,
    "flow": 1.1,
}
_FLOW_FIXED_SECONDS = 40.0  # a Prefect server start (once) and the flow's own start-up


def steps(plan: Plan, bench: Bench) -> list[Step]:
    """The measurements, most important first: the small size, then the large size.

    Every step but the reference runs (workload A, default checkpointing, small size) and the
    baselines carries an estimate, so a time budget can skip what would not fit, and the table
    says so.
    """
    todo: list[Step] = []
    small, large = plan.small, plan.large
    has_a = "A" in plan.workloads

    def add(
        label: str,
        call: Callable[[], Result | None],
        skipped: Result,
        estimate: Estimate | None = None,
    ) -> None:
        todo.append(Step(label, call, skipped, estimate))

    def cli(
        w: str,
        rows: int,
        *,
        backend: str = "sqlite",
        checkpoint: dict[str, Any] | None = None,
        config: str = "default",
        estimate: Estimate | None = None,
    ) -> None:
        add(
            f"cli {w} {rows:,} {backend} {config}",
            lambda: bench.cli(w, rows, backend=backend, checkpoint=checkpoint, config=config),
            Result(f"{w}/{rows}/{backend}/cli/{config}", w, rows, "cli", backend, config),
            estimate,
        )

    def sweep(rows: int, config: str, checkpoint: dict[str, Any]) -> None:
        cli(
            "A",
            rows,
            checkpoint=checkpoint,
            config=config,
            estimate=_estimator(small, rows * _COST[config]),
        )

    def resume(rows: int, fraction: float, estimate: Estimate) -> None:
        label = f"resume@{round(fraction * 100)}%"
        full = {**_reference(small), "rows": rows}
        add(
            f"crash A {rows:,} at {fraction:.0%} + resume",
            lambda: bench.crash_and_resume(
                "A", rows, fraction, Results(bench.results).find(**full)
            ),
            Result(f"A/{rows}/sqlite/{label}", "A", rows, "resume", "sqlite", label),
            estimate,
        )

    def flow(rows: int, estimate: Estimate) -> None:
        def measured() -> Result:
            try:
                return bench.flow("A", rows)
            finally:
                bench.stop_prefect()  # the steps after it measure without an idle server

        add(
            f"flow A {rows:,}",
            measured,
            Result(f"A/{rows}/sqlite/flow/default", "A", rows, "flow", "sqlite", "default"),
            estimate,
        )

    # -- the small size
    for w in plan.workloads:
        add(
            f"baseline {w} {small:,}",
            partial(bench.baseline, w, small),
            Result(f"{w}/{small}/baseline", w, small, "baseline", "none", "-"),
        )
    if has_a:
        cli("A", small)
    for w in plan.workloads:
        if w != "A":
            cli(w, small, estimate=_estimator(small, small * _COST[w]))
    if has_a:
        sweep(small, "every_n=10000", {"frequency": "every_n", "checkpoint_interval": 10_000})
        sweep(plan.every_row_rows, "every_row", {"frequency": "every_row"})
        resume(small, 0.9, _estimator(small, small * _COST["resume@90%"]))
        if plan.flow:
            if not plan.quick:
                cli("A", 1, estimate=_estimator(small, 1, fixed=5.0))
                add(
                    "flow A 1 (fixed cost)",
                    lambda: bench.flow("A", 1),
                    Result("A/1/sqlite/flow/default", "A", 1, "flow", "sqlite", "default"),
                    _estimator(small, 1, fixed=_FLOW_FIXED_SECONDS),
                )
            flow(small, _estimator(small, small * _COST["flow"], fixed=_FLOW_FIXED_SECONDS))
        if plan.postgres:
            cli(
                "A",
                small,
                backend="postgresql",
                estimate=_estimator(small, small * _COST["postgresql"]),
            )
        if not plan.quick:
            sweep(small, "every_n=1000", {"frequency": "every_n", "checkpoint_interval": 1_000})
            sweep(
                plan.every_ten_rows,
                "every_n=10",
                {"frequency": "every_n", "checkpoint_interval": 10},
            )
            resume(small, 0.5, _estimator(small, small * _COST["resume@50%"]))
    if large == small:
        return todo
    # -- the large size: each estimated from its measured small twin, scaled by the row count
    factor = large / small

    def scaled(twin: dict[str, Any], cost: float = 1.0) -> Estimate:
        return _estimator(small, large * cost, twin=twin, scale=factor)

    def baseline(w: str) -> None:
        add(
            f"baseline {w} {large:,}",
            partial(bench.baseline, w, large),
            Result(f"{w}/{large}/baseline", w, large, "baseline", "none", "-"),
            scaled({"workload": w, "rows": small, "entry": "baseline"}),
        )

    if has_a:
        baseline("A")
        cli("A", large, estimate=scaled(_reference(small)))
        if plan.flow:
            big_cli = {**_reference(small), "rows": large}
            flow(
                large,
                _estimator(
                    small,
                    large * _COST["flow"],
                    fixed=_FLOW_FIXED_SECONDS,
                    twin=big_cli,
                    scale=_COST["flow"],
                ),
            )
        resume(
            large,
            0.9,
            scaled(
                {**_reference(small), "entry": "resume", "config": "resume@90%"},
                _COST["resume@90%"],
            ),
        )
        if plan.postgres:
            cli(
                "A",
                large,
                backend="postgresql",
                estimate=scaled(
                    {**_reference(small), "backend": "postgresql"}, _COST["postgresql"]
                ),
            )
    for w in plan.workloads:
        if w != "A":
            baseline(w)
            cli(w, large, estimate=scaled({**_reference(small), "workload": w}, _COST[w]))
    if has_a:
        resume(
            large,
            0.5,
            scaled(
                {**_reference(small), "entry": "resume", "config": "resume@50%"},
                _COST["resume@50%"],
            ),
        )
    return todo


def machine() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        mem_kb = next(
            int(line.split()[1])
            for line in Path("/proc/meminfo").read_text().splitlines()
            if line.startswith("MemTotal")
        )
    except (OSError, StopIteration):
        mem_kb = 0
    return {
        "nproc": os.cpu_count(),
        "cpu_model": cpu,
        "memory_gb": round(mem_kb / 2**20, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def git_commit() -> dict[str, Any]:
    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=REPO, capture_output=True, text=True, check=False
        ).stdout.strip()

    return {
        "commit": git("rev-parse", "--short=12", "HEAD") or "unknown",
        "dirty_files": len(git("status", "--porcelain", "--untracked-files=no").splitlines()),
    }


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.run",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="small inputs, SQLite, CLI + one flow run (CI; < 2 minutes)",
    )
    parser.add_argument(
        "--rows",
        type=int,
        nargs="+",
        metavar="N",
        help="input sizes instead of 100k and 1M (or 2k with --quick)",
    )
    parser.add_argument("--workloads", default="A,B,C", help="comma-separated subset of A,B,C")
    parser.add_argument("--no-postgres", action="store_true", help="skip PostgreSQL")
    parser.add_argument("--no-flow", action="store_true", help="skip the Prefect flow runs")
    parser.add_argument("--name", help="results file name (default: full or quick)")
    parser.add_argument(
        "--output",
        type=Path,
        default=REPO / "benchmarks" / "results",
        help="directory for <name>.json",
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        default=REPO / "benchmarks" / "work",
        help="inputs and run directories",
    )
    parser.add_argument("--keep", action="store_true", help="keep run directories")
    parser.add_argument(
        "--large-only",
        action="store_true",
        help="only the largest size's measurements (baselines, CLI, flow, crashes, PostgreSQL), "
        "with no time budget unless --budget is given: the large runs a slow machine's "
        "budgeted plan skipped",
    )
    parser.add_argument(
        "--budget",
        type=float,
        default=None,
        metavar="SECONDS",
        help="skip large-size measurements that would not finish within this "
        f"many seconds of the start (default {DEFAULT_BUDGET_SECONDS} for the "
        "full plan, none with --quick; 0: no budget)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    workloads = tuple(w.strip().upper() for w in args.workloads.split(",") if w.strip())
    unknown = [w for w in workloads if w not in WORKLOADS]
    if unknown:
        print(f"unknown workload(s): {', '.join(unknown)} (known: A, B, C)", file=sys.stderr)
        return 1
    sizes = tuple(args.rows) if args.rows else (QUICK_SIZES if args.quick else FULL_SIZES)
    if args.budget is None:
        args.budget = 0 if args.quick or args.large_only else DEFAULT_BUDGET_SECONDS
    plan = Plan(
        sizes=sizes,
        workloads=workloads,
        quick=args.quick,
        postgres=not (args.quick or args.no_postgres),
        flow=not args.no_flow,
    )
    name = args.name or ("quick" if args.quick else "large" if args.large_only else "full")
    args.workdir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("DO_NOT_TRACK", "1")
    began, load_start = time.perf_counter(), load_average()
    print(
        f"benchmark {name}: sizes {', '.join(f'{s:,}' for s in sizes)}, workloads "
        f"{', '.join(workloads)}; load average {load_start:.2f}",
        flush=True,
    )
    for rows in sorted(set(sizes) | {1}):
        for kind in sorted({WORKLOADS[w].input_kind for w in workloads}):
            input_path(args.workdir, kind, rows)
    bench = Bench(args.workdir, keep=args.keep)
    deadline = began + args.budget if args.budget > 0 else None
    planned = steps(plan, bench)
    if args.large_only:
        planned = [step for step in planned if step.skipped.rows == plan.large]
    try:
        for step in planned:
            print(f"  {step.label} ...", end=" ", flush=True)
            expected = step.estimate(Results(bench.results)) if step.estimate else None
            left = deadline - time.perf_counter() if deadline is not None else None
            if left is not None and expected is not None and expected > left:
                step.skipped.status = "skipped"
                step.skipped.error = (
                    f"estimated {expected:.0f} s, {max(0.0, left):.0f} s left "
                    f"of the {args.budget:.0f} s budget (--budget 0 runs it)"
                )
                bench.results.append(step.skipped)
                print(f"skipped ({step.skipped.error})", flush=True)
                continue
            try:
                result = step.call()
            except Exception as exc:  # noqa: BLE001 - one broken measurement must not stop the rest
                step.skipped.status = "failed"
                step.skipped.error = f"{type(exc).__name__}: {exc}"[:400]
                bench.results.append(step.skipped)
                print(f"ERROR {step.skipped.error}", flush=True)
                continue
            print(_summary(result), flush=True)
    finally:
        bench.close()
    results = Results(bench.results)
    results.add_ratios()
    targets = evaluate_targets(results, plan.large, plan.small, plan.every_row_rows)
    document = {
        "name": name,
        "mode": "quick" if args.quick else "full",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        **git_commit(),
        "machine": machine(),
        "load_average_start": round(load_start, 2),
        "load_average_end": round(load_average(), 2),
        "duration_seconds": round(time.perf_counter() - began, 1),
        "sizes": list(sizes),
        "budget_seconds": args.budget or None,
        "workloads": {w: WORKLOADS[w].description for w in workloads},
        "prefect_server_startup_seconds": bench.prefect_startup_seconds,
        "results": [r.as_dict() for r in results.items],
        "targets": [t.as_dict() for t in targets],
    }
    args.output.mkdir(parents=True, exist_ok=True)
    out = args.output / f"{name}.json"
    out.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n")
    print()
    print(table(results))
    print()
    print(targets_table(targets))
    print(
        f"\n{len(results.items)} measurements in {document['duration_seconds']:.0f} s "
        f"(load average {load_start:.2f} -> {document['load_average_end']:.2f}); wrote {out}"
    )
    return 0


def _summary(result: Result | None) -> str:
    if result is None:
        return "no result"
    if result.status != "ok":
        return f"FAILED ({result.error})"
    parts = [f"{result.wall_seconds:.2f} s"] if result.wall_seconds else []
    if result.rows_per_second:
        parts.append(f"{result.rows_per_second:,.0f} rows/s")
    if "x_full_run" in result.extra:
        parts.append(f"{result.extra['x_full_run']:.3f} x full run")
    parts.append(f"load {result.load:.2f}" if result.load is not None else "")
    return ", ".join(p for p in parts if p)


if __name__ == "__main__":
    sys.exit(main())
