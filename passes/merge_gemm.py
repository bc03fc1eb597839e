"""merge_gemm: a sum (Add, Sub, Sum) of Gemms of one input becomes one Gemm, whose weight and bias
are the (signed) sums of theirs: RepViT's and DeiT's distillation heads, (Gemm(x) + Gemm'(x)) / 2.
Refuses a Gemm that transposes its input, has a non-constant weight or a bias that is not one row,
or whose output has other readers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from onnx import helper

from onnx_fuse import fold
from onnx_fuse.graph import Graph
from onnx_fuse.linear import LinearOp, read_linear
from onnx_fuse.match import attributes, producer_if, single_use
from onnx_fuse.rule import Pass, Plan, Refusal


@dataclass
class MergedGemm(Plan):
    """One Gemm of `source` with this weight ([K, N]) and bias ([N]) replaces the sum at `anchor`."""

    anchor: int
    gemms: list
    source: str
    weight: np.ndarray
    bias: np.ndarray

    def takes(self) -> tuple[int, ...]:
        return (self.anchor, *self.gemms)


def as_row(op: LinearOp) -> np.ndarray | None:
    """The Gemm's C as a [N] row (zeros without one), or None where it differs between rows."""
    n = op.out_channels
    if op.bias is None:
        return np.zeros(n)
    if op.bias.size in (1, n) and op.bias.ndim <= 2 and (op.bias.ndim < 2 or op.bias.shape[0] == 1):
        return np.broadcast_to(fold.as_f64(op.bias).reshape(-1), (n,))
    return None


class MergeGemms(Pass):
    name = "merge_gemm"
    summary = "sum of Gemms of one input (distillation heads): one Gemm"
    anchors = ("Add", "Sub", "Sum")

    def match(self, graph: Graph, index: int):
        gemms = [producer_if(graph, name, "Gemm") for name in graph.node(index).input]
        if len(gemms) < 2 or None in gemms or len(set(gemms)) != len(gemms):
            return None
        sources = {graph.node(g).input[0] for g in gemms}
        return (index, tuple(gemms)) if len(sources) == 1 else None

    def check(self, graph: Graph, match) -> MergedGemm | Refusal:
        anchor, gemms = match
        signs = [-1.0 if graph.node(anchor).op_type == "Sub" and i == 1 else 1.0 for i in range(len(gemms))]
        weight, bias, dtype = 0.0, 0.0, None
        for gemm, sign in zip(gemms, signs):
            node = graph.node(gemm)
            refusal = single_use(graph, node.output[0], "Gemm")
            if refusal is not None:
                return refusal
            if attributes(node).get("transA", 0):
                return Refusal("Gemm transposes its input (transA=1)")
            op = read_linear(graph, gemm)
            if isinstance(op, Refusal):
                return op
            row = as_row(op)
            if row is None:
                return Refusal(f"Gemm bias of shape {list(op.bias.shape)} is not one row")
            w = fold.as_f64(op.weight)
            # alpha * x @ W + beta * C, W as [K, N]
            weight = weight + sign * op.alpha * (w.T if op.trans_b else w)
            bias = bias + sign * op.beta * row
            dtype = dtype or op.weight.dtype
        try:
            weight = fold.cast_like(weight, dtype, "merged Gemm weight")
            bias = fold.cast_like(bias, dtype, "merged Gemm bias")
        except fold.FoldError as error:
            return Refusal(str(error))
        return MergedGemm(anchor, list(gemms), graph.node(gemms[0]).input[0], weight, bias)

    def rewrite(self, graph: Graph, match, plan: MergedGemm):
        anchor = graph.node(plan.anchor)
        base = anchor.name or anchor.output[0]
        gemm = helper.make_node("Gemm", [plan.source, graph.add_constant(plan.weight, f"{base}_merged_weight"),
                                         graph.add_constant(plan.bias, f"{base}_merged_bias")],
                                [anchor.output[0]], name=anchor.name or graph.fresh_name(f"{base}_merged"))
        graph.replace_node(plan.anchor, gemm)
        for index in plan.gemms:
            graph.remove_node(index)
