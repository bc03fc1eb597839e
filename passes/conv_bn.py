"""conv_bn: Conv or ConvTranspose followed by BatchNormalization (inference form) becomes one
Conv with folded weights and bias. Refuses when the Conv output has another reader or is a graph
output, a weight or statistic is not constant, or the BatchNormalization runs in training mode.
"""

from onnx_fuse.linear import FoldAffineAfterLinear


class ConvBatchNorm(FoldAffineAfterLinear):
    name = "conv_bn"
    summary = "Conv/ConvTranspose -> BatchNormalization: fold the normalization into the weights"
    anchors = ("BatchNormalization",)
    producers = ("Conv", "ConvTranspose")
