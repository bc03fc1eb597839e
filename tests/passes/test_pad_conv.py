import numpy as np
import pytest
from support import ModelBuilder, assert_same_function, assert_unchanged, conv, op_counts, optimize


def pad(b, x, pads, opset=17, value=None, mode=None):
    attrs = {} if mode is None else {"mode": mode}
    if opset < 11:
        if value is not None:
            attrs["value"] = float(value)
        return b.node("Pad", [x], pads=pads, **attrs)
    inputs = [x, b.const(np.array(pads, np.int64), "pads", dtype=np.int64)]
    if value is not None:
        inputs.append(b.const(np.array(value, np.float32), "value"))
    return b.node("Pad", inputs, **attrs)


@pytest.mark.parametrize("opset", [9, 13, 18])
@pytest.mark.parametrize("pads", [[0, 0, 1, 1, 0, 0, 1, 1], [0, 0, 0, 0, 0, 0, 1, 1], [0, 0, 2, 0, 0, 0, 1, 3]])
def test_zero_pad_goes_into_the_conv(opset, pads):
    b = ModelBuilder(seed=4)
    x = b.input([1, 4, 7, 7])
    b.output(conv(b, pad(b, x, pads, opset), 4, 6, pads=[1, 0, 0, 1], strides=[2, 1]))
    model = b.model(opset=opset)
    result, report = optimize(model)
    assert op_counts(result) == {"Conv": 1}
    assert report.passes["pad_conv"].rewrites == 1
    assert_same_function(model, result)


def test_keras_zero_padding_before_branches_lets_them_merge():
    """ZeroPadding2D -> depthwise 3x3 (valid), beside a 1x1 and the identity of the same input."""
    b = ModelBuilder(seed=5)
    x = b.input([1, 4, 6, 6])
    dw = conv(b, pad(b, x, [0, 0, 1, 1, 0, 0, 1, 1]), 4, 4, groups=4, pads=[0, 0, 0, 0])
    one = conv(b, x, 4, 4, k=1, groups=4, pads=[0, 0, 0, 0])
    b.output(b.node("Add", [b.node("Add", [dw, one]), b.batchnorm(x, 4)]))
    model = b.model()
    result, _ = optimize(model)
    assert op_counts(result) == {"Conv": 1}
    assert_same_function(model, result)


def test_zero_pad_before_average_pool_is_counted():
    b = ModelBuilder(seed=6)
    x = b.input([1, 4, 6, 6])
    b.output(b.node("AveragePool", [pad(b, x, [0, 0, 1, 1, 0, 0, 1, 1])], kernel_shape=[3, 3]))
    model = b.model()
    result, _ = optimize(model)
    assert op_counts(result) == {"AveragePool": 1}
    assert_same_function(model, result)


@pytest.mark.parametrize("case,reason", [
    ("value", "value that is not zero"),
    ("reflect", "not constant"),
    ("channel", "batch or channel"),
    ("crop", "crops"),
    ("maxpool", None),
    ("same", "auto_pad SAME_UPPER"),
    ("avg_exclude", "excludes its own padding"),
    ("avg_kernel", "pad by its kernel size or more"),
])
def test_the_negative_twins_stay(case, reason):
    b = ModelBuilder(seed=7)
    x = b.input([1, 4, 6, 6])
    pads = {"channel": [0, 1, 1, 1, 0, 0, 1, 1], "crop": [0, 0, -1, 1, 0, 0, 1, 1]}.get(case, [0, 0, 1, 1, 0, 0, 1, 1])
    p = pad(b, x, pads, value=0.5 if case == "value" else None, mode="reflect" if case == "reflect" else None)
    cin = 5 if case == "channel" else 4
    if case == "maxpool":
        b.output(b.node("MaxPool", [p], kernel_shape=[3, 3]))
    elif case == "avg_kernel":  # the fuzzer's find: onnxruntime refuses AveragePool pads >= kernel
        b.output(b.node("AveragePool", [p], kernel_shape=[1, 3]))
    elif case == "avg_exclude":
        b.output(b.node("AveragePool", [p], kernel_shape=[3, 3], pads=[1, 1, 1, 1]))
    elif case == "same":
        b.output(conv(b, p, cin, 4, auto_pad="SAME_UPPER"))
    else:
        b.output(conv(b, p, cin, 4, pads=[0, 0, 0, 0]))
    assert_unchanged(b.model(), reason, passes=["pad_conv"])


def test_pad_read_by_a_conv_and_a_maxpool_stays():
    b = ModelBuilder(seed=8)
    p = pad(b, b.input([1, 4, 6, 6]), [0, 0, 1, 1, 0, 0, 1, 1])
    b.output(conv(b, p, 4, 4, pads=[0, 0, 0, 0]))
    b.output(b.node("MaxPool", [p], kernel_shape=[3, 3]))
    assert_unchanged(b.model(), passes=["pad_conv"])
