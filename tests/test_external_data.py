"""Models with external data, up to over 2 GB: read lazily, written beside the output, atomically,
never touching the input's files."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from support import op_counts

import onnx_fuse
from onnx_fuse.cli import EXIT_OK, main


def conv_bn_chain(folder: Path, layers: int, channels: int, data_name="weights.bin", seed=0) -> Path:
    """Conv 3x3 -> BatchNormalization, `layers` times, every Conv weight in one external file,
    written tensor by tensor so that the test never holds the whole model in memory."""
    rng = np.random.default_rng(seed)
    nodes, inits, x, offset = [], [], "x", 0
    with open(folder / data_name, "wb") as data:
        for i in range(layers):
            w = rng.random((channels, channels, 3, 3), dtype=np.float32)
            w -= 0.5
            w *= 2.0 / (3 * channels ** 0.5)
            tensor = TensorProto(name=f"w{i}", data_type=TensorProto.FLOAT, dims=w.shape,
                                 data_location=TensorProto.EXTERNAL)
            for key, value in (("location", data_name), ("offset", str(offset)), ("length", str(w.nbytes))):
                entry = tensor.external_data.add()
                entry.key, entry.value = key, value
            w.tofile(data)
            offset += w.nbytes
            del w
            stats = [rng.uniform(0.5, 1.5, channels), rng.normal(0, 0.1, channels), rng.normal(0, 0.1, channels),
                     rng.uniform(0.5, 2.0, channels)]
            inits += [tensor] + [numpy_helper.from_array(v.astype(np.float32), f"bn{i}_{j}") for j, v in enumerate(stats)]
            nodes.append(helper.make_node("Conv", [x, f"w{i}"], [f"c{i}"], pads=[1, 1, 1, 1], name=f"conv{i}"))
            nodes.append(helper.make_node("BatchNormalization", [f"c{i}"] + [f"bn{i}_{j}" for j in range(4)],
                                          [f"y{i}"], name=f"bn{i}"))
            x = f"y{i}"
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, channels, 3, 3])],
                              [helper.make_tensor_value_info(x, TensorProto.FLOAT, [1, channels, 3, 3])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = folder / "model.onnx"
    path.write_bytes(model.SerializeToString())
    return path


def run_from_path(path: Path, feeds):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"]).run(None, feeds)


def snapshot(folder: Path):
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.iterdir()}


def assert_same_outputs(original: Path, optimized: Path, channels: int):
    feeds = {"x": np.random.default_rng(1).standard_normal((1, channels, 3, 3)).astype(np.float32)}
    expected, actual = run_from_path(original, feeds)[0], run_from_path(optimized, feeds)[0]
    np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-5 * float(np.abs(expected).max()))


@pytest.fixture
def folders(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "out").mkdir()
    return tmp_path / "in", tmp_path / "out"


def test_external_data_is_written_beside_the_output(folders):
    source, target = folders
    model = conv_bn_chain(source, 3, 16)
    before = snapshot(source)
    data_before = (source / "weights.bin").read_bytes()
    report = onnx_fuse.optimize_file(model, target / "fused.onnx")
    assert report.rewrites == 3
    assert snapshot(source) == before and (source / "weights.bin").read_bytes() == data_before
    assert sorted(p.name for p in target.iterdir()) == ["fused.onnx", "fused.onnx.data"]
    result = onnx.load(str(target / "fused.onnx"))
    assert op_counts(result) == {"Conv": 3}
    assert_same_outputs(model, target / "fused.onnx", 16)


def test_verify_reads_external_data(folders):
    source, target = folders
    model = conv_bn_chain(source, 2, 8)
    report = onnx_fuse.optimize_file(model, target / "fused.onnx", verify=True)
    assert report.verification["max_rel_error"] < 1e-5
    assert_same_outputs(model, target / "fused.onnx", 8)


def test_external_data_name_and_threshold(folders, capsys):
    source, target = folders
    model = conv_bn_chain(source, 2, 8)
    inline = source / "inline.onnx"
    onnx.save(onnx.load(str(model)), str(inline))  # the same model with its data inside
    assert main([str(inline), "-o", str(target / "m.onnx"), "--external-data", "w.bin",
                 "--external-data-threshold", "1000", "-q"]) == EXIT_OK
    result = onnx.load(str(target / "m.onnx"), load_external_data=False)
    external = [t.name for t in result.graph.initializer if t.data_location == TensorProto.EXTERNAL]
    assert sorted(external) == ["w0", "w1"]  # folded in place; the 8-float BN vectors stay inline
    assert (target / "w.bin").exists()
    assert_same_outputs(inline, target / "m.onnx", 8)


def test_never_overwrites_the_inputs_data_file(folders):
    source, _ = folders
    model = conv_bn_chain(source, 1, 8)
    data_before = (source / "weights.bin").read_bytes()
    with pytest.raises(onnx_fuse.InputError, match="would overwrite external data of"):
        onnx_fuse.optimize_file(model, source / "fused.onnx", external_data="weights.bin")
    assert (source / "weights.bin").read_bytes() == data_before
    assert sorted(p.name for p in source.iterdir()) == ["model.onnx", "weights.bin"]


def test_inplace_replaces_model_and_data_atomically(folders):
    source, _ = folders
    model = conv_bn_chain(source, 2, 8)
    keep = source.parent / "original"
    shutil.copytree(source, keep)
    onnx_fuse.optimize_file(model, model, inplace=True, external_data="weights.bin")
    assert op_counts(onnx.load(str(model))) == {"Conv": 2}
    assert sorted(p.name for p in source.iterdir()) == ["model.onnx", "weights.bin"]
    assert_same_outputs(keep / "model.onnx", model, 8)


def test_model_over_2gb(tmp_path):
    """Over 2 GB of Conv weights in external data: read and written with external data, the input's
    files untouched, and peak memory well under the model's size (each weight is read, folded a slab
    at a time and written to the output's data file at once)."""
    free = shutil.disk_usage(tmp_path).free
    if free < 8 << 30:
        pytest.skip(f"needs 8 GB of free disk in {tmp_path}, has {free >> 30} GB")
    source, target = tmp_path / "in", tmp_path / "out"
    source.mkdir()
    target.mkdir()
    model = conv_bn_chain(source, 4, 4000)  # 4 x 576 MB
    size = (source / "weights.bin").stat().st_size
    assert size > 2**31
    before = snapshot(source)
    child = subprocess.Popen([sys.executable, "-m", "onnx_fuse", str(model), "-o", str(target / "big.onnx"), "-q"])
    _, status, usage = os.wait4(child.pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    peak = usage.ru_maxrss * 1024
    print(f"model {size / 1e9:.2f} GB, onnx-fuse peak RSS {peak / 1e9:.2f} GB")
    assert peak < size + (512 << 20)
    assert snapshot(source) == before
    assert sorted(p.name for p in target.iterdir()) == ["big.onnx", "big.onnx.data"]
    assert op_counts(onnx.load(str(target / "big.onnx"), load_external_data=False)) == {"Conv": 4}
    assert_same_outputs(model, target / "big.onnx", 4000)


def test_small_tensors_in_external_data_come_inline_where_onnxruntime_needs_them(tmp_path):
    """A Loop body whose Reshape reads a shape held in external data (every tensor saved there):
    onnxruntime cannot infer shapes from it. The output keeps only tensors of the threshold and
    more in its data file, so onnxruntime loads and runs it."""
    rng = np.random.default_rng(2)
    c = 8
    body_inits = [numpy_helper.from_array(v.astype(np.float32), n) for v, n in [
        (rng.normal(0, .2, (c, c, 3, 3)), "w"), (rng.uniform(.5, 1.5, c), "s"), (rng.normal(0, .5, c), "b"),
        (rng.normal(0, .5, c), "m"), (rng.uniform(.5, 2, c), "v")]]
    body_inits.append(numpy_helper.from_array(np.array([1, c, 5, 5], np.int64), "shape"))
    body = helper.make_graph([
        helper.make_node("Identity", ["cond_in"], ["cond_out"]),
        helper.make_node("Conv", ["xin", "w"], ["cv"], pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["cv", "s", "b", "m", "v"], ["bn"]),
        helper.make_node("Reshape", ["bn", "shape"], ["xout"])], "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("xin", TensorProto.FLOAT, [1, c, 5, 5])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("xout", TensorProto.FLOAT, [1, c, 5, 5])], body_inits)
    graph = helper.make_graph([helper.make_node("Loop", ["trips", "", "x"], ["y"], body=body)], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c, 5, 5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, c, 5, 5])],
                              [numpy_helper.from_array(np.array(2, np.int64), "trips")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    feeds = {"x": rng.standard_normal((1, c, 5, 5)).astype(np.float32)}
    plain = tmp_path / "plain.onnx"
    onnx.save(model, str(plain))
    expected = run_from_path(plain, feeds)[0]
    source = tmp_path / "in.onnx"
    onnx.save(model, str(source), save_as_external_data=True, all_tensors_to_one_file=True, location="in.data",
              size_threshold=0)
    report = onnx_fuse.optimize_file(source, tmp_path / "out.onnx")
    assert report.passes["conv_bn"].rewrites == 1
    written = onnx.load(str(tmp_path / "out.onnx"), load_external_data=False)
    shape = next(t for t in written.graph.node[0].attribute[0].g.initializer if t.name == "shape")
    assert not onnx_fuse.io.is_external(shape)
    actual = run_from_path(tmp_path / "out.onnx", feeds)[0]
    np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-4)
