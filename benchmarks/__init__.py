"""The benchmark harness: reference pipelines run through the real entry points, as ratios.

``python -m benchmarks.run`` (``make bench``) generates deterministic inputs under
``benchmarks/work/``, runs the reference workloads through the ``elspeth`` CLI and the Prefect flow
in subprocesses, next to an unaudited plain-Python baseline doing the same transformation, and
prints a table and writes ``benchmarks/results/<name>.json``. See ``benchmarks/README.md``.

This package must not import ``elspeth_core`` for anything it measures: every measured figure comes
from a child process started through a public entry point, so import time, settings loading and
the landscape setup are all part of what a user would see.
"""
