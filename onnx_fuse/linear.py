"""Linear operators with constant weights (Conv, ConvTranspose, Gemm, MatMul) as values, and the
one mechanism by which a per-channel affine (x * a + b) next to one of them folds into its
weights: `plan_fold` computes the folded weights when a pass checks, `apply_fold` writes them
when it rewrites. The passes decide what to match; this is how every one of them folds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from onnx import helper

from . import fold
from .graph import Graph
from .match import (affine_input, attributes, batchnorm_affine, elementwise_affine, has_attribute_refs, is_op,
                    producer_if, single_use)
from .rule import Plan, Refusal

LINEAR_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


@dataclass
class LinearOp:
    index: int
    kind: str
    weight: np.ndarray
    bias: np.ndarray | None
    groups: int = 1
    trans_b: bool = False
    alpha: float = 1.0
    beta: float = 1.0

    @property
    def is_conv(self) -> bool:
        return self.kind in ("Conv", "ConvTranspose")

    @property
    def out_channels(self) -> int:
        if self.is_conv:
            return fold.conv_out_channels(self.weight.shape, self.groups, self.kind == "ConvTranspose")
        return self.weight.shape[0] if self.trans_b else self.weight.shape[1]

    @property
    def in_channels(self) -> int:
        if self.kind == "Conv":
            return self.weight.shape[1] * self.groups
        if self.kind == "ConvTranspose":
            return self.weight.shape[0]
        return self.weight.shape[1] if self.trans_b else self.weight.shape[0]

    @property
    def out_rank(self) -> int:
        return self.weight.ndim if self.is_conv else 2


def read_linear(graph: Graph, index: int) -> LinearOp | Refusal:
    """The linear operator at `index` with its constant weights, or why it is not one."""
    node = graph.node(index)
    if not is_op(node, *LINEAR_OPS):
        return Refusal(f"{node.op_type} is not a linear operator")
    if has_attribute_refs(node):
        return Refusal(f"{node.op_type} attributes refer to function attributes")
    attrs = attributes(node)
    weight = graph.constant(node.input[1]) if len(node.input) > 1 else None
    if weight is None:
        return Refusal(f"{node.op_type} weight '{node.input[1] if len(node.input) > 1 else ''}' is not a constant")
    if weight.dtype.kind != "f" and weight.dtype.name != "bfloat16":
        return Refusal(f"{node.op_type} weight is {weight.dtype.name}, not floating point")
    bias = None
    if len(node.input) > 2 and node.input[2]:
        bias = graph.constant(node.input[2])
        if bias is None:
            return Refusal(f"{node.op_type} bias '{node.input[2]}' is not a constant")
    kind = node.op_type
    if kind in ("Conv", "ConvTranspose"):
        if weight.ndim < 3:
            return Refusal(f"{kind} weight has rank {weight.ndim}")
        op = LinearOp(index, kind, weight, bias, groups=int(attrs.get("group", 1)))
        if bias is not None and bias.shape != (op.out_channels,):
            return Refusal(f"{kind} bias has shape {list(bias.shape)}")
        return op
    if weight.ndim != 2:
        return Refusal(f"{kind} weight has rank {weight.ndim}, not 2")
    if kind == "Gemm":
        if graph.opset < 7:
            return Refusal("Gemm before opset 7 broadcasts C only with the broadcast attribute")
        return LinearOp(index, kind, weight, bias, trans_b=bool(attrs.get("transB", 0)),
                        alpha=float(attrs.get("alpha", 1.0)), beta=float(attrs.get("beta", 1.0)))
    rank = graph.rank(node.input[0])
    if rank != 2:
        return Refusal(f"MatMul input '{node.input[0]}' is not known to have rank 2")
    return LinearOp(index, kind, weight, None)


def _write(graph: Graph, op: LinearOp, weight: np.ndarray, bias: np.ndarray, freed=()):
    """Give the operator its new weight and bias (MatMul becomes a Gemm); `freed` are the
    (initializer, node) pairs the rewrite frees, whose tensors may take them."""
    node = graph.node(op.index)
    base = node.name or node.output[0]
    if op.kind == "MatMul":
        gemm = helper.make_node("Gemm", [node.input[0], graph.add_constant(weight, f"{base}_weight_fused"),
                                         graph.add_constant(bias, f"{base}_bias_fused")],
                                list(node.output), name=node.name)
        graph.replace_node(op.index, gemm)
        return
    graph.set_constant_input(op.index, 1, weight, f"{base}_weight_fused", freed)
    graph.set_constant_input(op.index, 2, bias, f"{base}_bias_fused", freed)
    if op.kind == "Gemm":
        keep = [a for a in node.attribute if a.name not in ("alpha", "beta")]
        del node.attribute[:]
        node.attribute.extend(keep)


def shift_operand(node, index: int):
    """The (initializer, node) pair a removed affine node frees that can best hold a bias: the
    BatchNormalization's B, or the constant operand of an Add or Sub."""
    if node.op_type == "BatchNormalization":
        return [(node.input[2], index)]
    if node.op_type in ("Add", "Sub"):
        return [(name, index) for name in node.input]
    return []


