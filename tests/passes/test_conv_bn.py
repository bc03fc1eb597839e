import numpy as np
import pytest
import onnx
from onnx import helper, numpy_helper
from support import ModelBuilder, assert_same_function, assert_unchanged, conv, op_counts, optimize

GROUPS = {"dense": 1, "grouped": 2, "depthwise": 4}


def conv_bn_model(rank=2, groups=1, bias=True, dtype=np.float32, opset=17, transpose=False,
                  bn_attrs=None, extra_reader=False, bn_output_as_output=False, k=3, **conv_attrs):
    b = ModelBuilder(dtype)
    x = b.input([2, 4] + [5] * rank)
    y = conv(b, x, 4, 4, rank=rank, k=k, groups=groups, bias=bias, transpose=transpose, **conv_attrs)
    z = b.batchnorm(y, 4, **(bn_attrs or {}))
    b.output(z)
    if extra_reader:
        b.output(b.node("Relu", [y]))
    if bn_output_as_output:
        b.output(y)
    return b.model(opset)


@pytest.mark.parametrize("transpose", [False, True], ids=["conv", "convtranspose"])
@pytest.mark.parametrize("groups", GROUPS.values(), ids=GROUPS.keys())
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("rank", [1, 2, 3])
def test_fold_conv_bn(rank, groups, bias, transpose):
    model = conv_bn_model(rank, groups, bias, transpose=transpose)
    result, report = optimize(model)
    assert op_counts(result) == {"ConvTranspose" if transpose else "Conv": 1}
    assert report.passes["conv_bn"].rewrites == 1
    assert_same_function(model, result)


@pytest.mark.parametrize("opset", [7, 9, 14, 15, 17, 21])
def test_fold_every_batchnorm_opset(opset):
    model = conv_bn_model(opset=opset)
    result, _ = optimize(model)
    assert op_counts(result) == {"Conv": 1}
    assert_same_function(model, result)


@pytest.mark.parametrize("dtype", [np.float64, np.float16])
def test_fold_keeps_the_weight_dtype(dtype):
    model = conv_bn_model(dtype=dtype)
    result, _ = optimize(model)
    assert op_counts(result) == {"Conv": 1}
    assert {t.data_type for t in result.graph.initializer} == {model.graph.initializer[0].data_type}
    assert_same_function(model, result, dtype=dtype)


def test_fold_strided_dilated_conv():
    model = conv_bn_model(strides=[2, 2], dilations=[2, 2], pads=[2, 2, 2, 2])
    result, _ = optimize(model)
    assert op_counts(result) == {"Conv": 1}
    assert_same_function(model, result)


def test_fold_opset6_batchnorm_with_is_test():
    model = conv_bn_model(opset=6, bn_attrs={"is_test": 1, "spatial": 1})
    result, _ = optimize(model)
    assert op_counts(result) == {"Conv": 1}


def test_fold_keeps_names_and_order_of_outputs():
    model = conv_bn_model()
    result, _ = optimize(model)
    assert [o.name for o in result.graph.output] == [o.name for o in model.graph.output]
    assert [i.name for i in result.graph.input] == [i.name for i in model.graph.input]


def test_weight_read_only_by_the_conv_is_folded_in_place():
    model = conv_bn_model()
    weight, bias = model.graph.node[0].input[1:3]
    result, _ = optimize(model)
    assert list(result.graph.node[0].input[1:3]) == [weight, bias], "the folded tensors keep their names"
    assert {t.name for t in result.graph.initializer} == {weight, bias}
    assert not np.array_equal(numpy_helper.to_array(result.graph.initializer[0]),
                              numpy_helper.to_array(model.graph.initializer[0]))
    assert_same_function(model, result)


