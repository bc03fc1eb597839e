"""gemm_bn: Gemm, or MatMul of a rank-2 input by a constant 2-D weight, followed by
BatchNormalization or a per-feature Mul/Add/Sub/Div, becomes one Gemm (alpha = beta = 1).
Refuses when the MatMul input is not known to be rank 2 (BatchNormalization's channel axis is 1).
"""

from onnx_fuse.linear import FoldAffineAfterLinear
from onnx_fuse.match import AFFINE_OPS


class GemmBatchNorm(FoldAffineAfterLinear):
    name = "gemm_bn"
    summary = "Gemm/MatMul -> BatchNormalization or per-feature Mul/Add/Sub/Div: one Gemm"
    anchors = ("BatchNormalization",) + AFFINE_OPS
    producers = ("Gemm", "MatMul")
