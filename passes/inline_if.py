"""inline_if: an If whose condition is a constant is replaced by the nodes of the branch it
always takes (paddle2onnx writes `if self.alpha:` this way), so that later passes see them.
The branch's own names that the enclosing graph or any other subgraph in it also uses (names in
sibling subgraphs may repeat) are renamed. Refuses a condition that is not a constant or not a
single value.
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


def all_names(graph, into: set):
    """Every name a subgraph defines or reads, at any depth."""
    into.update(t.name for t in graph.initializer)
    into.update(t.values.name for t in graph.sparse_initializer)
    for field in (graph.input, graph.output, graph.value_info):
        into.update(vi.name for vi in field)
    for node in graph.node:
        into.update(node.input)
        into.update(node.output)
        into.add(node.name)
        for sub in subgraphs_of(node):
            all_names(sub, into)
    return into


def names_beside(graph: Graph, branch) -> set:
    """The tensor and node names of the enclosing graph, and of every subgraph in it but `branch`:
    once the branch's nodes stand in the enclosing graph, none of its names may be one of these."""
    names = graph.declared_names()
    for node in graph.nodes():
        names.update(node.input)
        names.update(node.output)
        names.add(node.name)  # onnxruntime wants node names unique in a graph
        for sub in subgraphs_of(node):
            if sub is not branch:
                all_names(sub, names)
    return names


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


def joins_casts_a_subgraph_reads(graph: Graph, node, branch) -> bool:
    """Whether inlining would put a Cast of the branch right after a Cast of the enclosing graph
    while a subgraph reads on from there (the If's outputs, or one inside the branch). onnxruntime
    (1.32, even with ORT_DISABLE_ALL) removes a Cast pair that round-trips exactly and then fails
    with "Missing Input" where an If branch or a Loop body reads the pair's output (seen when the
    first Cast reads a graph input). Coarse on purpose (any two Casts, any subgraph reading on):
    such a branch is rare, and the If then simply stays."""
    produced = {out for n in branch.node for out in n.output}

    def after_outer_cast(n):
        if n.op_type != "Cast" or not n.input or n.input[0] in produced:
            return False
        producer = graph.producer_of(n.input[0])
        return producer is not None and graph.node(producer).op_type == "Cast"

    if not any(after_outer_cast(n) for n in branch.node):
        return False
    return (any(True for n in branch.node for _ in subgraphs_of(n))
            or any(graph.read_by_subgraph(out) for out in node.output if out))


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
        if len(branch.sparse_initializer):
            return Refusal("the If branch has sparse initializers")
        if joins_casts_a_subgraph_reads(graph, node, branch):
            return Refusal("a Cast of the branch reads a Cast outside it, and a subgraph reads what follows: "
                           "onnxruntime drops an exact Cast pair and then loses the tensor the subgraph reads")
        return InlineBranch(match.index, branch)

    def rewrite(self, graph: Graph, match: ConstantIf, plan: InlineBranch):
        node, branch = graph.node(match.index), plan.branch
        produced = {out for n in branch.node for out in n.output}
        taken = names_beside(graph, branch)
        local = [t.name for t in branch.initializer] + [out for n in branch.node for out in n.output if out]
        clashes = {name: graph.fresh_name(name) for name in local if name in taken}
        renames, identities = {}, []
        for inner, outer in zip(branch.output, node.output):
            if not outer:
                continue
            if inner.name in produced and inner.name not in renames:
                renames[inner.name] = outer
            else:
                identities.append(helper.make_node("Identity", [renames.get(inner.name, clashes.get(inner.name,
                                                                                                  inner.name))],
                                                   [outer], name=graph.fresh_name(f"{outer}_inlined")))
        renames = {**clashes, **renames}
        nodes = []
        for original in branch.node:
            copy = helper.make_node(original.op_type, [], [])
            copy.CopyFrom(original)
            for slot, name in enumerate(copy.output):
                if name in renames:
                    copy.output[slot] = renames[name]
            if copy.name and copy.name in taken:
                copy.name = graph.fresh_name(copy.name)
            nodes.append(copy)
        rename_reads(nodes, renames)
        for tensor in branch.initializer:
            if tensor.name in renames:
                renamed = type(tensor)()
                renamed.CopyFrom(tensor)
                renamed.name = renames[tensor.name]
                tensor = renamed
            graph.add_tensor(tensor)
        if nodes + identities:
            graph.replace_with_nodes(match.index, nodes + identities)
        else:
            graph.remove_node(match.index)
