"""Every ``examples/*/settings.yaml`` runs through ``elspeth run -x`` and produces what its input
says it should.

The examples are copied into a temporary directory that stands in for the repository root (their
paths are relative to it, as in ELSPETH 0.1), so the repository is never written to. Expected
counts and outputs are computed here from each example's input file, independently of the engine;
where an example's point is in the audit trail (which branches merged, why a batch fired, what the
run-end export holds), that is checked in the landscape too.

Every example runs on both landscape backends: verbatim on SQLite (``sqlite:///runs/audit.db``);
on PostgreSQL, ``ELSPETH_LANDSCAPE__URL``/``__BACKEND`` point the same settings at a fresh database
(and the database_sink example's table goes into that database too).
"""

from __future__ import annotations

import csv
import json
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from examples.generate import generate
from tests.support.cli import REPO, query, run_cli, run_ids, url_query
from tests.support.landscape_fixtures import Landscapes
from tests.support.pipelines import assert_every_token_terminal_once, read_csv, read_jsonl

EXAMPLES = REPO / "examples"
TRUE, FALSE = {"true", "yes"}, {"false", "no"}
SIGNING_KEY = "examples-test-signing-key"
# The environment an example runs with (besides the test's own): audited_operations turns on
# signing and raises retry.max_attempts through ELSPETH_<SECTION>__<KEY> overrides.
ENVIRONMENT: dict[str, dict[str, str]] = {
    "audited_operations": {
        "ELSPETH_SIGNING_KEY": SIGNING_KEY,
        "ELSPETH_LANDSCAPE__EXPORT__SIGN": "true",
        "ELSPETH_RETRY__MAX_ATTEMPTS": "5",
    },
}


def _threshold_gate(root: Path, db: str) -> dict[str, int]:
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


def _boolean_routing(root: Path, db: str) -> dict[str, int]:
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


def _batch_aggregation(root: Path, db: str) -> dict[str, int]:
    sales = read_csv(root / "examples/batch_aggregation/sales.csv")
    batches = read_csv(root / "examples/batch_aggregation/out/batches.csv")
    assert [int(b["count"]) for b in batches] == [10, 10, 10, 10, len(sales) - 40]
    assert [b["region"] for b in batches] == [sales[i]["region"] for i in range(0, len(sales), 10)]
    total = sum(float(s["amount"]) for s in sales)
    assert sum(float(b["sum"]) for b in batches) == pytest.approx(total)
    return {"batches": len(batches)}


def _deaggregation(root: Path, db: str) -> dict[str, int]:
    shipments = read_csv(root / "examples/deaggregation/shipments.csv")
    packages = read_csv(root / "examples/deaggregation/out/packages.csv")
    expected = [(s["id"], str(i)) for s in shipments for i in range(int(s["packages"]))]
    assert [(p["id"], p["copy_index"]) for p in packages] == expected
    return {"packages": len(expected)}


def _json_explode(root: Path, db: str) -> dict[str, int]:
    orders = read_jsonl(root / "examples/json_explode/orders.jsonl")
    good = [o for o in orders if isinstance(o["items"], list)]
    items = read_jsonl(root / "examples/json_explode/out/items.jsonl")
    assert [(i["order_id"], i["item_index"], i["item"]) for i in items] == [
        (o["order_id"], n, item) for o in good for n, item in enumerate(o["items"])
    ]
    return {"items": len(items), "bad": len(orders) - len(good)}


def _fork_coalesce(root: Path, db: str) -> dict[str, int]:
    payments = read_csv(root / "examples/fork_coalesce/payments.csv")
    large = [p for p in payments if float(p["amount"]) >= 500]
    written = read_jsonl(root / "examples/fork_coalesce/out/payments.jsonl")
    merged = [w for w in written if "fraud_check" in w]
    assert [m["ledger"]["id"] for m in merged] == [int(p["id"]) for p in large]
    assert all(set(m) == {"fraud_check", "ledger"} for m in merged)
    return {"payments": len(payments), "audit": len(large)}


