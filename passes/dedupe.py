"""dedupe: two identical Casts (or Transposes, Reshapes, Squeezes...) of the same tensor become one,
so that the branches reading them read one tensor (float16 converters write one Cast of the
float32 input per reader). Only layout and type ops, which are pure and deterministic; a node
whose output is a graph output, or that a rewrite added, is left alone.
"""

from __future__ import annotations

from dataclasses import dataclass

from onnx_fuse.graph import Graph
from onnx_fuse.match import is_op
from onnx_fuse.rule import Pass, Plan, Refusal

PURE_LAYOUT_OPS = ("Cast", "Transpose", "Reshape", "Flatten", "Squeeze", "Unsqueeze")


@dataclass
class Reuse(Plan):
    """The node at `index` goes: its readers read the outputs of `twin`, its earlier equal."""

    index: int
    twin: int

    def takes(self) -> tuple[int, ...]:
        return (self.index,)


def same_node(a, b) -> bool:
    return (a.op_type == b.op_type and a.domain == b.domain and list(a.input) == list(b.input)
            and len(a.output) == len(b.output)
            and sorted(x.SerializeToString() for x in a.attribute) == sorted(x.SerializeToString() for x in b.attribute))


class Dedupe(Pass):
    name = "dedupe"
    summary = "identical Casts/Transposes/Reshapes of one tensor: one node, read by all"
    anchors = PURE_LAYOUT_OPS

    def match(self, graph: Graph, index: int):
        if index >= graph.original_size:  # added by a rewrite: its number is not its place in the order
            return None
        node = graph.node(index)
        if not node.input or not node.input[0]:
            return None
        twin = next((r for r in dict.fromkeys(graph.readers(node.input[0]))
                     if r < index and is_op(graph.node(r), node.op_type) and same_node(graph.node(r), node)), None)
        return None if twin is None else (index, twin)

    def check(self, graph: Graph, match) -> Reuse | Refusal:
        index, twin = match
        output = graph.node(index).output[0]
        if output in graph.outputs:
            return Refusal(f"'{output}' is a graph output")
        if graph.read_by_subgraph(output):
            return Refusal(f"a subgraph reads '{output}'")
        return Reuse(index, twin)

    def rewrite(self, graph: Graph, match, plan: Reuse):
        output, kept = graph.node(plan.index).output[0], graph.node(plan.twin).output[0]
        graph.remove_node(plan.index)
        graph.redirect_reads(output, kept)
