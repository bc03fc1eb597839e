"""reshape_bn: BatchNormalization of a rank-2 view of y whose columns are y's last axis, reshaped
straight back to y's shape (BatchNorm1d on flattened tokens: LeViT's Linear + BN, written
Reshape/Flatten -> BN -> Reshape), is a Mul and an Add along y's last axis: the MatMul computing y
then takes them in. Refuses when the first reshape does not keep y's last axis as the columns,
the second is not known to restore y's shape, the statistics are not constant, or y is not
the output of a MatMul by a constant weight that nothing else reads (a Mul and an Add in place
of the BatchNormalization would then stay, and run slower).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from onnx import helper

from onnx_fuse import fold
from onnx_fuse.graph import Graph
from onnx_fuse.match import attributes, batchnorm_affine, is_op, producer_if, single_use
from onnx_fuse.rule import Pass, Plan, Refusal


@dataclass(frozen=True)
class Sandwich:
    flatten: int  # Reshape or Flatten of y to [rows, C]
    batchnorm: int
    restore: int  # Reshape back to y's shape


@dataclass
class AffineOnTokens(Plan):
    """y -> Mul(scale) -> Add(shift) computes what the three nodes (and the Shape of y the last one
    reads, if nothing else reads it) computed."""

    match: Sandwich
    shape_node: int | None
    scale: np.ndarray
    shift: np.ndarray

    def takes(self) -> tuple[int, ...]:
        m = self.match
        return (m.flatten, m.batchnorm, m.restore) + ((self.shape_node,) if self.shape_node is not None else ())


def last_axis(graph: Graph, name: str) -> int | None:
    """The length of the last axis of `name`: recorded, inferred, or the columns of the constant
    weight of the MatMul that computes it."""
    shape = graph.known_shape(name)
    if shape:
        return shape[-1]
    matmul = producer_if(graph, name, "MatMul")
    weight = graph.constant_type(graph.node(matmul).input[1]) if matmul is not None else None
    return weight[0][-1] if weight is not None and len(weight[0]) == 2 else None


def keeps_columns(graph: Graph, node, y: str, channels: int) -> Refusal | None:
    """`node` (Reshape or Flatten of y) gives [rows, channels] with y's last axis as the columns."""
    rank = graph.rank(y)
    if rank is None or rank < 2 or last_axis(graph, y) != channels:
        return Refusal(f"the columns the BatchNormalization normalizes are not known to be the last axis of '{y}'")
    if node.op_type == "Flatten":
        axis = attributes(node).get("axis", 1)
        return None if (axis + rank if axis < 0 else axis) == rank - 1 else \
            Refusal("Flatten does not keep the last axis as the columns")
    target = graph.constant(node.input[1])
    if target is None or target.size != 2 or int(target.reshape(-1)[1]) != channels:
        return Refusal(f"Reshape '{node.name}' does not give [rows, {channels}]")
    return None


def restores(graph: Graph, node, y: str) -> tuple[bool, int | None]:
    """Whether the Reshape `node` gives its input y's shape back, and the Shape node it reads for it."""
    shape_node = producer_if(graph, node.input[1], "Shape")
    if shape_node is not None:
        shape = graph.node(shape_node)
        whole = not any(a.name in ("start", "end") for a in shape.attribute)
        return whole and shape.input[0] == y, shape_node
    target, known = graph.constant(node.input[1]), graph.known_shape(y)
    if target is None or known is None or None in known:
        return False, None
    return [int(v) for v in target.reshape(-1)] == list(known), None


class ReshapeBatchNorm(Pass):
    name = "reshape_bn"
    summary = "Reshape -> BatchNormalization on [tokens, C] -> Reshape back: a per-last-axis Mul and Add"
    anchors = ("BatchNormalization",)

    def match(self, graph: Graph, index: int):
        flatten = producer_if(graph, graph.node(index).input[0], "Reshape", "Flatten")
        restore = graph.sole_consumer(graph.node(index).output[0])
        if flatten is None or restore is None or not is_op(graph.node(restore), "Reshape"):
            return None
        return Sandwich(flatten, index, restore)

    def check(self, graph: Graph, match: Sandwich) -> AffineOnTokens | Refusal:
        flatten, batchnorm, restore = (graph.node(i) for i in (match.flatten, match.batchnorm, match.restore))
        refusal = single_use(graph, flatten.output[0], flatten.op_type)
        if refusal is not None:
            return refusal
        y = flatten.input[0]
        scale = graph.constant(batchnorm.input[1])
        if scale is None:
            return Refusal(f"BatchNormalization scale '{batchnorm.input[1]}' is not a constant")
        refusal = keeps_columns(graph, flatten, y, scale.size)
        if refusal is not None:
            return refusal
        same, shape_node = restores(graph, restore, y)
        if not same:
            return Refusal(f"Reshape '{restore.name}' is not known to give '{y}' its shape back")
        if shape_node is not None and graph.consumer_count(graph.node(shape_node).output[0]) != 1:
            shape_node = None  # read elsewhere too: it stays
        # the Mul must go into the MatMul computing y: a Mul and an Add in place of one
        # BatchNormalization would be slower (a pre-norm on the residual stream stays a BN)
        matmul = producer_if(graph, y, "MatMul")
        weight = graph.constant_type(graph.node(matmul).input[1]) if matmul is not None else None
        readers = set(graph.readers(y)) - {match.flatten, shape_node}
        if weight is None or len(weight[0]) != 2 or readers or y in graph.outputs:
            return Refusal(f"'{y}' is not a MatMul's output read only here: the Mul and Add in place of the "
                           "BatchNormalization would not fold away")
        ab = batchnorm_affine(graph, batchnorm, scale.size)
        if isinstance(ab, Refusal):
            return ab
        try:
            # in the type of the data (the MatMul's), which the statistics need not share (float32
            # statistics of float16 data, from opset 14 on)
            a, b = (fold.cast_like(v, weight[1], "BatchNormalization as an affine") for v in ab)
        except fold.FoldError as error:
            return Refusal(str(error))
        return AffineOnTokens(match, shape_node, a, b)

    def rewrite(self, graph: Graph, match: Sandwich, plan: AffineOnTokens):
        y = graph.node(match.flatten).input[0]
        batchnorm, restore = graph.node(match.batchnorm), graph.node(match.restore)
        base = batchnorm.name or batchnorm.output[0]
        scaled = graph.fresh_name(f"{base}_scaled")
        mul = helper.make_node("Mul", [y, graph.add_constant(plan.scale, f"{base}_scale")], [scaled],
                               name=graph.fresh_name(f"{base}_mul"))
        add = helper.make_node("Add", [scaled, graph.add_constant(plan.shift, f"{base}_shift")],
                               [restore.output[0]], name=graph.fresh_name(f"{base}_add"))
        graph.remove_node(match.batchnorm)
        graph.remove_node(match.flatten)
        if plan.shape_node is not None:
            graph.remove_node(plan.shape_node)
        graph.replace_with_nodes(match.restore, [mul, add])
