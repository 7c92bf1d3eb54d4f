"""Graph validation (``elspeth_core.dag``): cycles, reserved sink names, route labels.

The settings cannot express a cycle: every edge points forward (source → transforms →
aggregations → gates → coalesces → sinks, and sinks have no outgoing edges), and names are unique
per section, so node IDs cannot collide into a loop. The cycle check is therefore tested on the
graph-level function itself, and on settings whose validation was bypassed (``model_copy``
does not validate), where a duplicated gate collapses into one node with an edge to itself.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from elspeth_core.config import load_settings_from_dict
from elspeth_core.dag import Edge, build_graph
from elspeth_core.dag.graph import _check_acyclic
from elspeth_core.errors import ConfigError
from tests.support.cli import run_cli


def _settings(**overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "datasource": {
            "plugin": "csv",
            "options": {"path": "in.csv", "schema": {"fields": "dynamic"}},
        },
        "sinks": {
            "out": {"plugin": "csv", "options": {"path": "out.csv"}},
            "high": {"plugin": "csv", "options": {"path": "high.csv"}},
        },
        "output_sink": "out",
    }
    data.update(overrides)
    return data


def _build(data: dict[str, Any]) -> Any:
    return build_graph(load_settings_from_dict(data, source_name="pipeline.yaml").settings)


def _gate(routes: dict[str, str], **extra: Any) -> dict[str, Any]:
    return {"name": "g", "condition": "row['amount'] >= 500", "routes": routes, **extra}


# ---------------------------------------------------------------------------------------- cycles
def test_the_cycle_check_names_the_nodes_of_the_cycle_in_order() -> None:
    nodes = ["source", "a", "b", "c", "sink"]
    edges = [
        Edge("source", "a", "continue", "move"),
        Edge("a", "b", "continue", "move"),
        Edge("b", "c", "continue", "move"),
        Edge("c", "a", "back", "move"),
        Edge("c", "sink", "continue", "move"),
    ]
    with pytest.raises(ConfigError) as caught:
        _check_acyclic(nodes, edges)
    message = str(caught.value)
    assert message.startswith("the pipeline graph has a cycle: "), message
    cycle = message.removeprefix("the pipeline graph has a cycle: ").split(" -> ")
    assert cycle[0] == cycle[-1], cycle  # a closed path ...
    assert set(cycle) == {"a", "b", "c"}, cycle  # ... through exactly the looping nodes
    pairs = {(e.from_node_id, e.to_node_id) for e in edges}
    for start, end in zip(cycle, cycle[1:], strict=False):  # ... following the edges' direction
        assert (start, end) in pairs, (start, end, cycle)


def test_the_cycle_check_accepts_a_diamond() -> None:
    """Two paths joining again (a fork and its coalesce) are not a cycle."""
    edges = [
        Edge("gate", "left", "fork:left", "copy"),
        Edge("gate", "right", "fork:right", "copy"),
        Edge("left", "join", "continue", "move"),
        Edge("right", "join", "continue", "move"),
    ]
    _check_acyclic(["gate", "left", "right", "join"], edges)  # no error


def test_a_self_loop_is_a_cycle() -> None:
    with pytest.raises(ConfigError, match="cycle: n -> n"):
        _check_acyclic(["n"], [Edge("n", "n", "continue", "move")])


def test_build_graph_refuses_a_loop_when_settings_validation_was_bypassed() -> None:
    """Two identical gates (refused by the settings model) share one node ID: a self-loop."""
    gate = _gate({"true": "high", "false": "continue"})
    settings = load_settings_from_dict(_settings(gates=[gate])).settings
    assert build_graph(settings).gates  # the valid settings build
    twice = settings.model_copy(update={"gates": [settings.gates[0], settings.gates[0]]})
    with pytest.raises(ConfigError, match=r"the pipeline graph has a cycle: (gate-g-\w+) -> \1"):
        build_graph(twice)


def test_settings_refuse_the_duplicate_gate_that_would_make_that_loop() -> None:
    gate = _gate({"true": "high", "false": "continue"})
    with pytest.raises(ConfigError, match=r"gates\[1\]\.name: name 'g' is used more than once"):
        load_settings_from_dict(_settings(gates=[gate, gate]), source_name="pipeline.yaml")


# ---------------------------------------------------------------------------- reserved sink names
@pytest.mark.parametrize("name", ["continue", "fork", "discard"])
def test_a_reserved_route_label_cannot_name_a_sink(name: str) -> None:
    data = _settings()
    data["sinks"][name] = {"plugin": "csv", "options": {"path": f"{name}.csv"}}
    with pytest.raises(ConfigError) as caught:
        _build(data)
    assert caught.value.key == f"sinks.{name}"
    assert f"'{name}' is a reserved route label and cannot name a sink" in str(caught.value)


def test_validate_names_the_file_line_and_key_of_a_reserved_sink_name(tmp_path: Path) -> None:
    data = _settings()
    data["sinks"]["fork"] = {"plugin": "csv", "options": {"path": "fork.csv"}}
    text = yaml.safe_dump(data, sort_keys=False)
    (tmp_path / "pipeline.yaml").write_text(text)
    result = run_cli("validate", "-s", "pipeline.yaml", cwd=tmp_path)
    assert result.code == 1, (result.code, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    (error,) = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    line = text.splitlines().index("  fork:") + 1
    assert f"pipeline.yaml:{line}: sinks.fork: 'fork' is a reserved route label" in error, error
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pipeline.yaml"]  # nothing created


# -------------------------------------------------------------------------------- route labels
@pytest.mark.parametrize(
    "routes",
    [
        {"true": "high"},  # a boolean condition needs both routes
        {"false": "continue"},
        {"true": "high", "false": "continue", "maybe": "out"},  # and no third one
        {"true": "high", "otherwise": "continue"},
    ],
)
def test_boolean_routes_are_exactly_true_and_false(routes: dict[str, str]) -> None:
    with pytest.raises(ConfigError) as caught:
        _build(_settings(gates=[_gate(routes)]))
    assert caught.value.key == "gates[0].routes"
    assert "a boolean condition's routes are exactly 'true' and 'false'" in str(caught.value)
    assert str(sorted(routes)) in str(caught.value)  # says which labels it got


def test_yaml_booleans_as_route_labels_are_the_labels_true_and_false() -> None:
    """``routes: {true: high, false: continue}`` unquoted in YAML is the same gate as quoted."""
    parsed = yaml.safe_load("routes: {true: high, false: continue}")["routes"]
    assert set(parsed) == {True, False}
    unquoted = _build(_settings(gates=[_gate(parsed)]))
    quoted = _build(_settings(gates=[_gate({"true": "high", "false": "continue"})]))
    assert unquoted.topology_hash == quoted.topology_hash
    assert {e.label for e in unquoted.edges if e.from_node_id == unquoted.gates[0].node_id} == {
        "true",
        "false",
    }


def test_labels_of_a_non_boolean_condition_are_free() -> None:
    gate = {
        "name": "g",
        "condition": "'big' if row['amount'] >= 500 else 'small'",
        "routes": {"big": "high", "small": "continue"},
    }
    graph = _build(_settings(gates=[gate]))
    labels = {
        (e.label, e.to_node_id) for e in graph.edges if e.from_node_id == graph.gates[0].node_id
    }
    assert labels == {("big", graph.sinks["high"].node_id), ("small", graph.sinks["out"].node_id)}


@pytest.mark.parametrize(
    ("gate", "key", "fragment"),
    [
        (
            _gate({"true": "nowhere", "false": "continue"}),
            "gates[0].routes.true",
            "unknown destination 'nowhere'",
        ),
        (
            _gate({"true": "fork", "false": "continue"}),
            "gates[0].fork_to",
            "a route uses 'fork', so fork_to must list the branch names",
        ),
        (
            _gate({"true": "fork", "false": "continue"}, fork_to=["elsewhere"]),
            "gates[0].fork_to",
            "forks to branch 'elsewhere', which is neither listed by a coalesce nor a sink name",
        ),
    ],
)
def test_bad_route_destinations_are_refused_with_their_key(
    gate: dict[str, Any], key: str, fragment: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        _build(_settings(gates=[gate]))
    assert caught.value.key == key, caught.value
    assert fragment in str(caught.value)


def test_a_coalesce_waiting_for_a_branch_no_gate_forks_to_is_refused() -> None:
    gate = _gate({"true": "fork", "false": "continue"}, fork_to=["left", "right"])
    join = {"name": "join", "branches": ["left", "right", "middle"]}
    with pytest.raises(ConfigError) as caught:
        _build(_settings(gates=[gate], coalesce=[join]))
    assert caught.value.key == "coalesce.join.branches"
    assert "waits for branch 'middle', which no gate forks to" in str(caught.value)
