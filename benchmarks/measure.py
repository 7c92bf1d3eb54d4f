"""Running one child process and measuring it: wall time, exit status, peak RSS, machine load.

Peak RSS comes from ``os.wait4``, which returns the resource usage of exactly that child (its
``ru_maxrss``, kilobytes on Linux), so nothing else the harness runs is mixed in. Output goes to
files, not pipes, so a chatty child can never block on a full pipe while we wait for it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Measurement:
    wall_seconds: float
    returncode: int  # negative: killed by that signal
    peak_rss_mb: float
    cpu_seconds: float  # user + system time of the child (less sensitive to load than wall time)
    load_before: float
    load_after: float
    stdout: str
    stderr: str

    @property
    def killed(self) -> bool:
        return self.returncode == -signal.SIGKILL

    @property
    def load(self) -> float:
        """The 1-minute load average around the measurement (the higher of before/after)."""
        return max(self.load_before, self.load_after)


def load_average() -> float:
    return os.getloadavg()[0]


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The harness's environment minus ELSPETH_* (a stray fault plan must not leak in)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ELSPETH_")}
    env.update({"DO_NOT_TRACK": "1", "PYTHONUNBUFFERED": "1"})
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    env.update(extra or {})
    return env


def python_cmd(*args: str) -> list[str]:
    return [sys.executable, *args]


def run_measured(
    command: Sequence[str],
    *,
    cwd: Path,
    logdir: Path,
    env: Mapping[str, str] | None = None,
    timeout: float = 3600,
) -> Measurement:
    """Run ``command`` to completion and measure it.

    Raises:
        TimeoutError: the child ran longer than ``timeout`` (it is killed first).
    """
    logdir.mkdir(parents=True, exist_ok=True)
    out_path, err_path = logdir / "stdout.txt", logdir / "stderr.txt"
    load_before = load_average()
    with out_path.open("wb") as out, err_path.open("wb") as err:
        began = time.perf_counter()
        proc = subprocess.Popen(
            command,
            cwd=cwd,
            env=dict(env or child_env()),
            stdout=out,
            stderr=err,
            stdin=subprocess.DEVNULL,
        )
        status, usage = _wait(proc, timeout)
        wall = time.perf_counter() - began
    proc.returncode = os.waitstatus_to_exitcode(status)
    return Measurement(
        wall_seconds=wall,
        returncode=proc.returncode,
        peak_rss_mb=usage.ru_maxrss / 1024.0,
        cpu_seconds=usage.ru_utime + usage.ru_stime,
        load_before=load_before,
        load_after=load_average(),
        stdout=out_path.read_text(errors="replace"),
        stderr=err_path.read_text(errors="replace"),
    )


def _wait(proc: subprocess.Popen[bytes], timeout: float) -> tuple[int, Any]:
    deadline = time.monotonic() + timeout
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid == proc.pid:
            return status, usage
        if time.monotonic() > deadline:
            proc.kill()
            os.wait4(proc.pid, 0)
            proc.returncode = -signal.SIGKILL
            raise TimeoutError(f"{' '.join(proc.args)} ran longer than {timeout:.0f} s")  # type: ignore[arg-type]
        time.sleep(0.01)
