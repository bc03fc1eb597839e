"""bn_conv: BatchNormalization (or a per-channel Mul/Add/Sub/Div) before a Conv, Gemm or MatMul
folds forward into that operator's weights. Exact only when the Conv pads nothing: padding adds
zeros after the shift, so a padded Conv is refused, as is a normalized tensor with other readers.
"""

from dataclasses import dataclass

from onnx_fuse.graph import GraphView
from onnx_fuse.linear import fold_before, read_affine, read_linear, shift_operand
from onnx_fuse.match import AFFINE_OPS, Refusal, attributes, conv_padding, is_op, single_use
from onnx_fuse.rule import Pass


@dataclass(frozen=True)
class AffineLinearMatch:
    affine: int
    linear: int
    x: str


def broadcast_keeps_shape(view: GraphView, affine, x: str, rank: int, channels: int) -> Refusal | None:
    """The folded operator will read x itself: the constant must not have broadcast x to a larger
    shape (a size-1 channel axis widened, or a leading axis added). Found by the fuzzer."""
    other = next(name for name in affine.input if name != x)
    constant = view.constant_type(other)
    if constant is None or len(constant[0]) == 0 or tuple(constant[0]) == (1,):
        return None  # a scalar enlarges nothing
    shape = view.shape(x)
    if shape is None or len(shape) != rank or len(constant[0]) > rank or shape[1] != channels:
        return Refusal(f"{affine.op_type} by a constant of shape {list(constant[0])} may broadcast '{x}' "
                       f"to a larger shape (its shape {shape} is not known to be rank {rank} with {channels} channels)")
    return None


class BatchNormConv(Pass):
    name = "bn_conv"
    summary = "BatchNormalization/per-channel affine -> unpadded Conv or Gemm: fold into the weights"
    anchors = ("Conv", "Gemm", "MatMul")

    def match(self, view: GraphView, index: int):
        node = view.node(index)
        producer = view.producer_of(node.input[0])
        if producer is None:
            return None
        affine = view.node(producer)
        if not is_op(affine, "BatchNormalization", *AFFINE_OPS):
            return None
        if affine.op_type == "BatchNormalization":
            x = affine.input[0]
        else:
            variable = [name for name in affine.input if not view.is_constant(name)]
            if len(variable) != 1:
                return None
            x = variable[0]
        return AffineLinearMatch(producer, index, x)

    def check(self, view: GraphView, match: AffineLinearMatch):
        affine = view.node(match.affine)
        linear = view.node(match.linear)
        refusal = single_use(view, affine.output[0], affine.op_type)
        if refusal:
            return refusal
        op = read_linear(view, match.linear)
        if isinstance(op, Refusal):
            return op
        if linear.op_type == "Conv":
            spatial = op.weight.ndim - 2
            attrs = attributes(linear)
            pads = conv_padding(linear, op.weight.shape[2:], attrs.get("strides", (1,) * spatial),
                                attrs.get("dilations", (1,) * spatial))
            if pads is None or any(pads):
                return Refusal("Conv pads its input, and padding adds zeros after the shift")
        if linear.op_type == "Gemm" and attributes(linear).get("transA", 0):
            return Refusal("Gemm transposes its input (transA=1)")
        rank = op.weight.ndim if op.is_conv else 2
        if affine.op_type != "BatchNormalization":
            refusal = broadcast_keeps_shape(view, affine, match.x, rank, op.in_channels)
            if refusal:
                return refusal
        ab = read_affine(view, affine, match.x, rank, op.in_channels)
        if isinstance(ab, Refusal):
            return ab
        return op, ab

    def rewrite(self, view: GraphView, match: AffineLinearMatch, plan):
        op, (a, b) = plan
        fold_before(view, op, a, b, shift_operand(view.node(match.affine), match.affine))
        view.set_input(op.index, 0, match.x)
        view.remove_node(match.affine)
