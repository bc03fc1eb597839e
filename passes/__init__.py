"""The rewrites onnx-fuse runs, in order. Importing this module has no side effects."""

from .bn_conv import BatchNormConv
from .conv_affine import ConvAffine
from .conv_bn import ConvBatchNorm
from .gemm_bn import GemmBatchNorm
from .inline_if import InlineConstantIf
from .merge_branches import MergeBranches

DEFAULT_PASSES = (
    InlineConstantIf(),
    ConvBatchNorm(),
    ConvAffine(),
    MergeBranches(),
    GemmBatchNorm(),
    BatchNormConv(),
)

__all__ = ["DEFAULT_PASSES", "ConvBatchNorm", "ConvAffine", "GemmBatchNorm", "BatchNormConv", "MergeBranches",
           "InlineConstantIf"]
