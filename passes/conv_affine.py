"""conv_affine: Conv or ConvTranspose followed by Mul, Div, Add or Sub with a per-output-channel
(or scalar) constant becomes one Conv; chains fold one op at a time. This is how Keras exports
write BatchNormalization. Refuses c / x, division by zero, and constants that are not per-channel.
"""

from onnx_fuse.linear import FoldAffineAfterLinear
from onnx_fuse.match import AFFINE_OPS


class ConvAffine(FoldAffineAfterLinear):
    name = "conv_affine"
    summary = "Conv/ConvTranspose -> Mul/Add/Sub/Div by a per-channel constant: fold into the weights"
    anchors = AFFINE_OPS
    producers = ("Conv", "ConvTranspose")
