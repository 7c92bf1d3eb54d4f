"""The unaudited baselines: each workload's transformation in plain Python, no landscape at all.

    python -m benchmarks.baseline WORKLOAD SOURCE OUTDIR

Same input, same renames, conversions, conditions, aggregation, fork/merge and explode, written
to the same sink files with the standard library (``csv.DictReader`` → dict → ``csv.DictWriter``;
``json`` for JSON Lines). No hashing, no payloads, no fsync: this is the floor the audited engine
is compared against, measured in the same benchmark run. Prints ``{"rows": N}`` (source rows).
"""

from __future__ import annotations

import copy
import csv
import json
import math
import sys
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import IO, Any


class _Sinks:
    """Lazily opened outputs: CSV (header from the first row) or JSON Lines, by extension."""

    def __init__(self, outdir: Path, stack: ExitStack) -> None:
        self.outdir = outdir
        self.stack = stack
        self._writers: dict[str, Callable[[dict[str, Any]], Any]] = {}
        outdir.mkdir(parents=True, exist_ok=True)

    def writer(self, name: str, suffix: str) -> Callable[[dict[str, Any]], Any]:
        found = self._writers.get(name)
        if found is None:
            handle: IO[str] = self.stack.enter_context(
                (self.outdir / f"{name}{suffix}").open("w", newline="", encoding="utf-8")
            )
            found = _csv_writer(handle) if suffix == ".csv" else _jsonl_writer(handle)
            self._writers[name] = found
        return found


def _csv_writer(handle: IO[str]) -> Callable[[dict[str, Any]], Any]:
    writer: csv.DictWriter[str] | None = None

    def write(row: dict[str, Any]) -> None:
        nonlocal writer
        if writer is None:
            writer = csv.DictWriter(handle, fieldnames=list(row), lineterminator="\n")
            writer.writeheader()
        writer.writerow(row)

    return write


def _jsonl_writer(handle: IO[str]) -> Callable[[dict[str, Any]], Any]:
    def write(row: dict[str, Any]) -> None:
        handle.write(json.dumps(row, ensure_ascii=False, separators=(",", ":")) + "\n")

    return write


def _orders(source: Path, quarantine: Callable[[dict[str, Any]], Any]) -> Iterator[dict[str, Any]]:
    """Rows of the orders CSV, typed and with ``status`` renamed to ``state``."""
    with source.open(newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            try:
                row["id"] = int(row["id"])
                row["amount"] = float(row["amount"])
            except ValueError:
                quarantine(row)
                continue
            yield {("state" if key == "status" else key): value for key, value in row.items()}


def workload_a(source: Path, sinks: _Sinks) -> int:
    normal, high = sinks.writer("normal", ".csv"), sinks.writer("high", ".csv")
    flagged = sinks.writer("flagged", ".csv")
    rows = 0
    for row in _orders(source, sinks.writer("quarantine", ".jsonl")):
        rows += 1
        if row["state"] == "flagged":
            flagged(row)
        elif row["amount"] >= 500:
            high(row)
        else:
            normal(row)
    return rows


def workload_b(source: Path, sinks: _Sinks) -> int:
    normal, high = sinks.writer("normal", ".csv"), sinks.writer("high", ".csv")
    flagged = sinks.writer("flagged", ".csv")
    rows = 0
    batch: list[dict[str, Any]] = []

    def flush() -> None:
        values = [float(r["amount"]) for r in batch]
        total = math.fsum(values)
        stats = {
            "count": len(values),
            "sum": total,
            "batch_size": len(batch),
            "mean": total / len(values) if values else None,
            "state": batch[0]["state"],
        }
        batch.clear()
        if stats["state"] == "flagged":
            flagged(stats)
        elif stats["sum"] >= 50000:
            high(stats)
        else:
            left, right = copy.deepcopy(stats), copy.deepcopy(stats)
            merged = {**left, **right}
            normal(merged)

    for row in _orders(source, sinks.writer("quarantine", ".jsonl")):
        rows += 1
        batch.append(row)
        if len(batch) == 100:
            flush()
    if batch:
        flush()
    return rows


def workload_c(source: Path, sinks: _Sinks) -> int:
    lines, big = sinks.writer("lines", ".jsonl"), sinks.writer("big", ".jsonl")
    sinks.writer("quarantine", ".jsonl")
    rows = 0
    with source.open(encoding="utf-8") as handle:
        for line in handle:
            basket = json.loads(line)
            rows += 1
            base = {k: v for k, v in basket.items() if k != "items"}
            for index, item in enumerate(basket["items"]):
                child = {**copy.deepcopy(base), "item": copy.deepcopy(item), "item_index": index}
                (big if item["price"] * item["qty"] >= 250 else lines)(child)
    return rows


BASELINES: dict[str, Callable[[Path, _Sinks], int]] = {
    "A": workload_a,
    "B": workload_b,
    "C": workload_c,
}


def main(argv: list[str]) -> int:
    workload, source, outdir = argv
    with ExitStack() as stack:
        rows = BASELINES[workload](Path(source), _Sinks(Path(outdir), stack))
    print(json.dumps({"rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
