"""A real Prefect server with the repository's prefect.yaml deployed, shared by the flow tests.

`deployed_project` starts one `PrefectServer` (own PREFECT_HOME, SQLite and port), creates
the `process` work pool the way `deployments/setup_work_pool.py` does, starts a process worker
and runs `prefect --no-prompt deploy --all` from the repository root, exactly as an operator
would. Tests in `test_deployments_e2e.py` and `test_prefect_ui.py` share it.

`deployed_project_on_postgres` is the set-up the operations guide gives a team: the same
deployments on a server whose own database is PostgreSQL (a fresh database on the session's
throwaway cluster, `pg_server`), with two process workers on the pool. It lives for one test
only (function scope), so it is stopped as soon as that test ends.

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
from sqlalchemy.engine import make_url

from deployments.setup_work_pool import ensure_process_pool
from tests.support.pg_fixtures import unique_database_name
from tests.support.pgserver import PgServer
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


def _start(*, database_url: str | None = None, workers: int = 1) -> DeployedProject:
    began = time.monotonic()
    server = PrefectServer(database_url=database_url).start()
    project = DeployedProject(server, POOL)
    try:
        project.timings["server start"] = time.monotonic() - began
        with project.client_settings():
            assert ensure_process_pool(POOL) is True
            assert ensure_process_pool(POOL) is False  # idempotent
        # The workers boot while `prefect deploy` runs; both only need the pool.
        for _ in range(workers):
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


@pytest.fixture
def deployed_project_on_postgres(
    pg_server: PgServer, request: pytest.FixtureRequest
) -> Iterator[DeployedProject]:
    """The same deployments on a PostgreSQL-backed server with two workers, for one test."""
    name = unique_database_name(f"prefect_{request.node.name}")
    # Prefect's server speaks asyncpg (in the lockfile as Prefect's own dependency).
    url = make_url(pg_server.create_database(name)).set(drivername="postgresql+asyncpg")
    try:
        project = _start(database_url=url.render_as_string(hide_password=False), workers=2)
        print({k: round(v, 1) for k, v in project.timings.items()})
        try:
            yield project
        finally:
            project.stop()
    finally:
        pg_server.drop_database(name)


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
