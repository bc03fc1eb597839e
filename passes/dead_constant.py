"""dead_constant: a Constant node nothing reads goes (paddle2onnx leaves one behind for every
shape it computed while exporting). One that is a graph output, or that a subgraph reads, stays.
"""

from __future__ import annotations

from dataclasses import dataclass

from onnx_fuse.graph import Graph
from onnx_fuse.rule import Pass, Plan, Refusal


@dataclass
class Drop(Plan):
    index: int

    def takes(self) -> tuple[int, ...]:
        return (self.index,)


class RemoveDeadConstant(Pass):
    name = "dead_constant"
    summary = "a Constant node nothing reads: removed"
    anchors = ("Constant",)

    def match(self, graph: Graph, index: int):
        node = graph.node(index)
        outputs = [name for name in node.output if name]
        return index if outputs and not any(graph.readers(name) for name in outputs) else None

    def check(self, graph: Graph, index: int) -> Drop | Refusal:
        node = graph.node(index)
        kept = next((name for name in node.output if name in graph.outputs), None)
        if kept is not None:
            return Refusal(f"'{kept}' is a graph output")
        return Drop(index)

    def rewrite(self, graph: Graph, index: int, plan: Drop):
        graph.remove_node(index)
