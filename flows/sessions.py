"""Process-local cache of open run sessions, so chunk tasks of one flow run share the open source.

Correctness never depends on it: a task that finds no session (a new process, a retried flow run)
reopens the run from the landscape through the resume path, because every chunk ends with a
durable commit.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from elspeth_core.engine.orchestrator import Orchestrator
from elspeth_core.engine.session import RunSession
from elspeth_core.landscape import LandscapeDB


@dataclass
class OpenRun:
    db: LandscapeDB
    orchestrator: Orchestrator
    session: RunSession
    loaded: Any


class SessionCache:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._runs: dict[str, OpenRun] = {}

    def put(self, run: OpenRun) -> None:
        with self._lock:
            self._runs[run.session.run_id] = run

    def get(self, run_id: str) -> OpenRun | None:
        with self._lock:
            return self._runs.get(run_id)

    def pop(self, run_id: str) -> OpenRun | None:
        with self._lock:
            return self._runs.pop(run_id, None)


_SESSIONS = SessionCache()


# Flow and task functions reach the cache only through these functions: Prefect-Dask may pickle a
# flow function by value, and a lock-holding global referenced from it cannot be pickled.
def remember(run: OpenRun) -> None:
    _SESSIONS.put(run)


def recall(run_id: str) -> OpenRun | None:
    return _SESSIONS.get(run_id)


def forget(run_id: str) -> OpenRun | None:
    return _SESSIONS.pop(run_id)
