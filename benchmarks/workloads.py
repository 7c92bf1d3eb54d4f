"""The reference workloads, as ELSPETH settings (what a user would write in YAML).

- **A**: CSV → ``field_mapper`` → two gates → three CSV sinks (plus a quarantine sink): the
  pipeline of the ELSPETH 0.1/0.7 measurements quoted in the benchmark issue.
- **B**: A plus a ``batch_stats`` aggregation (count 100) and a fork into two branches that a
  coalesce joins again (union merge).
- **C**: a JSON Lines source whose ``items`` array ``json_explode`` expands (1-3 rows per basket),
  then a gate → two JSONL sinks.

Every path is absolute, so the same settings resume from any directory; the landscape URL and
the checkpoint section are parameters because the harness varies them. No ``checkpoint`` section
means the product's default (``every_n``, interval 100).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

ORDERS_SCHEMA = {"mode": "free", "fields": ["id: int", "amount: float", "status: str"]}


@dataclass(frozen=True)
class Workload:
    name: str
    description: str
    input_kind: str  # "csv" | "jsonl"
    sinks: tuple[str, ...]  # sink names, in the order the table shows them


WORKLOADS: dict[str, Workload] = {
    "A": Workload(
        "A",
        "CSV → field_mapper → 2 gates → 3 CSV sinks",
        "csv",
        ("normal", "high", "flagged", "quarantine"),
    ),
    "B": Workload(
        "B",
        "A + batch_stats (count 100) + fork/coalesce",
        "csv",
        ("normal", "high", "flagged", "quarantine"),
    ),
    "C": Workload(
        "C", "JSONL → json_explode → gate → 2 JSONL sinks", "jsonl", ("lines", "big", "quarantine")
    ),
}


def sink_path(rundir: Path, workload: str, sink: str) -> Path:
    extension = (
        ".jsonl" if sink == "quarantine" or WORKLOADS[workload].input_kind == "jsonl" else ".csv"
    )
    return rundir / "out" / f"{sink}{extension}"


def settings_for(
    workload: str,
    source: Path,
    rundir: Path,
    landscape_url: str,
    checkpoint: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Settings for one run of ``workload`` reading ``source``, writing under ``rundir``."""
    builder = {"A": _orders_gates, "B": _orders_batches, "C": _baskets}[workload]
    settings = builder(source)
    settings["sinks"] = {
        name: {
            "plugin": "json" if sink_path(rundir, workload, name).suffix == ".jsonl" else "csv",
            "options": {"path": str(sink_path(rundir, workload, name))},
        }
        for name in WORKLOADS[workload].sinks
    }
    settings["landscape"] = {"url": landscape_url}
    settings["payload_store"] = {"base_path": str(rundir / "payloads")}
    if checkpoint is not None:
        settings["checkpoint"] = checkpoint
    return settings


def _orders_source(source: Path) -> dict[str, Any]:
    return {
        "plugin": "csv",
        "options": {
            "path": str(source),
            "schema": ORDERS_SCHEMA,
            "on_validation_failure": "quarantine",
        },
    }


def _orders_gates(source: Path) -> dict[str, Any]:
    return {
        "datasource": _orders_source(source),
        "row_plugins": [{"plugin": "field_mapper", "options": {"mapping": {"status": "state"}}}],
        "gates": [
            {
                "name": "flagged",
                "condition": "row['state'] == 'flagged'",
                "routes": {"true": "flagged", "false": "continue"},
            },
            {
                "name": "big",
                "condition": "row['amount'] >= 500",
                "routes": {"true": "high", "false": "continue"},
            },
        ],
        "output_sink": "normal",
    }


def _orders_batches(source: Path) -> dict[str, Any]:
    return {
        "datasource": _orders_source(source),
        "row_plugins": [{"plugin": "field_mapper", "options": {"mapping": {"status": "state"}}}],
        "aggregations": [
            {
                "name": "hundreds",
                "plugin": "batch_stats",
                "trigger": {"count": 100},
                "output_mode": "single",
                "options": {"value_field": "amount", "group_by": "state"},
            },
        ],
        "gates": [
            {
                "name": "flagged",
                "condition": "row['state'] == 'flagged'",
                "routes": {"true": "flagged", "false": "continue"},
            },
            {
                "name": "big",
                "condition": "row['sum'] >= 50000",
                "routes": {"true": "high", "false": "continue"},
            },
            {
                "name": "split",
                "condition": "True",
                "routes": {"true": "fork", "false": "continue"},
                "fork_to": ["left", "right"],
            },
        ],
        "coalesce": [
            {
                "name": "rejoin",
                "branches": ["left", "right"],
                "policy": "require_all",
                "merge": "union",
            },
        ],
        "output_sink": "normal",
    }


def _baskets(source: Path) -> dict[str, Any]:
    return {
        "datasource": {
            "plugin": "json",
            "options": {
                "path": str(source),
                "format": "jsonl",
                "schema": {"mode": "free", "fields": ["id: int", "customer: str", "items: any"]},
                "on_validation_failure": "quarantine",
            },
        },
        "row_plugins": [
            {
                "plugin": "json_explode",
                "options": {"array_field": "items", "output_field": "item", "include_index": True},
            },
        ],
        "gates": [
            {
                "name": "big",
                "condition": "row['item']['price'] * row['item']['qty'] >= 250",
                "routes": {"true": "big", "false": "continue"},
            },
        ],
        "output_sink": "lines",
    }
