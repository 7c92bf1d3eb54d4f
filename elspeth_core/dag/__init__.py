"""The pipeline graph: nodes with deterministic IDs, edges, validation, topology hash (pure)."""

from elspeth_core.dag.graph import Edge, ExecutionGraph, Node, build_graph

__all__ = ["Edge", "ExecutionGraph", "Node", "build_graph"]
