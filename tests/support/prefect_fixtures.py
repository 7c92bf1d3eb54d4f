"""Pytest fixtures for running flows in-process against Prefect's own test harness.

The root ``tests/conftest.py`` imports them; test modules only request them. Importing the
fixture into a test module again would define a second session fixture there, and so start a
second harness while the first is alive: events (and so task runs) then keep going to the first
server while the module's client reads the second. So request `prefect_harness` explicitly (it is not autouse): only flow tests should pay
for the server. `prefect_test_harness()` starts a temporary SQLite-backed API server in a
subprocess (about 10-20 s on the 2-CPU dev VM) and points PREFECT_API_URL at it for the
duration; flows called in the test process then report to it. For deployments, workers,
crashes and the UI use `tests.support.prefect_server.PrefectServer` instead.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from prefect.testing.utilities import prefect_test_harness

__all__ = ["prefect_harness"]

HARNESS_STARTUP_TIMEOUT = 120


@pytest.fixture(scope="session")
def prefect_harness() -> Iterator[float]:
    """One harness server per test session; yields its start-up time in seconds."""
    began = time.monotonic()
    with prefect_test_harness(server_startup_timeout=HARNESS_STARTUP_TIMEOUT):
        yield time.monotonic() - began
