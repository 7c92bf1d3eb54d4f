"""Shared fixtures: the PostgreSQL throwaway server and helpers to run the real CLI."""

from __future__ import annotations

from tests.support.pg_fixtures import pg_server, pg_url  # noqa: F401 - fixtures
from tests.support.prefect_fixtures import prefect_harness  # noqa: F401 - fixture (on request)
