"""Idioms a runtime fuses into one kernel are never taken apart by a fold, even an exact one; the
same constants outside an idiom still fold (each case has that negative twin)."""

import numpy as np
import onnx
import pytest
from support import ModelBuilder, assert_same_function, conv, op_counts, optimize

from onnx_fuse.idioms import find_idioms
from onnx_fuse.scope import GraphScope, NameScope


def scalar(b, value):
    return b.const(np.array(value, dtype=np.float32), "s")


def gelu_erf(b, x):
    """torch's erf GELU: x * (1 + erf(x / sqrt 2)), then * 0.5."""
    erf = b.node("Erf", [b.node("Div", [x, scalar(b, 1.4142135)])])
    return b.node("Mul", [b.node("Mul", [x, b.node("Add", [erf, scalar(b, 1.0)])]), scalar(b, 0.5)])


def gelu_half_first(b, x):
    """0.5 * x first, then * (1 + erf(x * 1/sqrt 2))."""
    erf = b.node("Erf", [b.node("Mul", [x, scalar(b, 0.70710678)])])
    return b.node("Mul", [b.node("Mul", [x, scalar(b, 0.5)]), b.node("Add", [erf, scalar(b, 1.0)])])


def gelu_tanh(b, x):
    cube = b.node("Mul", [b.node("Pow", [x, scalar(b, 3.0)]), scalar(b, 0.044715)])
    inner = b.node("Mul", [b.node("Add", [x, cube]), scalar(b, 0.7978845)])
    gate = b.node("Add", [b.node("Tanh", [inner]), scalar(b, 1.0)])
    return b.node("Mul", [b.node("Mul", [x, gate]), scalar(b, 0.5)])


def hardswish(b, x):
    """x * relu6(x + 3) / 6, as TensorFlow writes it."""
    clip = b.node("Clip", [b.node("Add", [x, scalar(b, 3.0)]), scalar(b, 0.0), scalar(b, 6.0)])
    return b.node("Div", [b.node("Mul", [x, clip]), scalar(b, 6.0)])


def layer_norm(b, x, c):
    """LayerNormalization over the channel axis of [N, C, 1, 1], written out, with gamma and beta."""
    mean = b.node("ReduceMean", [x], axes=[1], keepdims=1)
    d = b.node("Sub", [x, mean])
    var = b.node("ReduceMean", [b.node("Pow", [d, scalar(b, 2.0)])], axes=[1], keepdims=1)
    norm = b.node("Div", [d, b.node("Sqrt", [b.node("Add", [var, scalar(b, 1e-5)])])])
    gamma = b.const(b.rng.uniform(0.5, 1.5, (1, c, 1, 1)), "gamma")
    beta = b.const(b.rng.normal(0, 0.5, (1, c, 1, 1)), "beta")
    return b.node("Add", [b.node("Mul", [norm, gamma]), beta])


def relu_then_half(b, x):
    """Not an idiom: the Mul(0.5) is a plain scale, and folds."""
    return b.node("Mul", [b.node("Relu", [x]), scalar(b, 0.5)])


def model_with(activation, size=5):
    b = ModelBuilder(seed=3)
    x = b.input([1, 4, size, size])
    h = conv(b, x, 4, 4)
    h = activation(b, h) if activation is not layer_norm else layer_norm(b, h, 4)
    b.output(conv(b, h, 4, 4, k=1, pads=[0, 0, 0, 0]))
    return b.model(opset=13)


def idiom_ops(model) -> list:
    graph = GraphScope(model.graph, opset=13, ir_version=model.ir_version, names=NameScope.of(model))
    return sorted(graph.node(i).op_type for i in find_idioms(graph, graph.indices_of))


@pytest.mark.parametrize("activation,ops", [
    (gelu_erf, ["Add", "Div", "Erf", "Mul", "Mul"]),
    (gelu_half_first, ["Add", "Erf", "Mul", "Mul", "Mul"]),
    (gelu_tanh, ["Add", "Add", "Mul", "Mul", "Mul", "Mul", "Pow", "Tanh"]),
    (hardswish, ["Add", "Clip", "Div", "Mul"]),
])
def test_activation_idioms_are_found_whole(activation, ops):
    assert idiom_ops(model_with(activation)) == ops


@pytest.mark.parametrize("activation", [gelu_erf, gelu_tanh, hardswish])
def test_the_constant_at_the_end_of_an_activation_idiom_stays(activation):
    """bn_conv could fold GELU's final Mul(0.5) (or HardSwish's Div(6)) into the 1x1 Conv after it:
    exact, but onnxruntime would no longer fuse the GELU, and the model would run slower."""
    model = model_with(activation)
    result, report = optimize(model)
    assert op_counts(result) == op_counts(model)
    assert any(r.pass_name == "bn_conv" and "which runtimes fuse into one kernel" in r.reason
               for r in report.refused), report.refused
    assert_same_function(model, result)


def test_layer_norm_keeps_gamma_and_beta():
    b = ModelBuilder(seed=3)
    x = b.input([1, 4, 1, 1])
    h = layer_norm(b, conv(b, x, 4, 4, k=1, pads=[0, 0, 0, 0]), 4)
    b.output(conv(b, h, 4, 4, k=1, pads=[0, 0, 0, 0]))
    model = onnx.shape_inference.infer_shapes(b.model(opset=13))  # shapes, so that only the idiom stops bn_conv
    assert idiom_ops(model) == ["Add", "Add", "Div", "Mul", "Pow", "ReduceMean", "ReduceMean", "Sqrt", "Sub"]
    result, report = optimize(model)
    assert op_counts(result) == op_counts(model)
    assert any("LayerNorm" in r.reason for r in report.refused), report.refused
    assert_same_function(model, result)


def test_the_negative_twin_a_plain_scale_after_relu_folds():
    model = model_with(relu_then_half)
    result, report = optimize(model)
    assert op_counts(result)["Mul"] == 0 and report.passes["bn_conv"].rewrites == 1
    assert_same_function(model, result)


def test_a_batchnorm_before_an_idiom_still_folds_into_its_conv():
    b = ModelBuilder(seed=5)
    x = b.input([1, 4, 5, 5])
    h = gelu_erf(b, b.batchnorm(conv(b, x, 4, 4), 4))
    b.output(h)
    model = b.model(opset=13)
    result, _ = optimize(model)
    assert op_counts(result)["BatchNormalization"] == 0
    assert_same_function(model, result)


def test_silu_after_keras_batchnorm_leaves_the_batchnorm_foldable():
    """Keras writes BN as Mul + Add, then SiLU reads the Add: the Mul and Add are not the idiom's."""
    b = ModelBuilder(seed=6)
    x = b.input([1, 4, 5, 5])
    h = conv(b, x, 4, 4)
    h = b.node("Add", [b.node("Mul", [h, b.const(b.rng.uniform(0.5, 1.5, (1, 4, 1, 1)), "a")]),
                       b.const(b.rng.normal(0, 0.5, (1, 4, 1, 1)), "c")])
    b.output(b.node("Mul", [h, b.node("Sigmoid", [h])]))
    model = b.model(opset=13)
    assert idiom_ops(model) == ["Mul", "Sigmoid"]
    result, _ = optimize(model)
    assert op_counts(result) == {"Conv": 1, "Sigmoid": 1, "Mul": 1}
    assert_same_function(model, result)
