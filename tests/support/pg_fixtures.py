"""Pytest fixtures for the throwaway PostgreSQL server.

Import them into the root conftest::

    from tests.support.pg_fixtures import pg_server, pg_url  # noqa: F401

`pg_server` starts one `PgServer` per session; `pg_url` gives each test its own empty
database and drops it afterwards. A server that cannot start fails the test, in CI
always and locally too, unless ``ELSPETH_SKIP_POSTGRES=1`` asks for a skip. This module
must never skip on its own initiative: a silently skipped PostgreSQL suite looks green.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Iterator
from typing import NoReturn

import pytest

from tests.support.pgserver import PgServer, PgServerError

__all__ = ["SKIP_ENV", "pg_server", "pg_unavailable", "pg_url", "unique_database_name"]

SKIP_ENV = "ELSPETH_SKIP_POSTGRES"


def pg_unavailable(reason: str) -> NoReturn:
    """Fail (or, locally with ``ELSPETH_SKIP_POSTGRES=1``, skip) because PostgreSQL is missing.

    Raises:
        pytest.fail.Exception: In CI (``CI`` set), or locally without the opt-out.
        pytest.skip.Exception: Locally with ``ELSPETH_SKIP_POSTGRES=1``.
    """
    if _in_ci():
        pytest.fail(f"PostgreSQL is required in CI and could not start: {reason}", pytrace=False)
    if os.environ.get(SKIP_ENV) == "1":
        pytest.skip(f"PostgreSQL unavailable ({SKIP_ENV}=1): {reason}")
    pytest.fail(
        f"PostgreSQL could not start: {reason}\n"
        f"(set {SKIP_ENV}=1 to skip PostgreSQL tests on this machine)",
        pytrace=False,
    )


def unique_database_name(hint: str) -> str:
    """A fresh database name that still says which test it belongs to (max 63 bytes)."""
    slug = re.sub(r"[^a-z0-9]+", "_", hint.lower()).strip("_")[:40]
    return f"t_{slug}_{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """One PostgreSQL server for the whole test session, stopped at its end."""
    try:
        server = PgServer().start()
    except PgServerError as exc:
        pg_unavailable(str(exc))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def pg_url(pg_server: PgServer, request: pytest.FixtureRequest) -> Iterator[str]:
    """SQLAlchemy URL of a new, empty database for this test; dropped afterwards."""
    name = unique_database_name(request.node.name)
    url = pg_server.create_database(name)
    yield url
    pg_server.drop_database(name)


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")
