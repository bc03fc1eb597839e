import numpy as np
from onnx import TensorProto
from support import ModelBuilder, assert_same_function, assert_unchanged, conv, op_counts, optimize


def fp16_stem(b, x, same=True):
    """onnxconverter-common's keep_io_types: one Cast of the float32 input per reader."""
    to3 = b.node("Cast", [x], to=TensorProto.FLOAT16)
    to1 = b.node("Cast", [x], to=TensorProto.FLOAT16 if same else TensorProto.FLOAT)
    return to3, to1


def test_one_cast_per_reader_becomes_one_and_the_branches_merge():
    b = ModelBuilder(seed=3, dtype=np.float16)
    x = b.input([1, 4, 6, 6], elem=TensorProto.FLOAT)
    a, c = fp16_stem(b, x)
    y = b.node("Add", [b.batchnorm(conv(b, a, 4, 4), 4), b.batchnorm(conv(b, c, 4, 4, k=1, pads=[0] * 4), 4)])
    b.output(b.node("Cast", [y], to=TensorProto.FLOAT), elem=TensorProto.FLOAT)
    model = b.model()
    result, report = optimize(model)
    assert op_counts(result) == {"Cast": 2, "Conv": 1}
    assert report.passes["dedupe"].rewrites == 1
    assert_same_function(model, result, dtype=np.float16)


def test_casts_to_different_types_stay():
    b = ModelBuilder(seed=3)
    x = b.input([1, 4], elem=TensorProto.FLOAT)
    a, c = fp16_stem(b, x, same=False)
    b.output(a, elem=TensorProto.FLOAT16)
    b.output(c)
    assert_unchanged(b.model(), passes=["dedupe"])


def test_a_duplicate_that_is_a_graph_output_stays():
    b = ModelBuilder(seed=3)
    x = b.input([1, 4])
    first = b.node("Transpose", [x], perm=[1, 0])
    second = b.node("Transpose", [x], perm=[1, 0])
    b.output(b.node("Relu", [first]))
    b.output(second)
    assert_unchanged(b.model(), "is a graph output", passes=["dedupe"])


def test_transposes_with_other_perms_stay():
    b = ModelBuilder(seed=3)
    x = b.input([2, 3, 4])
    b.output(b.node("Relu", [b.node("Transpose", [x], perm=[1, 0, 2])]))
    b.output(b.node("Relu", [b.node("Transpose", [x], perm=[2, 0, 1])]))
    assert_unchanged(b.model(), passes=["dedupe"])


def test_duplicate_transposes_read_by_other_nodes():
    b = ModelBuilder(seed=3)
    x = b.input([2, 3, 4])
    b.output(b.node("Add", [b.node("Transpose", [x], perm=[1, 0, 2]), b.node("Transpose", [x], perm=[1, 0, 2])]))
    model = b.model()
    result, _ = optimize(model, passes=["dedupe"])
    assert op_counts(result) == {"Transpose": 1, "Add": 1}
    assert_same_function(model, result)

