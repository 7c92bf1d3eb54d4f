"""The run lease: who may write to a run, kept alive by a heartbeat thread.

The owner string names host, pid and the process start time, so a lease whose process is provably
dead on this host can be taken over at once; elsewhere the lease must expire. The heartbeat thread
only extends the lease; fencing (refusing writes after a takeover) happens in every commit.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from typing import Protocol

log = logging.getLogger(__name__)

DEFAULT_LEASE_SECONDS = 30.0


class Heartbeater(Protocol):
    def heartbeat(self, run_id: str, owner: str, lease_seconds: float) -> bool: ...


def lease_seconds_from_env() -> float:
    value = os.environ.get("ELSPETH_LEASE_TIMEOUT")
    return float(value) if value else DEFAULT_LEASE_SECONDS


def _start_ticks(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def make_owner() -> str:
    """A lease owner identity: host:pid:start-ticks:nonce."""
    pid = os.getpid()
    return f"{socket.gethostname()}:{pid}:{_start_ticks(pid) or 0}:{uuid.uuid4().hex[:8]}"


def owner_is_dead(owner: str | None) -> bool:
    """True only when the owner's process is on this host and provably gone."""
    if not owner:
        return False
    parts = owner.split(":")
    if len(parts) < 4 or parts[0] != socket.gethostname():
        return False
    try:
        pid = int(parts[1])
    except ValueError:
        return False
    return _start_ticks(pid) != parts[2]


class LeaseKeeper:
    """Background heartbeat for one run's lease."""

    def __init__(self, store: Heartbeater, run_id: str, owner: str, lease_seconds: float) -> None:
        self._store = store
        self._run_id = run_id
        self._owner = owner
        self._seconds = lease_seconds
        self._stop = threading.Event()
        self.lost = False
        self._thread = threading.Thread(target=self._loop, name=f"lease-{run_id}", daemon=True)

    def start(self) -> LeaseKeeper:
        self._thread.start()
        return self

    def _loop(self) -> None:
        interval = max(self._seconds / 3.0, 0.2)
        while not self._stop.wait(interval):
            try:
                if not self._store.heartbeat(self._run_id, self._owner, self._seconds):
                    self.lost = True
                    return
            except Exception:  # noqa: BLE001 - a missed beat is retried; commits fence anyway
                log.warning("lease heartbeat failed for run %s", self._run_id, exc_info=True)

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
