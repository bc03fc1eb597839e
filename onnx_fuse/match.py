"""Small structural helpers shared by the passes: attributes, single consumers, and
"this operand is a per-channel constant" for BatchNormalization and elementwise affine ops.

Each reader returns a value on success and a `Refusal` (a reason a user can read) otherwise.
"""

from __future__ import annotations

import numpy as np
from onnx import helper

from .fold import FoldError, bn_as_affine
from .graph import Graph, is_default_domain
from .rule import Refusal

AFFINE_OPS = ("Mul", "Add", "Sub", "Div")


def attributes(node) -> dict:
    """The node's attribute values; attributes that refer to a function's attributes (their value
    is only known per call) are left out: readers refuse such nodes with has_attribute_refs."""
    return {attr.name: helper.get_attribute_value(attr) for attr in node.attribute if not attr.ref_attr_name}


def has_attribute_refs(node) -> bool:
    return any(attr.ref_attr_name for attr in node.attribute)


def auto_pad(node) -> str:
    value = attributes(node).get("auto_pad", b"NOTSET")
    value = value.decode() if isinstance(value, bytes) else value
    return value or "NOTSET"


def conv_padding(node, kernel_shape, strides, dilations, sizes=None) -> tuple | None:
    """Explicit pads of a Conv (all begins, then all ends), or None where they depend on an input
    size that is not known (auto_pad SAME with a stride over 1; `sizes` are the input's spatial
    lengths, None where unknown)."""
    rank = len(kernel_shape)
    padding = auto_pad(node)
    if padding == "NOTSET":
        return tuple(attributes(node).get("pads", (0,) * (2 * rank)))
    if padding == "VALID":
        return (0,) * (2 * rank)
    return same_padding(padding, kernel_shape, strides, dilations, sizes)


