"""The rewrites onnx-fuse runs, in order. Importing this module has no side effects.

CANONICAL_PASSES come first: they remove or see through the glue exporters write between ops
(Identity, unread Constants, zero Pad before a Conv, duplicated Casts), so that the folds after them match the
mathematics, not an exporter's habits. The manager runs every pass, in this order, round after
round until nothing changes, so glue a fold exposes is cleaned up in the next round.
"""

from .bn_conv import BatchNormConv
from .conv_affine import ConvAffine
from .conv_bn import ConvBatchNorm
from .dead_constant import RemoveDeadConstant
from .dedupe import Dedupe
from .gemm_bn import GemmBatchNorm
from .identity import RemoveIdentity
from .inline_if import InlineConstantIf
from .merge_branches import MergeBranches
from .matmul_affine import FoldIntoMatMul
from .merge_gemm import MergeGemms
from .pad_conv import FoldZeroPad
from .reshape_bn import ReshapeBatchNorm

CANONICAL_PASSES = (
    InlineConstantIf(),
    RemoveIdentity(),
    RemoveDeadConstant(),
    Dedupe(),
    FoldZeroPad(),
    ReshapeBatchNorm(),
)

FOLD_PASSES = (
    ConvBatchNorm(),
    ConvAffine(),
    MergeBranches(),
    MergeGemms(),
    GemmBatchNorm(),
    FoldIntoMatMul(),
    BatchNormConv(),
)

DEFAULT_PASSES = CANONICAL_PASSES + FOLD_PASSES

__all__ = ["DEFAULT_PASSES", "CANONICAL_PASSES", "FOLD_PASSES", "ConvBatchNorm", "ConvAffine", "GemmBatchNorm",
           "BatchNormConv", "MergeBranches", "InlineConstantIf", "RemoveIdentity", "RemoveDeadConstant", "Dedupe", "FoldZeroPad", "MergeGemms", "FoldIntoMatMul", "ReshapeBatchNorm"]