def _database_sink(root: Path, db: str) -> dict[str, int]:
    readings = read_csv(root / "examples/database_sink/readings.csv")
    faulty = [r for r in readings if "faulty" in r["note"]]
    # The table is in out/readings.db beside a SQLite landscape, else in the PostgreSQL one.
    target = f"sqlite:///{root / 'examples/database_sink/out/readings.db'}"
    if not db.startswith("sqlite"):
        target = db
    rows = url_query(target, "SELECT sensor, batch_count FROM readings ORDER BY _elspeth_seq")
    assert [s for s, _n in rows] == [r["sensor"] for r in readings if r not in faulty]
    assert {n for _s, n in rows[:12]} == {12}
    return {"readings": len(rows), "faulty": len(faulty)}


def _run_id(db: str) -> str:
    (run_id,) = run_ids(db)
    return run_id


def _payment(row: dict[str, str]) -> dict[str, object]:
    return {
        "id": int(row["id"]),
        "payer": row["payer"],
        "channel": row["channel"],
        "amount": float(row["amount"]),
    }


def _coalesce_policies(root: Path, db: str) -> dict[str, int]:
    payments = read_csv(root / "examples/coalesce_policies/payments.csv")
    # Branches each policy merges: quorum 2 of 3, the first to arrive, best_effort what arrived.
    merged_from = {
        "wire": ["compliance", "sanctions"],
        "card": ["card_fast"],
        "large cash": ["cash_count", "cash_log", "cash_escalation"],
        "cash": ["cash_count", "cash_log"],
    }
    late = {"wire": ["ledger"], "card": ["card_full"]}

    def kind(p: dict[str, str]) -> str:
        large = p["channel"] == "cash" and float(p["amount"]) >= 1000
        return "large cash" if large else p["channel"]

    # Incomplete best_effort joins (ordinary cash) merge at the end of the source, in order.
    waiting = [p for p in payments if kind(p) == "cash"]
    written = read_jsonl(root / "examples/coalesce_policies/out/payments.jsonl")
    assert written == [_payment(p) for p in payments if kind(p) != "cash"] + [
        _payment(p) for p in waiting
    ]
    run_id = _run_id(db)
    parents: dict[int, list[str]] = {}
    for index, branch in query(
        db,
        f"""SELECT r.row_index, c.branch_name FROM tokens m
            JOIN rows r ON r.row_id = m.row_id
            JOIN token_parents p ON p.token_id = m.token_id
            JOIN tokens c ON c.token_id = p.parent_token_id
            WHERE m.run_id = '{run_id}' AND m.join_group_id IS NOT NULL
            ORDER BY r.row_index, p.ordinal""",
    ):
        parents.setdefault(index, []).append(branch)
    assert parents == {
        i: merged_from[kind(p)] for i, p in enumerate(payments) if kind(p) in merged_from
    }
    late_arrivals = query(
        db,
        f"""SELECT c.branch_name FROM token_outcomes o JOIN tokens c ON c.token_id = o.token_id
            WHERE o.run_id = '{run_id}' AND o.outcome = 'coalesced'
            AND o.reason LIKE 'late arrival%'""",
    )
    assert sorted(b for (b,) in late_arrivals) == sorted(
        b for p in payments for b in late.get(kind(p), [])
    )
    return {"payments": len(payments)}


def _aggregation_triggers(root: Path, db: str) -> dict[str, int]:
    events = read_csv(root / "examples/aggregation_triggers/events.csv")
    windows: list[list[dict[str, str]]] = [[]]
    for event in events:
        windows[-1].append(event)
        if event["event"] == "checkout" or len(windows[-1]) >= 6:
            windows.append([])
    reasons = ["condition"] * (len(windows) - 1)
    if windows[-1]:
        reasons.append("end_of_source")
    else:
        windows.pop()
    written = read_csv(root / "examples/aggregation_triggers/out/windows.csv")
    assert [(w["session"], int(w["count"]), int(w["batch_size"])) for w in written] == [
        (members[0]["session"], len(members), len(members)) for members in windows
    ]
    for row, members in zip(written, windows, strict=True):
        total = sum(float(m["amount"]) for m in members)
        assert float(row["sum"]) == pytest.approx(total)
        assert float(row["mean"]) == pytest.approx(total / len(members))
    run_id = _run_id(db)
    batches = query(
        db,
        f"""SELECT trigger_type FROM batches WHERE run_id = '{run_id}'
            ORDER BY created_at, batch_id""",
    )
    assert [t for (t,) in batches] == reasons
    return {"windows": len(windows)}