def test_bias_goes_into_the_batchnorm_shift_it_replaces():
    model = conv_bn_model(bias=False)
    weight, shift = model.graph.node[0].input[1], model.graph.node[1].input[2]
    result, _ = optimize(model)
    assert list(result.graph.node[0].input[1:]) == [weight, shift]
    assert {t.name for t in result.graph.initializer} == {weight, shift}
    assert_same_function(model, result)


def test_shared_batchnorm_shift_is_not_written_over():
    model = conv_bn_model(bias=False)
    shift = model.graph.node[1].input[2]
    model.graph.node.append(helper.make_node("Neg", [shift], ["minus_shift"]))
    model.graph.output.append(helper.make_tensor_value_info("minus_shift", 1, [4]))
    result, _ = optimize(model)
    assert op_counts(result) == {"Conv": 1, "Neg": 1}
    assert result.graph.node[0].input[2] != shift
    assert {t.name: t for t in result.graph.initializer}[shift] == {t.name: t for t in model.graph.initializer}[shift]
    assert_same_function(model, result)


def test_overridable_weight_is_not_changed_in_place():
    model = conv_bn_model()
    weight = model.graph.node[0].input[1]
    model.graph.input.append(helper.make_tensor_value_info(weight, 1, [4, 4, 3, 3]))
    result, _ = optimize(model, fold_overridable_initializers=True)
    assert op_counts(result) == {"Conv": 1}
    assert result.graph.node[0].input[1] != weight, "a graph input's default must keep its value"
    kept = {t.name: t for t in result.graph.initializer}[weight]
    assert kept == {t.name: t for t in model.graph.initializer}[weight]
    assert_same_function(model, result)


def test_shared_weight_is_not_changed_in_place():
    b = ModelBuilder()
    x = b.input([1, 4, 6, 6])
    w = b.const(b.weights(4, 4, 3, 3), "w")
    y1 = b.node("Conv", [x, w], pads=[1, 1, 1, 1])
    y2 = b.node("Conv", [x, w], pads=[1, 1, 1, 1])
    b.output(b.batchnorm(y1, 4))
    b.output(y2)
    model = b.model()
    result, _ = optimize(model)
    assert op_counts(result) == {"Conv": 2}
    names = {t.name for t in result.graph.initializer}
    assert w in names and len(names) == 3
    assert_same_function(model, result)


# ---- negative twins: one precondition broken, the model comes out byte-identical ----------

def test_refuse_when_conv_output_has_another_reader():
    assert_unchanged(conv_bn_model(extra_reader=True), "has 2 consumers")


def test_refuse_when_conv_output_is_a_graph_output():
    assert_unchanged(conv_bn_model(bn_output_as_output=True), "is a graph output")


def test_refuse_training_mode():
    assert_unchanged(conv_bn_model(opset=15, bn_attrs={"training_mode": 1}), "training mode")


def bn_with_statistics_outputs(opset, outputs=5):
    """BatchNormalization declaring its running and saved statistics as outputs, none of them read."""
    model = conv_bn_model(opset=opset)
    bn = next(n for n in model.graph.node if n.op_type == "BatchNormalization")
    bn.output.extend(f"statistic{i}" for i in range(outputs - 1))
    return model


@pytest.mark.parametrize("opset", [7, 9, 13])
def test_refuse_batchnorm_with_statistics_outputs_before_opset_14(opset):
    """Before opset 14 the number of outputs is the mode: with its statistics declared, even if
    unread, BatchNormalization normalizes by the batch's own statistics (onnxruntime too)."""
    model = bn_with_statistics_outputs(opset)
    assert_unchanged(model, "training mode")
    result, _ = optimize(model)
    assert_same_function(model, result)


@pytest.mark.parametrize("opset", [7, 9, 13])
def test_fold_batchnorm_without_statistics_outputs_before_opset_14(opset):
    """The twin: with only Y declared, the same node is in inference mode and folds."""
    model = bn_with_statistics_outputs(opset, outputs=1)
    result, _ = optimize(model)
    assert op_counts(result) == {"Conv": 1}
    assert_same_function(model, result)


