"""Create the `process` work pool the deployments in prefect.yaml run on, if it is missing.

    python -m deployments.setup_work_pool [--pool NAME]      # default: $ELSPETH_WORK_POOL or
                                                             #          elspeth-process

Idempotent: an existing pool is left exactly as it is (an operator may have tuned its
concurrency limit or base job template in the UI), unless it is not a `process` pool, which is
an error. A new pool gets the same base job template `prefect work-pool create NAME --type
process` would give it. Talks to whatever PREFECT_API_URL points at; it never starts a server.
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("DO_NOT_TRACK", "1")  # before Prefect reads its settings

from prefect.client.orchestration import get_client  # noqa: E402
from prefect.client.schemas.actions import WorkPoolCreate  # noqa: E402
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound  # noqa: E402
from prefect.workers.process import ProcessWorker  # noqa: E402

DEFAULT_POOL = "elspeth-process"
POOL_TYPE = "process"


class WorkPoolMismatch(RuntimeError):
    """A pool of that name exists but is not a `process` pool."""


def ensure_process_pool(name: str) -> bool:
    """Make sure a `process` work pool called `name` exists.

    Args:
        name: the work pool name.

    Returns:
        True when this call created the pool, False when it already existed.

    Raises:
        WorkPoolMismatch: a pool of that name exists with another type.
    """
    with get_client(sync_client=True) as client:
        try:
            pool = client.read_work_pool(name)
        except ObjectNotFound:
            template = ProcessWorker.get_default_base_job_template()
            create = WorkPoolCreate(name=name, type=POOL_TYPE, base_job_template=template)
            try:
                client.create_work_pool(work_pool=create)
            except ObjectAlreadyExists:  # created concurrently by someone else
                pool = client.read_work_pool(name)
            else:
                return True
        if pool.type != POOL_TYPE:
            raise WorkPoolMismatch(
                f"work pool {name!r} exists with type {pool.type!r}, not {POOL_TYPE!r}"
            )
        return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--pool",
        default=os.environ.get("ELSPETH_WORK_POOL") or DEFAULT_POOL,
        help="work pool name (default: $ELSPETH_WORK_POOL or %(default)s)",
    )
    args = parser.parse_args(argv)
    try:
        created = ensure_process_pool(args.pool)
    except WorkPoolMismatch as exc:
        print(f"setup_work_pool: {exc}", file=sys.stderr)
        return 1
    print(f"work pool {args.pool!r} ({POOL_TYPE}) {'created' if created else 'already exists'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
