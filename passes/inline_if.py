"""inline_if: an If whose condition is a constant is replaced by the nodes of the branch it
always takes (paddle2onnx writes `if self.alpha:` this way), so that later passes see them.
Refuses a condition that is not a constant or not a single value.
"""

from __future__ import annotations

from dataclasses import dataclass

from onnx import helper

from onnx_fuse.graph import Graph, subgraphs_of
from onnx_fuse.match import attributes
from onnx_fuse.rule import Pass, Plan, Refusal


@dataclass(frozen=True)
class ConstantIf:
    index: int


@dataclass
class InlineBranch(Plan):
    """The If at `index` gives way to the nodes of `branch`, the one it always takes."""

    index: int
    branch: object  # onnx.GraphProto

    def takes(self) -> tuple[int, ...]:
        return (self.index,)


def rename_reads(nodes, renames: dict):
    """Rewrite every read of a renamed tensor, in these nodes and the subgraphs inside them."""
    for node in nodes:
        for slot, name in enumerate(node.input):
            if name in renames:
                node.input[slot] = renames[name]
        for sub in subgraphs_of(node):
            rename_reads(sub.node, renames)
            for output in sub.output:
                if output.name in renames:
                    output.name = renames[output.name]


class InlineConstantIf(Pass):
    name = "inline_if"
    summary = "If with a constant condition: replaced by the branch it always takes"
    anchors = ("If",)

    def match(self, graph: Graph, index: int):
        return ConstantIf(index)

    def check(self, graph: Graph, match: ConstantIf) -> InlineBranch | Refusal:
        node = graph.node(match.index)
        condition = graph.constant(node.input[0])
        if condition is None:
            return Refusal(f"the If condition '{node.input[0]}' is not a constant")
        if condition.size != 1:
            return Refusal(f"the If condition has {condition.size} values")
        branch = attributes(node)["then_branch" if bool(condition.reshape(-1)[0]) else "else_branch"]
        if len(branch.output) != len(node.output):
            return Refusal("the If branch has a different number of outputs")
        defined = [t.name for t in branch.initializer] + [out for n in branch.node for out in n.output if out]
        clash = next((name for name in defined if graph.producer_of(name) is not None
                      or graph.is_initializer(name) or name in graph.inputs), None)
        if clash is not None:
            return Refusal(f"the If branch defines '{clash}', a name the enclosing graph has too")
        return InlineBranch(match.index, branch)

    def rewrite(self, graph: Graph, match: ConstantIf, plan: InlineBranch):
        node, branch = graph.node(match.index), plan.branch
        produced = {out for n in branch.node for out in n.output}
        renames, identities = {}, []
        for inner, outer in zip(branch.output, node.output):
            if not outer:
                continue
            if inner.name in produced and inner.name not in renames:
                renames[inner.name] = outer
            else:
                identities.append(helper.make_node("Identity", [renames.get(inner.name, inner.name)], [outer],
                                                   name=graph.fresh_name(f"{outer}_inlined")))
        nodes = []
        for original in branch.node:
            copy = helper.make_node(original.op_type, [], [])
            copy.CopyFrom(original)
            for slot, name in enumerate(copy.output):
                if name in renames:
                    copy.output[slot] = renames[name]
            nodes.append(copy)
        rename_reads(nodes, renames)
        for tensor in branch.initializer:
            graph.add_tensor(tensor)
        if nodes + identities:
            graph.replace_with_nodes(match.index, nodes + identities)
        else:
            graph.remove_node(match.index)
