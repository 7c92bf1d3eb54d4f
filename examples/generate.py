"""Deterministic input generator for the examples, tests and benchmarks.

python examples/generate.py OUT.csv ROWS [--seed N] [--bad-every N]
"""

from __future__ import annotations

import argparse
import csv
import random


def generate(path: str, rows: int, *, seed: int = 7, bad_every: int = 0) -> None:
    rng = random.Random(seed)
    states = ["ok", "ok", "ok", "pending", "flagged"]
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["id", "amount", "status", "note"])
        for i in range(rows):
            amount = f"{rng.uniform(0, 1000):.2f}"
            if bad_every and i % bad_every == bad_every - 1:
                amount = "not-a-number"
            writer.writerow([i, amount, rng.choice(states), f"row {i} é"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("path")
    parser.add_argument("rows", type=int)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--bad-every", type=int, default=0)
    args = parser.parse_args()
    generate(args.path, args.rows, seed=args.seed, bad_every=args.bad_every)


if __name__ == "__main__":
    main()
