"""gemm_bn: Gemm, or MatMul of a rank-2 input by a constant 2-D weight, followed by
BatchNormalization or a per-feature Mul/Add/Sub/Div, becomes one Gemm (alpha = beta = 1).
Refuses when the MatMul input is not known to be rank 2 (BatchNormalization's channel axis is 1).
"""

from onnx_fuse.graph import Graph
from onnx_fuse.linear import LinearAffine, apply_fold, match_affine_after, plan_affine_after
from onnx_fuse.match import AFFINE_OPS
from onnx_fuse.rule import Pass


class GemmBatchNorm(Pass):
    name = "gemm_bn"
    summary = "Gemm/MatMul -> BatchNormalization or per-feature Mul/Add/Sub/Div: one Gemm"
    anchors = ("BatchNormalization",) + AFFINE_OPS

    def match(self, graph: Graph, index: int) -> LinearAffine | None:
        return match_affine_after(graph, index, "Gemm", "MatMul")

    check = staticmethod(plan_affine_after)  # one reader, constant weights, a per-channel affine
    rewrite = staticmethod(apply_fold)