def read_affine(graph: Graph, node, x: str, rank: int, channels: int):
    """BatchNormalization or Mul/Add/Sub/Div by a constant, applied to `x`, as (scale, shift)."""
    if node.op_type == "BatchNormalization":
        if node.input[0] != x:
            return Refusal(f"BatchNormalization does not normalize '{x}'")
        return batchnorm_affine(graph, node, channels)
    return elementwise_affine(graph, node, x, rank, channels, axis=1)


@dataclass(frozen=True)
class LinearAffine:
    """A match: the linear operator `linear` and the affine node `affine` next to it."""

    linear: int
    affine: int


@dataclass
class LinearFold(Plan):
    """The plan of a fold into a linear operator: its new weight and bias (in their own dtypes),
    the affine node that goes, the initializers that frees, and, for a fold of an affine before
    the operator, the tensor the operator reads instead (`reads`)."""

    op: LinearOp
    affine: int
    weight: np.ndarray
    bias: np.ndarray
    freed: list
    reads: str | None = None

    def takes(self) -> tuple[int, ...]:
        return (self.op.index, self.affine)


def plan_fold(graph: Graph, op: LinearOp, affine: int, a, b, reads: str | None = None) -> LinearFold | Refusal:
    """The fold of the per-channel affine x * a + b at node `affine` into `op`: after it
    (op(x) * a + b, per output channel), or before it when `reads` is given (op(x * a + b), per
    input channel; the caller has checked that this is exact). Computed here, in float64, and
    cast back to the weights' dtypes, so that the rewrite cannot fail."""
    try:
        if reads is None and op.is_conv:
            weight, bias = fold.fold_affine_after_conv(op.weight, op.bias, a, b, op.groups,
                                                       transposed=op.kind == "ConvTranspose")
        elif reads is None:
            weight, bias = fold.fold_affine_after_gemm(op.weight, op.bias, a, b, op.trans_b, op.alpha, op.beta)
        elif op.is_conv:
            weight, bias = fold.fold_affine_before_conv(op.weight, op.bias, a, b, op.groups)
        else:
            weight, bias = fold.fold_affine_before_gemm(op.weight, op.bias, a, b, op.trans_b, op.alpha, op.beta)
        weight = fold.cast_like(weight, op.weight.dtype, f"{op.kind} weight")
        bias = fold.cast_like(bias, op.bias.dtype if op.bias is not None else op.weight.dtype, f"{op.kind} bias")
    except fold.FoldError as error:
        return Refusal(str(error))
    return LinearFold(op, affine, weight, bias, shift_operand(graph.node(affine), affine), reads)


def match_affine_after(graph: Graph, index: int, *producers: str) -> LinearAffine | None:
    """The match of a fold after a linear operator: the anchor at `index` is a BatchNormalization
    of, or a Mul/Add/Sub/Div by a constant of, the output of a node of one of these op types."""
    linear = producer_if(graph, affine_input(graph, graph.node(index)), *producers)
    return None if linear is None else LinearAffine(linear, index)


def linear_beside(graph: Graph, between: int, linear: int) -> LinearOp | Refusal:
    """The linear operator at `linear`, whose weights must be constants, and which the node
    `between` (the operator itself, or the affine before it) connects to the rest of the fold
    alone: that node's output is read once, and is not a graph output."""
    node = graph.node(between)
    refusal = single_use(graph, node.output[0], node.op_type)
    return refusal if refusal is not None else read_linear(graph, linear)


def plan_affine_after(graph: Graph, match: LinearAffine) -> LinearFold | Refusal:
    """The check shared by every fold of an affine after a linear operator: the operator's output
    feeds only the affine, its weights are constant, and the affine is per output channel."""
    op = linear_beside(graph, match.linear, match.linear)
    if isinstance(op, Refusal):
        return op
    x = graph.node(match.linear).output[0]
    affine = read_affine(graph, graph.node(match.affine), x, op.out_rank, op.out_channels)
    if isinstance(affine, Refusal):
        return affine
    return plan_fold(graph, op, match.affine, *affine)


def apply_fold(graph: Graph, match, plan: LinearFold):
    """The rewrite of every fold pass: write the folded weights and take the affine node out of
    the graph (the plan holds all it needs; `match` is the pass's, unused)."""
    _write(graph, plan.op, plan.weight, plan.bias, plan.freed)
    if plan.reads is None:  # the operator now computes what the affine did
        output = graph.node(plan.affine).output[0]
        graph.remove_node(plan.affine)
        graph.take_output(plan.op.index, output)
    else:
        graph.set_input(plan.op.index, 0, plan.reads)
        graph.remove_node(plan.affine)
