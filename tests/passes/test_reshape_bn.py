import numpy as np
import onnx
import pytest
from support import ModelBuilder, assert_same_function, assert_unchanged, op_counts, optimize


def levit_block(b, x, k=6, c=5, flatten="flatten", restore="shape", flatten_axis=2):
    """Linear (MatMul) on [B, N, K] tokens, then BatchNorm1d on the flattened tokens, reshaped back."""
    y = b.node("MatMul", [x, b.const(b.weights(k, c), "w")])
    if flatten == "flatten":
        flat = b.node("Flatten", [y], axis=flatten_axis)
    else:
        flat = b.node("Reshape", [y, b.const(np.array([-1, c], np.int64), "rows", dtype=np.int64)])
    z = b.batchnorm(flat, c)
    if restore == "shape":
        target = b.node("Shape", [y])
    else:
        target = b.const(np.array(restore, np.int64), "back", dtype=np.int64)
    return b.node("Reshape", [z, target])


@pytest.mark.parametrize("flatten,restore", [("flatten", "shape"), ("reshape", "shape"), ("reshape", [2, 3, 5])])
def test_batchnorm_on_flattened_tokens_folds_into_the_linear(flatten, restore):
    b = ModelBuilder(seed=1)
    x = b.input([2, 3, 6])
    b.output(b.node("Relu", [levit_block(b, x, flatten=flatten, restore=restore)]))
    model = b.model()
    result, report = optimize(model)
    assert op_counts(result) == {"MatMul": 1, "Add": 1, "Relu": 1}
    assert report.passes["reshape_bn"].rewrites == 1
    assert_same_function(model, result)


def test_float16_tokens_with_float32_statistics_fold_in_float16():
    """Opset 15 lets a float16 BatchNormalization take float32 scale, bias and statistics: the Mul
    and Add that the MatMul takes are in the data's type (the fuzzer found float32 ones: invalid)."""
    b = ModelBuilder(dtype=np.float16, seed=4)
    x = b.input([2, 3, 6])
    y = b.node("MatMul", [x, b.const(b.weights(6, 5), "w")])
    flat = b.node("Flatten", [y], axis=2)
    stats = [b.const(v, hint, dtype=np.float32) for v, hint in (
        (b.rng.uniform(0.5, 1.5, 5), "scale"), (b.rng.normal(0, 0.5, 5), "bnbias"),
        (b.rng.normal(0, 0.5, 5), "mean"), (b.rng.uniform(0.05, 2.0, 5), "var"))]
    z = b.node("BatchNormalization", [flat] + stats, epsilon=1e-3)
    b.output(b.node("Relu", [b.node("Reshape", [z, b.node("Shape", [y])])]))
    model = b.model(opset=15)
    result, report = optimize(model)
    assert op_counts(result) == {"MatMul": 1, "Add": 1, "Relu": 1}
    assert report.passes["reshape_bn"].rewrites == 1
    onnx.checker.check_model(result, full_check=True)
    assert_same_function(model, result, dtype=np.float16)


@pytest.mark.parametrize("case,reason", [
    ("axis", "Flatten does not keep the last axis"),
    ("other_shape", "is not known to give"),
])
def test_the_negative_twins_stay(case, reason):
    b = ModelBuilder(seed=2)
    x = b.input([2, 1, 6] if case == "axis" else [2, 3, 6])
    if case == "axis":  # [2, 1, 6] flattened at axis 1: columns of 6 all the same, but not by the rule
        y = b.node("MatMul", [x, b.const(b.weights(6, 6), "w")])
        z = b.batchnorm(b.node("Flatten", [y], axis=1), 6)
        b.output(b.node("Reshape", [z, b.node("Shape", [y])]))
    else:
        b.output(levit_block(b, x, flatten="reshape", restore=[3, 2, 5]))
    assert_unchanged(b.model(), reason, passes=["reshape_bn"])


def test_a_pre_norm_on_the_residual_stream_stays_a_batchnorm():
    """BN(x.flatten(0, 1)).reshape_as(x) where x also feeds the residual: no MatMul takes a Mul in,
    and a Mul + Add would run slower than the one BatchNormalization."""
    b = ModelBuilder(seed=3)
    x = b.node("Relu", [b.input([2, 3, 5])])
    z = b.batchnorm(b.node("Flatten", [x], axis=2), 5)
    y = b.node("Reshape", [z, b.node("Shape", [x])])
    b.output(b.node("Add", [x, b.node("MatMul", [y, b.const(b.weights(5, 5), "w")])]))
    assert_unchanged(b.model(), "would not fold away", passes=["reshape_bn"])
