"""Shared fixtures: the PostgreSQL throwaway server, landscapes on both backends, the Prefect
harness; helpers to run the real CLI live in ``tests.support.cli``."""

from __future__ import annotations

from tests.support.landscape_fixtures import (  # noqa: F401 - fixtures
    landscape_backend,
    landscape_url,
    landscapes,
)
from tests.support.pg_fixtures import pg_server, pg_url  # noqa: F401 - fixtures
from tests.support.prefect_fixtures import prefect_harness  # noqa: F401 - fixture (on request)
