"""The crash suite: SIGKILL real `elspeth` processes at named points and random instants.

For a gate + three-sink pipeline (two CSV, one JSONL, plus a quarantine sink) over 20,000
generated rows, every crash is followed by `elspeth resume --execute` (itself killed sometimes)
until the run completes; then every sink file must be byte-identical to a crash-free run's, and the
landscape invariants must hold (rows = source rows, one terminal outcome per token, no
checkpoints left).
"""

from __future__ import annotations

import random
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from examples.generate import generate
from tests.support.cli import (
    assert_landscape_invariants,
    gate_pipeline,
    popen_cli,
    run_cli,
    run_ids,
    sink_files,
    url_invariants,
    url_query,
    url_run_ids,
    write_settings,
)
from tests.support.landscape_fixtures import Landscapes

ROWS = 20_000
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def input_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("input") / "in.csv"
    generate(str(path), ROWS, seed=11, bad_every=997)
    return path


REFERENCE_SECONDS: list[float] = []


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, input_csv: Path) -> dict[str, bytes]:
    work = tmp_path_factory.mktemp("reference")
    settings = write_settings(work / "settings.yaml", gate_pipeline(work, input_csv))
    started = time.monotonic()
    result = run_cli("run", "-s", str(settings), "-x", cwd=work)
    REFERENCE_SECONDS.append(time.monotonic() - started)
    assert result.code == 0, result.stderr
    started = time.monotonic()
    assert run_cli("runs", "list", "-d", f"sqlite:///{work / 'audit.db'}", cwd=work).code == 0
    REFERENCE_SECONDS.append(time.monotonic() - started)  # a CLI process's start-up
    files = sink_files(work)
    assert set(files) == {"normal.csv", "high.csv", "flagged.jsonl", "quarantine.jsonl"}
    assert files["quarantine.jsonl"].count(b"\n") == ROWS // 997
    (run_id,) = run_ids(work / "audit.db")
    assert_landscape_invariants(work / "audit.db", run_id, ROWS)
    return files


def _settings(work: Path, input_csv: Path, url: str) -> Path:
    return write_settings(
        work / "settings.yaml", gate_pipeline(work, input_csv, landscape={"url": url})
    )


def _resume_until_done(work: Path, url: str, settings: Path, crash_plans: list[str]) -> int:
    """Resume (with the given crash plans first, then cleanly) until exit 0; returns resumes."""
    plans = list(crash_plans)
    for attempt in range(1, 30):
        ids = url_run_ids(url)
        env = {"ELSPETH_FAULT_INJECT": plans.pop(0)} if plans else {}
        if not ids:
            result = run_cli("run", "-s", str(settings), "-x", cwd=work, env=env)
        else:
            result = run_cli("resume", ids[0], "-d", url, "-x", cwd=work, env=env)
        if result.code == 0:
            return attempt
        assert result.code == -signal.SIGKILL, (result.code, result.stderr)
    raise AssertionError("run did not complete after 30 resumes")


def _check(work: Path, reference: dict[str, bytes], url: str) -> None:
    files = sink_files(work)
    assert files.keys() == reference.keys()
    for name, content in reference.items():
        assert files[name] == content, f"{name} differs from the crash-free run"
    (run_id,) = url_run_ids(url)
    url_invariants(url, run_id, ROWS)


@pytest.mark.parametrize(
    ("first_crash", "resume_crashes"),
    [
        ("source_read:7000", []),
        ("after_sink_write:40", []),
        ("during_commit:55", []),
        ("after_commit:90", []),
        ("after_sink_write:1", []),  # before the first row is committed
        ("after_sink_write:70", ["during_commit:20", "resume_start:1", "after_sink_write:45"]),
        ("during_commit:199", ["source_read:150"]),  # the final commit, then inside the resume
    ],
)
def test_named_crash_points(
    tmp_path: Path,
    input_csv: Path,
    reference: dict[str, bytes],
    first_crash: str,
    resume_crashes: list[str],
    landscape_url: str,
) -> None:
    settings = _settings(tmp_path, input_csv, landscape_url)
    first = run_cli(
        "run", "-s", str(settings), "-x", cwd=tmp_path, env={"ELSPETH_FAULT_INJECT": first_crash}
    )
    assert first.code == -signal.SIGKILL, first.stderr
    resumes = _resume_until_done(tmp_path, landscape_url, settings, resume_crashes)
    assert resumes == len(resume_crashes) + 1
    _check(tmp_path, reference, landscape_url)
    attempts = len(resume_crashes) + 2
    (run_id,) = url_run_ids(landscape_url)
    shown = run_cli("runs", "show", run_id, "-d", landscape_url, "--json", cwd=tmp_path)
    assert shown.code == 0
    assert f'"attempt": {attempts}' in shown.stdout


RANDOM_KILLS = 24


