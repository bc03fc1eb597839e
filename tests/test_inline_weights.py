"""Files with their weights inline: optimize_file leaves the large ones in the input file, reads
only those a rewrite needs, and writes the output with the same weights as the in-memory path."""

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from support import assert_same_function, op_counts

import onnx_fuse
from onnx_fuse import io
from onnx_fuse.cli import EXIT_OK, EXIT_USAGE, main

CHANNELS = 48  # a 48x48x3x3 float weight is 81 KB: above io.LARGE_TENSOR_BYTES


def inline_model(seed=0, explicit_location=False) -> onnx.ModelProto:
    """Conv -> BN, Conv -> BN, then a Conv with nothing to fold (its weight must come out as it was)."""
    rng = np.random.default_rng(seed)
    c = CHANNELS
    nodes, inits, x = [], [], "x"
    for i in range(3):
        w = (rng.standard_normal((c, c, 3, 3)) / (3 * c ** 0.5)).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        nodes.append(helper.make_node("Conv", [x, f"w{i}"], [f"c{i}"], pads=[1, 1, 1, 1], name=f"conv{i}"))
        x = f"c{i}"
        if i < 2:
            stats = [rng.uniform(0.5, 1.5, c), rng.normal(0, 0.1, c), rng.normal(0, 0.1, c), rng.uniform(0.5, 2, c)]
            inits += [numpy_helper.from_array(v.astype(np.float32), f"bn{i}_{j}") for j, v in enumerate(stats)]
            nodes.append(helper.make_node("BatchNormalization", [x] + [f"bn{i}_{j}" for j in range(4)], [f"y{i}"],
                                          name=f"bn{i}"))
            x = f"y{i}"
            nodes.append(helper.make_node("Relu", [x], [f"r{i}"]))
            x = f"r{i}"
    if explicit_location:
        for tensor in inits:
            tensor.data_location = TensorProto.DEFAULT  # present on the wire, so the loader leaves it be
    graph = helper.make_graph(nodes, "inline", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c, 5, 5])],
                              [helper.make_tensor_value_info(x, TensorProto.FLOAT, [1, c, 5, 5])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def weights(model) -> dict:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


@pytest.fixture
def source(tmp_path):
    path = tmp_path / "model.onnx"
    path.write_bytes(inline_model().SerializeToString())
    return path


def test_large_weights_stay_in_the_file_while_the_passes_run(source):
    model = io.load_path(source, lazy=True)
    left = [t.name for t in model.graph.initializer if io.is_external(t)]
    assert left == ["w0", "w1", "w2"], "the large weights, and only those, are left in the file"
    assert model.ByteSize() < 10_000
    external = io.ExternalData(source)
    assert all(external.is_inline(t) for t in model.graph.initializer if t.name in left)
    original = weights(inline_model())
    for tensor in model.graph.initializer:
        np.testing.assert_array_equal(external.read(tensor), original[tensor.name])
    assert not io.needs_external_data(model, external)


@pytest.mark.parametrize("explicit_location", [False, True])
def test_file_output_equals_the_in_memory_result(tmp_path, explicit_location):
    model = inline_model(explicit_location=explicit_location)
    source = tmp_path / "model.onnx"
    source.write_bytes(model.SerializeToString())
    before = source.read_bytes()
    report = onnx_fuse.optimize_file(source, tmp_path / "out.onnx")
    assert source.read_bytes() == before
    written = onnx.load(str(tmp_path / "out.onnx"))
    onnx.checker.check_model(written, full_check=True)
    assert not any(io.is_external(t) for t in written.graph.initializer)
    assert op_counts(written) == {"Conv": 3, "Relu": 2}
    assert report.after.nodes == 5
    expected = weights(onnx_fuse.optimize(model))
    actual = weights(written)
    assert actual.keys() == expected.keys()
    for name, values in expected.items():
        np.testing.assert_array_equal(actual[name], values, err_msg=name)
    assert written.graph.initializer[[t.name for t in written.graph.initializer].index("w2")] \
        == model.graph.initializer[[t.name for t in model.graph.initializer].index("w2")], "untouched weight copied"
    assert_same_function(model, written)


def test_file_output_unchanged_when_nothing_folds(tmp_path):
    model = inline_model()
    keep = [n for n in model.graph.node if n.op_type != "BatchNormalization"]
    for node in keep:  # Conv -> Relu only: nothing to fold
        node.input[0] = {"y0": "c0", "y1": "c1"}.get(node.input[0], node.input[0])
    del model.graph.node[:]
    model.graph.node.extend(keep)
    del model.graph.initializer[:]
    model.graph.initializer.extend(t for t in inline_model().graph.initializer if t.name.startswith("w"))
    source = tmp_path / "model.onnx"
    source.write_bytes(model.SerializeToString())
    onnx_fuse.optimize_file(source, tmp_path / "out.onnx")
    written = onnx.load(str(tmp_path / "out.onnx"))
    assert op_counts(written) == op_counts(model)
    assert {t.name: t for t in written.graph.initializer} == {t.name: t for t in model.graph.initializer}


def test_verify_reads_weights_left_in_the_file(source, tmp_path):
    report = onnx_fuse.optimize_file(source, tmp_path / "out.onnx", verify=True)
    assert report.verification["max_rel_error"] < 1e-5
    assert_same_function(inline_model(), onnx.load(str(tmp_path / "out.onnx")))


def test_external_data_output_from_an_inline_input(source, tmp_path, capsys):
    assert main([str(source), "-o", str(tmp_path / "out.onnx"), "--external-data", "w.bin", "-q"]) == EXIT_OK
    written = onnx.load(str(tmp_path / "out.onnx"), load_external_data=False)
    assert {t.name for t in written.graph.initializer if io.is_external(t)} >= {"w2"}
    assert_same_function(inline_model(), onnx.load(str(tmp_path / "out.onnx")))


def test_inplace_reads_the_input_before_replacing_it(source):
    assert main([str(source), "-o", str(source), "--inplace", "-q"]) == EXIT_OK
    written = onnx.load(str(source))
    assert op_counts(written) == {"Conv": 3, "Relu": 2}
    assert_same_function(inline_model(), written)


def test_truncated_large_model_is_refused_in_one_line(source, tmp_path, capsys):
    data = source.read_bytes()
    source.write_bytes(data[: len(data) // 2])
    assert main([str(source), "-o", str(tmp_path / "out.onnx")]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert err.startswith("onnx-fuse: error:") and err.count("\n") == 1
    assert not (tmp_path / "out.onnx").exists()


def test_copies_through_memory_where_the_kernel_cannot(source, tmp_path, monkeypatch):
    def unsupported(*args):
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(io.os, "copy_file_range", unsupported)
    onnx_fuse.optimize_file(source, tmp_path / "out.onnx")
    written = onnx.load(str(tmp_path / "out.onnx"))
    np.testing.assert_array_equal(weights(written)["w2"], weights(inline_model())["w2"])
    assert_same_function(inline_model(), written)


FIXTURES = sorted((Path(__file__).resolve().parent.parent / "fixtures").glob("*.onnx"))


@pytest.mark.parametrize("fixture", FIXTURES, ids=[p.stem for p in FIXTURES])
def test_every_weight_left_in_the_file_gives_the_in_memory_result(fixture, tmp_path, monkeypatch):
    """The real exports once more, with the threshold at one byte: every weight is read from the
    file, every folded one held and streamed out. The file must equal the in-memory result."""
    monkeypatch.setattr(io, "LARGE_TENSOR_BYTES", 1)
    model = onnx.load(str(fixture))
    expected = onnx_fuse.optimize(model)
    onnx_fuse.optimize_file(fixture, tmp_path / "out.onnx")
    written = onnx.load(str(tmp_path / "out.onnx"))
    assert [n.SerializeToString() for n in written.graph.node] == [n.SerializeToString() for n in expected.graph.node]
    assert [t.name for t in written.graph.initializer] == [t.name for t in expected.graph.initializer]
    for name, values in weights(expected).items():
        np.testing.assert_array_equal(weights(written)[name], values, err_msg=name)
