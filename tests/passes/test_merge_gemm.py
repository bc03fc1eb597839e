import numpy as np
import pytest
from support import ModelBuilder, assert_same_function, assert_unchanged, op_counts, optimize


def gemm(b, x, k=6, n=5, trans_b=0, alpha=1.0, beta=1.0, bias_shape=(5,), trans_a=0):
    w = b.weights(n, k) if trans_b else b.weights(k, n)
    inputs = [x, b.const(w, "w")]
    if bias_shape is not None:
        inputs.append(b.const(b.rng.normal(0, 0.5, bias_shape), "c"))
    return b.node("Gemm", inputs, transB=trans_b, alpha=alpha, beta=beta, transA=trans_a)


@pytest.mark.parametrize("op", ["Add", "Sub", "Sum"])
def test_distillation_head_becomes_one_gemm(op):
    """RepViT: (head(x) + head_dist(x)) / 2; the Div then folds into the merged Gemm."""
    b = ModelBuilder(seed=1)
    x = b.input([3, 6])
    heads = [gemm(b, x, trans_b=1, alpha=0.7), gemm(b, x, beta=1.5, bias_shape=(1, 5))]
    if op == "Sum":
        heads.append(gemm(b, x, bias_shape=None))
    y = b.node(op, heads)
    b.output(b.node("Div", [y, b.const(np.array(2.0, np.float32), "two")]))
    model = b.model()
    result, report = optimize(model)
    assert op_counts(result) == {"Gemm": 1}
    assert report.passes["merge_gemm"].rewrites == 1
    assert_same_function(model, result)


@pytest.mark.parametrize("case,reason", [
    ("other_input", None),
    ("trans_a", "transA=1"),
    ("two_readers", "has 2 consumers"),
    ("bias_rows", "is not one row"),
])
def test_the_negative_twins_stay(case, reason):
    b = ModelBuilder(seed=2)
    x = b.input([6, 6] if case == "trans_a" else [3, 6])
    other = b.input([3, 6], name="z") if case == "other_input" else x
    first = gemm(b, x, trans_a=1 if case == "trans_a" else 0)
    second = gemm(b, other, bias_shape=(3, 5) if case == "bias_rows" else (5,))
    b.output(b.node("Add", [first, second]))
    if case == "two_readers":
        b.output(b.node("Relu", [first]))
    assert_unchanged(b.model(), reason, passes=["merge_gemm"])
