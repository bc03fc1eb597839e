import numpy as np
import onnx
import pytest
from support import ModelBuilder, assert_same_function, assert_unchanged, conv, op_counts, optimize


def bn_conv_model(rank=2, groups=1, bias=True, k=3, affine="bn", pads=0, auto_pad=None, extra_reader=False):
    b = ModelBuilder(seed=7)
    x = b.input([2, 4] + [6] * rank)
    if affine == "bn":
        y = b.batchnorm(x, 4)
    else:
        y = b.node(affine, [x, b.const(b.rng.uniform(0.5, 2, [1, 4] + [1] * rank), "k")])
    attrs = {"auto_pad": auto_pad} if auto_pad else {"pads": [pads] * (2 * rank)}
    b.output(conv(b, y, 4, 6 if groups != 4 else 4, rank=rank, k=k, groups=groups, bias=bias, **attrs))
    if extra_reader:
        b.output(b.node("Relu", [y]))
    return b.model()


@pytest.mark.parametrize("groups", [1, 2, 4], ids=["dense", "grouped", "depthwise"])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("rank", [1, 2, 3])
def test_fold_bn_into_unpadded_conv(rank, groups, bias):
    model = bn_conv_model(rank, groups, bias)
    result, report = optimize(model)
    assert op_counts(result) == {"Conv": 1}
    assert report.passes["bn_conv"].rewrites == 1
    assert_same_function(model, result)


@pytest.mark.parametrize("affine", ["Mul", "Add", "Sub", "Div"])
def test_fold_affine_into_valid_conv(affine):
    model = bn_conv_model(affine=affine, auto_pad="VALID")
    result, _ = optimize(model)
    assert op_counts(result) == {"Conv": 1}
    assert_same_function(model, result)


def test_fold_bn_into_gemm():
    b = ModelBuilder(seed=8)
    y = b.batchnorm(b.input([3, 6]), 6)
    b.output(b.node("Gemm", [y, b.const(b.weights(8, 6), "w"), b.const(np.ones(8), "c")], transB=1, alpha=0.5))
    model = b.model()
    result, _ = optimize(model)
    assert op_counts(result) == {"Gemm": 1}
    assert_same_function(model, result)


# ---- negative twins -----------------------------------------------------------------------

def test_refuse_padded_conv():
    assert_unchanged(bn_conv_model(pads=1), "pads its input")


def test_refuse_same_padding():
    assert_unchanged(bn_conv_model(auto_pad="SAME_UPPER"), "pads its input")


def test_refuse_bn_output_with_another_reader():
    assert_unchanged(bn_conv_model(extra_reader=True), "has 2 consumers")


def test_refuse_gemm_with_transposed_input():
    b = ModelBuilder(seed=8)
    y = b.batchnorm(b.input([6, 3]), 6)
    b.output(b.node("Gemm", [y, b.const(b.weights(6, 8), "w")], transA=1))
    assert_unchanged(b.model(), "transA=1")


@pytest.mark.parametrize("x_shape,const_shape,w_shape", [
    ([1, 1, 4, 4], [1, 3, 1, 1], [2, 3, 1, 1]),   # a size-1 channel axis widened to 3
    ([3, 4, 4], [1, 1, 1, 1], [2, 3, 1, 1]),       # a leading axis added
])
def test_refuse_constant_that_broadcasts_the_input_larger(x_shape, const_shape, w_shape):
    """Found by the fuzzer: folding would make the Conv read the smaller tensor."""
    b = ModelBuilder(seed=13)
    x = b.input(x_shape)
    y = b.node("Mul", [x, b.const(b.rng.uniform(0.5, 2, const_shape), "k")])
    b.output(b.node("Conv", [y, b.const(b.weights(*w_shape), "w")]))
    assert_unchanged(b.model(), "may broadcast", passes=["bn_conv"])


def test_refuse_constant_that_widens_gemm_features():
    b = ModelBuilder(seed=14)
    y = b.node("Mul", [b.input([4, 1]), b.const([[1.0, 2.0, 3.0]], "k")])
    b.output(b.node("Gemm", [y, b.const(b.weights(3, 2), "w")]))
    assert_unchanged(b.model(), "may broadcast", passes=["bn_conv"])


@pytest.mark.parametrize("padding", [dict(pads=[1, 1, 1, 1]), dict(auto_pad="SAME_UPPER", strides=[2, 2])])
def test_a_pure_scale_folds_into_a_padded_conv(padding):
    """conv(pad(x * a)) == conv'(pad(x)) with a in the weights: the padding's zeros stay zeros."""
    b = ModelBuilder(seed=11)
    x = b.input([1, 4, 6, 6])
    scaled = b.node("Mul", [b.node("Relu", [x]), b.const(b.rng.uniform(-2, 2, (1, 4, 1, 1)), "a")])
    b.output(conv(b, scaled, 4, 4, **padding))
    model = onnx.shape_inference.infer_shapes(b.model())
    result, report = optimize(model)
    assert op_counts(result) == {"Relu": 1, "Conv": 1} and report.passes["bn_conv"].rewrites == 1
    assert_same_function(model, result)


def test_the_twin_a_shift_before_a_padded_conv_stays():
    b = ModelBuilder(seed=11)
    x = b.input([1, 4, 6, 6])
    shifted = b.node("Add", [b.node("Relu", [x]), b.const(b.rng.uniform(-2, 2, (1, 4, 1, 1)), "a")])
    b.output(conv(b, shifted, 4, 4, pads=[1, 1, 1, 1]))
    assert_unchanged(onnx.shape_inference.infer_shapes(b.model()), "padding adds zeros after the shift")
