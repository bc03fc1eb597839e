import numpy as np
import pytest
from onnx import helper
from support import ModelBuilder, assert_same_function, assert_unchanged, op_counts, optimize


def gemm_model(trans_b=False, bias="vector", alpha=1.0, beta=1.0, follower="bn", trans_a=False):
    b = ModelBuilder(seed=5)
    x = b.input([6, 3] if trans_a else [3, 6])
    w = b.weights(8, 6) if trans_b else b.weights(6, 8)
    inputs = [x, b.const(w, "w")]
    if bias == "vector":
        inputs.append(b.const(b.rng.normal(size=8), "c"))
    elif bias == "matrix":
        inputs.append(b.const(b.rng.normal(size=(3, 8)), "c"))
    elif bias == "scalar":
        inputs.append(b.const(b.rng.normal(size=1), "c"))
    y = b.node("Gemm", inputs, transA=int(trans_a), transB=int(trans_b), alpha=alpha, beta=beta)
    if follower == "bn":
        y = b.batchnorm(y, 8)
    else:
        y = b.node(follower, [y, b.const(b.rng.uniform(0.5, 2, 8), "k")])
    b.output(y)
    return b.model()


@pytest.mark.parametrize("bias", ["vector", "matrix", "scalar", "none"])
@pytest.mark.parametrize("trans_b", [False, True])
def test_fold_gemm_bn(trans_b, bias):
    model = gemm_model(trans_b, bias, alpha=0.7, beta=1.3)
    result, report = optimize(model)
    assert op_counts(result) == {"Gemm": 1}
    assert report.passes["gemm_bn"].rewrites == 1
    assert_same_function(model, result)


@pytest.mark.parametrize("follower", ["Mul", "Add", "Sub", "Div"])
def test_fold_gemm_affine(follower):
    model = gemm_model(follower=follower, trans_a=True)
    result, _ = optimize(model)
    assert op_counts(result) == {"Gemm": 1}
    assert_same_function(model, result)


def matmul_model(with_bias=True, declare_rank=True, follower="bn"):
    b = ModelBuilder(seed=6)
    x = b.input([3, 6])
    y = b.node("MatMul", [x, b.const(b.weights(6, 8), "w")])
    if with_bias:
        y = b.node("Add", [y, b.const(b.rng.normal(size=8), "bias")])
    y = b.batchnorm(y, 8) if follower == "bn" else b.node("Mul", [y, b.const(b.rng.uniform(1, 2, 8), "k")])
    b.output(y)
    model = b.model()
    if not declare_rank:
        model.graph.input[0].type.tensor_type.ClearField("shape")
    return model


@pytest.mark.parametrize("with_bias", [True, False])
def test_fold_matmul_bias_bn_into_one_gemm(with_bias):
    model = matmul_model(with_bias)
    result, _ = optimize(model)
    assert op_counts(result) == {"Gemm": 1}
    assert_same_function(model, result)


# ---- negative twins -----------------------------------------------------------------------

def test_refuse_matmul_of_unknown_rank():
    assert_unchanged(matmul_model(declare_rank=False), "is not known to have rank 2")


def test_refuse_gemm_output_with_two_readers():
    model = gemm_model()
    gemm_out = model.graph.node[0].output[0]
    model.graph.output.append(helper.make_tensor_value_info(gemm_out, 1, [3, 8]))
    assert_unchanged(model, "is a graph output")


def test_refuse_gemm_before_opset_7():
    model = gemm_model(bias="matrix")
    model.opset_import[0].version = 6
    model.graph.node[1].attribute.append(helper.make_attribute("is_test", 1))
    assert_unchanged(model, "before opset 7")


def test_refuse_per_row_constant():
    b = ModelBuilder()
    y = b.node("Gemm", [b.input([3, 6]), b.const(b.weights(6, 8), "w")])
    b.output(b.node("Mul", [y, b.const(np.ones((3, 1)) * 2, "k")]))
    assert_unchanged(b.model(), "is not per-channel")
