"""The run lease: who may write to a run, kept alive by a heartbeat thread.

The owner string names host, pid and the process start time, so a lease whose process is provably
dead on this host can be taken over at once; elsewhere the lease must expire. The heartbeat thread
only extends the lease; fencing (refusing writes after a takeover) happens in every commit.

Fencing has two parts. The landscape transaction of every commit updates ``runs`` only where this
process is still the owner (the recorder's fence). But a commit writes its sink bytes *before* that
transaction, into files (or a target database) that a new owner may already be writing: so before
each durable effect the session calls :meth:`LeaseKeeper.check`, which knows, from the monotonic
clock, until when the lease was surely extended. A process that was paused past that point (SIGSTOP,
a frozen VM or container, a stalled disk) asks the landscape first and stops with
``LeaseLostError`` if another process took the run over, before it writes anything.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from typing import Protocol

from elspeth_core.errors import LeaseLostError

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
    """Background heartbeat for one run's lease, and this process's view of how long it holds it.

    Each successful extension (a heartbeat, or a fenced commit: :meth:`extended`) moves a local
    deadline: the monotonic time by which the lease, as extended, expires at the latest (request
    send time + lease seconds, so never later than the landscape's ``lease_expires_at``).

    Args:
        acquired_at: monotonic time just before the request that took or created the lease
            (defaults to now).
    """

    def __init__(
        self,
        store: Heartbeater,
        run_id: str,
        owner: str,
        lease_seconds: float,
        *,
        acquired_at: float | None = None,
    ) -> None:
        self._store = store
        self._run_id = run_id
        self._owner = owner
        self._seconds = lease_seconds
        # check() asks the landscape once less than a heartbeat interval of the lease is left.
        self._margin = lease_seconds / 3.0
        start = time.monotonic() if acquired_at is None else acquired_at
        self._safe_until = start + lease_seconds - self._margin
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.lost = False
        self._thread = threading.Thread(target=self._loop, name=f"lease-{run_id}", daemon=True)

    def start(self) -> LeaseKeeper:
        self._thread.start()
        return self

    def check(self) -> None:
        """Return only if this process still holds the lease with time to spare.

        A clock read while heartbeats are on time; otherwise (the process was paused, or the
        heartbeats are failing) one synchronous heartbeat, which extends the lease if it is still
        ours. Call it before every durable effect (sink write, payload sync, commit).

        Raises:
            LeaseLostError: another process took the run over (this process must stop writing).
            Exception: the landscape could not be reached to confirm the lease (the commit would
                fail the same way).
        """
        if not self.lost and time.monotonic() < self._safe_until:
            return
        self._beat()

    def extended(self, since: float) -> None:
        """The lease was extended by a request sent at monotonic time ``since``."""
        with self._lock:
            self._safe_until = max(self._safe_until, since + self._seconds - self._margin)

    def _beat(self) -> None:
        if self.lost:
            raise _lost(self._run_id)
        sent = time.monotonic()
        if not self._store.heartbeat(self._run_id, self._owner, self._seconds):
            self.lost = True
            raise _lost(self._run_id)
        self.extended(sent)

    def _loop(self) -> None:
        interval = max(self._seconds / 3.0, 0.2)
        while not self._stop.wait(interval):
            try:
                self._beat()
            except LeaseLostError:
                return
            except Exception:  # noqa: BLE001 - a missed beat is retried; commits fence anyway
                log.warning("lease heartbeat failed for run %s", self._run_id, exc_info=True)

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)


def _lost(run_id: str) -> LeaseLostError:
    return LeaseLostError(
        f"lease on run {run_id} lost: another process took it over",
        hint="This process stops writing; the other process continues the run.",
        run_id=run_id,
    )
