"""``every_n`` commits become durable on the commit thread while the next rows are read.

What must hold whatever the timing (the crash suites SIGKILL the same path at random instants):
a chunk is recorded only once its sink bytes and payloads are fsynced; an fsync that fails makes
the run fail, with the chunk it belonged to never recorded and nothing written after it; the failed
run resumes to the outputs of a run that never failed. The failing sink is a third-party plugin
(``elspeth.plugins`` entry point) loaded by the real CLI in a subprocess.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support.cli import query
from tests.support.pipelines import (
    assert_every_token_terminal_once,
    make_csv,
    only_run,
    outputs,
    pipeline,
    plugin_site,
    python_path,
    resume,
    run_pipeline,
)

ROWS = 1000
INTERVAL = 50
# The 1st deferred fsync is the first commit's (the sinks' starting point, no rows); the k-th
# (k >= 2) makes rows up to (k - 1) * INTERVAL durable. The 7th fails: the chunk of rows 251-300.
FAIL_AT_SYNC = 7

FAILING_SINK = """
import os

from elspeth_core.plugins.sinks import CsvSink


class SyncFailingCsv(CsvSink):
    name = "sync_failing_csv"
    syncs = 0

    def flush_deferred(self):
        publication, sync = super().flush_deferred()
        SyncFailingCsv.syncs += 1
        if SyncFailingCsv.syncs == int(os.environ.get("FAIL_AT_SYNC", "0")):

            def sync():
                raise OSError(5, "Input/output error (injected)")

        return publication, sync
"""


def _data(work: Path, source: Path, landscape_url: str, plugin: str) -> dict:
    sinks = {"out": {"plugin": plugin, "options": {"path": str(work / "out" / "out.csv")}}}
    return pipeline(work, source, sinks=sinks, interval=INTERVAL, landscape=landscape_url)


def test_a_failed_fsync_fails_the_run_before_its_chunk_is_recorded_and_resume_completes_it(
    tmp_path: Path, landscape_url: str
) -> None:
    source = make_csv(tmp_path / "in.csv", ROWS)
    reference = tmp_path / "reference"
    reference.mkdir()
    clean = run_pipeline(reference, _data(reference, source, f"sqlite:///{reference}/a.db", "csv"))
    assert clean.code == 0, clean.stderr

    work = tmp_path / "work"
    work.mkdir()
    site = plugin_site(
        tmp_path, "failing_sink", FAILING_SINK, {"sync_failing_csv": "SyncFailingCsv"}
    )
    env = {**python_path(site), "FAIL_AT_SYNC": str(FAIL_AT_SYNC)}
    failed = run_pipeline(work, _data(work, source, landscape_url, "sync_failing_csv"), env=env)

    assert failed.code == 2, failed.stderr
    assert "Input/output error (injected)" in failed.stderr
    run_id = only_run(landscape_url)
    [(status, ingested)] = query(
        landscape_url, f"SELECT status, source_rows_ingested FROM runs WHERE run_id = '{run_id}'"
    )
    assert status == "failed"
    # Nothing from the failing chunk on is recorded, and what is recorded is whole.
    assert ingested == (FAIL_AT_SYNC - 2) * INTERVAL
    assert query(landscape_url, f"SELECT count(*) FROM rows WHERE run_id = '{run_id}'") == [
        (ingested,)
    ]
    assert_every_token_terminal_once(landscape_url, run_id)

    resumed = resume(work, run_id, env=python_path(site), landscape=landscape_url)
    assert resumed.code == 0, resumed.stderr
    assert outputs(work) == outputs(reference)
    assert_every_token_terminal_once(landscape_url, run_id)
    assert query(landscape_url, f"SELECT status FROM runs WHERE run_id = '{run_id}'") == [
        ("completed",)
    ]


def test_the_process_switch_interval_is_lowered_only_while_a_run_commits(tmp_path: Path) -> None:
    """The commit thread lowers the interpreter's switch interval (it must get the GIL back
    quickly after each fsync); the host process (a Prefect flow, a notebook) gets its own back."""
    from elspeth_core.cli.app import app
    from elspeth_core.engine import session

    source = make_csv(tmp_path / "in.csv", ROWS)
    settings = tmp_path / "settings.yaml"
    settings.write_text(
        json.dumps(_data(tmp_path, source, f"sqlite:///{tmp_path}/a.db", "csv")), encoding="utf-8"
    )
    seen: list[float] = []
    original_write = session.RunSession._publish

    def publish(self: session.RunSession, name: str, final: bool) -> Any:
        seen.append(sys.getswitchinterval())
        return original_write(self, name, final)

    before = sys.getswitchinterval()
    session.RunSession._publish = publish  # type: ignore[method-assign]
    try:
        app(["run", "-s", str(settings), "-x"], standalone_mode=False)
    finally:
        session.RunSession._publish = original_write  # type: ignore[method-assign]
    assert sys.getswitchinterval() == before
    assert min(seen) == pytest.approx(session.COMMIT_THREAD_SWITCH_INTERVAL)
    assert before > session.COMMIT_THREAD_SWITCH_INTERVAL
