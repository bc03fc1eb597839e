"""Valid models that once crashed: sparse initializers pass through; a model onnxruntime cannot
run on made-up inputs is reported as not verifiable, never with a traceback."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from support import ModelBuilder, conv, op_counts, optimize, session

import onnx_fuse
from onnx_fuse.cli import EXIT_OK, EXIT_USAGE, main


def with_sparse_initializer(in_branch=False) -> onnx.ModelProto:
    """Conv -> BN (folds) beside an Add of a sparse initializer (left as it is)."""
    b = ModelBuilder(seed=5)
    x = b.input([1, 4, 3, 3])
    y = b.batchnorm(conv(b, x, 4, 4), 4)
    b.output(b.node("Add", [y, "sparse"]))
    model = b.model()
    values = numpy_helper.from_array(np.array([1.5, -2.0, 0.25], dtype=np.float32), "sparse")
    indices = numpy_helper.from_array(np.array([0, 7, 35], dtype=np.int64), "sparse_indices")
    model.graph.sparse_initializer.append(helper.make_sparse_tensor(values, indices, [1, 4, 3, 3]))
    model.graph.output[0].CopyFrom(helper.make_tensor_value_info(model.graph.output[0].name, TensorProto.FLOAT,
                                                                 [1, 4, 3, 3]))
    return model


def assert_same_outputs(model, result):
    """onnxruntime (which densifies sparse initializers) gives the same outputs; the checker
    without its full check (shape inference has no sparse types for Add or Mul)."""
    onnx.checker.check_model(result)
    feeds = {"x": np.random.default_rng(0).standard_normal((1, 4, 3, 3)).astype(np.float32)}
    expected, actual = session(model).run(None, feeds), session(result).run(None, feeds)
    np.testing.assert_allclose(actual[0], expected[0], rtol=1e-5, atol=1e-5)


def test_a_sparse_initializer_passes_through():
    model = with_sparse_initializer()
    onnx.checker.check_model(model)
    result, report = optimize(model)
    assert report.passes["conv_bn"].rewrites == 1
    assert op_counts(result) == {"Conv": 1, "Add": 1}
    assert [s.SerializeToString() for s in result.graph.sparse_initializer] == \
        [s.SerializeToString() for s in model.graph.sparse_initializer]
    assert_same_outputs(model, result)
    assert onnx_fuse.optimize(result).SerializeToString() == result.SerializeToString()


def test_a_sparse_initializer_passes_through_the_file_path(tmp_path):
    model = with_sparse_initializer()
    source = tmp_path / "in.onnx"
    onnx.save(model, str(source))
    assert main([str(source), "-o", str(tmp_path / "out.onnx"), "-q", "--verify"]) == EXIT_OK
    assert onnx.load(str(tmp_path / "out.onnx")).SerializeToString() == onnx_fuse.optimize(model).SerializeToString()


def test_a_sparse_initializer_read_by_a_folding_op_is_not_a_constant():
    """The sparse tensor as a Mul's constant: not folded (the passes read dense constants only)."""
    b = ModelBuilder(seed=6)
    x = b.input([1, 4, 3, 3])
    b.output(b.node("Mul", [conv(b, x, 4, 4), "sparse"]))
    model = b.model()
    values = numpy_helper.from_array(np.array([2.0], dtype=np.float32), "sparse")
    indices = numpy_helper.from_array(np.array([1], dtype=np.int64), "sparse_indices")
    model.graph.sparse_initializer.append(helper.make_sparse_tensor(values, indices, [1, 4, 1, 1]))
    model.graph.output[0].CopyFrom(helper.make_tensor_value_info(model.graph.output[0].name, TensorProto.FLOAT,
                                                                 [1, 4, 3, 3]))
    result, report = optimize(model)
    assert result.SerializeToString() == model.SerializeToString()
    assert_same_outputs(model, result)


def branch_selected_by_an_int64_input() -> onnx.ModelProto:
    """A Conv -> BN, then a Gather at an index computed from an int64 input (a sample rate, say):
    random values put the index out of range, so onnxruntime fails inside the original model."""
    b = ModelBuilder(seed=7)
    x = b.input([1, 4, 3, 3])
    rate = b.input([1], name="rate", elem=TensorProto.INT64)
    y = b.batchnorm(conv(b, x, 4, 4), 4)
    table = b.const(np.arange(4, dtype=np.float32), "table")
    index = b.node("Add", [rate, b.const(np.array([1000], dtype=np.int64), "offset", dtype=np.int64)])
    picked = b.node("Gather", [table, index])
    b.output(b.node("Mul", [y, picked]))
    return b.model()


def test_verify_on_a_model_that_fails_in_onnxruntime_says_so_in_one_line(tmp_path, capsys):
    source = tmp_path / "in.onnx"
    onnx.save(branch_selected_by_an_int64_input(), str(source))
    out = tmp_path / "out.onnx"
    assert main([str(source), "-o", str(out), "--verify"]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot verify" in err and str(source) in err and "Traceback" not in err, err
    assert not out.exists()
    assert main([str(source), "-o", str(out), "-q"]) == EXIT_OK  # the twin: without --verify it is written


def test_verify_in_the_api_raises_an_input_error():
    with pytest.raises(onnx_fuse.InputError, match="cannot verify"):
        onnx_fuse.optimize(branch_selected_by_an_int64_input(), verify=True)
