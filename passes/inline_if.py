"""inline_if: an If whose condition is a constant is replaced by the nodes of the branch it
always takes (paddle2onnx writes `if self.alpha:` this way), so that later passes see them.
Refuses a condition that is not a constant or not a single value.
"""

from __future__ import annotations

from dataclasses import dataclass

from onnx import helper

from onnx_fuse.graph import GraphView, subgraphs_of
from onnx_fuse.match import Refusal, attributes
from onnx_fuse.rule import Pass


@dataclass(frozen=True)
class ConstantIf:
    index: int


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

    def match(self, view: GraphView, index: int):
        return ConstantIf(index)

    def check(self, view: GraphView, match: ConstantIf):
        node = view.node(match.index)
        condition = view.constant(node.input[0])
        if condition is None:
            return Refusal(f"the If condition '{node.input[0]}' is not a constant")
        if condition.size != 1:
            return Refusal(f"the If condition has {condition.size} values")
        branch = attributes(node)["then_branch" if bool(condition.reshape(-1)[0]) else "else_branch"]
        if len(branch.output) != len(node.output):
            return Refusal("the If branch has a different number of outputs")
        defined = [t.name for t in branch.initializer] + [out for n in branch.node for out in n.output if out]
        clash = next((name for name in defined if view.producer_of(name) is not None
                      or view.is_initializer(name) or name in view.inputs), None)
        if clash is not None:
            return Refusal(f"the If branch defines '{clash}', a name the enclosing graph has too")
        return branch

    def rewrite(self, view: GraphView, match: ConstantIf, branch):
        node = view.node(match.index)
        produced = {out for n in branch.node for out in n.output}
        renames, identities = {}, []
        for inner, outer in zip(branch.output, node.output):
            if not outer:
                continue
            if inner.name in produced and inner.name not in renames:
                renames[inner.name] = outer
            else:
                identities.append(helper.make_node("Identity", [renames.get(inner.name, inner.name)], [outer],
                                                   name=view.names.fresh(f"{outer}_inlined")))
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
            view.add_tensor(tensor)
        if nodes + identities:
            view.replace_with_nodes(match.index, nodes + identities)
        else:
            view.remove_node(match.index)
