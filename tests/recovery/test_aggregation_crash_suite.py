"""The crash suite for aggregations, forks, expansions and the database sink.

Two pipelines, each run crash-free once as the reference:

- ``chain`` (CSV, 6,000 rows): keyword_filter (matches to a JSONL sink) → batch_replicate in
  ``transform`` mode (count 200, a variable number of copies per row) → batch_stats in
  ``passthrough`` mode (count 250) → a gate that forks big rows to two branches joined by a
  ``require_all`` coalesce → a ``database`` sink (its target is a SQLite file next to a SQLite
  landscape, and the landscape's own database when the landscape is PostgreSQL);
- ``explode`` (JSON Lines, 4,000 orders): json_explode of each order's items (bad orders to a
  JSONL sink) → batch_stats in ``single`` mode (count 100) → CSV.

Real ``elspeth`` processes are SIGKILLed at named points (while buffering, after a batch's
``executing`` commit, mid-flush, after the flush before the sink write, during a batch retry)
and at seeded random instants, then resumed until they complete. Every time the outputs must be
byte-identical (files) or row-identical (database rows without the hidden ledger columns) to the
reference, every token must have exactly one terminal outcome, and each batch a crash interrupted
must show its failed attempt and the retry with the same members in the same order.

Every crash test runs on both landscape backends (``landscape_backend``); the crash-free
references are SQLite runs, so a PostgreSQL run must reproduce exactly what a SQLite one wrote.
"""

from __future__ import annotations

import random
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.cli import (
    assert_landscape_invariants,
    popen_cli,
    run_cli,
    run_ids,
    url_invariants,
    url_query,
    url_run_ids,
    write_settings,
)
from tests.support.landscape_fixtures import Landscapes
from tests.support.pipelines import (
    database_sink,
    jsonl_sink,
    make_csv,
    make_jsonl,
    outputs,
    pipeline,
    url_table_rows,
)

pytestmark = pytest.mark.slow

CHAIN_ROWS = 6_000
EXPLODE_ROWS = 4_000
TALLY = {"kills": 0, "kills_with_run": 0, "resumes": 0}
TIMES: dict[str, tuple[float, float]] = {}  # shape -> (crash-free run, CLI start-up), seconds


def _chain(work: Path, source: Path, target: str | None = None) -> dict:
    sinks = {
        "out": database_sink(work, "results", url=target),
        "flagged": jsonl_sink(work, "flagged"),
    }
    return pipeline(
        work,
        source,
        interval=150,
        sinks=sinks,
        row_plugins=[
            {
                "plugin": "keyword_filter",
                "on_error": "flagged",
                "options": {"keywords": ["urgent"], "fields": ["note"]},
            }
        ],
        aggregations=[
            {
                "name": "copies",
                "plugin": "batch_replicate",
                "trigger": {"count": 200},
                "output_mode": "transform",
                "options": {"copies_field": "copies", "include_copy_index": True},
            },
            {
                "name": "enrich",
                "plugin": "batch_stats",
                "trigger": {"count": 250},
                "output_mode": "passthrough",
                "options": {"value_field": "amount"},
            },
        ],
        gates=[
            {
                "name": "split",
                "condition": "row['amount'] >= 500",
                "routes": {"true": "fork", "false": "continue"},
                "fork_to": ["left", "right"],
            }
        ],
        coalesce=[
            {
                "name": "join",
                "branches": ["left", "right"],
                "policy": "require_all",
                "merge": "union",
            }
        ],
    )


def _explode(work: Path, source: Path, target: str | None = None) -> dict:
    sinks = {
        "out": {"plugin": "csv", "options": {"path": str(work / "out" / "stats.csv")}},
        "bad": jsonl_sink(work, "bad"),
    }
    return pipeline(
        work,
        source,
        interval=150,
        sinks=sinks,
        row_plugins=[
            {
                "plugin": "json_explode",
                "on_error": "bad",
                "options": {"array_field": "items", "include_index": True},
            }
        ],
        aggregations=[
            {
                "name": "stats",
                "plugin": "batch_stats",
                "trigger": {"count": 100},
                "output_mode": "single",
                "options": {"value_field": "amount", "group_by": "status"},
            }
        ],
    )


SHAPES = {"chain": (_chain, CHAIN_ROWS), "explode": (_explode, EXPLODE_ROWS)}


