"""matmul_affine: MatMul of a tensor of any rank by a constant [K, N] weight, with or without the
Add of its bias, followed by a Mul or Div by a constant along the last axis (or an Add or Sub,
where the bias Add can take it): the scale goes into the weight's columns and the bias, the shift
into the bias. ConvNeXt's and DeiT-3's layer scale, and any scaled Linear on tokens. Refuses a
constant that is not along the last axis or may broadcast the tensor larger, and intermediates
with other readers. (An Add right after a MatMul is its bias, not a match.)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from onnx_fuse import fold
from onnx_fuse.graph import Graph
from onnx_fuse.linear import shift_operand
from onnx_fuse.match import (AFFINE_OPS, affine_input, elementwise_affine, per_channel_vector, producer_if,
                             single_use)
from onnx_fuse.rule import Pass, Plan, Refusal


@dataclass(frozen=True)
class MatMulAffine:
    matmul: int
    bias_add: int | None
    affine: int


@dataclass
class MatMulFold(Plan):
    """New weight for the MatMul, new bias for its Add (if any), and the affine node that goes."""

    match: MatMulAffine
    weight: np.ndarray
    bias: np.ndarray | None
    bias_slot: int
    freed: list

    def takes(self) -> tuple[int, ...]:
        m = self.match
        return tuple(i for i in (m.matmul, m.bias_add, m.affine) if i is not None)


class FoldIntoMatMul(Pass):
    name = "matmul_affine"
    summary = "MatMul (+ bias Add) of any rank -> Mul/Div/Add/Sub along the last axis: fold into weight and bias"
    anchors = AFFINE_OPS

    def match(self, graph: Graph, index: int):
        node = graph.node(index)
        producer = producer_if(graph, affine_input(graph, node), "MatMul", "Add")
        if producer is None:
            return None
        if graph.node(producer).op_type == "MatMul":  # an Add right after a MatMul is its bias: no match
            return MatMulAffine(producer, None, index) if node.op_type in ("Mul", "Div") else None
        matmul = producer_if(graph, affine_input(graph, graph.node(producer)), "MatMul")
        return None if matmul is None else MatMulAffine(matmul, producer, index)

    def check(self, graph: Graph, match: MatMulAffine) -> MatMulFold | Refusal:
        matmul = graph.node(match.matmul)
        weight = graph.constant(matmul.input[1])
        if weight is None or weight.ndim != 2 or weight.dtype.kind != "f" or graph.is_constant(matmul.input[0]):
            return Refusal("MatMul does not multiply a tensor by a constant 2-D floating-point weight")
        n = weight.shape[1]
        y = matmul.output[0]
        rank = graph.rank(y) or 1  # unknown: only a vector (or a scalar) is known not to broadcast y larger
        bias, slot = None, 0
        for step in (match.matmul, match.bias_add):
            if step is not None:
                refusal = single_use(graph, graph.node(step).output[0], graph.node(step).op_type)
                if refusal is not None:
                    return refusal
        if match.bias_add is not None:
            add = graph.node(match.bias_add)
            slot = 1 if add.input[0] == y else 0
            raw = graph.constant(add.input[slot])
            bias = per_channel_vector(raw, rank, n, axis=rank - 1) if raw is not None and raw.dtype.kind == "f" else None
            if bias is None:
                return Refusal(f"Add after MatMul does not add a constant along the last axis ({n})")
            y = add.output[0]
        ab = elementwise_affine(graph, graph.node(match.affine), y, rank, n, axis=rank - 1)
        if isinstance(ab, Refusal):
            return ab
        a, b = ab
        try:
            # (x @ W + c) * a + b == x @ (W * a) + (c * a + b), along the last axis
            new_weight = fold.cast_like(fold.scale_rows(weight.T, lambda rows: a[rows][:, None]).T,
                                        weight.dtype, "MatMul weight")
            new_bias = None
            if bias is not None:
                shape = raw.shape if raw.size == n else (1,) * max(raw.ndim - 1, 0) + (n,)
                new_bias = fold.cast_like((fold.as_f64(bias) * a + b).reshape(shape), raw.dtype, "MatMul bias")
        except fold.FoldError as error:
            return Refusal(str(error))
        return MatMulFold(match, new_weight, new_bias, slot, shift_operand(graph.node(match.affine), match.affine))

    def rewrite(self, graph: Graph, match: MatMulAffine, plan: MatMulFold):
        base = graph.node(match.matmul).name or graph.node(match.matmul).output[0]
        graph.set_constant_input(match.matmul, 1, plan.weight, f"{base}_weight_fused")
        last = match.matmul
        if match.bias_add is not None:
            graph.set_constant_input(match.bias_add, plan.bias_slot, plan.bias, f"{base}_bias_fused", plan.freed)
            last = match.bias_add
        output = graph.node(match.affine).output[0]
        graph.remove_node(match.affine)
        graph.take_output(last, output)
