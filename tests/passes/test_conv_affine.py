import numpy as np
import pytest
from support import ModelBuilder, assert_same_function, assert_unchanged, conv, op_counts, optimize

# (op, constant first?) pairs that are exact folds
OPS = [("Mul", False), ("Mul", True), ("Add", False), ("Add", True), ("Sub", False), ("Sub", True), ("Div", False)]
SHAPES = {"[1,C,1,1]": lambda c, r: [1, c] + [1] * r, "[C,1,1]": lambda c, r: [c] + [1] * r,
          "scalar": lambda c, r: [], "[1]": lambda c, r: [1]}


def conv_then(ops, rank=2, groups=1, bias=True, transpose=False, const_shape=None, dtype=np.float32):
    b = ModelBuilder(dtype, seed=3)
    y = conv(b, b.input([2, 4] + [5] * rank), 4, 4, rank=rank, groups=groups, bias=bias, transpose=transpose)
    for op, const_first in ops:
        shape = const_shape or [1, 4] + [1] * rank
        value = b.rng.uniform(0.5, 2.0, shape) * b.rng.choice([-1, 1], shape)
        c = b.const(value, op.lower())
        y = b.node(op, [c, y] if const_first else [y, c])
    b.output(y)
    return b.model()


@pytest.mark.parametrize("op,const_first", OPS, ids=[f"{o}{'-const-first' if f else ''}" for o, f in OPS])
@pytest.mark.parametrize("transpose", [False, True], ids=["conv", "convtranspose"])
def test_fold_one_affine_op(op, const_first, transpose):
    model = conv_then([(op, const_first)], groups=2, transpose=transpose)
    result, report = optimize(model)
    assert op_counts(result) == {"ConvTranspose" if transpose else "Conv": 1}
    assert report.passes["conv_affine"].rewrites == 1
    assert_same_function(model, result)


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPES.keys())
@pytest.mark.parametrize("rank", [1, 2, 3])
def test_fold_every_broadcast_shape(shape, rank):
    model = conv_then([("Mul", False), ("Add", True)], rank=rank, const_shape=SHAPES[shape](4, rank))
    result, _ = optimize(model)
    assert op_counts(result) == {"Conv": 1}
    assert_same_function(model, result)


@pytest.mark.parametrize("bias", [True, False])
def test_fold_keras_batchnorm_chain(bias):
    """Keras 3 writes BatchNormalization as Conv -> Mul -> Add (and tf2onnx sometimes Sub)."""
    model = conv_then([("Mul", False), ("Add", False), ("Sub", False), ("Div", False)], bias=bias)
    result, report = optimize(model)
    assert op_counts(result) == {"Conv": 1}
    assert report.passes["conv_affine"].rewrites == 4
    assert_same_function(model, result)


def test_fold_constant_from_constant_node_and_expression():
    b = ModelBuilder(seed=4)
    y = conv(b, b.input([1, 4, 5, 5]), 4, 4)
    c = b.node("Constant", [], value=__import__("onnx").numpy_helper.from_array(
        b.rng.uniform(0.5, 2, 4).astype(np.float32), "v"))
    axes = b.const([1, 2], "axes", dtype=np.int64)
    c = b.node("Unsqueeze", [c, axes])
    b.output(b.node("Mul", [y, c]))
    model = b.model()
    result, _ = optimize(model)
    assert op_counts(result) == {"Conv": 1}
    assert_same_function(model, result)


# ---- negative twins -----------------------------------------------------------------------

def test_refuse_constant_over_the_last_axis():
    """A [C] constant broadcasts along the last axis (W in NCHW), not the channel axis."""
    b = ModelBuilder()
    y = conv(b, b.input([1, 4, 5, 4]), 4, 4)
    b.output(b.node("Mul", [y, b.const(b.rng.uniform(0.5, 2, 4), "c")]))
    assert_unchanged(b.model(), "is not per-channel")


def test_refuse_constant_that_broadcasts_to_a_larger_shape():
    model = conv_then([("Mul", False)], const_shape=[3, 4, 1, 1])
    assert_unchanged(model, "is not per-channel")


def test_refuse_spatial_constant():
    model = conv_then([("Add", False)], const_shape=[1, 4, 5, 5])
    assert_unchanged(model, "is not per-channel")


def test_refuse_division_of_a_constant_by_the_conv():
    assert_unchanged(conv_then([("Div", True)]), "is not linear")


def test_refuse_division_by_zero():
    model = conv_then([("Div", False)])
    c = model.graph.initializer[-1]
    c.raw_data = np.zeros(4, np.float32).tobytes()
    assert_unchanged(model, "has zeros")


def test_a_non_constant_operand_is_no_match():
    """conv(x) + x is a residual, and conv(x) * sigmoid(conv(x)) is SiLU: neither is an affine, so
    neither is reported as a refused fold."""
    b = ModelBuilder()
    x = b.input([1, 4, 5, 5])
    b.output(b.node("Add", [conv(b, x, 4, 4), x]))
    y = conv(b, x, 4, 4)
    b.output(b.node("Mul", [y, b.node("Sigmoid", [y])]))
    model = b.model()
    assert_unchanged(model, passes=["conv_affine"])
    assert optimize(model, passes=["conv_affine"])[1].refused == []


def test_refuse_conv_output_with_two_readers():
    b = ModelBuilder()
    y = conv(b, b.input([1, 4, 5, 5]), 4, 4)
    b.output(b.node("Mul", [y, b.const(np.full([1, 4, 1, 1], 2.0), "c")]))
    b.output(b.node("Relu", [y]))
    assert_unchanged(b.model(), "has 2 consumers")
