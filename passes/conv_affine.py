"""conv_affine: Conv or ConvTranspose followed by Mul, Div, Add or Sub with a per-output-channel
(or scalar) constant becomes one Conv; chains fold one op at a time. This is how Keras exports
write BatchNormalization. Refuses c / x, division by zero, and constants that are not per-channel.
"""

from onnx_fuse.graph import Graph
from onnx_fuse.linear import LinearAffine, apply_fold, match_affine_after, plan_affine_after
from onnx_fuse.match import AFFINE_OPS
from onnx_fuse.rule import Pass


class ConvAffine(Pass):
    name = "conv_affine"
    summary = "Conv/ConvTranspose -> Mul/Add/Sub/Div by a per-channel constant: fold into the weights"
    anchors = AFFINE_OPS

    def match(self, graph: Graph, index: int) -> LinearAffine | None:
        return match_affine_after(graph, index, "Conv", "ConvTranspose")

    check = staticmethod(plan_affine_after)  # one reader, constant weights, a per-channel affine
    rewrite = staticmethod(apply_fold)
