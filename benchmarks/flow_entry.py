"""Run the ``run_pipeline`` Prefect flow on one settings file and print its result as JSON.

    python -m benchmarks.flow_entry SETTINGS.yaml

The harness runs this in a subprocess with ``PREFECT_API_URL`` pointing at a Prefect server, so the
measured time is what a user of the flow pays: Prefect's import and start-up, the flow and task
runs, the artifacts, and the pipeline itself.
"""

from __future__ import annotations

import json
import sys


def main(argv: list[str]) -> int:
    from flows.run_pipeline import run_pipeline

    (settings_path,) = argv
    result = run_pipeline(settings_path=settings_path)
    print(json.dumps(result, default=str))
    return 0 if result.get("status") == "completed" else 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
