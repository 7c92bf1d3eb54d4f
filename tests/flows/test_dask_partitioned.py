"""Partitioned execution on real Dask clusters (prefect-dask), against the CLI's outputs.

A local cluster of 2 workers, a Dask worker killed, the flow process killed and resumed (by the CLI
on SQLite, partitioned again on PostgreSQL), a partition computed twice, and an existing cluster
started with the ``dask`` CLI and named by ``ELSPETH_DASK_ADDRESS``.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from examples.generate import generate
from tests.support.cli import (
    REPO,
    cli_env,
    gate_pipeline,
    run_cli,
    sink_files,
    url_invariants,
    url_query,
    url_run_ids,
    write_settings,
)

pytestmark = [pytest.mark.prefect, pytest.mark.slow]
ROWS = 6_000


def _pipeline(work: Path, source: Path) -> dict:
    data = gate_pipeline(work, source)
    data["row_plugins"] = [
        {"plugin": "field_mapper", "options": {"mapping": {"status": "state"}}},
        {"plugin": "pseudonymize", "options": {"fields": ["note"], "rounds": 300, "salt": "s"}},
    ]
    return data


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("dask-in") / "in.csv"
    generate(str(path), ROWS, seed=9, bad_every=301)
    return path


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, source: Path) -> dict[str, bytes]:
    work = tmp_path_factory.mktemp("dask-ref")
    settings = write_settings(work / "s.yaml", _pipeline(work, source))
    result = run_cli("run", "-s", str(settings), "-x", cwd=work)
    assert result.code == 0, result.stderr
    return sink_files(work)


def _dask_children() -> list[int]:
    me = str(os.getpid())
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        parent = stat.rsplit(")", 1)[1].split()[1]
        # Dask worker processes are spawned children; the resource tracker is not a worker.
        if parent == me and b"spawn_main" in cmdline and b"resource_tracker" not in cmdline:
            found.append(int(entry.name))
    return found


def test_two_dask_workers_match_the_single_process_run(
    prefect_harness: float, tmp_path: Path, source: Path, reference: dict[str, bytes]
) -> None:
    from flows.partitioned import run_on_dask

    result = run_on_dask(settings=_pipeline(tmp_path, source), workers=2, partition_rows=750)
    assert result["status"] == "completed"
    assert result["partitions"] >= 8
    assert sink_files(tmp_path) == reference
    url_invariants(f"sqlite:///{tmp_path / 'audit.db'}", result["run_id"], ROWS)


def test_killing_a_dask_worker_mid_run_changes_nothing(
    prefect_harness: float, tmp_path: Path, source: Path, reference: dict[str, bytes]
) -> None:
    from flows.partitioned import run_on_dask

    killed: list[int] = []

    def assassin() -> None:
        # Kill only once the cluster is up and computing: a worker killed while the cluster is
        # still starting fails the cluster's start-up (Dask's behaviour, not the product's).
        # A staged partition proves both workers registered and work is flowing.
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not killed:
            workers = _dask_children()
            staged = list(tmp_path.glob("payloads/*/staging/*"))
            if len(workers) >= 2 and staged:
                os.kill(workers[0], signal.SIGKILL)
                killed.append(workers[0])
            time.sleep(0.1)

    thread = threading.Thread(target=assassin, daemon=True)
    thread.start()
    result = run_on_dask(settings=_pipeline(tmp_path, source), workers=2, partition_rows=500)
    thread.join(timeout=5)
    assert killed, "no Dask worker was killed"
    assert result["status"] == "completed"
    assert sink_files(tmp_path) == reference
    url_invariants(f"sqlite:///{tmp_path / 'audit.db'}", result["run_id"], ROWS)


# ---------------------------------------------------------------- helpers for the recovery tests
PARTITION_ROWS = 500


def _content(url: str, run_id: str, payload_base: Path) -> dict[str, list[tuple]]:
    """What the landscape records about a run, without its random IDs, paths and clock times.

    Two runs of the same input agree on this exactly when they recorded the same rows, tokens,
    states, routes, outcomes (with sink lines) and sink artifacts; every row's payload is read
    back and checked against its recorded hash.
    """
    from elspeth_core.payloads import PayloadStore

    p = {"r": run_id}
    # Node IDs hash the node's configuration (sink paths included): compare node names.
    token_row = (
        "JOIN tokens t ON t.token_id = x.token_id JOIN rows r ON r.row_id = t.row_id "
        "JOIN nodes n ON n.run_id = x.run_id AND n.node_id = x.node_id"
    )
    found = {
        "rows": url_query(
            url,
            "SELECT row_index, source_data_hash FROM rows WHERE run_id = :r ORDER BY row_index",
            **p,
        ),
        "tokens": url_query(
            url,
            """SELECT r.row_index, x.branch_name, x.step_index FROM tokens x
               JOIN rows r ON r.row_id = x.row_id WHERE x.run_id = :r ORDER BY 1, 2, 3""",
            **p,
        ),
        "node_states": url_query(
            url,
            f"""SELECT r.row_index, n.name, x.step_index, x.attempt, x.status, x.input_hash,
                   x.output_hash, x.error_json FROM node_states x {token_row}
               WHERE x.run_id = :r ORDER BY 1, 3, 2""",
            **p,
        ),
        "routing_events": url_query(
            url,
            f"""SELECT r.row_index, n.name, x.edge_label, x.destination, x.mode, x.reason_json
               FROM routing_events x {token_row} WHERE x.run_id = :r ORDER BY 1, 2, 3""",
            **p,
        ),
        "token_outcomes": url_query(
            url,
            """SELECT r.row_index, x.outcome, x.is_terminal, x.sink_name, x.sink_line,
                   x.error_hash, x.reason FROM token_outcomes x
               JOIN tokens t ON t.token_id = x.token_id JOIN rows r ON r.row_id = t.row_id
               WHERE x.run_id = :r ORDER BY 1, 2""",
            **p,
        ),
        "validation_errors": url_query(
            url,
            """SELECT x.row_index, n.name, x.row_hash, x.reason, x.destination
               FROM validation_errors x JOIN nodes n ON n.run_id = x.run_id AND n.node_id = x.node_id
               WHERE x.run_id = :r ORDER BY 1""",
            **p,
        ),
        "artifacts": url_query(
            url,
            """SELECT sink_name, content_hash, size_bytes, rows_written FROM artifacts
               WHERE run_id = :r ORDER BY 1""",
            **p,
        ),
        "run": url_query(
            url,
            "SELECT status, source_rows_ingested, source_exhausted FROM runs WHERE run_id = :r",
            **p,
        ),
    }
    found = {name: sorted(rows, key=repr) for name, rows in found.items()}  # a total order
    store = PayloadStore(payload_base)
    refs = url_query(
        url, "SELECT source_data_ref, source_data_hash FROM rows WHERE run_id = :r", **p
    )
    try:
        assert all(store.get(ref, digest) is not None for ref, digest in refs)
    finally:
        store.close()
    return found


def _duplicate_rows(url: str, run_id: str) -> list[tuple]:
    return url_query(
        url,
        """SELECT row_index, count(*) FROM rows WHERE run_id = :r
           GROUP BY row_index HAVING count(*) > 1""",
        r=run_id,
    )


def _published(url: str) -> tuple[str, int, str | None, str] | None:
    """(run_id, rows published, source position, status) of the only run, or None."""
    try:
        if not url_run_ids(url):  # the flow process has not created the landscape or run yet
            return None
        found = url_query(
            url, "SELECT run_id, source_rows_ingested, source_position_json, status FROM runs"
        )
    except Exception as exc:  # noqa: BLE001 - a locked SQLite file reads as "not yet"
        if "locked" in str(exc):
            return None
        raise
    return found[0] if found else None


def _flow_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    from prefect.settings import PREFECT_API_URL

    return cli_env(
        {
            "PREFECT_API_URL": str(PREFECT_API_URL.value()),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            **(extra or {}),
        }
    )


def _flow_process(work: Path, code: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """A Python process running ``code`` from the repository, in its own process group."""
    log = (work / "flow.log").open("ab")
    try:
        return subprocess.Popen(
            [sys.executable, "-c", code],
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    finally:
        log.close()


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


def _kill_flow_after(
    proc: subprocess.Popen[bytes], url: str, minimum: int, log: Path, timeout: float = 240
) -> None:
    """SIGKILL the flow process (only it) once ``minimum`` rows are published."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, (
            "flow process ended before the kill:\n" + log.read_text()[-3000:]
        )
        found = _published(url)
        if found and found[1] >= minimum:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
            return
        time.sleep(0.05)
    raise AssertionError(f"no {minimum} rows published in {timeout} s:\n{log.read_text()[-3000:]}")


