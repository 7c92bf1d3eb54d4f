"""Tests for the throwaway PostgreSQL server and its pytest fixtures, against real servers."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
import sqlalchemy as sa

from tests.support.pg_fixtures import pg_unavailable, unique_database_name
from tests.support.pgserver import (
    INSTALL_HINT,
    PgServer,
    PgServerError,
    ShutdownMode,
    _child_pids,
    find_binaries,
)

# Until the root conftest imports the fixtures; after that, drop these two lines, or this
# module gets a second session server of its own.

REPO_ROOT = Path(__file__).resolve().parents[2]

metadata = sa.MetaData()
items = sa.Table(
    "items",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("name", sa.Text, nullable=False),
)


@pytest.fixture
def engine_factory() -> Iterator[Callable[[str], sa.Engine]]:
    engines: list[sa.Engine] = []

    def make(url: str) -> sa.Engine:
        engines.append(sa.create_engine(url))
        return engines[-1]

    yield make
    for engine in engines:
        engine.dispose()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0) until reaped; it is not a running server.
    return "State:\tZ" not in Path(f"/proc/{pid}/status").read_text()


def _wait_dead(pids: list[int], timeout: float = 10.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while (alive := [p for p in pids if _alive(p)]) and time.monotonic() < deadline:
        time.sleep(0.05)
    return alive


@pytest.mark.postgres
def test_round_trip_through_sqlalchemy_and_psycopg(
    pg_url: str, engine_factory: Callable[[str], sa.Engine]
) -> None:
    engine = engine_factory(pg_url)
    assert engine.dialect.driver == "psycopg"
    metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(sa.insert(items), [{"id": 1, "name": "alpha"}, {"id": 2, "name": "beta"}])
    with engine.connect() as conn:
        rows = conn.execute(sa.select(items.c.id, items.c.name).order_by(items.c.id)).all()
        version = conn.execute(
            sa.select(sa.func.current_setting("server_version_num"))
        ).scalar_one()
    assert [tuple(r) for r in rows] == [(1, "alpha"), (2, "beta")]
    assert int(version) >= 150000


@pytest.mark.postgres
def test_databases_are_isolated(
    pg_server: PgServer, engine_factory: Callable[[str], sa.Engine]
) -> None:
    first, second = (unique_database_name(f"iso{i}") for i in range(2))
    first_engine = engine_factory(pg_server.create_database(first))
    second_engine = engine_factory(pg_server.create_database(second))
    try:
        metadata.create_all(first_engine)
        with first_engine.begin() as conn:
            conn.execute(sa.insert(items), [{"id": 1, "name": "only in first"}])
        assert sa.inspect(first_engine).has_table("items")
        assert not sa.inspect(second_engine).has_table("items")
    finally:
        first_engine.dispose()
        second_engine.dispose()
        pg_server.drop_database(first)
        pg_server.drop_database(second)
    with pytest.raises(sa.exc.OperationalError, match="does not exist"):
        engine_factory(pg_server.url_for(first)).connect()


@pytest.mark.postgres
@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_restart_breaks_open_connections_and_keeps_data(
    mode: ShutdownMode, engine_factory: Callable[[str], sa.Engine]
) -> None:
    # Its own server, so restarting does not disturb the session-wide one.
    with PgServer() as server:
        port, old_pid = server.port, server.pid
        engine = engine_factory(server.url)
        metadata.create_all(engine)
        with engine.connect() as conn:
            conn.execute(sa.insert(items), [{"id": 1, "name": "committed"}])
            conn.commit()

            server.restart(mode=mode)

            with pytest.raises(sa.exc.OperationalError):
                conn.execute(sa.select(items.c.name)).all()

        assert (server.port, server.running) == (port, True)
        assert server.pid != old_pid
        with engine_factory(server.url).connect() as conn:
            assert conn.execute(sa.select(items.c.name)).scalars().all() == ["committed"]


@pytest.mark.postgres
def test_stop_leaves_no_processes_or_files() -> None:
    server = PgServer().start()
    root, postmaster = server.data_dir.parent, server.pid
    assert postmaster is not None
    client = psycopg.connect(host="127.0.0.1", port=server.port, user="postgres", dbname="elspeth")
    try:
        backends = _child_pids(postmaster)
        assert backends, "a postmaster always has auxiliary processes"
        server.stop()
    finally:
        client.close()

    assert _wait_dead([postmaster, *backends]) == []
    assert not root.exists()
    assert not server.running
    server.stop()  # idempotent


@pytest.mark.postgres
def test_server_dies_with_a_crashed_owner() -> None:
    # The owner leaves via os._exit: no atexit, no finally. The parent-death signal must
    # still bring the cluster down; only its directory is left for us to remove.
    owner = textwrap.dedent(
        """
        import os
        from tests.support.pgserver import PgServer
        server = PgServer().start()
        print(server.pid, server.data_dir.parent, flush=True)
        os._exit(0)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", owner], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    pid, root = result.stdout.split()
    try:
        assert _wait_dead([int(pid)]) == []
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.postgres
@pytest.mark.skipif(os.geteuid() != 0, reason="only root hands the cluster to another user")
def test_unreachable_base_dir_is_explained(tmp_path: Path) -> None:
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    with pytest.raises(PgServerError, match="cannot enter"):
        PgServer(base_dir=private).start()
    assert list(private.iterdir()) == []


def test_missing_binaries_say_how_to_install(tmp_path: Path) -> None:
    with pytest.raises(PgServerError, match=r"apt-get install -y postgresql") as info:
        find_binaries(path=str(tmp_path), search_glob=str(tmp_path / "*" / "bin"))
    assert INSTALL_HINT in str(info.value)


@pytest.mark.postgres
def test_found_binaries_come_from_one_installation() -> None:
    try:
        found = find_binaries()
    except PgServerError as exc:
        pg_unavailable(str(exc))
    assert found.initdb.parent == found.pg_ctl.parent == found.postgres.parent
    assert "PostgreSQL" in found.version


def test_database_names_are_unique_and_fit_postgres_limits() -> None:
    names = {unique_database_name("test_x[" + "very-long-param" * 10 + "]") for _ in range(100)}
    assert len(names) == 100
    assert all(len(n) <= 63 and n.startswith("t_test_x_very_long") for n in names)
    with pytest.raises(ValueError, match="1..63 bytes"):
        PgServer(dbname="x" * 64)


@pytest.mark.parametrize(
    ("ci", "skip", "outcome"),
    [
        ("true", None, pytest.fail.Exception),
        ("true", "1", pytest.fail.Exception),  # CI never skips
        (None, None, pytest.fail.Exception),  # locally, skipping must be asked for
        (None, "1", pytest.skip.Exception),
        ("false", "1", pytest.skip.Exception),
    ],
)
def test_unavailable_server_fails_unless_skipping_is_asked_for(
    monkeypatch: pytest.MonkeyPatch, ci: str | None, skip: str | None, outcome: type
) -> None:
    for name, value in (("CI", ci), ("ELSPETH_SKIP_POSTGRES", skip)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    with pytest.raises(outcome, match="initdb not found"):
        pg_unavailable("initdb not found")
