"""Shared fixtures: the PostgreSQL throwaway server and helpers to run the real CLI."""

from __future__ import annotations

from tests.support.pg_fixtures import pg_server, pg_url  # noqa: F401 - fixtures