def test_random_sigkill_instants(
    tmp_path: Path,
    input_csv: Path,
    reference: dict[str, bytes],
    landscape_url: str,
    landscapes: Landscapes,
    request: pytest.FixtureRequest,
) -> None:
    """24 SIGKILLs at seeded random instants (start-up, processing, resumes), in chains.

    Instants are drawn from the start-up time of a CLI process and the wall time of a crash-free
    run, both measured in the same session, so kills land in start-up, source verification and
    processing whatever the machine's load. A run that completes before all the kills were made
    (the machine got faster than when it was measured) is checked like every other, and a fresh
    run in a new landscape takes the remaining kills: the count of kills never depends on luck.
    """
    rng = random.Random(20261125)
    full, startup = REFERENCE_SECONDS[0], REFERENCE_SECONDS[1]
    kills = kills_with_run = chains = 0
    # A fresh run does more before its run is recorded than the measured start-up (it creates the
    # landscape's schema: slower on PostgreSQL than the SQLite reference): each fresh run killed
    # before it recorded anything stretches the delays of later fresh runs by a quarter.
    stretch = 1.0
    url = landscape_url
    while kills < RANDOM_KILLS:
        work = tmp_path / f"chain-{chains}"
        work.mkdir()
        if chains:
            url = landscapes.new(work, request=request)
        chains += 1
        settings = _settings(work, input_csv, url)
        while kills < RANDOM_KILLS:
            ids = url_run_ids(url)
            args = (
                ["resume", ids[0], "-d", url, "-x"] if ids else ["run", "-s", str(settings), "-x"]
            )
            proc = popen_cli(*args, cwd=work)
            try:
                delay = rng.uniform(0.6, 1.1) * startup + rng.uniform(0.0, 0.06) * full
                proc.wait(timeout=delay * (1.0 if ids else stretch))
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
            _, stderr = proc.communicate()
            if proc.returncode == 0 or "Run already completed" in stderr:
                break  # it finished before the kill (or just before the previous one)
            assert proc.returncode == -signal.SIGKILL, stderr
            kills += 1
            kills_with_run += bool(ids)
            if not ids and not url_run_ids(url):
                stretch *= 1.25
        ids = url_run_ids(url)
        done = bool(ids) and url_query(url, "SELECT status FROM runs")[0][0] == "completed"
        if not done:
            _resume_until_done(work, url, settings, [])
        _check(work, reference, url)
    print(f"random kills: {kills} ({kills_with_run} of a recorded run) in {chains} chain(s)")
    assert kills == RANDOM_KILLS
    assert kills_with_run >= 10, f"only {kills_with_run} kills interrupted a recorded run"


def test_concurrent_resumes_exactly_one_proceeds(
    tmp_path: Path, input_csv: Path, reference: dict[str, bytes], landscape_url: str
) -> None:
    settings = _settings(tmp_path, input_csv, landscape_url)
    first = run_cli(
        "run",
        "-s",
        str(settings),
        "-x",
        cwd=tmp_path,
        env={"ELSPETH_FAULT_INJECT": "after_commit:10"},
    )
    assert first.code == -signal.SIGKILL
    (run_id,) = url_run_ids(landscape_url)
    url = landscape_url
    a = popen_cli("resume", run_id, "-d", url, "-x", cwd=tmp_path)
    time.sleep(0.2)
    b = popen_cli("resume", run_id, "-d", url, "-x", cwd=tmp_path)
    out_a, err_a = a.communicate(timeout=600)
    out_b, err_b = b.communicate(timeout=600)
    codes = sorted([a.returncode, b.returncode])
    assert codes == [0, 3], (codes, err_a, err_b)
    loser = err_a if a.returncode == 3 else err_b
    assert "Run already in progress" in loser
    _check(tmp_path, reference, landscape_url)


# SQLite only: the landscape is copied with the work directory, which only a file landscape can be.
def test_copy_of_crashed_workdir_resumes_identically(
    tmp_path: Path, input_csv: Path, reference: dict[str, bytes]
) -> None:
    """The landscape + sinks + payloads are everything: a crashed run moved elsewhere resumes."""
    work = tmp_path / "a"
    work.mkdir()
    settings = write_settings(work / "settings.yaml", gate_pipeline(work, input_csv))
    assert (
        run_cli(
            "run",
            "-s",
            str(settings),
            "-x",
            cwd=work,
            env={"ELSPETH_FAULT_INJECT": "after_sink_write:30"},
        ).code
        == -signal.SIGKILL
    )
    (run_id,) = run_ids(work / "audit.db")
    plan = run_cli("resume", run_id, "-d", f"sqlite:///{work / 'audit.db'}", "--json", cwd=work)
    assert plan.code == 0, plan.stderr
    assert '"unprocessed_rows": 0' in plan.stdout
    shutil.copytree(work, tmp_path / "b")
    url = f"sqlite:///{work / 'audit.db'}"
    assert _resume_until_done(work, url, settings, []) == 1
    _check(work, reference, url)
