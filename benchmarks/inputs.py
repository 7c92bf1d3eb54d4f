"""Deterministic benchmark inputs: the same bytes for the same (kind, rows, seed), cached on disk.

Two kinds: ``orders.csv`` (workloads A and B: ``id,amount,status,note``) and ``baskets.jsonl``
(workload C: one object per line with an ``items`` array of 1-3 elements). Files are written to a
temporary name and renamed, so an interrupted generation never leaves a short input behind.
"""

from __future__ import annotations

import csv
import json
import os
import random
from pathlib import Path

SEED = 7
# Bump when a generator changes: cached inputs of another version are never reused.
VERSION = 1
_STATES = ("ok", "ok", "ok", "pending", "flagged")
_SKUS = tuple(f"SKU-{n:04d}" for n in range(200))


def input_path(workdir: Path, kind: str, rows: int) -> Path:
    """Where the input of ``kind`` (``csv`` | ``jsonl``) with ``rows`` rows lives (made if absent)."""
    folder = workdir / "inputs"
    folder.mkdir(parents=True, exist_ok=True)
    suffix = {"csv": "orders.csv", "jsonl": "baskets.jsonl"}[kind]
    path = folder / f"v{VERSION}-{rows}-{suffix}"
    if not path.exists():
        partial = path.with_name(path.name + ".partial")
        writer = _write_csv if kind == "csv" else _write_jsonl
        writer(partial, rows, random.Random(SEED))
        os.replace(partial, path)
    return path


def _write_csv(path: Path, rows: int, rng: random.Random) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["id", "amount", "status", "note"])
        for i in range(rows):
            writer.writerow([i, f"{rng.uniform(0, 1000):.2f}", rng.choice(_STATES), f"row {i} é"])


def _write_jsonl(path: Path, rows: int, rng: random.Random) -> None:
    with path.open("w", encoding="utf-8") as handle:
        for i in range(rows):
            items = [
                {
                    "sku": rng.choice(_SKUS),
                    "qty": rng.randint(1, 5),
                    "price": round(rng.uniform(1, 100), 2),
                }
                for _ in range(rng.randint(1, 3))
            ]
            basket = {"id": i, "customer": f"C{rng.randint(0, 9999):04d}", "items": items}
            handle.write(json.dumps(basket, ensure_ascii=False, separators=(",", ":")) + "\n")