@pytest.fixture(scope="module", autouse=True)
def _report_totals() -> Iterator[None]:
    """Print what the suite did (visible with ``pytest -s``)."""
    yield
    print(
        f"\naggregation crash suite: {TALLY['kills']} kills ({TALLY['kills_with_run']} random "
        f"ones of a recorded run), {TALLY['resumes']} resumes; "
        "every output identical to its crash-free run (0 rows lost, 0 duplicated)"
    )


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("inputs")
    orders = make_jsonl(folder / "orders.jsonl", EXPLODE_ROWS, seed=4)
    with orders.open("a", encoding="utf-8") as handle:  # one order whose items are not a list
        handle.write('{"id": -1, "amount": 3.5, "status": "ok", "items": "none"}\n')
    return {"chain": make_csv(folder / "in.csv", CHAIN_ROWS, seed=8), "explode": orders}


@pytest.fixture(scope="module")
def references(tmp_path_factory: pytest.TempPathFactory, inputs: dict[str, Path]) -> dict:
    found = {}
    for shape, (build, rows) in SHAPES.items():
        work = tmp_path_factory.mktemp(f"reference-{shape}")
        settings = write_settings(work / "settings.yaml", build(work, inputs[shape]))
        started = time.perf_counter()
        assert run_cli("validate", "-s", str(settings), cwd=work).code == 0
        startup = time.perf_counter() - started
        result = run_cli("run", "-s", str(settings), "-x", cwd=work)
        assert result.code == 0, result.stderr
        TIMES[shape] = (time.perf_counter() - started - startup, startup)
        found[shape] = outputs(work)
        (run_id,) = run_ids(work / "audit.db")
        extra = 1 if shape == "explode" else 0
        assert_landscape_invariants(work / "audit.db", run_id, rows + extra)
    assert len(found["chain"]["target.db:results"]) > CHAIN_ROWS  # copies and merges happened
    return found


def _target(work: Path, url: str) -> str:
    """The database sink's target: ``out/target.db`` beside a SQLite landscape, else the
    PostgreSQL landscape's own database (the sink's tables live beside the landscape's)."""
    return f"sqlite:///{work / 'out' / 'target.db'}" if url.startswith("sqlite") else url


def _settings(work: Path, shape: str, inputs: dict[str, Path], url: str) -> Path:
    build, _rows = SHAPES[shape]
    data = build(work, inputs[shape], _target(work, url))
    data["landscape"]["url"] = url
    return write_settings(work / "settings.yaml", data)


def _outputs(work: Path, url: str, shape: str) -> dict:
    """Every output: files, and the database sink's rows wherever its target is."""
    found = outputs(work)
    if shape == "chain" and not url.startswith("sqlite"):
        found["target.db:results"] = url_table_rows(url, "results")
    return found


def _resume_until_done(work: Path, url: str, settings: Path, plans: list[str]) -> int:
    """Run (if nothing was recorded) or resume, with the crash plans first, until exit 0."""
    plans = list(plans)
    for attempt in range(1, 40):
        ids = url_run_ids(url)
        env = {"ELSPETH_FAULT_INJECT": plans.pop(0)} if plans else {}
        if ids:
            result = run_cli("resume", ids[0], "-d", url, "-x", cwd=work, env=env)
            TALLY["resumes"] += 1
        else:
            result = run_cli("run", "-s", str(settings), "-x", cwd=work, env=env)
        if result.code == 0:
            return attempt
        assert result.code == -signal.SIGKILL, (result.code, result.stderr)
        TALLY["kills"] += 1
    raise AssertionError("run did not complete after 40 resumes")


def _check(work: Path, url: str, shape: str, reference: dict) -> str:
    found = _outputs(work, url, shape)
    assert found.keys() == reference.keys()
    for name, content in reference.items():
        assert found[name] == content, f"{name} differs from the crash-free run"
    (run_id,) = url_run_ids(url)
    _build, rows = SHAPES[shape]
    url_invariants(url, run_id, rows + (1 if shape == "explode" else 0))
    assert url_query(
        url,
        """SELECT count(*) FROM batches WHERE run_id = :r
           AND status NOT IN ('completed', 'failed')""",
        r=run_id,
    ) == [(0,)]
    unretried = url_query(
        url,
        """SELECT count(*) FROM batches b WHERE b.run_id = :r
           AND b.status = 'failed' AND NOT EXISTS (SELECT 1 FROM batches r
           WHERE r.retry_of_batch_id = b.batch_id)""",
        r=run_id,
    )
    assert unretried == [(0,)]
    if shape == "chain":
        _check_database_ledger(_target(work, url), url, run_id)
    return run_id