def test_refuse_spatial_zero():
    assert_unchanged(conv_bn_model(opset=7, bn_attrs={"spatial": 0}), "spatial=0")


def test_refuse_statistics_that_are_graph_inputs():
    model = conv_bn_model()
    var = model.graph.node[1].input[4]
    model.graph.input.append(helper.make_tensor_value_info(var, 1, [4]))
    assert_unchanged(model, "is not a constant")


def test_overridable_statistics_fold_when_the_user_says_so():
    model = conv_bn_model()
    var = model.graph.node[1].input[4]
    model.graph.input.append(helper.make_tensor_value_info(var, 1, [4]))
    result, _ = optimize(model, fold_overridable_initializers=True)
    assert op_counts(result) == {"Conv": 1}


def test_refuse_non_constant_weight():
    b = ModelBuilder()
    x = b.input([1, 4, 6, 6])
    w = b.input([4, 4, 3, 3], name="w")
    b.output(b.batchnorm(b.node("Conv", [x, w], pads=[1, 1, 1, 1]), 4))
    assert_unchanged(b.model(), "weight 'w' is not a constant")


def test_refuse_fold_that_overflows_float16():
    model = conv_bn_model(dtype=np.float16)
    var = next(t for t in model.graph.initializer if t.name.startswith("var"))
    var.CopyFrom(numpy_helper.from_array(np.zeros(4, np.float16), var.name))
    model.graph.node[1].attribute[0].f = 1e-12  # epsilon: scale / sqrt(1e-12) = 1e6 x
    assert_unchanged(model, "overflows float16")


def test_custom_domain_batchnorm_is_left_alone():
    model = conv_bn_model()
    model.graph.node[1].domain = "com.example"
    model.opset_import.append(helper.make_opsetid("com.example", 1))
    result, _ = optimize(model)
    assert result.SerializeToString() == model.SerializeToString()


def test_fold_bfloat16_weights():
    """onnxruntime has no bfloat16 Conv on the CPU: check the folded weights themselves, against the
    fold done in float64 on the same bfloat16 values."""
    import ml_dtypes

    b = ModelBuilder(np.float32, seed=5)
    x = b.input([1, 4, 5, 5], elem=16)
    w = b.weights(4, 4, 3, 3).astype(ml_dtypes.bfloat16)
    stats = [b.rng.uniform(0.5, 1.5, 4), b.rng.normal(0, .5, 4), b.rng.normal(0, .5, 4), b.rng.uniform(.1, 2, 4)]
    names = [b.const(v.astype(ml_dtypes.bfloat16), n, dtype=ml_dtypes.bfloat16)
             for v, n in zip([w] + stats, ["w", "s", "bb", "m", "v"])]
    y = b.node("Conv", [x, names[0]], pads=[1] * 4)
    b.output(b.node("BatchNormalization", [y] + names[1:], epsilon=1e-3), elem=16)
    model = b.model(opset=22)  # Conv takes bfloat16 from opset 22
    result, report = optimize(model)
    assert op_counts(result) == {"Conv": 1} and report.passes["conv_bn"].rewrites == 1
    onnx.checker.check_model(result, full_check=True)
    folded = {t.name: numpy_helper.to_array(t) for t in result.graph.initializer}
    weight, bias = (folded[n] for n in result.graph.node[0].input[1:])
    assert weight.dtype == ml_dtypes.bfloat16 and bias.dtype == ml_dtypes.bfloat16
    s, bb, m, v = (np.asarray(a.astype(ml_dtypes.bfloat16), np.float64) for a in stats)
    a = s / np.sqrt(v + 1e-3)
    expected = np.asarray(w, np.float64) * a[:, None, None, None]
    np.testing.assert_allclose(np.asarray(weight, np.float64), expected, rtol=1e-2)
    np.testing.assert_allclose(np.asarray(bias, np.float64), bb - m * a, rtol=1e-2, atol=1e-2)
