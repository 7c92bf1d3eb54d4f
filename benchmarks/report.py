"""Turning measured results into ratios, the issue's targets, and a plain-text table.

Every ratio is between two figures of the SAME benchmark session (the machines are shared and
noisy; absolute rows/s move by 2x with the load, ratios much less). A target whose figures are
missing (a failed or skipped measurement) is reported as ``missing``, never as met.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from benchmarks.scenarios import Result


@dataclass
class Target:
    name: str
    goal: str
    measured: str
    met: bool | None  # None: could not be evaluated
    on_cpu: str = ""  # the same figure from CPU time instead of wall time, where it applies

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "goal": self.goal,
            "measured": self.measured,
            "met": self.met,
            "on_cpu_time": self.on_cpu or None,
        }


class Results:
    def __init__(self, results: list[Result]) -> None:
        self.items = results

    def find(self, **match: Any) -> Result | None:
        for result in self.items:
            if all(getattr(result, k) == v for k, v in match.items()) and result.status == "ok":
                return result
        return None

    def add_ratios(self) -> None:
        """``x_baseline`` (and ``x_baseline_cpu``) on every engine run, against the baseline of the
        same workload and size."""
        for result in self.items:
            if result.entry not in ("cli", "flow") or not result.rows_per_second:
                continue
            base = self.find(workload=result.workload, rows=result.rows, entry="baseline")
            wall = _ratio(result.rows_per_second, _rate(base))
            cpu = _ratio(_cpu_rate(result), _cpu_rate(base))
            if wall is not None:
                result.extra["x_baseline"] = round(wall, 4)
            if cpu is not None:
                result.extra["x_baseline_cpu"] = round(cpu, 4)


def _rate(result: Result | None) -> float | None:
    return result.rows_per_second if result else None


def _cpu_rate(result: Result | None) -> float | None:
    """Rows per CPU second of the child process: steadier than wall time on a loaded machine."""
    return result.rows / result.cpu_seconds if result and result.cpu_seconds else None


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    return numerator / denominator if numerator and denominator else None


def _minus_one(value: float | None) -> float | None:
    return value - 1 if value is not None else None


def evaluate_targets(res: Results, large: int, small: int, every_row_rows: int) -> list[Target]:
    """The issue's targets, each with the same-run figures it is judged on (wall time), and the
    same figure on CPU time where one exists (a reader can tell load from cost)."""
    targets: list[Target] = []

    def add(
        name: str,
        goal: str,
        value: float | None,
        test: Callable[[float], bool],
        fmt: str,
        cpu: float | None = None,
    ) -> None:
        if value is None:
            targets.append(Target(name, goal, "not measured (failed, skipped or not run)", None))
            return
        on_cpu = fmt.format(cpu) if cpu is not None else ""
        targets.append(Target(name, goal, fmt.format(value), test(value), on_cpu))

    def cli(rows: int, config: str = "default", backend: str = "sqlite") -> Result | None:
        return res.find(workload="A", rows=rows, entry="cli", backend=backend, config=config)

    a_large = cli(large)
    add(
        f"A {large:,} rows, SQLite, default checkpointing",
        ">= 12,000 rows/s",
        _rate(a_large),
        lambda v: v >= 12_000,
        "{:,.0f} rows/s",
        _cpu_rate(a_large),
    )
    extra = a_large.extra if a_large else {}
    add(
        "... against the unaudited baseline (same run)",
        ">= 0.07 x baseline",
        extra.get("x_baseline"),
        lambda v: v >= 0.07,
        "{:.3f} x",
        extra.get("x_baseline_cpu"),
    )
    every_row = cli(every_row_rows, "every_row")
    add(
        "... against per-record commits (every_row)",
        ">= 10 x every_row",
        _ratio(_rate(a_large), _rate(every_row)),
        lambda v: v >= 10,
        "{:.1f} x",
        _ratio(_cpu_rate(a_large), _cpu_rate(every_row)),
    )
    pg = cli(large, backend="postgresql") or cli(small, backend="postgresql")
    add(
        f"A on PostgreSQL ({pg.rows:,} rows)" if pg else "A on PostgreSQL",
        ">= 8,000 rows/s",
        _rate(pg),
        lambda v: v >= 8_000,
        "{:,.0f} rows/s",
        _cpu_rate(pg),
    )
    flow_one = res.find(workload="A", rows=1, entry="flow")
    cli_one = cli(1)
    add(
        "Prefect flow fixed overhead (1-row flow run, wall)",
        "<= 15 s",
        flow_one.wall_seconds if flow_one else None,
        lambda v: v <= 15,
        "{:.1f} s",
        flow_one.cpu_seconds if flow_one else None,
    )
    if cli_one and flow_one and flow_one.wall_seconds and cli_one.wall_seconds:
        targets[-1].measured += f" (a 1-row CLI run: {cli_one.wall_seconds:.1f} s)"
    flow_rows = large if res.find(workload="A", rows=large, entry="flow") else small
    flow_run = res.find(workload="A", rows=flow_rows, entry="flow")
    cli_run = cli(flow_rows)
    add(
        f"Prefect flow vs CLI ({flow_rows:,} rows)",
        "<= 10 % slower",
        _minus_one(_ratio(_rate(cli_run), _rate(flow_run))),
        lambda v: v <= 0.10,
        "{:+.1%}",
        _minus_one(_ratio(_cpu_rate(cli_run), _cpu_rate(flow_run))),
    )
    resume_rows = large if res.find(workload="A", rows=large, entry="resume") else small
    resume = res.find(workload="A", rows=resume_rows, entry="resume", config="resume@90%")
    extra = resume.extra if resume else {}
    add(
        f"resume after a crash at 90 % ({resume_rows:,} rows)",
        "<= 0.15 x full run",
        extra.get("x_full_run"),
        lambda v: v <= 0.15,
        "{:.3f} x",
        extra.get("x_full_run_cpu"),
    )
    small_run = cli(small)
    growth = (
        (a_large.peak_rss_mb - small_run.peak_rss_mb)
        if (
            a_large
            and small_run
            and large != small
            and a_large.peak_rss_mb
            and small_run.peak_rss_mb
        )
        else None
    )
    add(
        f"peak RSS growth {small:,} -> {large:,} rows",
        "<= +50 MB",
        growth,
        lambda v: v <= 50,
        "{:+.1f} MB",
    )
    coarse = cli(small, "every_n=10000")
    add(
        f"default checkpointing vs every 10,000 rows ({small:,} rows)",
        "<= 15 % slower",
        _minus_one(_ratio(_rate(coarse), _rate(small_run))),
        lambda v: v <= 0.15,
        "{:+.1%}",
        _minus_one(_ratio(_cpu_rate(coarse), _cpu_rate(small_run))),
    )
    return targets


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def table(res: Results) -> str:
    """The results as an aligned plain-text (and Markdown-compatible) table."""
    header = (
        "measurement",
        "rows/s",
        "x base",
        "wall s",
        "CPU us/row",
        "RSS MB",
        "LS B/row",
        "PL B/row",
        "load",
        "notes",
    )
    lines = [header]
    for r in res.items:
        notes = []
        if r.status != "ok":
            notes.append(f"{r.status.upper()}: {r.error}")
        if "x_full_run" in r.extra:
            cpu = r.extra.get("x_full_run_cpu")
            notes.append(
                f"{r.extra['x_full_run']:.3f} x full run"
                + (f" (CPU {cpu:.3f} x)" if cpu is not None else "")
                + f", crashed after {r.extra.get('crashed_after_rows'):,} rows"
            )
        for key, text in (
            ("outputs_match_baseline", "output = baseline"),
            ("outputs_match_full_run", "output = uncrashed run"),
        ):
            if key in r.extra:
                notes.append(text if r.extra[key] else f"OUTPUT DIFFERS ({key})")
        if r.extra.get("chunk_tasks") is not None:
            notes.append(f"{r.extra['chunk_tasks']} chunk tasks")
        lines.append(
            (
                r.id,
                _fmt(r.rows_per_second, ",.0f"),
                _fmt(r.extra.get("x_baseline"), ".3f"),
                _fmt(r.wall_seconds, ".2f"),
                _fmt(
                    r.cpu_seconds / r.rows * 1e6 if r.cpu_seconds and r.rows > 1 else None, ",.0f"
                ),
                _fmt(r.peak_rss_mb, ".0f"),
                _fmt(r.landscape_bytes_per_row, ",.0f"),
                _fmt(r.payload_bytes_per_row, ",.0f"),
                _fmt(r.load, ".2f"),
                "; ".join(notes),
            )
        )
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(header) - 1)]
    out = []
    for n, line in enumerate(lines):
        cells = [
            str(c).ljust(w) if i == 0 else str(c).rjust(w)
            for i, (c, w) in enumerate(zip(line[:-1], widths, strict=True))
        ]
        out.append("| " + " | ".join(cells) + " | " + line[-1] + " |")
        if n == 0:
            out.append("|" + "|".join("-" * (w + 2) for w in widths) + "|---|")
    return "\n".join(out)


def targets_table(targets: list[Target]) -> str:
    out = [
        "| target | goal | measured (wall time) | met | same figure on CPU time |",
        "|---|---|---|---|---|",
    ]
    for t in targets:
        verdict = {True: "met", False: "MISSED", None: "not measured"}[t.met]
        out.append(f"| {t.name} | {t.goal} | {t.measured} | {verdict} | {t.on_cpu or '-'} |")
    return "\n".join(out)