def _check_database_ledger(target: str, url: str, run_id: str) -> None:
    published = url_query(
        target,
        """SELECT count(*), count(DISTINCT _elspeth_seq), max(_elspeth_seq)
           FROM results WHERE _elspeth_run_id = :r""",
        r=run_id,
    )
    ((rows, distinct, highest),) = published
    assert rows == distinct == highest
    assert url_query(target, "SELECT rows_committed FROM _elspeth_publications") == [(rows,)]
    assert url_query(
        url,
        """SELECT count(*) FROM token_outcomes WHERE run_id = :r
           AND is_terminal AND sink_name = 'out'""",
        r=run_id,
    ) == [(rows,)]


def _retries(url: str, run_id: str) -> list[tuple[int, str, int, str, bool]]:
    """(attempt, status, retry attempt, retry status, same members in the same order)."""
    pairs = url_query(
        url,
        """SELECT o.batch_id, o.attempt, o.status, r.batch_id, r.attempt, r.status
           FROM batches o JOIN batches r ON r.retry_of_batch_id = o.batch_id
           WHERE o.run_id = :r ORDER BY o.created_at, o.batch_id""",
        r=run_id,
    )
    members: dict[str, list[str]] = {}
    for batch_id, token_id in url_query(
        url,
        """SELECT m.batch_id, m.token_id FROM batch_members m
           JOIN batches b ON b.batch_id = m.batch_id WHERE b.run_id = :r
           ORDER BY m.batch_id, m.ordinal""",
        r=run_id,
    ):
        members.setdefault(batch_id, []).append(token_id)
    return [
        (a, s, ra, rs, bool(members.get(o)) and members.get(o) == members.get(r))
        for o, a, s, r, ra, rs in pairs
    ]


@pytest.mark.parametrize(
    ("shape", "first_crash", "resume_crashes", "retried"),
    [
        # while buffering: an open draft batch, rows read but not committed
        ("chain", "source_read:3100", [], []),
        ("explode", "source_read:2500", [], []),
        ("chain", "after_commit:10", [], []),
        # the batch's executing status is committed, the aggregation has not run
        ("chain", "batch_executing:5", [], [(1, "failed", 2, "completed", True)]),
        ("explode", "batch_executing:12", [], [(1, "failed", 2, "completed", True)]),
        # outputs partly driven downstream
        ("chain", "mid_flush:7", [], [(1, "failed", 2, "completed", True)]),
        ("explode", "mid_flush:3", [], [(1, "failed", 2, "completed", True)]),
        # outputs driven, sink write not done
        ("chain", "after_flush:4", [], [(1, "failed", 2, "completed", True)]),
        ("explode", "after_flush:20", [], [(1, "failed", 2, "completed", True)]),
        # the database sink wrote a batch's rows and its ledger; the landscape recorded neither
        # them nor the batch's completion
        ("chain", "after_sink_write:12", [], [(1, "failed", 2, "completed", True)]),
        # a crash during the batch retry: attempt 2 fails too, attempt 3 completes
        (
            "chain",
            "batch_executing:6",
            ["batch_executing:1"],
            [(1, "failed", 2, "failed", True), (2, "failed", 3, "completed", True)],
        ),
        (
            "explode",
            "after_flush:8",
            ["mid_flush:1"],
            [(1, "failed", 2, "failed", True), (2, "failed", 3, "completed", True)],
        ),
    ],
)
def test_named_crash_points(
    tmp_path: Path,
    inputs: dict[str, Path],
    references: dict,
    shape: str,
    first_crash: str,
    resume_crashes: list[str],
    retried: list[tuple],
    landscape_url: str,
) -> None:
    url = landscape_url
    settings = _settings(tmp_path, shape, inputs, url)
    crashed = run_cli(
        "run", "-s", str(settings), "-x", cwd=tmp_path, env={"ELSPETH_FAULT_INJECT": first_crash}
    )
    assert crashed.code == -signal.SIGKILL, crashed.stderr
    TALLY["kills"] += 1
    _assert_crash_state(tmp_path, url, first_crash.partition(":")[0])
    attempts = _resume_until_done(tmp_path, url, settings, resume_crashes)
    assert attempts == len(resume_crashes) + 1
    run_id = _check(tmp_path, url, shape, references[shape])
    assert _retries(url, run_id) == retried


