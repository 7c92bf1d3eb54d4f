"""One measurement per method: a baseline, a CLI run, a flow run, a crash and its resume.

Each method runs exactly one child process (two for a crash + resume) through a public entry point,
checks what it produced (exit status, the run's own JSON result, sink files identical to the
baseline's), records a :class:`Result` and cleans its run directory. A failure is recorded with its
reason, never hidden: the table shows it in place of a figure.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from benchmarks.inputs import input_path
from benchmarks.measure import Measurement, child_env, python_cmd, run_measured
from benchmarks.workloads import WORKLOADS, settings_for

DEFAULT_INTERVAL = 100  # the product's default checkpoint interval (every_n)


@dataclass
class Result:
    """One line of the results table (and of the JSON file)."""

    id: str
    workload: str
    rows: int
    entry: str  # baseline | cli | flow | resume
    backend: str  # sqlite | postgresql | none
    config: str  # default | every_row | every_n=N
    status: str = "ok"  # ok | failed | skipped
    error: str | None = None
    wall_seconds: float | None = None
    rows_per_second: float | None = None
    peak_rss_mb: float | None = None
    cpu_seconds: float | None = None
    landscape_bytes_per_row: float | None = None
    payload_bytes_per_row: float | None = None
    load: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for key in (
            "wall_seconds",
            "cpu_seconds",
            "rows_per_second",
            "peak_rss_mb",
            "landscape_bytes_per_row",
            "payload_bytes_per_row",
            "load",
        ):
            if data[key] is not None:
                data[key] = round(
                    data[key], 3 if key in ("wall_seconds", "cpu_seconds", "load") else 1
                )
        return data


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)


def _digests(folder: Path) -> dict[str, str]:
    """SHA-256 of every sink file; an empty file and a missing one are the same (no rows)."""
    found = {}
    for path in sorted(folder.glob("*")) if folder.exists() else []:
        data = path.read_bytes()
        if data:
            found[path.name] = hashlib.sha256(data).hexdigest()
    return found


def _last_json(text: str) -> dict[str, Any]:
    """The last JSON object a child printed on stdout, starting at the beginning of a line."""
    decoder = json.JSONDecoder()
    starts = [m.start() for m in re.finditer(r"(?m)^\{", text)]
    for start in reversed(starts):
        try:
            found, _end = decoder.raw_decode(text, start)
        except json.JSONDecodeError:
            continue
        if isinstance(found, dict):
            return found
    raise ValueError(f"no JSON result in output: {text[-300:]!r}")


def _tail(text: str, lines: int = 4) -> str:
    kept = [line for line in text.strip().splitlines() if line.strip()][-lines:]
    return " | ".join(kept)[-400:]


class Bench:
    """The state of one benchmark session: where it works and what it has measured."""

    def __init__(self, workdir: Path, *, keep: bool = False) -> None:
        self.workdir = workdir
        self.keep = keep
        self.results: list[Result] = []
        self.baseline_digests: dict[tuple[str, int], dict[str, str]] = {}
        self.output_digests: dict[str, dict[str, str]] = {}  # by result id: completed engine runs
        self._pg: Any = None
        self._prefect: Any = None
        self._prefect_startup: float | None = None
        self._databases = 0

    # ------------------------------------------------------------------ services
    def postgres_url(self) -> str:
        """A new empty database on the session's throwaway PostgreSQL server (started lazily)."""
        if self._pg is None:
            from tests.support.pgserver import PgServer

            self._pg = PgServer(dbname="bench").start()
        self._databases += 1
        return str(self._pg.create_database(f"bench_{self._databases}"))

    def prefect_env(self) -> dict[str, str]:
        """Environment for a flow process: a Prefect server of this session (started lazily)."""
        if self._prefect is None:
            from tests.support.prefect_server import PrefectServer

            self._prefect = PrefectServer().start()
        env = {k: v for k, v in self._prefect.process_env().items() if not k.startswith("ELSPETH_")}
        return child_env({**{k: v for k, v in env.items() if k.startswith("PREFECT_")}})

    @property
    def prefect_startup_seconds(self) -> float | None:
        return self._prefect_startup

    def stop_prefect(self) -> None:
        """Stop the Prefect server after the flow steps: idle, it still takes about 15 % of a
        core, which the measurements after it would pay for (a later flow step starts it again)."""
        if self._prefect is not None:
            self._prefect_startup = getattr(self._prefect, "startup_seconds", None)
            self._prefect.stop()
            self._prefect = None

    def close(self) -> None:
        self.stop_prefect()
        if self._pg is not None:
            self._pg.stop()

    # ------------------------------------------------------------------ helpers
    @contextmanager
    def _rundir(self, result_id: str) -> Iterator[Path]:
        rundir = self.workdir / "runs" / _slug(result_id)
        shutil.rmtree(rundir, ignore_errors=True)
        rundir.mkdir(parents=True)
        try:
            yield rundir
        finally:
            if not self.keep:
                shutil.rmtree(rundir, ignore_errors=True)

    def _record(self, result: Result, m: Measurement | None) -> Result:
        if m is not None:
            result.wall_seconds = m.wall_seconds
            result.cpu_seconds = m.cpu_seconds
            result.peak_rss_mb = m.peak_rss_mb
            result.load = m.load
            if result.status == "ok" and m.wall_seconds > 0:
                result.rows_per_second = result.rows / m.wall_seconds
        self.results.append(result)
        return result

    def _settings_file(self, rundir: Path, settings: dict[str, Any]) -> Path:
        path = rundir / "settings.yaml"
        path.write_text(yaml.safe_dump(settings, sort_keys=False))
        return path

    def _landscape_size(self, result: Result, rundir: Path, url: str) -> None:
        if url.startswith("sqlite"):
            size = sum(p.stat().st_size for p in rundir.glob("audit.db*"))
        else:
            size = _postgres_size(url)
        payloads = sum(p.stat().st_size for p in (rundir / "payloads").rglob("*") if p.is_file())
        result.landscape_bytes_per_row = size / max(1, result.rows)
        result.payload_bytes_per_row = payloads / max(1, result.rows)

    def _check_outputs(self, result: Result, rundir: Path) -> None:
        expected = self.baseline_digests.get((result.workload, result.rows))
        if expected is None:
            return
        actual = _digests(rundir / "out")
        result.extra["outputs_match_baseline"] = actual == expected
        if actual != expected:
            differ = sorted(
                set(actual) ^ set(expected) | {k for k in actual if expected.get(k) != actual[k]}
            )
            result.extra["outputs_differ"] = differ

    def _url(self, backend: str, rundir: Path) -> str:
        return f"sqlite:///{rundir / 'audit.db'}" if backend == "sqlite" else self.postgres_url()

    # ------------------------------------------------------------------ measurements
    def baseline(self, workload: str, rows: int) -> Result:
        result = Result(f"{workload}/{rows}/baseline", workload, rows, "baseline", "none", "-")
        source = input_path(self.workdir, WORKLOADS[workload].input_kind, rows)
        with self._rundir(result.id) as rundir:
            m = run_measured(
                python_cmd("-m", "benchmarks.baseline", workload, str(source), str(rundir / "out")),
                cwd=rundir,
                logdir=rundir / "log",
            )
            if m.returncode != 0:
                result.status, result.error = "failed", _tail(m.stderr)
            else:
                self.baseline_digests[(workload, rows)] = _digests(rundir / "out")
        return self._record(result, m)

    def cli(
        self,
        workload: str,
        rows: int,
        *,
        backend: str = "sqlite",
        checkpoint: dict[str, Any] | None = None,
        config: str = "default",
        fault: str | None = None,
    ) -> Result:
        """``elspeth run -s … -x --json`` in a fresh directory and landscape."""
        result = Result(
            f"{workload}/{rows}/{backend}/cli/{config}", workload, rows, "cli", backend, config
        )
        source = input_path(self.workdir, WORKLOADS[workload].input_kind, rows)
        with self._rundir(result.id) as rundir:
            url = self._url(backend, rundir)
            path = self._settings_file(
                rundir, settings_for(workload, source, rundir, url, checkpoint)
            )
            m = self._elspeth(rundir, "run", "-s", str(path), "-x", "--json")
            if self._completed(result, m):
                self._landscape_size(result, rundir, url)
                self._check_outputs(result, rundir)
                self.output_digests[result.id] = _digests(rundir / "out")
        return self._record(result, m)

    def flow(self, workload: str, rows: int, *, backend: str = "sqlite") -> Result:
        """The ``run_pipeline`` Prefect flow in a subprocess, against the session's server."""
        result = Result(
            f"{workload}/{rows}/{backend}/flow/default", workload, rows, "flow", backend, "default"
        )
        source = input_path(self.workdir, WORKLOADS[workload].input_kind, rows)
        m = None
        with self._rundir(result.id) as rundir:
            try:
                env = self.prefect_env()
            except Exception as exc:  # noqa: BLE001 - reported in the table
                result.status, result.error = "failed", f"Prefect server: {exc}"[:400]
                return self._record(result, None)
            url = self._url(backend, rundir)
            path = self._settings_file(rundir, settings_for(workload, source, rundir, url))
            m = run_measured(
                python_cmd("-m", "benchmarks.flow_entry", str(path)),
                cwd=rundir,
                logdir=rundir / "log",
                env=env,
            )
            if self._completed(result, m):
                self._check_outputs(result, rundir)
                result.extra["chunk_tasks"] = _last_json(m.stdout).get("chunk_tasks")
        return self._record(result, m)

    def crash_and_resume(
        self,
        workload: str,
        rows: int,
        fraction: float,
        full: Result | None,
        *,
        backend: str = "sqlite",
    ) -> Result:
        """Kill a default-checkpointed run after the commit at ``fraction`` of the input, resume it.

        The resume's wall time is compared with the full (uncrashed) run's, and its outputs with
        the full run's outputs (they must be byte-identical).
        """
        label = f"resume@{round(fraction * 100)}%"
        result = Result(
            f"{workload}/{rows}/{backend}/{label}", workload, rows, "resume", backend, label
        )
        source = input_path(self.workdir, WORKLOADS[workload].input_kind, rows)
        # Commit 1 is the run's start; commit k + 1 follows the k-th interval of rows.
        commit = 1 + round(fraction * rows / DEFAULT_INTERVAL)
        m = None
        with self._rundir(result.id) as rundir:
            url = self._url(backend, rundir)
            path = self._settings_file(rundir, settings_for(workload, source, rundir, url))
            crash = self._elspeth(
                rundir, "run", "-s", str(path), "-x", "--json", fault=f"after_commit:{commit}"
            )
            result.extra["crash_run_seconds"] = round(crash.wall_seconds, 3)
            if not crash.killed:
                result.status = "failed"
                result.error = f"the crash run was not killed (exit {crash.returncode}): " + _tail(
                    crash.stderr
                )
                return self._record(result, None)
            run_id, ingested = _crashed_run(url)
            result.extra["crashed_after_rows"] = ingested
            m = self._elspeth(rundir, "resume", run_id, "-x", "-d", url, "--json")
            if self._completed(result, m, rows_expected=rows - ingested):
                result.rows_per_second = None
                if full is not None and full.status == "ok" and full.wall_seconds:
                    result.extra["full_run_seconds"] = round(full.wall_seconds, 3)
                    result.extra["x_full_run"] = round(m.wall_seconds / full.wall_seconds, 4)
                    if full.cpu_seconds:
                        result.extra["x_full_run_cpu"] = round(m.cpu_seconds / full.cpu_seconds, 4)
                    same = _digests(rundir / "out") == self.output_digests.get(full.id)
                    result.extra["outputs_match_full_run"] = same
                self._check_outputs(result, rundir)
        self._record(result, m)
        result.rows_per_second = None  # a resume's rows are the remaining ones: see extra
        return result

    # ------------------------------------------------------------------ process plumbing
    def _elspeth(self, rundir: Path, *args: str, fault: str | None = None) -> Measurement:
        extra = {"ELSPETH_FAULT_INJECT": fault} if fault else {}
        logdir = rundir / "log" / _slug("-".join(args[:1]) + (f"-{fault}" if fault else ""))
        return run_measured(
            python_cmd("-m", "elspeth_core.cli.app", *args),
            cwd=rundir,
            logdir=logdir,
            env=child_env(extra),
        )

    @staticmethod
    def _completed(result: Result, m: Measurement, *, rows_expected: int | None = None) -> bool:
        try:
            summary = _last_json(m.stdout)
        except ValueError:
            summary = {}
        if m.returncode != 0 or summary.get("status") != "completed":
            result.status = "failed"
            result.error = f"exit {m.returncode}: " + (_tail(m.stderr) or _tail(m.stdout))
            return False
        expected = result.rows if rows_expected is None else rows_expected
        if summary.get("rows") != expected:
            result.status = "failed"
            result.error = f"the run read {summary.get('rows')} rows, expected {expected}"
            return False
        result.extra["engine_seconds"] = round(float(summary.get("duration_seconds", 0)), 3)
        return True


def _crashed_run(url: str) -> tuple[str, int]:
    """The (only) run in the landscape at ``url`` and how many source rows it committed."""
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            row = conn.execute(
                text("SELECT run_id, source_rows_ingested FROM runs ORDER BY started_at DESC")
            ).first()
    finally:
        engine.dispose()
    if row is None:
        raise RuntimeError(f"no run recorded in {url}")
    return str(row[0]), int(row[1])


def _postgres_size(url: str) -> int:
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return int(
                conn.execute(
                    text(
                        "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class c "
                        "JOIN pg_namespace n ON n.oid = c.relnamespace "
                        "WHERE n.nspname = 'public' AND c.relkind = 'r'"
                    )
                ).scalar_one()
            )
    finally:
        engine.dispose()
