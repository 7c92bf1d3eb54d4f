"""Builds and validates the execution graph of a pipeline from its settings (pure, no I/O).

Node IDs are derived from configuration only — kind, name, plugin, options and position — so the
graph rebuilt for a resume has exactly the IDs recorded in the landscape (a random ID never matches
after a restart). The topology hash covers every node and edge; a resume refuses a graph whose hash
differs from the recorded one.

The sink named by an enabled ``landscape.export.sink`` is not part of the graph: at run end its
file is replaced by the run's audit export, so it must never receive rows. Any route, fork branch,
``on_error``, ``on_validation_failure`` or ``output_sink`` that names it is a configuration error.
Leaving it out changes no other node's ID (IDs never depend on position).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from graphlib import CycleError, TopologicalSorter
from typing import Any

from elspeth_core.errors import ConfigError
from elspeth_core.hashing import stable_hash

RESERVED_DESTINATIONS = ("continue", "fork")
BOOLEAN_LABELS = frozenset({"true", "false"})


@dataclass(frozen=True)
class Node:
    node_id: str
    node_type: str  # source | transform | aggregation | gate | coalesce | sink
    name: str
    plugin_name: str
    options: dict[str, Any]
    config_hash: str
    sequence: int
    settings: Any = field(compare=False, repr=False, default=None)


@dataclass(frozen=True)
class Edge:
    from_node_id: str
    to_node_id: str
    label: str
    mode: str  # move | copy

    @property
    def edge_id(self) -> str:
        return f"{self.from_node_id}->{self.to_node_id}:{self.label}"


@dataclass(frozen=True)
class ExecutionGraph:
    source: Node
    transforms: tuple[Node, ...]
    aggregations: tuple[Node, ...]
    gates: tuple[Node, ...]
    coalesces: dict[str, Node]
    sinks: dict[str, Node]
    edges: tuple[Edge, ...]
    output_sink: str
    topology_hash: str

    @property
    def nodes(self) -> list[Node]:
        return [
            self.source,
            *self.transforms,
            *self.aggregations,
            *self.gates,
            *self.coalesces.values(),
            *self.sinks.values(),
        ]

    def branch_destination(self, branch: str) -> tuple[str, str]:
        """Where a fork child on ``branch`` goes: ("coalesce", name) or ("sink", name)."""
        for name, node in self.coalesces.items():
            if branch in node.settings.branches:
                return "coalesce", name
        return "sink", branch


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")[:32] or "node"


def _node(kind: str, name: str, plugin: str, options: dict[str, Any], seq: int, cfg: Any) -> Node:
    digest = stable_hash({"kind": kind, "name": name, "plugin": plugin, "options": options})
    node_id = f"{kind}-{_slug(name)}-{digest[:12]}"
    return Node(node_id, kind, name, plugin, options, digest, seq, cfg)


def build_graph(settings: Any) -> ExecutionGraph:
    """Build and validate the graph for validated ``ElspethSettings``.

    Raises:
        ConfigError: unknown sink or coalesce branch, a reserved sink name, bad route labels,
            a fork without branches, or a cycle.
    """
    export_sink = export_sink_name(settings)
    _check_sink_names(dict(settings.sinks))
    _check_export_sink_unused(settings, export_sink)
    sinks_cfg: dict[str, Any] = {n: c for n, c in settings.sinks.items() if n != export_sink}
    seq = 0
    source = _node(
        "source",
        "source",
        settings.datasource.plugin,
        dict(settings.datasource.options),
        seq,
        settings.datasource,
    )
    transforms = []
    for index, cfg in enumerate(settings.row_plugins):
        seq += 1
        options = {**dict(cfg.options), "on_error": cfg.on_error, "position": index}
        transforms.append(
            _node("transform", f"{cfg.plugin}_{index}", cfg.plugin, options, seq, cfg)
        )
    aggregations = []
    for cfg in settings.aggregations:
        seq += 1
        options = {
            "options": dict(cfg.options),
            "trigger": cfg.trigger.model_dump(mode="json"),
            "output_mode": cfg.output_mode,
        }
        aggregations.append(_node("aggregation", cfg.name, cfg.plugin, options, seq, cfg))
    gates = []
    for cfg in settings.gates:
        seq += 1
        options = {"condition": cfg.condition, "routes": dict(cfg.routes), "fork_to": cfg.fork_to}
        gates.append(_node("gate", cfg.name, "gate", options, seq, cfg))
    coalesces = {}
    for cfg in settings.coalesce:
        seq += 1
        options = cfg.model_dump(mode="json")
        coalesces[cfg.name] = _node("coalesce", cfg.name, "coalesce", options, seq, cfg)
    sinks = {}
    for name in sorted(sinks_cfg):
        seq += 1
        cfg = sinks_cfg[name]
        sinks[name] = _node("sink", name, cfg.plugin, dict(cfg.options), seq, cfg)
    if settings.output_sink not in sinks:
        raise ConfigError(
            f"output_sink '{settings.output_sink}' is not a sink (sinks: {', '.join(sinks)})",
            key="output_sink",
        )
    edges = _edges(source, transforms, aggregations, gates, coalesces, sinks, settings)
    _check_acyclic(
        [
            n.node_id
            for n in [
                source,
                *transforms,
                *aggregations,
                *gates,
                *coalesces.values(),
                *sinks.values(),
            ]
        ],
        edges,
    )
    topology = stable_hash(
        {
            "nodes": [
                [n.node_id, n.node_type, n.plugin_name, n.config_hash]
                for n in [
                    source,
                    *transforms,
                    *aggregations,
                    *gates,
                    *coalesces.values(),
                    *sinks.values(),
                ]
            ],
            "edges": sorted([e.from_node_id, e.to_node_id, e.label, e.mode] for e in edges),
            "output_sink": settings.output_sink,
        }
    )
    return ExecutionGraph(
        source,
        tuple(transforms),
        tuple(aggregations),
        tuple(gates),
        coalesces,
        sinks,
        tuple(edges),
        settings.output_sink,
        topology,
    )


def export_sink_name(settings: Any) -> str | None:
    """The sink reserved for the run-end audit export (``landscape.export.sink``), if enabled."""
    export = settings.landscape.export
    return export.sink if export.enabled else None


def _check_export_sink_unused(settings: Any, export_sink: str | None) -> None:
    """Refuse any way a row could reach the audit export sink (its file is the export).

    Raises:
        ConfigError: naming the key that routes to the export sink.
    """
    if export_sink is None:
        return
    for key, what in _row_destinations(settings):
        if what == export_sink:
            raise ConfigError(
                f"sends rows to '{export_sink}', the audit export sink (landscape.export.sink), "
                "which receives only the run's audit export, never rows",
                key=key,
                hint="Route these rows to another sink, or give the export a sink of its own.",
            )


def _row_destinations(settings: Any) -> list[tuple[str, str]]:
    """(key, sink or route name) of every setting that can send rows to a sink."""
    coalesced = {branch for c in settings.coalesce for branch in c.branches}
    found = [("output_sink", settings.output_sink)]
    quarantine = settings.datasource.options.get("on_validation_failure")
    if isinstance(quarantine, str):
        found.append(("datasource.options.on_validation_failure", quarantine))
    for index, row_plugin in enumerate(settings.row_plugins):
        if row_plugin.on_error is not None:
            found.append((f"row_plugins[{index}].on_error", row_plugin.on_error))
    for index, gate in enumerate(settings.gates):
        for label, destination in gate.routes.items():
            found.append((f"gates[{index}].routes.{label}", destination))
        for position, branch in enumerate(gate.fork_to or []):
            if (
                branch not in coalesced
            ):  # a branch no coalesce waits for goes to the same-named sink
                found.append((f"gates[{index}].fork_to[{position}]", branch))
    return found


def _check_sink_names(sinks: dict[str, Any]) -> None:
    for name in sinks:
        if name in RESERVED_DESTINATIONS or name == "discard":
            raise ConfigError(
                f"'{name}' is a reserved route label and cannot name a sink", key=f"sinks.{name}"
            )


def _edges(
    source: Node,
    transforms: list[Node],
    aggregations: list[Node],
    gates: list[Node],
    coalesces: dict[str, Node],
    sinks: dict[str, Node],
    settings: Any,
) -> list[Edge]:
    chain = [source, *transforms, *aggregations]
    edges = [
        Edge(a.node_id, b.node_id, "continue", "move")
        for a, b in zip(chain, chain[1:], strict=False)
    ]
    output = sinks[settings.output_sink]
    last = chain[-1]
    for position, gate in enumerate(gates):
        edges.append(Edge(last.node_id, gate.node_id, "continue", "move"))
        after = gates[position + 1] if position + 1 < len(gates) else output
        edges.extend(_gate_edges(gate, after, coalesces, sinks, position))
        last = gate
    if not gates:
        edges.append(Edge(last.node_id, output.node_id, "continue", "move"))
    for name, node in coalesces.items():
        edges.append(Edge(node.node_id, output.node_id, "merged", "move"))
        for branch in node.settings.branches:
            if not any(branch in (g.settings.fork_to or []) for g in gates):
                raise ConfigError(
                    f"coalesce '{name}' waits for branch '{branch}', which no gate forks to",
                    key=f"coalesce.{name}.branches",
                )
    for transform in transforms:
        on_error = transform.options.get("on_error")
        if on_error not in (None, "discard") and on_error not in sinks:
            raise ConfigError(
                f"on_error '{on_error}' is not a sink (sinks: {', '.join(sinks)}) or 'discard'",
                key=f"row_plugins[{transform.options['position']}].on_error",
            )
        if on_error in sinks:
            edges.append(Edge(transform.node_id, sinks[on_error].node_id, "on_error", "move"))
    quarantine = source.options.get("on_validation_failure", "discard")
    if quarantine != "discard":
        if quarantine not in sinks:
            raise ConfigError(
                f"on_validation_failure '{quarantine}' is not a sink or 'discard'",
                key="datasource.options.on_validation_failure",
            )
        edges.append(Edge(source.node_id, sinks[quarantine].node_id, "quarantine", "move"))
    return edges


def _gate_edges(
    gate: Node,
    after: Node,
    coalesces: dict[str, Node],
    sinks: dict[str, Node],
    position: int,
) -> list[Edge]:
    cfg = gate.settings
    key = f"gates[{position}]"
    edges = []
    labels = set(cfg.routes)
    if labels & BOOLEAN_LABELS and labels != BOOLEAN_LABELS:
        raise ConfigError(
            f"gate '{cfg.name}': a boolean condition's routes are exactly 'true' and 'false' "
            f"(got {sorted(labels)})",
            key=f"{key}.routes",
        )
    for label, dest in cfg.routes.items():
        if dest == "continue":
            edges.append(Edge(gate.node_id, after.node_id, label, "move"))
        elif dest == "fork":
            branches = cfg.fork_to or []
            if not branches:
                raise ConfigError(
                    f"gate '{cfg.name}' routes to fork but has no fork_to", key=f"{key}.fork_to"
                )
            for branch in branches:
                kind, name = _branch_target(branch, coalesces, sinks, cfg.name, key)
                target = coalesces[name] if kind == "coalesce" else sinks[name]
                edges.append(Edge(gate.node_id, target.node_id, f"fork:{branch}", "copy"))
        elif dest in sinks:
            edges.append(Edge(gate.node_id, sinks[dest].node_id, label, "move"))
        else:
            raise ConfigError(
                f"gate '{cfg.name}' routes '{label}' to unknown destination '{dest}' "
                f"(sinks: {', '.join(sinks)}; or 'continue' / 'fork')",
                key=f"{key}.routes.{label}",
            )
    return edges


def _branch_target(
    branch: str, coalesces: dict[str, Node], sinks: dict[str, Node], gate: str, key: str
) -> tuple[str, str]:
    for name, node in coalesces.items():
        if branch in node.settings.branches:
            return "coalesce", name
    if branch in sinks:
        return "sink", branch
    raise ConfigError(
        f"gate '{gate}' forks to branch '{branch}', which is neither listed by a coalesce nor a "
        "sink name",
        key=f"{key}.fork_to",
    )


def _check_acyclic(node_ids: list[str], edges: list[Edge]) -> None:
    sorter: TopologicalSorter[str] = TopologicalSorter({n: set() for n in node_ids})
    for edge in edges:
        sorter.add(edge.to_node_id, edge.from_node_id)
    try:
        sorter.prepare()
    except CycleError as exc:
        raise ConfigError(f"the pipeline graph has a cycle: {' -> '.join(exc.args[1])}") from exc
