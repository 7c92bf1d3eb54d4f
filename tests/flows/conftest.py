"""A real Prefect server with the repository's prefect.yaml deployed, shared by the flow tests.

`deployed_project` starts one `PrefectServer` (own PREFECT_HOME, SQLite and port), creates
the `process` work pool the way `deployments/setup_work_pool.py` does, starts a process worker
and runs `prefect --no-prompt deploy --all` from the repository root, exactly as an operator
would. Tests in `test_deployments_e2e.py` and `test_prefect_ui.py` share it.

The fixture is session-scoped so both modules share one server start-up (15-30 s), but the
server must not idle through the rest of the suite: `pytest_runtest_teardown` stops it right
after the last test that uses it. Pitfall: the fixture does not change the global Prefect
settings (a session-wide `temporary_settings` could not be exited out of order); tests enter
`project.client_settings()` around their client calls.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from prefect.settings import PREFECT_API_URL, temporary_settings

from deployments.setup_work_pool import ensure_process_pool
from tests.support.prefect_server import PrefectServer

REPO = Path(__file__).resolve().parents[2]
POOL = "elspeth-e2e"
FIXTURE = "deployed_project"
_STASH = pytest.StashKey["DeployedProject"]()
_LAST_USER = pytest.StashKey[str]()


@dataclass
class DeployedProject:
    """The running server and what was deployed to it."""

    server: PrefectServer
    pool: str
    timings: dict[str, float] = field(default_factory=dict)
    stopped: bool = False

    def client_settings(self) -> contextlib.AbstractContextManager[object]:
        """Point Prefect clients in this process at the server (a context manager)."""
        return temporary_settings(updates={PREFECT_API_URL: self.server.api_url})

    def stop(self) -> None:
        if not self.stopped:
            self.stopped = True
            self.server.stop()


def _start() -> DeployedProject:
    began = time.monotonic()
    server = PrefectServer().start()
    project = DeployedProject(server, POOL)
    try:
        project.timings["server start"] = time.monotonic() - began
        with project.client_settings():
            assert ensure_process_pool(POOL) is True
            assert ensure_process_pool(POOL) is False  # idempotent
        # The worker boots while `prefect deploy` runs; both only need the pool.
        server.start_worker(POOL, cwd=REPO)
        server.cli(
            "deploy",
            "--all",
            cwd=REPO,
            extra_env={"ELSPETH_PROJECT_DIR": str(REPO), "ELSPETH_WORK_POOL": POOL},
        )
        project.timings["server, pool, worker, deploy"] = time.monotonic() - began
    except BaseException:
        project.stop()
        raise
    return project


@pytest.fixture(scope="session")
def deployed_project(request: pytest.FixtureRequest) -> Iterator[DeployedProject]:
    """A server with prefect.yaml deployed and a worker on its pool; stopped after its last user."""
    project = _start()
    request.config.stash[_STASH] = project
    print({k: round(v, 1) for k, v in project.timings.items()})
    try:
        yield project
    finally:
        project.stop()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    users = [item.nodeid for item in items if FIXTURE in getattr(item, "fixturenames", ())]
    if users:
        config.stash[_LAST_USER] = users[-1]


@pytest.hookimpl(trylast=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> None:
    if item.nodeid == item.config.stash.get(_LAST_USER, None):
        project = item.config.stash.get(_STASH, None)
        if project is not None:
            project.stop()
