"""Published re-parameterizable blocks, built directly in ONNX with random weights and BN
statistics: each merges into the node count of its deploy form, with the same outputs."""

import numpy as np
import pytest
from onnx import TensorProto
from support import ModelBuilder, assert_optimizes_to, assert_same_function, assert_unchanged, conv, op_counts, optimize

C = 8


def conv_bn(b, x, k=3, stride=1, groups=1, pads=None, cout=C, cin=C, bias=False, dilation=1, bn=True):
    kernel = (k, k) if isinstance(k, int) else tuple(k)
    pads = pads if pads is not None else [dilation * (kk // 2) for kk in kernel] * 2
    w = b.weights(cout, cin // groups, *kernel)
    inputs = [x, b.const(w, "w")] + ([b.const(b.rng.normal(0, .5, cout), "b")] if bias else [])
    y = b.node("Conv", inputs, group=groups, kernel_shape=list(kernel), pads=pads, strides=[stride] * 2,
               dilations=[dilation] * 2)
    return b.batchnorm(y, cout) if bn else y


def block_model(build, size=7, seed=0, relu=True):
    b = ModelBuilder(seed=seed)
    x = b.input([2, C, size, size])
    y = build(b, x)
    b.output(b.node("Relu", [y]) if relu else y)
    return b.model()


def add(b, *terms):
    y = terms[0]
    for term in terms[1:]:
        y = b.node("Add", [y, term])
    return y


def repvgg(stride=1, groups=1, identity=True):
    def build(b, x):
        terms = [conv_bn(b, x, 3, stride, groups), conv_bn(b, x, 1, stride, groups, pads=[0] * 4)]
        if identity:
            terms.append(b.batchnorm(x, C))
        return add(b, *terms)
    return build


def mobileone(b, x):
    terms = [conv_bn(b, x, 3, groups=C) for _ in range(4)]
    terms.append(conv_bn(b, x, 1, groups=C, pads=[0] * 4))
    terms.append(b.batchnorm(x, C))
    return b.node("Sum", terms)


def acnet(b, x):
    return add(b, conv_bn(b, x, 3), conv_bn(b, x, (1, 3), pads=[0, 1, 0, 1]), conv_bn(b, x, (3, 1), pads=[1, 0, 1, 0]))


def dbb_padded(b, x):
    one_then_k = conv_bn(b, conv_bn(b, x, 1, pads=[0] * 4, bn=False), 3)
    pool = b.batchnorm(b.node("AveragePool", [x], kernel_shape=[3, 3], pads=[1] * 4, count_include_pad=1), C)
    return add(b, conv_bn(b, x, 3), one_then_k, pool, conv_bn(b, x, 1, pads=[0] * 4))


def dbb_unpadded(b, x):
    one_then_k = conv_bn(b, conv_bn(b, x, 1, pads=[0] * 4), 3, pads=[0] * 4)
    pool = b.batchnorm(b.node("AveragePool", [x], kernel_shape=[3, 3]), C)
    return add(b, conv_bn(b, x, 3, pads=[0] * 4), one_then_k, pool)


def dbb_grouped(b, x):
    """DBB in a grouped layer: each branch keeps the layer's groups, the 1x1 before the 3x3 too."""
    one_then_k = conv_bn(b, conv_bn(b, x, 1, groups=2, pads=[0] * 4), 3, groups=2, pads=[0] * 4)
    k_then_one = conv_bn(b, conv_bn(b, x, 3, groups=2, pads=[0] * 4), 1, groups=2, pads=[0] * 4)
    return add(b, conv_bn(b, x, 3, groups=2, pads=[0] * 4), one_then_k, k_then_one)


def repvit(b, x):
    return b.batchnorm(add(b, conv_bn(b, x, 3, groups=C), conv_bn(b, x, 1, groups=C, pads=[0] * 4), x), C)


def fastvit_repmixer(b, x):
    mixer = conv_bn(b, x, 3, groups=C)
    norm = b.batchnorm(x, C)
    scale = b.const(b.rng.uniform(0.5, 1.5, (C, 1, 1)), "layer_scale")
    return b.node("Add", [x, b.node("Mul", [scale, b.node("Sub", [mixer, norm])])])


def ppyoloe_alpha(b, x):
    alpha = b.const([0.7], "alpha")
    return b.node("Identity", [add(b, conv_bn(b, x, 3), b.node("Mul", [alpha, conv_bn(b, x, 1, pads=[0] * 4)]))])


def large_kernel(b, x):
    return add(b, conv_bn(b, x, 7, groups=C), conv_bn(b, x, 3, groups=C))


def dilated(b, x):
    return add(b, conv_bn(b, x, 3, dilation=2), conv_bn(b, x, 1, pads=[0] * 4), x)


BLOCKS = {
    "repvgg": (repvgg(), {"Conv": 1, "Relu": 1}),
    "repvgg-stride2": (repvgg(stride=2, identity=False), {"Conv": 1, "Relu": 1}),
    "repvgg-g2": (repvgg(groups=2), {"Conv": 1, "Relu": 1}),
    "repvgg-g4": (repvgg(groups=4), {"Conv": 1, "Relu": 1}),
    "repvgg-depthwise": (repvgg(groups=C), {"Conv": 1, "Relu": 1}),
    "mobileone": (mobileone, {"Conv": 1, "Relu": 1}),
    "acnet": (acnet, {"Conv": 1, "Relu": 1}),
    "dbb-padded": (dbb_padded, {"Conv": 1, "Relu": 1}),
    "dbb-unpadded": (dbb_unpadded, {"Conv": 1, "Relu": 1}),
    "dbb-grouped": (dbb_grouped, {"Conv": 1, "Relu": 1}),
    "repvit-post-sum-bn": (repvit, {"Conv": 1, "Relu": 1}),
    "fastvit-repmixer": (fastvit_repmixer, {"Conv": 1, "Relu": 1}),
    "ppyoloe-alpha": (ppyoloe_alpha, {"Conv": 1, "Relu": 1}),
    "7x7+3x3": (large_kernel, {"Conv": 1, "Relu": 1}),
    "dilated": (dilated, {"Conv": 1, "Relu": 1}),
}


@pytest.mark.parametrize("name", BLOCKS)
@pytest.mark.parametrize("seed", [0, 1])
def test_block_merges_into_its_deploy_form(name, seed):
    build, deploy_ops = BLOCKS[name]
    model = block_model(build, seed=seed)
    result, report = optimize(model)
    assert op_counts(result) == deploy_ops, report.refused
    assert report.passes["merge_branches"].rewrites >= 1
    assert_same_function(model, result)


def test_branches_computed_in_float16_keep_their_dtype():
    b = ModelBuilder(np.float16, seed=3)
    x = b.input([1, C, 6, 6])
    b.output(add(b, conv_bn(b, x, 3), conv_bn(b, x, 1, pads=[0] * 4), x))
    model = b.model()
    result, _ = optimize(model)
    assert op_counts(result) == {"Conv": 1}
    assert_same_function(model, result, dtype=np.float16)


def test_blocks_in_sequence_all_merge():
    def two_blocks(b, x):
        return repvgg()(b, b.node("Relu", [repvgg()(b, x)]))
    model = block_model(two_blocks)
    result, report = optimize(model)
    assert op_counts(result) == {"Conv": 2, "Relu": 2}
    assert_same_function(model, result)


# ---- negative twins: each breaks one condition, and the graph comes out unchanged -----------

def refuse(build, reason, size=7, **options):
    assert_unchanged(block_model(build, size=size), reason, passes=["merge_branches"], **options)


def test_refuse_a_nonlinearity_in_a_branch():
    refuse(lambda b, x: add(b, conv(b, x, C, C), b.node("Relu", [conv(b, x, C, C, k=1)])), "is not linear")


def test_refuse_an_intermediate_with_another_reader():
    def build(b, x):
        side = conv(b, x, C, C, k=1)
        b.output(side)
        return add(b, conv(b, x, C, C), side)
    refuse(build, "graph output")


def test_refuse_an_intermediate_read_twice():
    def build(b, x):
        side = conv(b, x, C, C, k=1)
        return b.node("Mul", [add(b, conv(b, x, C, C), side), side])
    refuse(build, "readers")


def test_refuse_non_constant_weights():
    def build(b, x):
        w = b.input([C, C, 3, 3], name="w")
        return add(b, b.node("Conv", [x, w], pads=[1] * 4), conv(b, x, C, C, k=1))
    refuse(build, "not a constant")


def test_refuse_different_strides():
    refuse(lambda b, x: add(b, conv(b, x, C, C, strides=[2, 2], pads=[1, 1, 0, 0]), conv(b, x, C, C, k=1, strides=[1, 1])),
           "different strides", size=4)


def test_merge_kernels_that_are_not_centred_but_line_up():
    model = block_model(lambda b, x: add(b, conv(b, x, C, C, pads=[0, 0, 2, 2]), conv(b, x, C, C, k=1)))
    result, _ = optimize(model)
    assert op_counts(result) == {"Conv": 1, "Relu": 1}
    assert_same_function(model, result)


def keras_same_stride_2(b, x):
    """What tf2onnx writes for Keras padding='same', stride 2, on an even input: the 3x3 is
    padded at the end only, the 1x1 not at all."""
    return add(b, conv_bn(b, x, 3, 2, pads=[0, 0, 1, 1]), conv_bn(b, x, 1, 2, pads=[0] * 4))


def test_strided_same_padding_merges_on_an_input_of_known_size():
    model = block_model(keras_same_stride_2, size=8)
    result, report = optimize(model)
    assert op_counts(result) == {"Conv": 1, "Relu": 1}, report.refused
    assert_same_function(model, result)


def test_strided_same_padding_merges_behind_a_layer_of_inferred_size():
    model = block_model(lambda b, x: keras_same_stride_2(b, b.node("Relu", [x])), size=8)
    result, report = optimize(model)
    assert op_counts(result) == {"Conv": 1, "Relu": 2}, report.refused
    assert_same_function(model, result)


def test_refuse_strided_same_padding_on_an_input_of_unknown_size():
    b = ModelBuilder()
    x = b.input([2, C, "height", "width"])
    b.output(b.node("Relu", [keras_same_stride_2(b, x)]))
    assert_unchanged(b.model(), "does not record its length", passes=["merge_branches"])


def same_conv_bn(b, x, k, stride, padding, groups=1):
    y = conv(b, x, C, C, k=k, groups=groups, auto_pad=padding, strides=[stride] * 2)
    return b.batchnorm(y, C)


def unknown_size_model(build):
    b = ModelBuilder()
    x = b.input([2, C, "height", "width"])
    b.output(b.node("Relu", [build(b, x)]))
    return b.model()


def assert_same_function_at_sizes(model, result, sizes=((8, 8), (7, 9), (9, 6), (5, 5), (12, 11), (1, 2))):
    rng = np.random.default_rng(3)
    for size in sizes:
        assert_same_function(model, result, {"x": rng.standard_normal((2, C) + size).astype(np.float32)})


@pytest.mark.parametrize("padding", ["SAME_UPPER", "SAME_LOWER"])
@pytest.mark.parametrize("stride, kernels, groups", [
    (2, (3, 3), C),  # MobileOne's strided depthwise branches under Keras padding='same'
    (2, (3, 3, 3), 1),
    (3, (3, 3), 1),
    (2, (2, 2), 1),
    (2, (5, 3), 1),  # a 3x3 sits at the centre of a 5x5 at every size under SAME
    (2, (4, 2), 1),  # and a 2x2 at the same place in a 4x4
])
def test_strided_same_branches_that_line_up_at_every_size_merge_on_unknown_sizes(padding, stride, kernels, groups):
    model = unknown_size_model(lambda b, x: add(b, *[same_conv_bn(b, x, k, stride, padding, groups) for k in kernels]))
    result, report = optimize(model)
    assert op_counts(result) == {"Conv": 1, "Relu": 1}, report.refused
    merged = next(node for node in result.graph.node if node.op_type == "Conv")
    assert {a.name: a for a in merged.attribute}["auto_pad"].s.decode() == padding
    assert_same_function_at_sizes(model, result)


@pytest.mark.parametrize("branches", [
    lambda b, x: add(b, same_conv_bn(b, x, 3, 2, "SAME_UPPER"), same_conv_bn(b, x, 1, 2, "SAME_UPPER")),
    lambda b, x: add(b, same_conv_bn(b, x, 3, 2, "SAME_UPPER"), same_conv_bn(b, x, 3, 2, "SAME_LOWER")),
    lambda b, x: add(b, same_conv_bn(b, x, 3, 2, "SAME_UPPER"), same_conv_bn(b, x, 2, 2, "SAME_UPPER")),
], ids=["3x3_beside_1x1", "upper_beside_lower", "3x3_beside_2x2"])
def test_refuse_strided_same_branches_that_line_up_only_at_some_sizes(branches):
    """The negative twins: these line up on even sizes or on odd ones, not on both."""
    assert_unchanged(unknown_size_model(branches), "give it (--input-shape)", passes=["merge_branches"])


def test_refuse_kernel_centres_between_dilated_taps():
    refuse(lambda b, x: add(b, conv(b, x, C, C, dilations=[2, 2], pads=[1, 1, 3, 3]), conv(b, x, C, C, k=1)),
           "centres do not line up")


def test_refuse_outputs_of_different_sizes():
    refuse(lambda b, x: add(b, conv(b, x, C, C, pads=[0] * 4), conv(b, x, C, C, k=1)), "do not line up")


def test_refuse_different_groups():
    refuse(lambda b, x: add(b, conv(b, x, C, C, groups=2), conv(b, x, C, C, k=1, groups=4)), "different groups")


def test_refuse_different_dilations():
    refuse(lambda b, x: add(b, conv(b, x, C, C, dilations=[2, 2], pads=[2] * 4), conv(b, x, C, C, pads=[1] * 4)),
           "different dilations")


def test_refuse_a_merge_that_costs_more():
    def build(b, x):
        pool = b.node("AveragePool", [x], kernel_shape=[3, 3], pads=[1] * 4, count_include_pad=1)
        return add(b, conv(b, x, C, C, k=1), pool)
    refuse(build, "more work")


def test_refuse_pool_that_excludes_padding():
    def build(b, x):
        pool = b.node("AveragePool", [x], kernel_shape=[3, 3], pads=[1] * 4)
        return add(b, conv(b, x, C, C), pool)
    refuse(build, "count_include_pad=0")


def test_refuse_convolutions_in_sequence_with_different_groups():
    refuse(lambda b, x: add(b, conv(b, conv(b, x, C, C, k=1, groups=2, pads=[0] * 4), C, C, groups=4, pads=[0] * 4),
                            conv(b, x, C, C, groups=4, pads=[0] * 4)), "different groups")


def test_refuse_biased_1x1_before_padded_kxk():
    refuse(lambda b, x: add(b, conv(b, conv(b, x, C, C, k=1), C, C), conv(b, x, C, C)), "does not compose exactly")


def test_refuse_branches_of_different_inputs():
    def build(b, x):
        other = b.input([2, C, 7, 7], name="other")
        return add(b, conv(b, x, C, C), conv(b, other, C, C))
    refuse(build, "not computed from")


def test_refuse_identity_with_stride_2():
    refuse(lambda b, x: add(b, conv(b, x, C, C, strides=[2, 2], pads=[1, 1, 1, 1]), x), "different strides", size=3)


def nhwc_block(identity_perm=(0, 3, 1, 2), const_shape=(C,)):
    """tf2onnx's form: the NHWC input is transposed for the convs, while the identity branch's BN
    (as Mul + Add by [C] constants) stays in NHWC behind a Transpose of its own."""
    b = ModelBuilder(seed=11)
    x = b.input([2, 7, 7, C])
    t = b.node("Transpose", [x], perm=[0, 3, 1, 2])
    scale = b.const(b.rng.uniform(0.5, 1.5, const_shape), "scale")
    shift = b.const(b.rng.normal(0, 0.5, const_shape), "shift")
    identity = b.node("Transpose", [b.node("Add", [b.node("Mul", [x, scale]), shift])], perm=list(identity_perm))
    y = add(b, conv_bn(b, t, 3), conv_bn(b, t, 1, pads=[0] * 4), identity)
    b.output(b.node("Transpose", [b.node("Relu", [y])], perm=[0, 2, 3, 1]))
    return b.model()


def test_identity_branch_computed_in_nhwc_merges():
    model = nhwc_block()
    result, report = optimize(model)
    assert op_counts(result) == {"Transpose": 2, "Conv": 1, "Relu": 1}
    assert_same_function(model, result)


def test_refuse_nhwc_branch_behind_a_different_transpose():
    b = ModelBuilder(seed=12)
    x = b.input([2, 7, 7, C])
    t = b.node("Transpose", [x], perm=[0, 3, 1, 2])
    other = b.node("Transpose", [b.node("Mul", [x, b.const(np.full(C, 2.0), "k")])], perm=[0, 3, 2, 1])
    b.output(add(b, conv(b, t, C, C), other))
    assert_unchanged(b.model(), "does not match the layout Transpose", passes=["merge_branches"])


def test_refuse_nhwc_constant_that_is_not_per_channel():
    """The two conv branches still merge; the NHWC branch scaled per row stays as it is."""
    model = nhwc_block(const_shape=(7, 1, C))
    result, report = optimize(model)
    assert any("is not per-channel" in r.reason for r in report.refused)
    assert op_counts(result) == {"Transpose": 3, "Mul": 1, "Add": 2, "Conv": 1, "Relu": 1}
    assert_same_function(model, result)


def test_refuse_branches_with_different_output_channels_broadcast():
    refuse(lambda b, x: add(b, conv(b, x, C, C), conv(b, x, C, 1, k=1)), "different channel counts")


def expanded_border(b, value, y, axis, length, width_from_batch=False):
    """paddle2onnx's border with a dynamic batch: Expand(value [1,C,1,1], the shape of y with its
    `axis` set to 1), that shape computed from Shape(y) at run time, through a float Max."""
    batch = b.node("Slice", [b.node("Shape", [y]), b.const([0], "start", np.int64), b.const([1], "end", np.int64)])
    sizes = [batch, b.const([C], "c", np.int64), b.const([1], "one", np.int64), b.const([length], "w", np.int64)]
    if axis == 3:
        sizes[2], sizes[3] = sizes[3], sizes[2]
    if width_from_batch:
        sizes[axis] = batch
    wanted = b.node("Cast", [b.node("Concat", sizes, axis=0)], to=1)
    value = b.const(value.reshape(1, C, 1, 1), "value")
    shape = b.node("Cast", [b.node("Max", [b.node("Cast", [b.node("Shape", [value])], to=1), wanted])], to=7)
    return b.node("Expand", [value, shape])


def bn_and_pad(b, x, size, value_shift=0.0, per_channel=True, k=1, dynamic=False, width_from_batch=False):
    """DBB's BNAndPad as paddle2onnx writes it: conv -> BN -> Concat(border, y, border) on axis 2, then on
    axis 3, the borders holding BN(0) per channel (fixed batch 2; `dynamic`: Expand to a shape
    computed at run time, as with a dynamic batch)."""
    rng = b.rng
    scale, bias, mean, var = rng.uniform(0.5, 1.5, C), rng.normal(0, .5, C), rng.normal(0, .5, C), rng.uniform(.5, 2, C)
    y = conv_bn(b, x, k, pads=[0] * 4, bn=False)
    y = b.node("BatchNormalization", [y] + [b.const(v, n) for v, n in zip((scale, bias, mean, var), "sbmv")],
               epsilon=1e-5)
    value = (bias - mean * scale / np.sqrt(var + 1e-5)).astype(np.float32) + np.float32(value_shift)
    for axis, length in ((2, size - k + 1), (3, size - k + 3)):
        shape = [2, C, length, length]
        shape[axis] = 1
        border = np.broadcast_to(value.reshape(1, C, 1, 1), shape).copy()
        if not per_channel:
            border[0, 0, 0, 0] += 1.0
        if dynamic:
            other = shape[5 - axis]
            borders = [expanded_border(b, value, y, axis, other, width_from_batch) for _ in range(2)]
        else:
            borders = [b.const(border, "border") for _ in range(2)]
        y = b.node("Concat", [borders[0], y, borders[1]], axis=axis)
    return y


def dynamic_batch_model(build, size=7):
    b = ModelBuilder()
    x = b.input(["batch", C, size, size])
    b.output(b.node("Relu", [build(b, x)]))
    return b.model()


def assert_same_function_at_batches(model, result, batches=(1, 2, 3)):
    rng = np.random.default_rng(5)
    for n in batches:
        assert_same_function(model, result, {"x": rng.standard_normal((n, C, 7, 7)).astype(np.float32)})


def test_dbb_borders_expanded_to_a_run_time_shape_merge():
    """paddle2onnx's DBB with a dynamic batch: the borders are Expands to shapes computed from
    Shape() of the branch; the shape arithmetic goes with the merge."""
    def build(b, x):
        one_then_k = conv_bn(b, bn_and_pad(b, x, 7, dynamic=True), 3, pads=[0] * 4)
        pool = b.batchnorm(b.node("AveragePool", [bn_and_pad(b, x, 7, dynamic=True)], kernel_shape=[3, 3]), C)
        return add(b, conv_bn(b, x, 3), one_then_k, pool, conv_bn(b, x, 1, pads=[0] * 4))
    model = dynamic_batch_model(build)
    result, report = optimize(model)
    assert op_counts(result) == {"Conv": 1, "Relu": 1}, report.refused
    assert_same_function_at_batches(model, result)


def test_refuse_expanded_borders_whose_shape_is_read_elsewhere():
    """The negative twins: the border's shape arithmetic feeds a graph output too, or its width is
    the run-time batch."""
    def shape_read_twice(b, x):
        y = bn_and_pad(b, x, 7, dynamic=True)
        expand = next(n for n in reversed(b.nodes) if n.op_type == "Expand")
        b.output(expand.input[1], elem=TensorProto.INT64)
        return add(b, conv_bn(b, y, 3, pads=[0] * 4), conv_bn(b, x, 3))
    model = dynamic_batch_model(shape_read_twice)
    result, report = optimize(model, passes=["merge_branches"])
    assert op_counts(result)["Concat"] == model_concats(model)
    assert any("sizes a Concat border, is read elsewhere" in r.reason for r in report.refused), report.refused
    assert_same_function_at_batches(model, result)

    model = dynamic_batch_model(lambda b, x: add(b, conv_bn(b, bn_and_pad(b, x, 7, dynamic=True, width_from_batch=True),
                                                            3, pads=[0] * 4), conv_bn(b, x, 3)))
    assert_unchanged(model, "depends on a size the model does not record", passes=["merge_branches"])


def model_concats(model):
    return sum(node.op_type == "Concat" for node in model.graph.node)


def dbb_bn_and_pad(b, x, size=7, **kwargs):
    one_then_k = conv_bn(b, bn_and_pad(b, x, size, **kwargs), 3, pads=[0] * 4)
    pool = b.batchnorm(b.node("AveragePool", [bn_and_pad(b, x, size)], kernel_shape=[3, 3]), C)
    return add(b, conv_bn(b, x, 3), one_then_k, pool, conv_bn(b, x, 1, pads=[0] * 4))


def test_dbb_bn_and_pad_borders_merge():
    """paddle2onnx's DBB: the 1x1 -> BNAndPad -> 3x3 and 1x1 -> BNAndPad -> AveragePool branches merge too."""
    model = block_model(dbb_bn_and_pad)
    result, report = optimize(model)
    assert op_counts(result) == {"Conv": 1, "Relu": 1}, report.refused
    assert_same_function(model, result)


@pytest.mark.parametrize("kwargs,reason", [
    (dict(value_shift=0.25), "the padding value is not what the branch gives"),
    (dict(per_channel=False), "is not one value per channel"),
    (dict(k=3), "larger than 1x1"),
])
def test_dbb_borders_that_are_not_the_branchs_padding_stay(kwargs, reason):
    def build(b, x):
        size = 7
        y = bn_and_pad(b, x, size, **kwargs)
        return add(b, conv_bn(b, y, 3, pads=[0] * 4), conv_bn(b, x, 3, pads=[0] * 4 if kwargs.get("k") == 3 else None))
    model = block_model(build)
    result, report = optimize(model, passes=["merge_branches"])
    assert op_counts(result)["Concat"] == 2
    assert any(reason in r.reason for r in report.refused), report.refused
    assert_same_function(model, result)


def exclusive_pool(b, x):
    """Paddle's AvgPool2D default (exclusive=True): the border averages fewer pixels, so it is not
    a convolution."""
    return b.batchnorm(b.node("AveragePool", [x], kernel_shape=[3, 3], pads=[1] * 4, count_include_pad=0), C)


@pytest.mark.parametrize("build, ops", [
    # PaddleClas's depthwise DBB: (3x3 + exclusive pool) + (1x1 -> 3x3)
    (lambda b, x: add(b, add(b, conv_bn(b, x, 3, groups=C), exclusive_pool(b, x)),
                      conv_bn(b, conv_bn(b, x, 1, pads=[0] * 4, groups=C, bn=False), 3, groups=C)),
     {"Conv": 1, "AveragePool": 1, "BatchNormalization": 1, "Add": 1, "Relu": 1}),
    # a nonlinear term among linear ones, in a Sum
    (lambda b, x: b.node("Sum", [conv_bn(b, x, 3), b.node("Sigmoid", [x]), conv_bn(b, x, 1, pads=[0] * 4),
                                 b.batchnorm(x, C)]),
     {"Conv": 1, "Sigmoid": 1, "Add": 1, "Relu": 1}),
], ids=["dbb_depthwise_exclusive_pool", "sum_with_a_sigmoid"])
def test_terms_that_are_branches_merge_and_the_others_are_added(build, ops):
    assert_optimizes_to(block_model(build), ops)


def test_refuse_a_sum_with_one_branch_beside_other_terms():
    """The negative twin: one convolution beside an exclusive pool and a Sigmoid has nothing to
    merge with."""
    refuse(lambda b, x: add(b, add(b, conv_bn(b, x, 3), exclusive_pool(b, x)), b.node("Sigmoid", [x])),
           "excludes the padding")
