"""Linear operators with constant weights (Conv, ConvTranspose, Gemm, MatMul) as values:
read their weights, and write back folded weights as fresh initializers.

A per-channel affine (x * a + b) next to one of them folds into its weights; `fold_after` and
`fold_before` do that for every kind, so each pass only decides what to match.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from onnx import helper

from . import fold
from .graph import GraphView
from .match import (Refusal, attributes, batchnorm_affine, elementwise_affine, has_attribute_refs,
                    is_op, single_use)
from .rule import Pass

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


def read_linear(view: GraphView, index: int) -> LinearOp | Refusal:
    """The linear operator at `index` with its constant weights, or why it is not one."""
    node = view.node(index)
    if not is_op(node, *LINEAR_OPS):
        return Refusal(f"{node.op_type} is not a linear operator")
    if has_attribute_refs(node):
        return Refusal(f"{node.op_type} attributes refer to function attributes")
    attrs = attributes(node)
    weight = view.constant(node.input[1]) if len(node.input) > 1 else None
    if weight is None:
        return Refusal(f"{node.op_type} weight '{node.input[1] if len(node.input) > 1 else ''}' is not a constant")
    if weight.dtype.kind != "f" and weight.dtype.name != "bfloat16":
        return Refusal(f"{node.op_type} weight is {weight.dtype.name}, not floating point")
    bias = None
    if len(node.input) > 2 and node.input[2]:
        bias = view.constant(node.input[2])
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
        if view.opset < 7:
            return Refusal("Gemm before opset 7 broadcasts C only with the broadcast attribute")
        return LinearOp(index, kind, weight, bias, trans_b=bool(attrs.get("transB", 0)),
                        alpha=float(attrs.get("alpha", 1.0)), beta=float(attrs.get("beta", 1.0)))
    rank = view.rank(node.input[0])
    if rank != 2:
        return Refusal(f"MatMul input '{node.input[0]}' is not known to have rank 2")
    return LinearOp(index, kind, weight, None)


def _write(view: GraphView, op: LinearOp, weight: np.ndarray, bias: np.ndarray, freed=()):
    """Give the operator its new weight and bias (MatMul becomes a Gemm); `freed` are the
    (initializer, node) pairs the rewrite frees, whose tensors may take them."""
    node = view.node(op.index)
    weight = fold.cast_like(weight, op.weight.dtype, f"{op.kind} weight")
    bias_dtype = op.bias.dtype if op.bias is not None else op.weight.dtype
    bias = fold.cast_like(bias, bias_dtype, f"{op.kind} bias")
    base = node.name or node.output[0]
    if op.kind == "MatMul":
        gemm = helper.make_node("Gemm", [node.input[0], view.add_constant(weight, f"{base}_weight_fused"),
                                         view.add_constant(bias, f"{base}_bias_fused")],
                                list(node.output), name=node.name)
        view.replace_node(op.index, gemm)
        return
    view.set_constant_input(op.index, 1, weight, f"{base}_weight_fused", freed)
    view.set_constant_input(op.index, 2, bias, f"{base}_bias_fused", freed)
    if op.kind == "Gemm":
        keep = [a for a in node.attribute if a.name not in ("alpha", "beta")]
        del node.attribute[:]
        node.attribute.extend(keep)


def fold_after(view: GraphView, op: LinearOp, a: np.ndarray, b: np.ndarray, freed=()):
    """op(x) * a + b, per output channel, becomes op'(x). Raises FoldError before any edit."""
    if op.is_conv:
        weight, bias = fold.fold_affine_after_conv(op.weight, op.bias, a, b, op.groups,
                                                   transposed=op.kind == "ConvTranspose")
    else:
        weight, bias = fold.fold_affine_after_gemm(op.weight, op.bias, a, b, op.trans_b, op.alpha, op.beta)
    _write(view, op, weight, bias, freed)


def fold_before(view: GraphView, op: LinearOp, a: np.ndarray, b: np.ndarray, freed=()):
    """op(x * a + b), per input channel, becomes op'(x). The caller has checked it is exact."""
    if op.is_conv:
        weight, bias = fold.fold_affine_before_conv(op.weight, op.bias, a, b, op.groups)
    else:
        weight, bias = fold.fold_affine_before_gemm(op.weight, op.bias, a, b, op.trans_b, op.alpha, op.beta)
    _write(view, op, weight, bias, freed)


def shift_operand(node, index: int):
    """The (initializer, node) pair a removed affine node frees that can best hold a bias: the
    BatchNormalization's B, or the constant operand of an Add or Sub."""
    if node.op_type == "BatchNormalization":
        return [(node.input[2], index)]
    if node.op_type in ("Add", "Sub"):
        return [(name, index) for name in node.input]
    return []


def read_affine(view: GraphView, node, x: str, rank: int, channels: int):
    """BatchNormalization or Mul/Add/Sub/Div by a constant, applied to `x`, as (scale, shift)."""
    if node.op_type == "BatchNormalization":
        if node.input[0] != x:
            return Refusal(f"BatchNormalization does not normalize '{x}'")
        return batchnorm_affine(view, node, channels)
    return elementwise_affine(view, node, x, rank, channels, axis=1)


@dataclass(frozen=True)
class LinearAffineMatch:
    linear: int
    affine: int


class FoldAffineAfterLinear(Pass):
    """`producers` op followed by an `anchors` op that is a per-channel affine -> one operator."""

    producers: tuple[str, ...] = ()

    def match(self, view: GraphView, index: int):
        node = view.node(index)
        for name in node.input[:1] if node.op_type == "BatchNormalization" else node.input:
            producer = view.producer_of(name)
            if producer is not None and is_op(view.node(producer), *self.producers):
                return LinearAffineMatch(producer, index)
        return None

    def check(self, view: GraphView, match: LinearAffineMatch):
        linear = view.node(match.linear)
        refusal = single_use(view, linear.output[0], linear.op_type)
        if refusal:
            return refusal
        op = read_linear(view, match.linear)
        if isinstance(op, Refusal):
            return op
        affine = read_affine(view, view.node(match.affine), linear.output[0], op.out_rank, op.out_channels)
        if isinstance(affine, Refusal):
            return affine
        return op, affine

    def rewrite(self, view: GraphView, match: LinearAffineMatch, plan):
        op, (a, b) = plan
        fold_after(view, op, a, b, shift_operand(view.node(match.affine), match.affine))
        output = view.node(match.affine).output[0]
        view.remove_node(match.affine)
        view.take_output(op.index, output)
