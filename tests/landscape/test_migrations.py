"""Alembic migrations agree with the metadata, on SQLite and PostgreSQL, through the CLI too."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, insert, select

from elspeth_core.errors import SchemaVersionError
from elspeth_core.landscape import LandscapeDB, migrations
from elspeth_core.landscape import schema as t
from tests.support.cli import run_cli


@pytest.fixture(params=["sqlite", "postgres"])
def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'landscape.db'}"
    return request.getfixturevalue("pg_url")


def test_upgrade_from_empty_matches_metadata(empty_url: str) -> None:
    migrations.upgrade(empty_url)
    engine = create_engine(empty_url)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), t.metadata)
        assert diff == [], diff
        assert migrations.current_revision(conn) == migrations.HEAD_REVISION
    engine.dispose()


def test_created_database_is_stamped_and_reopens(empty_url: str) -> None:
    LandscapeDB(empty_url).close()
    assert migrations.current(empty_url) == migrations.HEAD_REVISION
    with LandscapeDB(empty_url, create=False) as db, db.begin() as conn:
        conn.execute(insert(t.runs), [_run_row()])
    migrations.upgrade(empty_url)  # a no-op at head keeps the data
    with LandscapeDB(empty_url, create=False) as db, db.connect() as conn:
        assert conn.execute(select(t.runs.c.run_id)).scalar_one() == "r1"


def test_upgrade_from_the_first_revision_keeps_the_data(empty_url: str) -> None:
    migrations.upgrade(empty_url, "0001_baseline")
    engine = create_engine(empty_url)
    with engine.begin() as conn:
        conn.execute(insert(t.runs), [_run_row()])
        assert migrations.current_revision(conn) == "0001_baseline"
    engine.dispose()
    with pytest.raises(SchemaVersionError):
        LandscapeDB(empty_url, create=False)  # older schema: refused, with what to run

    migrations.upgrade(empty_url)

    engine = create_engine(empty_url)
    with engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), t.metadata) == []
        row = conn.execute(select(t.runs.c.run_id, t.runs.c.source_position_json)).one()
        assert tuple(row) == ("r1", None)
    engine.dispose()
    with LandscapeDB(empty_url, create=False) as db, db.connect() as conn:
        assert conn.execute(select(t.runs.c.status)).scalar_one() == "completed"


def test_older_schema_is_refused_with_the_command_to_run(empty_url: str) -> None:
    migrations.upgrade(empty_url)
    engine = create_engine(empty_url)
    with engine.begin() as conn:
        conn.exec_driver_sql("DELETE FROM alembic_version")
    engine.dispose()
    with pytest.raises(SchemaVersionError) as refused:
        LandscapeDB(empty_url, create=False)
    assert "elspeth db upgrade" in (refused.value.hint or "")


def test_db_cli_current_and_upgrade(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    before = run_cli("db", "current", "-d", url, "--json", cwd=tmp_path)
    assert before.code == 0 and '"up_to_date": false' in before.stdout
    upgraded = run_cli("db", "upgrade", "-d", url, cwd=tmp_path)
    assert upgraded.code == 0, upgraded.stderr
    after = run_cli("db", "current", "-d", url, "--json", cwd=tmp_path)
    assert '"up_to_date": true' in after.stdout


def _run_row() -> dict:
    from datetime import UTC, datetime

    return {
        "run_id": "r1",
        "status": "completed",
        "started_at": datetime.now(UTC),
        "config_hash": "0" * 64,
        "topology_hash": "0" * 64,
        "settings_json": "{}",
        "canonical_version": "sha256-rfc8785-v1",
    }