def _json_documents(root: Path, db: str) -> dict[str, int]:
    document = json.loads((root / "examples/json_documents/tickets.json").read_text("utf-8"))
    counts = {"tickets": 0, "incomplete": 0, "sensitive": 0}
    expected = []
    for ticket in document["tickets"]:
        if any(f not in ticket for f in ("ticket_id", "customer", "subject", "body")):
            counts["incomplete"] += 1
        elif "password" in ticket["body"].lower() or "card number" in ticket["body"].lower():
            counts["sensitive"] += 1
        else:
            text = ticket["body"]
            counts["tickets"] += 1
            expected.append(
                {
                    "id": ticket["ticket_id"],
                    "customer": ticket["customer"],
                    "title": ticket["subject"],
                    "text": text if len(text) <= 48 else text[:45] + "...",
                }
            )
    written = json.loads((root / "examples/json_documents/out/tickets.json").read_text("utf-8"))
    assert written == expected
    sensitive = read_jsonl(root / "examples/json_documents/out/sensitive.jsonl")
    assert all(set(s) == {"id", "customer", "title", "text"} for s in sensitive)
    run_id = _run_id(db)
    destinations = query(
        db,
        f"""SELECT destination, count(*) FROM transform_errors WHERE run_id = '{run_id}'
            GROUP BY destination""",
    )
    assert dict(destinations) == {k: n for k, n in counts.items() if k != "tickets" and n}
    return counts


def _csv_dialect(root: Path, db: str) -> dict[str, int]:
    source = root / "examples/csv_dialect/stations.csv"
    with source.open(newline="", encoding="latin-1") as handle:
        lines = handle.readlines()[2:]  # skip_rows: 2
    records = list(csv.DictReader(lines, delimiter=";"))
    stations = [s for s in records if _is_float(s["temperature_c"])]
    hot = [s for s in stations if float(s["temperature_c"]) >= 25]  # ${HOT_THRESHOLD:-25}
    expected = {"hot": hot, "readings": [s for s in stations if s not in hot]}
    for sink, rows in expected.items():
        path = root / f"examples/csv_dialect/out/{sink}.csv"  # UTF-8; hot.csv with ";"
        with path.open(newline="", encoding="utf-8") as handle:
            written = list(csv.DictReader(handle, delimiter=";" if sink == "hot" else ","))
        assert [(w["station"], w["city"], float(w["temperature_c"])) for w in written] == [
            (s["station"], s["city"], float(s["temperature_c"])) for s in rows
        ]
    assert any(not s["city"].isascii() for s in stations)
    invalid = len(records) - len(stations)
    assert invalid > 0
    run_id = _run_id(db)  # discarded, but recorded as quarantined with the reason
    discarded = query(db, f"SELECT count(*) FROM validation_errors WHERE run_id = '{run_id}'")
    assert discarded == [(invalid,)]
    return {sink: len(rows) for sink, rows in expected.items()}


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _audited_operations(root: Path, db: str) -> dict[str, int]:
    transfers = read_csv(root / "examples/audited_operations/transfers.csv")
    flagged_memos = ("refund", "intercompany settlement")
    review = [
        t
        for t in transfers
        if float(t["amount"]) >= 10000
        or (t["memo"] in flagged_memos and float(t["amount"]) >= 5000)
    ]
    run_id = _run_id(db)
    ((settings_json,),) = query(db, f"SELECT settings_json FROM runs WHERE run_id = '{run_id}'")
    recorded = json.loads(settings_json)
    assert recorded["retry"]["max_attempts"] == 5  # ELSPETH_RETRY__MAX_ATTEMPTS
    assert recorded["landscape"]["export"]["sign"] is True  # ELSPETH_LANDSCAPE__EXPORT__SIGN
    assert recorded["rate_limit"]["services"] == {"ledger_api": {"requests_per_second": 5}}
    assert recorded["concurrency"] == {"max_workers": 2}
    assert recorded["run_mode"] == "live"
    packs = list((root / f"examples/audited_operations/out/payloads/{run_id}").glob("*.pack"))
    assert packs, "the source rows' payloads are kept under payload_store.base_path"

    export = root / "examples/audited_operations/out/audit_export.jsonl"
    verified = run_cli("verify", str(export), cwd=root, env={"ELSPETH_SIGNING_KEY": SIGNING_KEY})
    assert verified.code == 0, verified.stderr
    assert f"of run {run_id} (signed, key id" in verified.stdout
    entries = read_jsonl(export)
    manifest = entries[-1]["manifest"]
    assert manifest["run_id"] == run_id
    assert manifest["tables"]["rows"] == len(transfers)
    (run_record,) = [e["record"] for e in entries[:-1] if e["table"] == "runs"]
    assert run_record["status"] == "completed"  # written after the final status
    return {"cleared": len(transfers) - len(review), "review": len(review)}