def _start_partitioned_run(work: Path, data: dict) -> subprocess.Popen[bytes]:
    settings = write_settings(work / "s.yaml", data)
    code = (
        "import yaml; from flows.partitioned import run_on_dask; "
        f"run_on_dask(settings=yaml.safe_load(open({str(settings)!r})), workers=2, "
        f"partition_rows={PARTITION_ROWS})"
    )
    return _flow_process(work, code, _flow_env())


def _assert_killed_mid_run(url: str) -> tuple[str, int]:
    found = _published(url)
    assert found is not None
    run_id, published, position, status = found
    assert status == "running"  # nothing ran after the SIGKILL
    assert 0 < published < ROWS, published
    assert published % PARTITION_ROWS == 0, "a partition was published in part"
    # Each publication records the source's byte position, so a resume checks one digest.
    assert position is not None and json.loads(position)["rows"] == published
    return run_id, published


def _assert_one_resume(url: str, run_id: str, published: int) -> None:
    attempts = url_query(
        url,
        "SELECT kind, rows_before FROM run_attempts WHERE run_id = :r ORDER BY attempt",
        r=run_id,
    )
    assert attempts == [("run", 0), ("resume", published)]
    assert _duplicate_rows(url, run_id) == []
    url_invariants(url, run_id, ROWS)


