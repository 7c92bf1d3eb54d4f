"""Time-ordered identifiers: increasing in one process, never repeated by a forked child."""

from __future__ import annotations

import os

from elspeth_core.ids import IdGenerator


def test_ids_increase_and_never_repeat_in_one_process() -> None:
    generator = IdGenerator()
    ids = [generator.new() for _ in range(20_000)]
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)
    assert all(len(found) == 28 for found in ids)


def test_a_forked_child_does_not_repeat_its_parents_ids() -> None:
    """Parent and child draw a new suffix each millisecond: from different random states, or two
    processes writing one landscape (Dask partitions) could make the same ID in the same ms."""
    generator = IdGenerator()
    generator.new()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: the parent's generator state as it was at the fork
        try:
            os.write(write, str(generator._random.getrandbits(64)).encode())
        finally:
            os._exit(0)
    os.close(write)
    mine = generator._random.getrandbits(64)
    with os.fdopen(read, "rb") as stream:
        theirs = int(stream.read().decode())
    os.waitpid(pid, 0)
    assert mine != theirs
