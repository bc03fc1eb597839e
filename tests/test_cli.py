import json
import subprocess
import sys

import onnx
import pytest
from support import ModelBuilder, conv, op_counts

from onnx_fuse.cli import EXIT_OK, EXIT_USAGE, main


def test_module_entry_point_runs(model_file, tmp_path):
    out = tmp_path / "out.onnx"
    done = subprocess.run([sys.executable, "-m", "onnx_fuse", str(model_file), "-o", str(out)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "BatchNormalization" in done.stdout and "conv_bn 1" in done.stdout
    assert op_counts(onnx.load(str(out))) == {"Conv": 1}


def test_quiet_prints_nothing_and_report_is_json(model_file, tmp_path, capsys):
    report = tmp_path / "report.json"
    assert main([str(model_file), "-o", str(tmp_path / "out.onnx"), "-q", "--report", str(report)]) == EXIT_OK
    assert capsys.readouterr().out == ""
    data = json.loads(report.read_text())
    assert data["rewrites"] == 1 and data["after"]["ops"] == {"Conv": 1}


def test_verbose_lists_refusals(tmp_path, capsys):
    b = ModelBuilder()
    y = conv(b, b.input([1, 4, 6, 6]), 4, 4)
    b.output(b.batchnorm(y, 4))
    b.output(y)
    path = tmp_path / "in.onnx"
    onnx.save(b.model(), str(path))
    assert main([str(path), "-o", str(tmp_path / "out.onnx"), "-v"]) == EXIT_OK
    assert "is a graph output" in capsys.readouterr().out


def test_list_passes(capsys):
    assert main(["--list-passes"]) == EXIT_OK
    assert "conv_bn" in capsys.readouterr().out


def test_verify(model_file, tmp_path, capsys):
    assert main([str(model_file), "-o", str(tmp_path / "out.onnx"), "--verify"]) == EXIT_OK
    assert "verified: max abs error" in capsys.readouterr().out


def test_output_equal_to_input_needs_inplace(model_file, capsys):
    before = model_file.read_bytes()
    assert main([str(model_file), "-o", str(model_file)]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--inplace" in err or "inplace" in err
    assert model_file.read_bytes() == before
    assert main([str(model_file), "-o", str(model_file), "--inplace", "-q"]) == EXIT_OK


@pytest.mark.parametrize("content", [None, b"", b"\x00\x01garbage" * 10])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, content):
    path = tmp_path / "bad.onnx"
    if content is not None:
        path.write_bytes(content)
    out = tmp_path / "out.onnx"
    assert main([str(path), "-o", str(out)]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert err.startswith("onnx-fuse: error:") and err.count("\n") == 1
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == (["bad.onnx"] if content is not None else [])


def test_unknown_pass_is_a_usage_error(model_file, tmp_path, capsys):
    assert main([str(model_file), "-o", str(tmp_path / "o.onnx"), "--passes", "nope"]) == EXIT_USAGE
    from onnx_fuse.passes import DEFAULT_PASSES

    assert "known passes: " + ", ".join(p.name for p in DEFAULT_PASSES) in capsys.readouterr().err


def test_missing_output_folder(model_file, tmp_path, capsys):
    assert main([str(model_file), "-o", str(tmp_path / "no" / "out.onnx")]) == EXIT_USAGE
    assert "does not exist" in capsys.readouterr().err


def test_several_inputs_into_a_folder_one_bad_file(model_file, tmp_path, capsys):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"junk")
    out = tmp_path / "out"
    assert main([str(model_file), str(bad), "-o", str(out)]) == EXIT_USAGE
    assert op_counts(onnx.load(str(out / "in.onnx"))) == {"Conv": 1}
    assert not (out / "bad.onnx").exists()
    assert "1 of 2 models written" in capsys.readouterr().out


def test_a_folder_of_models(tmp_path, capsys):
    models = tmp_path / "models"
    models.mkdir()
    for name in ("a", "b"):
        b = ModelBuilder(seed=len(name))
        b.output(b.batchnorm(conv(b, b.input([1, 4, 6, 6]), 4, 4), 4))
        onnx.save(b.model(), str(models / f"{name}.onnx"))
    assert main([str(models), "-o", str(tmp_path / "fused")]) == EXIT_OK
    out = capsys.readouterr().out
    assert "2 of 2 models written" in out and out.count("conv_bn 1") == 2
    assert sorted(p.name for p in (tmp_path / "fused").iterdir()) == ["a.onnx", "b.onnx"]
    assert op_counts(onnx.load(str(tmp_path / "fused" / "a.onnx"))) == {"Conv": 1}