# ---------------------------------------------------------------- the flow process killed
def test_killed_flow_process_resumes_with_the_cli(
    prefect_harness: float, tmp_path: Path, source: Path, reference: dict[str, bytes]
) -> None:
    url = f"sqlite:///{tmp_path / 'audit.db'}"
    proc = _start_partitioned_run(tmp_path, _pipeline(tmp_path, source))
    try:
        _kill_flow_after(proc, url, 2 * PARTITION_ROWS, tmp_path / "flow.log")
    finally:
        _kill_group(proc)  # the flow's Dask workers too
    run_id, published = _assert_killed_mid_run(url)
    resumed = run_cli("resume", run_id, "-d", url, "-x", "--json", cwd=tmp_path)
    assert resumed.code == 0, resumed.stderr
    # Only the work that was not published is done again.
    assert json.loads(resumed.stdout)["rows"] == ROWS - published
    assert sink_files(tmp_path) == reference
    _assert_one_resume(url, run_id, published)


def test_killed_flow_process_resumes_partitioned_on_postgres(
    prefect_harness: float, tmp_path: Path, source: Path, reference: dict[str, bytes], pg_url: str
) -> None:
    from flows.partitioned import run_on_dask

    data = _pipeline(tmp_path, source)
    data["landscape"] = {"url": pg_url}
    proc = _start_partitioned_run(tmp_path, data)
    try:
        _kill_flow_after(proc, pg_url, 2 * PARTITION_ROWS, tmp_path / "flow.log")
    finally:
        _kill_group(proc)
    run_id, published = _assert_killed_mid_run(pg_url)
    result = run_on_dask(resume_run_id=run_id, database=pg_url, workers=2)
    assert result["status"] == "completed"
    assert result["rows_before"] == published
    assert result["rows"] == ROWS - published  # only the unpublished rows were computed
    assert result["partitions"] >= 2
    assert sink_files(tmp_path) == reference
    _assert_one_resume(pg_url, run_id, published)
    assert not (tmp_path / "payloads" / run_id / "staging").exists()


# ---------------------------------------------------------------- a partition computed twice
def _publish_by_hand(
    work: Path, source: Path, *, again_before: set[int], again_after: set[int]
) -> tuple[str, int]:
    """Compute and publish a run's partitions in this process, as the flow does, running the
    partitions in ``again_before`` twice before their publication (the second result is the one
    the flow receives) and those in ``again_after`` once more after it."""
    from elspeth_core.config import load_settings_from_dict
    from elspeth_core.engine.orchestrator import Orchestrator
    from elspeth_core.engine.staging import compute_partition_rows
    from elspeth_core.landscape import LandscapeDB
    from flows.partitioned import publish_partition

    loaded = load_settings_from_dict(_pipeline(work, source), source_name="test")
    url = loaded.settings.landscape.url
    db = LandscapeDB(url)
    orchestrator = Orchestrator(db)
    session = orchestrator.begin_run(loaded)
    staging = work / "staging"
    staging.mkdir()
    size = 1_000

    def compute(index: int, start: int) -> dict:
        return compute_partition_rows(
            loaded.raw,
            session.run_id,
            session.settings_hash,
            index,
            start,
            size,
            str(staging),
            session.attempt,
        )

    index = start = 0
    try:
        while True:
            staged = compute(index, start)
            if index in again_before:
                rerun = compute(index, start)
                assert rerun["path"] != staged["path"]
                assert {**rerun, "path": ""} == {**staged, "path": ""}
                staged = rerun
            assert publish_partition(session, staged) is True
            if index in again_after:
                before = (_content(url, session.run_id, work / "payloads"), sink_files(work))
                late = compute(index, start)
                assert publish_partition(session, late) is False
                assert not Path(late["path"]).exists()
                after = (_content(url, session.run_id, work / "payloads"), sink_files(work))
                assert after == before
            if staged["exhausted"]:
                break
            start += staged["rows"]
            index += 1
        result = orchestrator.finalize(session)
    finally:
        db.close()
    assert result.status == "completed"
    return session.run_id, index + 1


