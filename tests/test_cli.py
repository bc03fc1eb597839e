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
    (model,) = data["models"]
    assert model["rewrites"]["conv_bn"] == 1 and model["ops_after"] == {"Conv": 1}


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
    assert "  verify: PASSED (max abs " in capsys.readouterr().out


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
    out = capsys.readouterr().out
    assert "1 of 2 models written" in out and ", 1 failed" in out


def test_a_folder_of_models(tmp_path, capsys):
    models = tmp_path / "models"
    models.mkdir()
    for name in ("a", "b"):
        b = ModelBuilder(seed=len(name))
        b.output(b.batchnorm(conv(b, b.input([1, 4, 6, 6]), 4, 4), 4))
        onnx.save(b.model(), str(models / f"{name}.onnx"))
    assert main([str(models), "-o", str(tmp_path / "fused")]) == EXIT_OK
    out = capsys.readouterr().out
    assert "2 of 2 models written" in out and "nodes 4 -> 2" in out
    assert sorted(p.name for p in (tmp_path / "fused").iterdir()) == ["a.onnx", "b.onnx"]
    assert op_counts(onnx.load(str(tmp_path / "fused" / "a.onnx"))) == {"Conv": 1}


# ---- the command line of onnxsim, onnxslim and polygraphy ------------------------------------

def test_in_out_without_o_is_the_same_as_o(model_file, tmp_path):
    """`onnx-fuse IN OUT`, as onnxsim and onnxslim are called."""
    assert main([str(model_file), str(tmp_path / "a.onnx"), "-q"]) == EXIT_OK
    assert main([str(model_file), "-o", str(tmp_path / "b.onnx"), "-q"]) == EXIT_OK
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()
    assert op_counts(onnx.load(str(tmp_path / "a.onnx"))) == {"Conv": 1}


@pytest.mark.parametrize("order", [
    ["--verify", "IN", "-o", "OUT"],
    ["--verify", "IN", "OUT"],
    ["IN", "--verify", "OUT"],
    ["-q", "IN", "--skip", "bn_conv", "OUT", "--verify"],
    ["--verify=check", "IN", "OUT"],
])
def test_options_anywhere_and_verify_never_swallows_the_input(order, model_file, tmp_path, capsys):
    out = tmp_path / "out.onnx"
    argv = [str(model_file) if a == "IN" else str(out) if a == "OUT" else a for a in order]
    assert main(argv) == EXIT_OK, capsys.readouterr().err
    assert op_counts(onnx.load(str(out))) == {"Conv": 1}
    if "-q" not in order:
        assert "verify: PASSED" in capsys.readouterr().out


@pytest.mark.parametrize("spelling", [["--verify=bisect"], ["--bisect"], ["--verify", "--bisect"]])
def test_bisect_spellings(spelling):
    from onnx_fuse.cli import _verify_options, parse_args

    _, args = parse_args([*spelling, "in.onnx", "out.onnx"])
    assert args.inputs == ["in.onnx", "out.onnx"]
    assert _verify_options(args).bisect


def test_plain_verify_does_not_bisect_and_no_flag_does_not_verify():
    from onnx_fuse.cli import _verify_options, parse_args

    assert not _verify_options(parse_args(["--verify", "in.onnx", "out.onnx"])[1]).bisect
    assert _verify_options(parse_args(["in.onnx", "out.onnx"])[1]) is None
    assert _verify_options(parse_args(["in.onnx", "out.onnx", "--rtol", "1e-3"])[1]).rtol == 1e-3  # implies --verify


