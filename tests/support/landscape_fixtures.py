"""Landscape fixtures parametrised over both backends: a SQLite file, or a PostgreSQL database.

Import them into the root conftest::

    from tests.support.landscape_fixtures import landscape_backend, landscape_url, landscapes

``landscape_backend`` is module-scoped and parametrised ``["sqlite", "postgres"]``, so every test
of a module that uses it runs once per backend, and module-scoped fixtures (a reference run, a
shared crashed run) can build their landscape on the same backend as the tests that read them.
``landscape_url`` gives a test its own empty landscape; ``landscapes.new`` makes more of them (for
module-scoped fixtures, or a test that needs several). PostgreSQL databases live on the session's
throwaway server (``pg_server``), which is started only when a postgres test asks for it and fails
the test, never skips it, when it cannot start (see ``tests.support.pg_fixtures``).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.pg_fixtures import unique_database_name

__all__ = ["BACKENDS", "Landscapes", "landscape_backend", "landscape_url", "landscapes"]

BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


class Landscapes:
    """Makes empty landscapes of one backend and forgets (drops) them when ``request`` ends."""

    def __init__(self, backend: str, request: pytest.FixtureRequest) -> None:
        self.backend = backend
        self._request = request

    def new(self, folder: Path, *, request: pytest.FixtureRequest | None = None) -> str:
        """The URL of a new, empty landscape: ``folder/audit.db``, or a fresh PG database.

        Args:
            folder: Where a SQLite landscape lives (also names the PostgreSQL database).
            request: Drop the PostgreSQL database when this request ends (default: the
                module's, i.e. at the end of the module).
        """
        if self.backend == "sqlite":
            return f"sqlite:///{folder / 'audit.db'}"
        owner = request or self._request
        server = owner.getfixturevalue("pg_server")
        name = unique_database_name(folder.name)
        url = str(server.create_database(name))
        owner.addfinalizer(lambda: server.drop_database(name))
        return url


@pytest.fixture(scope="module", params=BACKENDS)
def landscape_backend(request: pytest.FixtureRequest) -> str:
    """``"sqlite"`` or ``"postgres"``: every test using it runs on both."""
    return str(request.param)


@pytest.fixture(scope="module")
def landscapes(landscape_backend: str, request: pytest.FixtureRequest) -> Landscapes:
    """A factory of empty landscapes on this module run's backend."""
    return Landscapes(landscape_backend, request)


@pytest.fixture
def landscape_url(landscapes: Landscapes, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    """This test's own empty landscape: ``tmp_path/audit.db``, or a fresh PostgreSQL database."""
    return landscapes.new(tmp_path, request=request)