def test_a_partition_computed_twice_changes_nothing(
    tmp_path: Path, source: Path, reference: dict[str, bytes]
) -> None:
    once, twice = tmp_path / "once", tmp_path / "twice"
    once.mkdir()
    twice.mkdir()
    once_id, partitions = _publish_by_hand(once, source, again_before=set(), again_after=set())
    # The exhausted (last) partition also finds the end with no empty partition after it.
    assert partitions == ROWS // 1_000
    twice_id, _ = _publish_by_hand(twice, source, again_before={0, 3}, again_after={1, 5})
    assert sink_files(once) == reference
    assert sink_files(twice) == reference
    once_url, twice_url = (f"sqlite:///{w / 'audit.db'}" for w in (once, twice))
    assert _content(twice_url, twice_id, twice / "payloads") == _content(
        once_url, once_id, once / "payloads"
    )
    for url, run_id in ((once_url, once_id), (twice_url, twice_id)):
        url_invariants(url, run_id, ROWS)
        assert _duplicate_rows(url, run_id) == []


# ---------------------------------------------------------------- an existing cluster
def _dask_cli(*args: str, log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    out = log.open("ab")
    try:
        return subprocess.Popen(
            [str(Path(sys.executable).with_name("dask")), *args],
            cwd=log.parent,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    finally:
        out.close()


def test_existing_cluster_at_elspeth_dask_address_runs_the_partitions(
    prefect_harness: float, tmp_path: Path, source: Path, reference: dict[str, bytes]
) -> None:
    from distributed import Client

    from tests.support.prefect_server import free_port

    address = f"tcp://127.0.0.1:{free_port()}"
    env = _flow_env()
    procs = []
    try:
        procs.append(
            _dask_cli(
                "scheduler", "--host", "127.0.0.1", "--port", address.rsplit(":", 1)[1],
                "--dashboard-address", ":0", "--no-show",
                log=tmp_path / "scheduler.log", env=env,
            )
        )  # fmt: skip
        procs.append(
            _dask_cli(
                "worker", address, "--nworkers", "2", "--nthreads", "1", "--no-dashboard",
                "--name", "external",
                log=tmp_path / "workers.log", env=env,
            )
        )  # fmt: skip
        with Client(address, timeout="60s") as client:
            client.wait_for_workers(2, timeout=120)
            workers = set(client.scheduler_info()["workers"])
            assert len(workers) == 2
            assert len(client.get_task_stream()) == 0  # records from here on
            # As a deployment runs it: the address only in the environment, read by the flow.
            settings = write_settings(tmp_path / "s.yaml", _pipeline(tmp_path, source))
            code = (
                "import json, yaml; from flows.partitioned import run_partitioned; "
                f"r = run_partitioned(settings=yaml.safe_load(open({str(settings)!r})), "
                "partition_rows=750); print('RESULT', json.dumps(r))"
            )
            flow = _flow_process(tmp_path, code, _flow_env({"ELSPETH_DASK_ADDRESS": address}))
            procs.append(flow)
            assert flow.wait(timeout=600) == 0, (tmp_path / "flow.log").read_text()[-3000:]
            log = (tmp_path / "flow.log").read_text()
            line = next(x for x in log.splitlines() if x.startswith("RESULT "))
            result = json.loads(line.split(" ", 1)[1])
            stream = client.get_task_stream()
        assert result["status"] == "completed"
        assert f"Connecting to an existing Dask cluster at {address}" in log
        partitions = [t for t in stream if "compute_partition" in str(t["key"])]
        assert len(partitions) >= result["partitions"] == ROWS // 750, [t["key"] for t in stream]
        assert {t["worker"] for t in partitions} == workers  # both external workers computed
        assert sink_files(tmp_path) == reference
        url_invariants(f"sqlite:///{tmp_path / 'audit.db'}", result["run_id"], ROWS)
    finally:
        for proc in reversed(procs):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in reversed(procs):
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                _kill_group(proc)
