"""Bad input: one clear error, no output file, no stray temporary file, the input untouched."""

import os

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from support import ModelBuilder, conv, op_counts

import onnx_fuse
from onnx_fuse.cli import EXIT_USAGE, main


def conv_bn_model():
    b = ModelBuilder()
    b.output(b.batchnorm(conv(b, b.input([1, 4, 6, 6]), 4, 4), 4))
    return b.model()


def run_cli(tmp_path, capsys, source, *extra):
    out = tmp_path / "out" / "result.onnx"
    out.parent.mkdir(exist_ok=True)
    files_before = sorted(p for p in tmp_path.rglob("*"))
    contents = {p: p.read_bytes() for p in files_before if p.is_file()}
    code = main([str(source), "-o", str(out), *extra])
    err = capsys.readouterr().err
    assert code == EXIT_USAGE
    assert err.startswith("onnx-fuse: error:") and err.count("\n") == 1 and "Traceback" not in err
    assert sorted(p for p in tmp_path.rglob("*")) == files_before, "an output or temporary file was left"
    assert all(p.read_bytes() == data for p, data in contents.items()), "the input was modified"
    return err


def test_truncated_model(tmp_path, capsys):
    data = conv_bn_model().SerializeToString()
    (tmp_path / "m.onnx").write_bytes(data[: len(data) // 2])
    run_cli(tmp_path, capsys, tmp_path / "m.onnx")


def test_protobuf_that_is_not_a_model(tmp_path, capsys):
    (tmp_path / "t.onnx").write_bytes(numpy_helper.from_array(np.ones(3, np.float32), "t").SerializeToString())
    assert "not an ONNX model" in run_cli(tmp_path, capsys, tmp_path / "t.onnx")


def test_dangling_input(tmp_path, capsys):
    model = conv_bn_model()
    model.graph.node[0].input[0] = "nowhere"
    onnx.save(model, str(tmp_path / "m.onnx"))
    assert "reads 'nowhere'" in run_cli(tmp_path, capsys, tmp_path / "m.onnx")


def test_duplicate_names(tmp_path, capsys):
    model = conv_bn_model()
    model.graph.node[1].output[0] = model.graph.node[0].output[0]
    onnx.save(model, str(tmp_path / "m.onnx"))
    assert "defined twice" in run_cli(tmp_path, capsys, tmp_path / "m.onnx")


def test_opset_newer_than_onnx_knows(tmp_path, capsys):
    model = conv_bn_model()
    model.opset_import[0].version = onnx.defs.onnx_opset_version() + 1
    onnx.save(model, str(tmp_path / "m.onnx"))
    assert "newer than the installed onnx" in run_cli(tmp_path, capsys, tmp_path / "m.onnx")


def external_model(tmp_path, location):
    model = conv_bn_model()
    weight = model.graph.initializer[0]
    data = weight.raw_data
    weight.ClearField("raw_data")
    weight.data_location = onnx.TensorProto.EXTERNAL
    entry = weight.external_data.add()
    entry.key, entry.value = "location", location
    (tmp_path / "m.onnx").write_bytes(model.SerializeToString())
    return data


def test_missing_external_data(tmp_path, capsys):
    external_model(tmp_path, "weights.bin")
    assert "is missing" in run_cli(tmp_path, capsys, tmp_path / "m.onnx")


@pytest.mark.parametrize("location", ["../outside.bin", "/etc/passwd", "sub/../../outside.bin"])
def test_external_data_outside_the_folder_is_never_read(tmp_path, capsys, location):
    folder = tmp_path / "model"
    folder.mkdir()
    data = external_model(folder, location)
    (tmp_path / "outside.bin").write_bytes(data)
    assert "outside the model's folder" in run_cli(tmp_path, capsys, folder / "m.onnx")


def test_external_data_beside_the_model_is_read(tmp_path):
    data = external_model(tmp_path, "weights.bin")
    (tmp_path / "weights.bin").write_bytes(data)
    report = onnx_fuse.optimize_file(tmp_path / "m.onnx", tmp_path / "out.onnx")
    assert report.rewrites == 1
    assert (tmp_path / "weights.bin").read_bytes() == data
    assert op_counts(onnx.load(str(tmp_path / "out.onnx"))) == {"Conv": 1}


def test_output_that_cannot_be_written(tmp_path, capsys):
    onnx.save(conv_bn_model(), str(tmp_path / "m.onnx"))
    (tmp_path / "afile").write_bytes(b"")
    code = main([str(tmp_path / "m.onnx"), "-o", str(tmp_path / "afile" / "out.onnx")])
    assert code == EXIT_USAGE and "does not exist" in capsys.readouterr().err


def test_output_that_is_a_directory(tmp_path, capsys):
    onnx.save(conv_bn_model(), str(tmp_path / "m.onnx"))
    (tmp_path / "m.onnx.dir").mkdir()
    assert onnx_fuse.optimize_file(tmp_path / "m.onnx", tmp_path / "m2.onnx").rewrites == 1
    with pytest.raises(onnx_fuse.InputError, match="is a directory"):
        onnx_fuse.optimize_file(tmp_path / "m.onnx", tmp_path / "m.onnx.dir")


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_read_only_output_folder(tmp_path, capsys):
    onnx.save(conv_bn_model(), str(tmp_path / "m.onnx"))
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    assert main([str(tmp_path / "m.onnx"), "-o", str(locked / "out.onnx")]) == EXIT_USAGE
    assert "cannot write" in capsys.readouterr().err
