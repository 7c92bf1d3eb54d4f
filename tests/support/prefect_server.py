"""A real, throwaway Prefect server (and its workers) for integration tests.

`PrefectServer` runs `prefect server start` as a subprocess with its own temporary
PREFECT_HOME and database (SQLite in that home, or a PostgreSQL database the caller
created and passes as `database_url`) on a free port of 127.0.0.1, so tests exercise the
same HTTP API, UI, scheduler and process workers that an operator would. It must not
touch the developer's own Prefect profile or any shared server: every child process gets
an environment built from scratch by `process_env()`, with all inherited `PREFECT_*`
variables removed.

Every process started here runs in its own session (process group); the flow-run
processes that a `process` worker spawns also run in their own sessions (Prefect 3.8.8
isolates them), so `stop()` collects the whole process tree from `/proc` before it
signals anything. Linux only.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO

import httpx

PREFECT_BIN = Path(sys.executable).with_name("prefect")

# Settings that make a worker react within about a second instead of ten.
FAST_WORKER_ENV: dict[str, str] = {
    "PREFECT_WORKER_QUERY_SECONDS": "1",
    "PREFECT_WORKER_PREFETCH_SECONDS": "5",
    "PREFECT_WORKER_HEARTBEAT_SECONDS": "5",
}


class PrefectServerError(RuntimeError):
    """The server or a worker did not start, or a CLI call against it failed."""


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PrefectServer:
    """A local Prefect server subprocess with a private home and database.

    Use it as a context manager, or call `start()` and `stop()`::

        with PrefectServer() as server:
            server.cli("work-pool", "create", "toy-pool", "--type", "process")
            worker = server.start_worker("toy-pool", cwd=project_dir)
            ...

    Attributes:
        home: The temporary PREFECT_HOME (holds the log files, and the SQLite database
            unless `database_url` names another one).
        port: The TCP port the API and UI listen on.
        startup_seconds: Wall time from spawning the server to a healthy `/api/health`.
    """

    def __init__(
        self,
        *,
        home: Path | None = None,
        port: int | None = None,
        startup_timeout: float = 90.0,
        extra_env: Mapping[str, str] | None = None,
        database_url: str | None = None,
    ) -> None:
        """Prepare a server; nothing runs until `start()`.

        Args:
            database_url: Prefect's own database, e.g. ``postgresql+asyncpg://...`` on an
                empty database (the server migrates it on start); SQLite in `home` when None.
        """
        self._own_home = home is None
        self.home = Path(tempfile.mkdtemp(prefix="prefect-home-")) if home is None else home
        self.port = port or free_port()
        self.startup_timeout = startup_timeout
        self.startup_seconds: float | None = None
        self._extra_env = dict(extra_env or {})
        self._database_url = database_url
        self._server: subprocess.Popen[bytes] | None = None
        self._workers: list[subprocess.Popen[bytes]] = []
        self._log_files: list[IO[bytes]] = []

    # -- addresses and environment -------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_url(self) -> str:
        return f"{self.url}/api"

    @property
    def ui_url(self) -> str:
        """Base URL of the UI; in 3.8.8 `/` redirects browsers to the React UI at `/v2/`."""
        return self.url

    @property
    def database_url(self) -> str:
        return self._database_url or f"sqlite+aiosqlite:///{self.home / 'prefect.db'}"

    @property
    def server_log(self) -> Path:
        return self.home / "server.log"

    def env(self) -> dict[str, str]:
        """The variables a child process needs to talk to this server, and only those."""
        return {
            "PREFECT_API_URL": self.api_url,
            "PREFECT_HOME": str(self.home),
            "DO_NOT_TRACK": "1",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            **self._extra_env,
        }

    def process_env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """A complete environment for a child process: ours, minus inherited PREFECT_*."""
        base = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        return {**base, **self.env(), **(extra or {})}

    # -- life cycle ----------------------------------------------------------------

    def __enter__(self) -> PrefectServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> PrefectServer:
        """Spawn `prefect server start` and block until `/api/health` answers.

        Raises:
            PrefectServerError: The server exited or stayed unhealthy past the timeout.
        """
        env = self.process_env(
            {
                "PREFECT_SERVER_DATABASE_CONNECTION_URL": self.database_url,
                "PREFECT_UI_ENABLED": "true",
                "PREFECT_SERVER_LOGGING_LEVEL": "WARNING",
            }
        )
        command = [str(PREFECT_BIN), "server", "start"]
        command += ["--host", "127.0.0.1", "--port", str(self.port), "--analytics-off"]
        began = time.monotonic()
        self._server = self._spawn(command, env=env, cwd=self.home, log=self.server_log)
        self._wait_healthy(began)
        self.startup_seconds = time.monotonic() - began
        return self

    def _spawn(
        self, command: Sequence[str], *, env: Mapping[str, str], cwd: Path, log: Path
    ) -> subprocess.Popen[bytes]:
        out = log.open("ab")
        self._log_files.append(out)
        return subprocess.Popen(
            list(command),
            env=dict(env),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def _wait_healthy(self, began: float) -> None:
        assert self._server is not None
        while time.monotonic() - began < self.startup_timeout:
            if self._server.poll() is not None:
                raise PrefectServerError(
                    f"prefect server exited with {self._server.returncode}:\n{self.log_tail()}"
                )
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.api_url}/health", timeout=2).status_code == 200:
                    return
            time.sleep(0.2)
        self.stop()
        raise PrefectServerError(f"prefect server not healthy after {self.startup_timeout}s")

    def log_tail(self, path: Path | None = None, lines: int = 60) -> str:
        path = path or self.server_log
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def start_worker(
        self,
        pool: str,
        cwd: Path,
        *,
        name: str | None = None,
        extra_env: Mapping[str, str] | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start a `process` worker polling `pool`; its output goes to `home/worker-*.log`.

        The worker polls every second (`FAST_WORKER_ENV`) instead of every ten. The flow
        runs it spawns inherit its environment, so put e.g. PREFECT_LOGGING_EXTRA_LOGGERS
        in `extra_env`.
        """
        name = name or f"worker-{len(self._workers) + 1}"
        command = [str(PREFECT_BIN), "worker", "start", "--pool", pool, "--type", "process"]
        command += ["--name", name, "--install-policy", "never"]
        env = self.process_env({**FAST_WORKER_ENV, **(extra_env or {})})
        worker = self._spawn(command, env=env, cwd=cwd, log=self.worker_log(name))
        self._workers.append(worker)
        return worker

    def create_process_pool(self, name: str) -> None:
        """Do what `prefect work-pool create NAME --type process` does, in-process.

        Same default base job template as the CLI (`ProcessWorker`'s), without the
        seconds of CLI start-up.
        """
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.actions import WorkPoolCreate
        from prefect.settings import PREFECT_API_URL, temporary_settings
        from prefect.workers.process import ProcessWorker

        pool = WorkPoolCreate(
            name=name,
            type="process",
            base_job_template=ProcessWorker.get_default_base_job_template(),
        )
        with (
            temporary_settings(updates={PREFECT_API_URL: self.api_url}),
            get_client(sync_client=True) as client,
        ):
            client.create_work_pool(work_pool=pool)

    def worker_log(self, name: str) -> Path:
        return self.home / f"{name}.log"

    def cli(
        self,
        *args: str,
        cwd: Path | None = None,
        extra_env: Mapping[str, str] | None = None,
        timeout: float = 120.0,
        check: bool = True,
    ) -> subprocess.CompletedProcess[str]:
        """Run `prefect --no-prompt ARGS` against this server and return its output.

        Raises:
            PrefectServerError: `check` is set and the command exited non-zero.
        """
        result = subprocess.run(
            [str(PREFECT_BIN), "--no-prompt", *args],
            env=self.process_env({"COLUMNS": "200", **(extra_env or {})}),
            cwd=cwd or self.home,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and result.returncode != 0:
            raise PrefectServerError(
                f"prefect {' '.join(args)} exited {result.returncode}:\n"
                f"{result.stdout}\n{result.stderr}"
            )
        return result

    def stop(self, timeout: float = 15.0) -> None:
        """Stop workers, their flow-run processes and the server; leave nothing running.

        SIGTERM goes to every process group of the tree first (workers and flow runs
        before the server, so they can report their final states); whatever is still
        alive after `timeout` seconds gets SIGKILL.
        """
        roots = [*self._workers, *([self._server] if self._server else [])]
        pids = [pid for root in roots for pid in _process_tree(root.pid)]
        own = os.getpgrp()
        groups = [g for g in dict.fromkeys(map(_pgid, pids)) if g is not None and g != own]
        for group in groups:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for root in roots:
            with contextlib.suppress(subprocess.TimeoutExpired):
                root.wait(timeout=max(0.1, deadline - time.monotonic()))
        while time.monotonic() < deadline and any(_alive(pid) for pid in pids):
            time.sleep(0.1)
        for group in groups:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, signal.SIGKILL)
        for root in roots:
            with contextlib.suppress(subprocess.TimeoutExpired):
                root.wait(timeout=5)
        for out in self._log_files:
            out.close()
        self._log_files.clear()
        self._workers.clear()
        self._server = None
        if self._own_home and not os.environ.get("KEEP_PREFECT_HOME"):
            shutil.rmtree(self.home, ignore_errors=True)


def flow_run_pids(flow_run_id: object) -> list[int]:
    """PIDs of live processes running the flow run (found by PREFECT__FLOW_RUN_ID).

    The worker starts `python -m prefect.engine` with the flow-run ID only in its
    environment, not on its command line, so `pgrep -f <id>` finds nothing.
    """
    needle = f"PREFECT__FLOW_RUN_ID={flow_run_id}".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if needle in environ.split(b"\0") and _alive(int(entry.name)):
            pids.append(int(entry.name))
    return sorted(pids)


def _children_by_parent() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # Field 4 of /proc/PID/stat, after the parenthesised command name.
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        tree.setdefault(ppid, []).append(int(entry.name))
    return tree


def _process_tree(root: int) -> Iterator[int]:
    """Yield `root` and all its live descendants."""
    tree = _children_by_parent()
    stack = [root]
    while stack:
        pid = stack.pop()
        yield pid
        stack.extend(tree.get(pid, []))


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"
