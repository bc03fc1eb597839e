import onnx
import pytest
from support import ModelBuilder, assert_same_function, assert_unchanged, op_counts, optimize


def linear(b, x, k=6, n=5, bias=True, bias_first=True):
    y = b.node("MatMul", [x, b.const(b.weights(k, n), "w")])
    if bias:
        c = b.const(b.rng.normal(0, 0.5, n), "bias")
        y = b.node("Add", [c, y] if bias_first else [y, c])
    return y


@pytest.mark.parametrize("rank", [3, 4])
@pytest.mark.parametrize("op", ["Mul", "Div"])
@pytest.mark.parametrize("bias", [True, False])
def test_layer_scale_folds_into_the_linear(rank, op, bias):
    """ConvNeXt: Mul(gamma, MatMul(x, W) + b), gamma [N], on tokens of any rank."""
    b = ModelBuilder(seed=rank)
    x = b.input([2] * (rank - 1) + [6])
    gamma = b.const(b.rng.uniform(0.5, 1.5, 5), "gamma")
    b.output(b.node(op, [linear(b, x, bias=bias), gamma]) if op == "Div" else b.node(op, [gamma, linear(b, x, bias=bias)]))
    model = b.model()
    result, report = optimize(model)
    assert op_counts(result) == ({"MatMul": 1, "Add": 1} if bias else {"MatMul": 1})
    assert report.passes["matmul_affine"].rewrites == 1
    assert_same_function(model, result)


def test_a_shift_goes_into_the_bias():
    b = ModelBuilder(seed=3)
    y = linear(b, b.input([2, 3, 6]), bias_first=False)
    b.output(b.node("Sub", [y, b.const(b.rng.normal(0, 1, (1, 1, 5)), "shift")]))
    model = onnx.shape_inference.infer_shapes(b.model())
    result, _ = optimize(model)
    assert op_counts(result) == {"MatMul": 1, "Add": 1}
    assert_same_function(model, result)


@pytest.mark.parametrize("case,reason", [
    ("not_last_axis", "not per-channel"),
    ("two_readers", "has 2 consumers"),
    ("broadcasts", "not per-channel"),
    ("no_bias_shift", None),
])
def test_the_negative_twins_stay(case, reason):
    b = ModelBuilder(seed=4)
    x = b.input([2, 3, 6])
    y = linear(b, x, bias=case != "no_bias_shift")
    if case == "not_last_axis":
        c = b.const(b.rng.uniform(0.5, 1.5, (3, 1)), "c")
    elif case == "broadcasts":
        c = b.const(b.rng.uniform(0.5, 1.5, (4, 1, 1, 5)), "c")
    else:
        c = b.const(b.rng.uniform(0.5, 1.5, 5), "c")
    b.output(b.node("Add" if case == "no_bias_shift" else "Mul", [y, c]))
    if case == "two_readers":
        b.output(b.node("Relu", [y]))
    model = onnx.shape_inference.infer_shapes(b.model()) if case != "broadcasts" else b.model()
    assert_unchanged(model, reason, passes=["matmul_affine"])
