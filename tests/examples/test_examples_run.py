"""Every ``examples/*/settings.yaml`` runs through ``elspeth run -x`` and produces what its input
says it should.

The examples are copied into a temporary directory that stands in for the repository root (their
paths are relative to it, as in ELSPETH 0.1), so the repository is never written to. Expected
counts are computed here from each example's input file, independently of the engine.
"""

from __future__ import annotations

import csv
import json
import re
import shutil
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from examples.generate import generate
from tests.support.cli import REPO, run_cli, run_ids
from tests.support.pipelines import assert_every_token_terminal_once, read_csv, read_jsonl

EXAMPLES = REPO / "examples"
TRUE, FALSE = {"true", "yes"}, {"false", "no"}


def _threshold_gate(root: Path) -> dict[str, int]:
    counts = {"normal": 0, "high": 0, "flagged": 0, "quarantine": 0}
    for row in read_csv(root / "examples/threshold_gate/input.csv"):
        try:
            amount = float(row["amount"])
        except ValueError:
            counts["quarantine"] += 1
            continue
        sink = "flagged" if row["status"] == "flagged" else "high" if amount >= 500 else "normal"
        counts[sink] += 1
    return counts


def _boolean_routing(root: Path) -> dict[str, int]:
    counts = {"approved": 0, "escalated": 0, "declined": 0, "quarantine": 0}
    for row in read_csv(root / "examples/boolean_routing/applications.csv"):
        decision = row["approved"].lower()
        if decision in TRUE:
            counts["approved"] += 1
        elif decision not in FALSE:
            counts["quarantine"] += 1
        elif float(row["amount"]) >= 5000:
            counts["escalated"] += 1
        else:
            counts["declined"] += 1
    return counts


def _batch_aggregation(root: Path) -> dict[str, int]:
    sales = read_csv(root / "examples/batch_aggregation/sales.csv")
    batches = read_csv(root / "examples/batch_aggregation/out/batches.csv")
    assert [int(b["count"]) for b in batches] == [10, 10, 10, 10, len(sales) - 40]
    assert [b["region"] for b in batches] == [sales[i]["region"] for i in range(0, len(sales), 10)]
    total = sum(float(s["amount"]) for s in sales)
    assert sum(float(b["sum"]) for b in batches) == pytest.approx(total)
    return {"batches": len(batches)}


def _deaggregation(root: Path) -> dict[str, int]:
    shipments = read_csv(root / "examples/deaggregation/shipments.csv")
    packages = read_csv(root / "examples/deaggregation/out/packages.csv")
    expected = [(s["id"], str(i)) for s in shipments for i in range(int(s["packages"]))]
    assert [(p["id"], p["copy_index"]) for p in packages] == expected
    return {"packages": len(expected)}


def _json_explode(root: Path) -> dict[str, int]:
    orders = read_jsonl(root / "examples/json_explode/orders.jsonl")
    good = [o for o in orders if isinstance(o["items"], list)]
    items = read_jsonl(root / "examples/json_explode/out/items.jsonl")
    assert [(i["order_id"], i["item_index"], i["item"]) for i in items] == [
        (o["order_id"], n, item) for o in good for n, item in enumerate(o["items"])
    ]
    return {"items": len(items), "bad": len(orders) - len(good)}


def _fork_coalesce(root: Path) -> dict[str, int]:
    payments = read_csv(root / "examples/fork_coalesce/payments.csv")
    large = [p for p in payments if float(p["amount"]) >= 500]
    written = read_jsonl(root / "examples/fork_coalesce/out/payments.jsonl")
    merged = [w for w in written if "fraud_check" in w]
    assert [m["ledger"]["id"] for m in merged] == [int(p["id"]) for p in large]
    assert all(set(m) == {"fraud_check", "ledger"} for m in merged)
    return {"payments": len(payments), "audit": len(large)}


def _database_sink(root: Path) -> dict[str, int]:
    readings = read_csv(root / "examples/database_sink/readings.csv")
    faulty = [r for r in readings if "faulty" in r["note"]]
    with sqlite3.connect(root / "examples/database_sink/out/readings.db") as conn:
        stored = conn.execute("SELECT sensor, batch_count FROM readings ORDER BY _elspeth_seq")
        rows = stored.fetchall()
    assert [s for s, _n in rows] == [r["sensor"] for r in readings if r not in faulty]
    assert {n for _s, n in rows[:12]} == {12}
    return {"readings": len(rows), "faulty": len(faulty)}


EXPECTED: dict[str, Callable[[Path], dict[str, int]]] = {
    "threshold_gate": _threshold_gate,
    "boolean_routing": _boolean_routing,
    "batch_aggregation": _batch_aggregation,
    "deaggregation": _deaggregation,
    "json_explode": _json_explode,
    "fork_coalesce": _fork_coalesce,
    "database_sink": _database_sink,
}


def test_every_example_has_expectations() -> None:
    found = {p.parent.name for p in EXAMPLES.glob("*/settings.yaml")}
    assert found == set(EXPECTED)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A stand-in repository root holding a clean copy of ``examples/``."""
    shutil.copytree(
        EXAMPLES,
        tmp_path / "examples",
        ignore=shutil.ignore_patterns("out", "__pycache__", "input.csv"),
    )
    # threshold_gate's input is generated (make demo writes a large one); a small one here.
    generate(str(tmp_path / "examples/threshold_gate/input.csv"), 300, seed=3, bad_every=97)
    return tmp_path


def _file_rows(path: Path) -> int:
    if path.suffix == ".jsonl":
        return len(read_jsonl(path))
    if path.suffix == ".json":
        return len(json.loads(path.read_text(encoding="utf-8")))
    with path.open(newline="", encoding="utf-8") as handle:
        return max(0, sum(1 for _ in csv.reader(handle)) - 1)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_example_runs_and_produces_its_expected_counts(root: Path, name: str) -> None:
    before = _snapshot(REPO / "examples" / name)
    result = run_cli("run", "-s", f"examples/{name}/settings.yaml", "-x", cwd=root)
    assert result.code == 0, result.stderr
    assert "completed" in result.stdout
    reported = {m[1]: int(m[2]) for m in re.finditer(r"sink (\w+): (\d+) rows", result.stdout)}
    expected = {sink: n for sink, n in EXPECTED[name](root).items() if n}
    assert reported == expected
    for path in sorted((root / "examples" / name / "out").glob("*")):
        if path.suffix != ".db":
            assert _file_rows(path) == reported.get(path.stem, 0), path.name
    (run_id,) = run_ids(root / "runs/audit.db")
    assert_every_token_terminal_once(root / "runs/audit.db", run_id)
    assert _snapshot(REPO / "examples" / name) == before  # the repository was not written to


def _snapshot(folder: Path) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}
