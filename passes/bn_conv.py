"""bn_conv: BatchNormalization (or a per-channel Mul/Add/Sub/Div) before a Conv, Gemm or MatMul
folds forward into that operator's weights. A shift is exact only when the Conv pads nothing:
padding adds zeros after the shift, so a padded Conv is refused unless the affine is a pure
scale (0 * a = 0); a normalized tensor with other readers is refused too.
"""

from dataclasses import dataclass

import numpy as np

from onnx_fuse.graph import Graph
from onnx_fuse.linear import LinearFold, apply_fold, linear_beside, plan_fold, read_affine
from onnx_fuse.match import AFFINE_OPS, affine_input, attributes, conv_padding, producer_if
from onnx_fuse.rule import Pass, Refusal


@dataclass(frozen=True)
class AffineLinearMatch:
    affine: int
    linear: int
    x: str


def broadcast_keeps_shape(graph: Graph, affine, x: str, rank: int, channels: int) -> Refusal | None:
    """The folded operator will read x itself: the constant must not have broadcast x to a larger
    shape (a size-1 channel axis widened, or a leading axis added). Found by the fuzzer."""
    other = next(name for name in affine.input if name != x)
    constant = graph.constant_type(other)
    if constant is None or len(constant[0]) == 0 or tuple(constant[0]) == (1,):
        return None  # a scalar enlarges nothing
    shape = graph.known_shape(x)
    if shape is None or len(shape) != rank or len(constant[0]) > rank or shape[1] != channels:
        return Refusal(f"{affine.op_type} by a constant of shape {list(constant[0])} may broadcast '{x}' "
                       f"to a larger shape (its shape {shape} is not known to be rank {rank} with {channels} channels)")
    return None


def padded(conv, op) -> bool:
    """Whether the Conv pads its input (or may: auto_pad SAME on an unknown size)."""
    spatial = op.weight.ndim - 2
    attrs = attributes(conv)
    pads = conv_padding(conv, op.weight.shape[2:], attrs.get("strides", (1,) * spatial),
                        attrs.get("dilations", (1,) * spatial))
    return pads is None or any(pads)


class BatchNormConv(Pass):
    name = "bn_conv"
    summary = "BatchNormalization/per-channel affine -> unpadded Conv or Gemm: fold into the weights"
    anchors = ("Conv", "Gemm", "MatMul")

    def match(self, graph: Graph, index: int):
        affine = producer_if(graph, graph.node(index).input[0], "BatchNormalization", *AFFINE_OPS)
        x = affine_input(graph, graph.node(affine)) if affine is not None else None
        return None if x is None else AffineLinearMatch(affine, index, x)

    def check(self, graph: Graph, match: AffineLinearMatch) -> LinearFold | Refusal:
        affine, linear = graph.node(match.affine), graph.node(match.linear)
        op = linear_beside(graph, match.affine, match.linear)
        if isinstance(op, Refusal):
            return op
        if linear.op_type == "Gemm" and attributes(linear).get("transA", 0):
            return Refusal("Gemm transposes its input (transA=1)")
        rank = op.weight.ndim if op.is_conv else 2
        if affine.op_type != "BatchNormalization":
            refusal = broadcast_keeps_shape(graph, affine, match.x, rank, op.in_channels)
            if refusal is not None:
                return refusal
        ab = read_affine(graph, affine, match.x, rank, op.in_channels)
        if isinstance(ab, Refusal):
            return ab
        if linear.op_type == "Conv" and np.any(ab[1]) and padded(linear, op):
            # conv(pad(x * a + b)) sees zeros, not b, in the padding; a pure scale is exact (0 * a = 0)
            return Refusal("Conv pads its input, and padding adds zeros after the shift")
        return plan_fold(graph, op, match.affine, *ab, reads=match.x)

    rewrite = staticmethod(apply_fold)