def same_padding(padding: str, kernel_shape, strides, dilations, sizes=None) -> tuple | None:
    """The pads auto_pad SAME_UPPER or SAME_LOWER gives (all begins, then all ends), None where
    they depend on an input length that is not known."""
    rank = len(kernel_shape)
    span = [d * (k - 1) + 1 for k, d in zip(kernel_shape, dilations)]
    known = sizes if sizes is not None and len(sizes) == rank else (None,) * rank
    total = []
    for n, s, t in zip(known, strides, span):
        if s == 1:
            total.append(t - 1)
        elif t == 1:  # one input per output: (ceil(n / s) - 1) * s + 1 - n <= 0 at every n
            total.append(0)
        elif isinstance(n, int) and n > 0:
            # SAME: output length ceil(n / s), so total padding (ceil(n / s) - 1) * s + span - n
            total.append(max(0, (-(-n // s) - 1) * s + t - n))
        else:
            return None
    small = [t // 2 for t in total]
    large = [t - t // 2 for t in total]
    return tuple(small + large) if padding == "SAME_UPPER" else tuple(large + small)


def is_op(node, *op_types) -> bool:
    return node is not None and is_default_domain(node) and node.op_type in op_types


def producer_if(graph: Graph, name: str | None, *op_types) -> int | None:
    """The number of the default-domain node of one of these op types that computes `name`."""
    producer = graph.producer_of(name) if name else None
    return producer if producer is not None and is_op(graph.node(producer), *op_types) else None


def affine_input(graph: Graph, node) -> str | None:
    """The tensor a BatchNormalization normalizes, or the one non-constant operand of a Mul, Add,
    Sub or Div whose other operand is a constant; None for any other node (x * sigmoid(x) is
    not an affine of x)."""
    if not is_default_domain(node):
        return None
    if node.op_type == "BatchNormalization":
        return node.input[0]
    if node.op_type not in AFFINE_OPS or len(node.input) != 2:
        return None
    variables = [name for name in node.input if not graph.is_constant(name)]
    return variables[0] if len(variables) == 1 else None


def single_use(graph: Graph, name: str, what: str) -> Refusal | None:
    """The rule every fold keeps: the intermediate has exactly one reader and is not an output."""
    if name in graph.outputs:
        return Refusal(f"{what} output '{name}' is a graph output")
    count = graph.consumer_count(name)
    if count != 1:
        return Refusal(f"{what} output '{name}' has {count} consumers")
    return None


def per_channel_vector(value: np.ndarray, rank: int, channels: int, axis: int = 1) -> np.ndarray | None:
    """The [channels] vector a constant applies along `axis` of a rank-`rank` tensor, or None.

    The constant broadcasts numpy-style (right-aligned). It is per-channel when every one of its
    axes is 1 except, possibly, the one that lines up with `axis`, which is 1 or `channels`; a
    constant of higher rank would change the result's shape and is refused.
    """
    if value.ndim > rank:
        return None
    aligned = (1,) * (rank - value.ndim) + tuple(value.shape)
    for i, size in enumerate(aligned):
        if size != 1 and not (i == axis and size == channels):
            return None
    return np.broadcast_to(value.reshape(-1) if value.size > 1 else value.reshape(1), (channels,))


def batchnorm_affine(graph: Graph, node, channels: int) -> tuple[np.ndarray, np.ndarray] | Refusal:
    """BatchNormalization in inference form as per-channel (scale, shift)."""
    if has_attribute_refs(node):
        return Refusal("BatchNormalization attributes refer to function attributes")
    attrs = attributes(node)
    if attrs.get("training_mode", 0) == 1:
        return Refusal("BatchNormalization is in training mode")
    if "is_test" in attrs and attrs["is_test"] == 0 and len([o for o in node.output if o]) > 1:
        return Refusal("BatchNormalization is in training mode (is_test=0)")
    if graph.opset < 14 and len(node.output) > 1 and "is_test" not in attrs:
        # before opset 14 the outputs say the mode: declared running statistics mean training
        return Refusal("BatchNormalization declares its statistics as outputs: training mode before opset 14")
    if attrs.get("spatial", 1) == 0:
        return Refusal("BatchNormalization spatial=0 normalizes per activation, not per channel")
    for extra in node.output[1:]:
        if extra and graph.consumer_count(extra):
            return Refusal(f"BatchNormalization output '{extra}' (running statistics) is in use")
    params = []
    for role, name in zip(("scale", "bias", "mean", "var"), node.input[1:5]):
        value = graph.constant(name)
        if value is None:
            return Refusal(f"BatchNormalization {role} '{name}' is not a constant")
        if value.size not in (1, channels) or value.ndim > 1:
            return Refusal(f"BatchNormalization {role} has shape {list(value.shape)}, expected [{channels}]")
        params.append(value)
    try:
        return bn_as_affine(*params, attrs.get("epsilon", 1e-5))
    except FoldError as error:
        return Refusal(str(error))


def elementwise_affine(graph: Graph, node, x: str, rank: int, channels: int,
                       axis: int = 1) -> tuple[np.ndarray, np.ndarray] | Refusal:
    """Mul/Add/Sub/Div of `x` by a per-channel constant as (scale, shift): op(x, c) == x * a + b."""
    if len(node.input) != 2 or list(node.input).count(x) != 1:
        return Refusal(f"{node.op_type} does not read '{x}' exactly once")
    x_first = node.input[0] == x
    other = node.input[1] if x_first else node.input[0]
    value = graph.constant(other)
    if value is None:
        return Refusal(f"{node.op_type} operand '{other}' is not a constant")
    if value.dtype.kind != "f" and value.dtype.name != "bfloat16":
        return Refusal(f"{node.op_type} operand '{other}' is not floating point")
    vector = per_channel_vector(value, rank, channels, axis)
    if vector is None:
        return Refusal(f"{node.op_type} operand of shape {list(value.shape)} is not per-channel "
                       f"along axis {axis} of a rank-{rank} tensor with {channels} channels")
    c = vector.astype(np.float64)
    ones, zeros = np.ones(channels), np.zeros(channels)
    op = node.op_type
    if op == "Mul":
        return c, zeros
    if op == "Add":
        return ones, c
    if op == "Sub":
        return (ones, -c) if x_first else (-ones, c)
    # Div
    if not x_first:
        return Refusal("Div by the tensor (c / x) is not linear")
    if np.any(c == 0):
        return Refusal("Div by a constant that has zeros")
    return 1.0 / c, zeros