def _null_source(root: Path, db: str) -> dict[str, int]:
    run_id = _run_id(db)
    assert query(db, f"SELECT count(*) FROM rows WHERE run_id = '{run_id}'") == [(0,)]
    assert (root / "examples/null_source/out/results.csv").read_bytes() == b""
    return {}


EXPECTED: dict[str, Callable[[Path, str], dict[str, int]]] = {
    "threshold_gate": _threshold_gate,
    "boolean_routing": _boolean_routing,
    "batch_aggregation": _batch_aggregation,
    "deaggregation": _deaggregation,
    "json_explode": _json_explode,
    "fork_coalesce": _fork_coalesce,
    "database_sink": _database_sink,
    "coalesce_policies": _coalesce_policies,
    "aggregation_triggers": _aggregation_triggers,
    "json_documents": _json_documents,
    "csv_dialect": _csv_dialect,
    "audited_operations": _audited_operations,
    "null_source": _null_source,
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


@dataclass(frozen=True)
class Landscape:
    url: str  # the example run's landscape, for the test's own queries
    env: dict[str, str]  # what points an example's settings at it (none on SQLite: verbatim)


@pytest.fixture
def landscape(landscapes: Landscapes, root: Path, request: pytest.FixtureRequest) -> Landscape:
    """The examples' own ``sqlite:///runs/audit.db``, or a fresh PostgreSQL database that the
    ``ELSPETH_LANDSCAPE__*`` overrides point the unchanged settings at."""
    if landscapes.backend == "sqlite":
        return Landscape(f"sqlite:///{root / 'runs' / 'audit.db'}", {})
    url = landscapes.new(root, request=request)
    env = {"ELSPETH_LANDSCAPE__URL": url, "ELSPETH_LANDSCAPE__BACKEND": "postgresql"}
    return Landscape(url, env)


def _file_rows(path: Path) -> int:
    if path.suffix == ".jsonl":
        return len(read_jsonl(path))
    if path.suffix == ".json":
        return len(json.loads(path.read_text(encoding="utf-8")))
    with path.open(newline="", encoding="utf-8") as handle:
        return max(0, sum(1 for _ in csv.reader(handle)) - 1)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_example_runs_and_produces_its_expected_counts(
    root: Path, landscape: Landscape, name: str
) -> None:
    before = _snapshot(REPO / "examples" / name)
    settings = f"examples/{name}/settings.yaml"
    env = {**landscape.env, **ENVIRONMENT.get(name, {})}
    if name == "database_sink" and landscape.env:  # its table beside the PostgreSQL landscape
        env["ELSPETH_SINKS__READINGS__OPTIONS__URL"] = landscape.url
    result = run_cli("run", "-s", settings, "-x", cwd=root, env=env)
    assert result.code == 0, result.stderr
    assert "completed" in result.stdout
    reported = {m[1]: int(m[2]) for m in re.finditer(r"sink (\w+): (\d+) rows", result.stdout)}
    expected = {sink: n for sink, n in EXPECTED[name](root, landscape.url).items() if n}
    assert reported == expected
    export = _export_path(root / settings)
    for path in sorted((root / "examples" / name / "out").glob("*")):
        if path.is_file() and path.suffix != ".db" and path != export:
            assert _file_rows(path) == reported.get(path.stem, 0), path.name
    run_id = _run_id(landscape.url)
    assert_every_token_terminal_once(landscape.url, run_id)
    assert (root / "runs").exists() == (landscape.env == {})  # PostgreSQL: no SQLite file made
    assert _snapshot(REPO / "examples" / name) == before  # the repository was not written to


def _export_path(settings: Path) -> Path | None:
    """The run-end audit export's file: written by its sink, but not rows of the pipeline."""
    data = yaml.safe_load(settings.read_text(encoding="utf-8"))
    export = data.get("landscape", {}).get("export", {})
    if not export.get("enabled"):
        return None
    return settings.parents[2] / data["sinks"][export["sink"]]["options"]["path"]


def _snapshot(folder: Path) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}
