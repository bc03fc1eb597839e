"""conv_bn: Conv or ConvTranspose followed by BatchNormalization (inference form) becomes one
Conv with folded weights and bias. Refuses when the Conv output has another reader or is a graph
output, a weight or statistic is not constant, or the BatchNormalization runs in training mode.
"""

from onnx_fuse.graph import Graph
from onnx_fuse.linear import LinearAffine, apply_fold, match_affine_after, plan_affine_after
from onnx_fuse.rule import Pass


class ConvBatchNorm(Pass):
    name = "conv_bn"
    summary = "Conv/ConvTranspose -> BatchNormalization: fold the normalization into the weights"
    anchors = ("BatchNormalization",)

    def match(self, graph: Graph, index: int) -> LinearAffine | None:
        return match_affine_after(graph, index, "Conv", "ConvTranspose")

    check = staticmethod(plan_affine_after)  # one reader, constant weights, a per-channel affine
    rewrite = staticmethod(apply_fold)