def _assert_crash_state(work: Path, url: str, point: str) -> None:
    """The landscape right after the kill shows the situation the crash point names."""
    statuses = dict(url_query(url, "SELECT status, count(*) FROM batches GROUP BY status"))
    if point in ("source_read", "after_commit"):
        open_members = url_query(
            url,
            """SELECT count(*) FROM batch_members m JOIN batches b
                                    ON b.batch_id = m.batch_id WHERE b.status = 'draft'""",
        )
        assert open_members[0][0] > 0, statuses  # a draft batch was buffering
        assert "executing" not in statuses
    elif point in ("batch_executing", "mid_flush", "after_flush"):
        assert statuses.get("executing") == 1, statuses
    elif point == "after_sink_write":
        (recorded,) = url_query(url, "SELECT rows_written FROM artifacts WHERE sink_name = 'out'")
        target = url_query(_target(work, url), "SELECT count(*) FROM results")
        assert target[0][0] > recorded[0], "the target should hold rows nobody vouches for yet"


@pytest.mark.parametrize(
    ("shape", "kills_wanted", "seed"), [("chain", 20, 20261125), ("explode", 20, 4711)]
)
def test_random_sigkill_instants(
    tmp_path: Path,
    inputs: dict[str, Path],
    references: dict,
    shape: str,
    kills_wanted: int,
    seed: int,
    landscapes: Landscapes,
    request: pytest.FixtureRequest,
) -> None:
    """Kills at seeded random instants (runs and resumes alike), each chain of kills ending with
    a clean resume; when a run completes before enough kills, a fresh run continues.

    Instants are drawn from the CLI's start-up time and the crash-free run's wall time, both
    measured in this session, so that kills land in start-up, in source verification and in
    processing whatever the machine's load.
    """
    rng = random.Random(seed)
    full, startup = TIMES[shape]
    kills = with_run = runs = 0
    stretch = [1.0]
    while kills < kills_wanted:
        work = tmp_path / f"run-{runs}"
        work.mkdir()
        runs += 1
        url = landscapes.new(work, request=request)
        settings = _settings(work, shape, inputs, url)
        done, recorded = _kill_repeatedly(
            work,
            url,
            settings,
            lambda: rng.uniform(0.9, 1.3) * startup + rng.uniform(0, 0.2) * full,
            kills_wanted - kills,
            stretch,
        )
        kills += done
        with_run += recorded
        TALLY["kills_with_run"] += recorded
        status = url_query(url, "SELECT status FROM runs") if url_run_ids(url) else []
        if status != [("completed",)]:
            _resume_until_done(work, url, settings, [])
        run_id = _check(work, url, shape, references[shape])
        for _a, failed, _ra, _rs, same in _retries(url, run_id):
            assert failed == "failed" and same
    TALLY["kills"] += kills
    print(f"{shape}: {kills} kills, {with_run} of a recorded run, {runs} chain(s)")
    assert kills == kills_wanted
    assert with_run >= kills_wanted // 3, f"only {with_run} kills interrupted a recorded run"


def _kill_repeatedly(
    work: Path,
    url: str,
    settings: Path,
    delay: Callable[[], float],
    limit: int,
    stretch: list[float],
) -> tuple[int, int]:
    """Start or resume the run and SIGKILL it after ``delay()`` seconds, until ``limit`` kills or
    until it completes first; returns (kills, kills of a process that had a recorded run).

    A fresh run does more before its run is recorded than the measured start-up (it creates the
    landscape's schema): each fresh run killed before it recorded anything stretches the delays
    of later fresh runs by a quarter (``stretch[0]``, shared by the chains of one test), so most
    kills still interrupt a recorded run however the machine's speed moves.
    """
    kills = with_run = 0
    while kills < limit:
        ids = url_run_ids(url)
        args = ["resume", ids[0], "-d", url, "-x"] if ids else ["run", "-s", str(settings), "-x"]
        TALLY["resumes"] += 1 if ids else 0
        proc = popen_cli(*args, cwd=work)
        try:
            proc.wait(timeout=delay() * (1.0 if ids else stretch[0]))
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        _out, err = proc.communicate()
        if proc.returncode == 0 or "Run already completed" in err:
            break  # (or the previous process was killed just after completing the run)
        assert proc.returncode == -signal.SIGKILL, err
        kills += 1
        with_run += bool(ids)
        if not ids and not url_run_ids(url):
            stretch[0] *= 1.25
    return kills, with_run
