"""`make demo`: run the example pipeline through the Prefect flow, kill it, resume it, compare.

1. a crash-free reference run (CLI) of examples/threshold_gate;
2. the same pipeline through the `run_pipeline` Prefect flow (ephemeral Prefect, SQLite landscape
   at runs/audit.db), SIGKILLed mid-way by a fault-injection point;
3. the `resume_run` flow resumes that landscape run under the same run ID;
4. every sink file is compared byte for byte with the reference.
"""

from __future__ import annotations

import contextlib
import filecmp
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from examples.generate import generate

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = ROOT / "examples/threshold_gate/settings.yaml"
INPUT = ROOT / "examples/threshold_gate/input.csv"
ROWS = 20_000
SINK_FILES = ("normal.csv", "high.csv", "flagged.jsonl", "quarantine.jsonl")


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "DO_NOT_TRACK": "1",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
            "PREFECT_LOGGING_EXTRA_LOGGERS": "elspeth_core",
        }
    )
    env.update(extra)
    return env


def _python(code: str, **env: str) -> int:
    """Run `code` in a fresh interpreter and leave none of its processes behind.

    A flow called without PREFECT_API_URL starts an ephemeral Prefect server as a child
    process; when the flow's process is SIGKILLed (step 2) nothing stops that server and it
    outlives the demo. The child therefore leads its own process group, and whatever is left
    in that group when it exits is stopped.
    """
    process = subprocess.Popen(
        [sys.executable, "-c", code], cwd=ROOT, env=_env(**env), start_new_session=True
    )
    try:
        return process.wait()
    finally:
        _stop_group(process.pid)


def _stop_group(pgid: int, grace: float = 10.0) -> None:
    """SIGTERM every process left in the group, SIGKILL after `grace` seconds."""
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)


def main() -> int:
    os.chdir(ROOT)
    generate(str(INPUT), ROWS, seed=7, bad_every=997)
    for path in ("runs/demo-reference", "examples/threshold_gate/out"):
        shutil.rmtree(path, ignore_errors=True)
    print(f"[1/4] reference run (CLI, no crash) of {ROWS} rows", flush=True)
    reference = subprocess.run(
        [sys.executable, "-m", "elspeth_core.cli.app", "run", "-s", str(SETTINGS), "-x"],
        env=_env(
            ELSPETH_EXAMPLE_OUT="runs/demo-reference",
            ELSPETH_EXAMPLE_DB="sqlite:///runs/demo-reference.db",
            ELSPETH_EXAMPLE_PAYLOADS="runs/demo-reference-payloads",
        ),
    )
    if reference.returncode != 0:
        return reference.returncode
    print(
        "[2/4] the same pipeline through the Prefect flow `run_pipeline`, killed mid-way",
        flush=True,
    )
    code = _python(
        f"from flows.run_pipeline import run_pipeline; run_pipeline(settings_path={str(SETTINGS)!r})",
        ELSPETH_FAULT_INJECT="after_sink_write:40",
    )
    print(f"      flow-run process ended with exit status {code} (-9 is SIGKILL)", flush=True)
    from elspeth_core.landscape import LandscapeDB, LandscapeQueries

    with LandscapeDB("sqlite:///runs/audit.db", create=False) as db:
        run = LandscapeQueries(db).list_runs(1)[0]
    run_id = run["run_id"]
    print(
        f"      landscape run {run_id} left '{run['status']}' with "
        f"{run['source_rows_ingested']} rows committed",
        flush=True,
    )
    print(f"[3/4] the `resume_run` flow resumes run {run_id} (same run ID)", flush=True)
    code = _python(f"from flows.run_pipeline import resume_run; resume_run(run_id={run_id!r})")
    if code != 0:
        print("resume failed", flush=True)
        return code
    print("[4/4] comparing outputs with the crash-free reference")
    same = True
    for name in SINK_FILES:
        ok = filecmp.cmp(
            f"runs/demo-reference/{name}", f"examples/threshold_gate/out/{name}", shallow=False
        )
        same &= ok
        print(f"      {name:<18} {'identical' if ok else 'DIFFERENT'}")
    print()
    print(f"Run ID: {run_id}   landscape: runs/audit.db")
    print(f"  uv run elspeth runs show {run_id}")
    print("  uv run elspeth runs list")
    print(f"  uv run elspeth explain --run {run_id} --sink normal --line 1")
    print("  Prefect UI: uv run prefect server start   (then open http://127.0.0.1:4200)")
    print("  Deployments, a worker and Retry from the UI: deployments/local_stack.sh --deploy")
    print("    (docs/operations/prefect.md)")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
