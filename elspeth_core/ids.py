"""Time-ordered identifiers (ULID-like, in hex) for runs, rows, tokens and audit records.

Identifiers sort by creation time, so B-tree inserts stay append-only and cheap. Node IDs are NOT
made here: they are derived deterministically from the configuration (``dag``). This module keeps
per-instance state only (no globals beyond the default generator used by ``new_id``).
"""

from __future__ import annotations

import os
import random
import threading
import time


class IdGenerator:
    """Monotonic IDs: 48-bit milliseconds + 64-bit random-then-incrementing suffix, as 28 hex chars.

    Hex rather than base32 because formatting is the hot path (several IDs per row).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last_ms = -1
        self._prefix = ""
        self._suffix = 0
        # Seeded from the OS once (and again in a forked child, which must not repeat its
        # parent's suffixes): a system call per millisecond would release the GIL on the hot
        # path, and with the commit thread busy, getting it back costs far more than the call.
        self._random = random.Random(os.urandom(16))
        os.register_at_fork(after_in_child=self._reseed)

    def _reseed(self) -> None:
        self._random.seed(os.urandom(16))
        self._last_ms = -1

    def new(self) -> str:
        with self._lock:
            now = time.time_ns() // 1_000_000
            if now > self._last_ms:
                self._last_ms = now
                self._prefix = f"{now:012x}"  # formatted once per millisecond, not per ID
                self._suffix = self._random.getrandbits(56)
            else:  # same millisecond, or the clock stepped back: keep counting up
                self._suffix += 1
            return f"{self._prefix}{self._suffix:016x}"


_default = IdGenerator()


def new_id() -> str:
    """A new time-ordered 28-character identifier."""
    return _default.new()
