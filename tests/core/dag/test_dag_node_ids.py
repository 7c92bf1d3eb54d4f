"""Deterministic node IDs and the topology hash (``elspeth_core.dag``).

A resume rebuilds the graph in a new process and must find exactly the node IDs recorded in the
landscape, and refuse a graph whose topology hash differs. So: the same settings give the same
IDs and hash in this process, again, and in fresh interpreters with other hash seeds; changing
one plugin option changes that node's ID (only that one) and the hash; reordering mapping keys in
the YAML changes nothing; a change of a route destination or of the order of gates (edges, not
nodes) changes the hash.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from elspeth_core.config import (
    config_hash,
    fingerprint_key,
    load_settings,
    resolve_for_audit,
)
from elspeth_core.dag import ExecutionGraph, build_graph
from tests.support.cli import REPO, cli_env


def _pipeline() -> dict[str, Any]:
    """Every kind of node and edge: quarantine, on_error, aggregation, gates, fork, coalesce."""
    return {
        "datasource": {
            "plugin": "csv",
            "options": {
                "path": "in.csv",
                "delimiter": ",",
                "schema": {"mode": "free", "fields": ["id: int", "amount: float", "status: str"]},
                "on_validation_failure": "quarantine",
            },
        },
        "row_plugins": [
            {
                "plugin": "field_mapper",
                "options": {"mapping": {"status": "state", "note": "remark"}, "strict": False},
                "on_error": "errors",
            }
        ],
        "aggregations": [
            {
                "name": "window",
                "plugin": "batch_replicate",
                "trigger": {"count": 10, "timeout_seconds": 5.0},
                "output_mode": "passthrough",
                "options": {"default_copies": 1, "copies_field": "copies"},
            }
        ],
        "gates": [
            {
                "name": "big",
                "condition": "row['amount'] >= 500",
                "routes": {"true": "high", "false": "continue"},
            },
            {
                "name": "split",
                "condition": "row['state'] == 'ok'",
                "routes": {"true": "fork", "false": "continue"},
                "fork_to": ["left", "right", "copies"],
            },
        ],
        "coalesce": [{"name": "join", "branches": ["left", "right"], "merge": "union"}],
        "sinks": {
            "normal": {"plugin": "csv", "options": {"path": "out/normal.csv"}},
            "high": {"plugin": "csv", "options": {"path": "out/high.csv", "mode": "write"}},
            "flagged": {"plugin": "json", "options": {"path": "out/flagged.jsonl"}},
            "copies": {"plugin": "json", "options": {"path": "out/copies.jsonl"}},
            "errors": {"plugin": "json", "options": {"path": "out/errors.jsonl"}},
            "quarantine": {"plugin": "json", "options": {"path": "out/quarantine.jsonl"}},
        },
        "output_sink": "normal",
        "landscape": {"url": "sqlite:///audit.db"},
        "checkpoint": {"enabled": True, "frequency": "every_n", "checkpoint_interval": 50},
    }


def _write(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _graph(path: Path) -> ExecutionGraph:
    return build_graph(load_settings(path).settings)


def _summary(graph: ExecutionGraph) -> dict[str, Any]:
    return {
        "nodes": {f"{n.node_type}:{n.name}": n.node_id for n in graph.nodes},
        "edges": sorted(e.edge_id for e in graph.edges),
        "topology": graph.topology_hash,
    }


def _reversed_mappings(value: Any) -> Any:
    """Every mapping at every depth with its keys in reverse order; lists keep their order."""
    if isinstance(value, dict):
        return {k: _reversed_mappings(value[k]) for k in reversed(list(value))}
    if isinstance(value, list):
        return [_reversed_mappings(v) for v in value]
    return value


_SUMMARY_SCRIPT = """
import json, sys
from elspeth_core.config import load_settings
from elspeth_core.dag import build_graph
graph = build_graph(load_settings(sys.argv[1]).settings)
print(json.dumps({
    "nodes": {f"{n.node_type}:{n.name}": n.node_id for n in graph.nodes},
    "edges": sorted(e.edge_id for e in graph.edges),
    "topology": graph.topology_hash,
}))
"""


@pytest.fixture
def settings_file(tmp_path: Path) -> Path:
    return _write(tmp_path / "pipeline.yaml", _pipeline())


def test_the_pipeline_has_every_kind_of_node(settings_file: Path) -> None:
    kinds = {n.node_type for n in _graph(settings_file).nodes}
    assert kinds == {"source", "transform", "aggregation", "gate", "coalesce", "sink"}


def test_building_twice_gives_the_same_ids_edges_and_hash(settings_file: Path) -> None:
    first, second = _graph(settings_file), _graph(settings_file)
    assert _summary(first) == _summary(second)
    assert len(set(_summary(first)["nodes"].values())) == len(first.nodes)  # no two nodes alike


def test_a_fresh_interpreter_gives_the_same_ids_whatever_its_hash_seed(
    settings_file: Path,
) -> None:
    """No set or dict ordering, clock or randomness leaks into the IDs (as a resume needs)."""
    here = _summary(_graph(settings_file))
    for seed in ("0", "4242"):
        proc = subprocess.run(
            [sys.executable, "-c", _SUMMARY_SCRIPT, str(settings_file)],
            cwd=REPO,
            env=cli_env({"PYTHONHASHSEED": seed}),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout) == here, f"PYTHONHASHSEED={seed}"


def test_reordering_mapping_keys_in_the_yaml_changes_nothing(tmp_path: Path) -> None:
    original = _pipeline()
    shuffled = _reversed_mappings(original)
    assert list(shuffled) != list(original)  # the sections really are in another order
    assert list(shuffled["sinks"]) != list(original["sinks"])
    assert list(shuffled["gates"][0]["routes"]) == ["false", "true"]
    first = load_settings(_write(tmp_path / "a.yaml", original))
    second = load_settings(_write(tmp_path / "b.yaml", shuffled))
    assert (tmp_path / "a.yaml").read_text() != (tmp_path / "b.yaml").read_text()
    assert _summary(build_graph(first.settings)) == _summary(build_graph(second.settings))
    # ... and a resume with the reordered file passes the configuration check too.
    key = fingerprint_key({})
    assert config_hash(resolve_for_audit(first.settings, key)) == config_hash(
        resolve_for_audit(second.settings, key)
    )


@pytest.mark.parametrize(
    ("node", "change"),
    [
        ("transform:field_mapper_0", lambda d: d["row_plugins"][0]["options"].update(strict=True)),
        ("sink:high", lambda d: d["sinks"]["high"]["options"].update(path="out/big.csv")),
        (
            "aggregation:window",
            lambda d: d["aggregations"][0]["options"].update(default_copies=2),
        ),
        ("source:source", lambda d: d["datasource"]["options"].update(delimiter=";")),
        ("gate:big", lambda d: d["gates"][0].update(condition="row['amount'] > 500")),
    ],
)
def test_changing_one_option_changes_that_node_only_and_the_hash(
    tmp_path: Path, node: str, change: Any
) -> None:
    before = _summary(_graph(_write(tmp_path / "before.yaml", _pipeline())))
    data = _pipeline()
    change(data)
    after = _summary(_graph(_write(tmp_path / "after.yaml", data)))
    changed = {name for name, node_id in after["nodes"].items() if before["nodes"][name] != node_id}
    assert changed == {node}
    assert after["topology"] != before["topology"]


def test_the_topology_hash_covers_a_route_destination(tmp_path: Path) -> None:
    before = _graph(_write(tmp_path / "before.yaml", _pipeline()))
    data = _pipeline()
    data["gates"][0]["routes"]["true"] = "flagged"
    after = _graph(_write(tmp_path / "after.yaml", data))
    gate, old_sink, new_sink = after.gates[0], before.sinks["high"], after.sinks["flagged"]
    assert (gate.node_id, old_sink.node_id, "true") not in {
        (e.from_node_id, e.to_node_id, e.label) for e in after.edges
    }
    assert (gate.node_id, new_sink.node_id, "true") in {
        (e.from_node_id, e.to_node_id, e.label) for e in after.edges
    }
    assert after.topology_hash != before.topology_hash


def test_the_order_of_gates_changes_the_hash_but_no_node_id(tmp_path: Path) -> None:
    """Gate order is routing semantics (edges), while gate IDs never depend on position."""
    before = _graph(_write(tmp_path / "before.yaml", _pipeline()))
    data = _pipeline()
    data["gates"].reverse()
    after = _graph(_write(tmp_path / "after.yaml", data))
    assert _summary(after)["nodes"] == _summary(before)["nodes"]
    assert _summary(after)["edges"] != _summary(before)["edges"]
    assert after.topology_hash != before.topology_hash


def test_a_different_output_sink_changes_the_hash(tmp_path: Path) -> None:
    before = _graph(_write(tmp_path / "before.yaml", _pipeline()))
    data = _pipeline()
    data["output_sink"] = "flagged"
    after = _graph(_write(tmp_path / "after.yaml", data))
    assert _summary(after)["nodes"] == _summary(before)["nodes"]
    assert after.topology_hash != before.topology_hash