def test_unknown_verify_value_is_a_usage_error(model_file, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--verify=maybe", str(model_file), str(tmp_path / "o.onnx")])
    assert exit_.value.code == EXIT_USAGE
    assert not (tmp_path / "o.onnx").exists()


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("onnx-fuse: error:") and err.count("\n") == 1, err
    return err


@pytest.mark.parametrize("output", ["x.onnx", "x.ONNX"])
def test_several_inputs_refuse_a_file_name(model_file, tmp_path, capsys, output):
    other = tmp_path / "other.onnx"
    other.write_bytes(model_file.read_bytes())
    before = sorted(p.name for p in tmp_path.iterdir())
    assert main([str(model_file), str(other), "-o", str(tmp_path / output)]) == EXIT_USAGE
    assert "need an output folder, not a file name" in one_error_line(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no folder named x.onnx


def test_several_inputs_refuse_an_existing_file(model_file, tmp_path, capsys):
    target = tmp_path / "target"
    target.write_bytes(b"keep")
    other = tmp_path / "other.onnx"
    other.write_bytes(model_file.read_bytes())
    assert main([str(model_file), str(other), "-o", str(target)]) == EXIT_USAGE
    assert "this is a file" in one_error_line(capsys)
    assert target.read_bytes() == b"keep"


def test_several_positionals_without_o_are_refused(model_file, tmp_path, capsys):
    other = tmp_path / "b.onnx"
    other.write_bytes(model_file.read_bytes())
    third = tmp_path / "c.onnx"
    third.write_bytes(model_file.read_bytes())
    assert main([str(model_file), str(other), str(third)]) == EXIT_USAGE
    assert "give the output folder with -o" in one_error_line(capsys)
    assert main([str(model_file)]) == EXIT_USAGE
    assert "onnx-fuse IN OUT, or -o OUT" in one_error_line(capsys)


def test_one_input_into_an_existing_folder(model_file, tmp_path):
    folder = tmp_path / "fused"
    folder.mkdir()
    assert main([str(model_file), str(folder), "-q"]) == EXIT_OK
    assert op_counts(onnx.load(str(folder / "in.onnx"))) == {"Conv": 1}


@pytest.mark.parametrize("shape, message", [
    ("y:1,4,6,6", "no such input (its inputs: 'x')"),
    ("x:1,4,0,6", "every size must be at least 1"),
    ("x:1,4,-6,6", "every size must be at least 1"),
    ("x:1,4,6", "has rank 3, the input has rank 4"),
    ("x:1,5,6,6", "the model fixes it at 4"),
    ("x:1,a", "expected NAME:D1,D2"),
])
def test_input_shape_is_checked(model_file, tmp_path, capsys, shape, message):
    assert main([str(model_file), str(tmp_path / "o.onnx"), "--input-shape", shape]) == EXIT_USAGE
    assert message in one_error_line(capsys)
    assert not (tmp_path / "o.onnx").exists()


@pytest.mark.parametrize("option, message", [
    (["--external-data", ""], "give a plain file name"),
    (["--external-data-threshold", "-5"], "give a whole number >= 0"),
    (["--external-data-threshold", "x"], "invalid whole number value"),
    (["--trials", "0"], "give a whole number >= 1"),
])
def test_output_and_verification_numbers_are_checked(model_file, tmp_path, capsys, option, message):
    try:
        code = main([str(model_file), str(tmp_path / "o.onnx"), *option])
    except SystemExit as stop:  # what argparse refuses
        code = stop.code
    assert code == EXIT_USAGE
    assert message in capsys.readouterr().err.splitlines()[-1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.onnx"]


def dynamic_model_file(tmp_path):
    b = ModelBuilder()
    b.output(b.batchnorm(conv(b, b.input(["N", 4, "H", "W"]), 4, 4), 4))
    path = tmp_path / "dynamic.onnx"
    onnx.save(b.model(), str(path))
    return path


@pytest.mark.parametrize("shape", ["x:2,4,5,7", "2,4,5,7"])
def test_input_shape_sizes_the_verification_inputs(tmp_path, capsys, shape, monkeypatch):
    import onnx_fuse.verify

    seen = []
    real = onnx_fuse.verify.random_feeds
    monkeypatch.setattr(onnx_fuse.verify, "random_feeds",
                        lambda *a, **k: seen.append(real(*a, **k)) or seen[-1])
    path = dynamic_model_file(tmp_path)
    assert main([str(path), str(tmp_path / "o.onnx"), "--verify", "--input-shape", shape]) == EXIT_OK
    assert seen and all(feeds["x"].shape == (2, 4, 5, 7) for feeds in seen)


def test_input_shapes_reach_the_api(model_file, tmp_path, monkeypatch):
    """--input-shape arrives at optimize_file as input_shapes (the passes take them from there)."""
    import onnx_fuse.api

    calls = []
    real = onnx_fuse.api.optimize_file
    monkeypatch.setattr(onnx_fuse.api, "optimize_file", lambda *a, **k: calls.append(k) or real(*a, **k))
    assert main([str(model_file), str(tmp_path / "o.onnx"), "-q", "--input-shape", "x:1,4,6,6"]) == EXIT_OK
    assert calls[0]["input_shapes"] == {"x": [1, 4, 6, 6]}


def test_version_imports_neither_onnx_nor_onnxruntime():
    code = ("import sys\nfrom onnx_fuse.cli import main\n"
            "try:\n    main(['--version'])\nexcept SystemExit as e:\n    assert e.code == 0\n"
            "heavy = [m for m in ('onnx', 'onnxruntime', 'numpy') if m in sys.modules]\n"
            "assert not heavy, heavy\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"onnx-fuse {__import__('onnx_fuse').__version__}"


# ---- many models: the table, the roll-up line and the --report document -------------------------

MODEL_KEYS = {"input", "output", "exit_code", "error", "nodes_before", "nodes_after", "parameters_before",
              "parameters_after", "ops_before", "ops_after", "rewrites", "pass_seconds", "refusals", "undone",
              "seconds", "verify"}
VERIFY_KEYS = {"verdict", "max_abs_error", "max_rel_error", "rtol", "atol", "atol_relative", "compute_dtype",
               "trials", "seed", "inputs", "outputs", "output"}


def check_document(data, count):
    import onnxruntime

    assert set(data) == {"schema", "onnx_fuse", "onnx", "onnxruntime", "models"}
    assert data["schema"] == 1 and data["onnx_fuse"] == __import__("onnx_fuse").__version__
    assert data["onnx"] == onnx.__version__ and data["onnxruntime"] == onnxruntime.__version__
    assert isinstance(data["models"], list) and len(data["models"]) == count
    for model in data["models"]:
        assert set(model) == MODEL_KEYS
        if model["verify"] is not None:
            assert set(model["verify"]) == VERIFY_KEYS


def test_report_has_one_schema_for_one_and_many_inputs(model_file, tmp_path):
    one, many = tmp_path / "one.json", tmp_path / "many.json"
    assert main([str(model_file), str(tmp_path / "o.onnx"), "-q", "--verify", "--report", str(one)]) == EXIT_OK
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"junk")
    out = tmp_path / "fused"
    assert main([str(model_file), str(bad), "-o", str(out), "-q", "--verify", "--report", str(many)]) == EXIT_USAGE
    check_document(json.loads(one.read_text()), 1)
    data = json.loads(many.read_text())
    check_document(data, 2)
    good, failed = data["models"]
    assert good["input"] == str(model_file) and good["output"] == str(out / "in.onnx")
    assert good["nodes_before"] == 2 and good["nodes_after"] == 1 and good["rewrites"]["conv_bn"] == 1
    assert good["verify"]["verdict"] == "PASSED" and good["exit_code"] == 0 and good["error"] is None
    assert failed["input"] == str(bad) and failed["output"] is None and failed["exit_code"] == EXIT_USAGE
    assert "not an ONNX model" in failed["error"] and failed["nodes_before"] is None


def test_the_table_and_the_roll_up(model_file, tmp_path, capsys):
    other = tmp_path / "plain.onnx"
    b = ModelBuilder()
    b.output(b.node("Relu", [b.input([1, 4, 6, 6])]))
    onnx.save(b.model(), str(other))
    assert main([str(model_file), str(other), "-o", str(tmp_path / "fused"), "--verify"]) == EXIT_OK
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"onnx-fuse: 2 models -> {tmp_path / 'fused'}"
    assert lines[1].split() == ["model", "nodes", "before", "after", "rewrites", "time", "verify"]
    assert lines[2].split()[:4] == ["in.onnx", "2", "1", "1"] and lines[2].endswith("PASSED")
    assert lines[3].split()[:4] == ["plain.onnx", "1", "1", "0"] and lines[3].endswith("PASSED")
    assert lines[4].startswith(f"onnx-fuse: 2 of 2 models written to {tmp_path / 'fused'}; nodes 3 -> 2; ")
    assert lines[4].endswith("s; verify: 2 PASSED, 0 FAILED")
    assert len(lines) == 5


def test_a_report_into_a_missing_folder_is_refused_before_any_work(model_file, tmp_path, capsys):
    out = tmp_path / "o.onnx"
    assert main([str(model_file), str(out), "--report", str(tmp_path / "no" / "r.json")]) == EXIT_USAGE
    assert "its folder does not exist" in one_error_line(capsys)
    assert not out.exists()
