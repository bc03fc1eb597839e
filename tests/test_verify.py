"""--verify and --verify=bisect, with a deliberately wrong pass to catch."""

from dataclasses import dataclass

import numpy as np
import onnx
import pytest
from onnx import helper
from support import ModelBuilder, conv, op_counts

import onnx_fuse
from onnx_fuse.cli import EXIT_OK, EXIT_VERIFY, main
from onnx_fuse.passes import DEFAULT_PASSES
from onnx_fuse.rule import Pass, Plan


@dataclass
class Retype(Plan):
    index: int

    def takes(self):
        return (self.index,)


class BreakRelu(Pass):
    """Wrong on purpose: turns the Relus named 'bad*' into Sigmoid; rewrites the others into
    themselves (correct, so they must survive bisection)."""

    name = "break_relu"
    anchors = ("Relu",)

    def match(self, view, index):
        node = view.node(index)
        return None if node.doc_string == "seen" else index

    def check(self, view, index):
        return Retype(index)

    def rewrite(self, view, index, plan):
        node = view.node(index)
        op = "Sigmoid" if node.name.startswith("bad") else "Relu"
        view.replace_node(index, helper.make_node(op, list(node.input), list(node.output), name=node.name,
                                                  doc_string="seen"))


def model_with_relus(bad=("bad1",)):
    b = ModelBuilder()
    y = b.batchnorm(conv(b, b.input([1, 4, 6, 6]), 4, 4), 4)
    for name in ("good1", "bad1", "good2", "bad2", "good3"):
        y = b.node("Relu", [conv(b, y, 4, 4)])
        b.nodes[-1].name = name if name in bad or name.startswith("good") else "fine_" + name
    b.output(y)
    return b.model()


def test_verify_passes_on_a_correct_rewrite():
    _, report = onnx_fuse.optimize_with_report(model_with_relus(), verify=True)
    assert report.verification["max_rel_error"] < 1e-5


def test_verify_catches_a_wrong_rewrite():
    with pytest.raises(onnx_fuse.VerificationError, match="verify: FAILED"):
        onnx_fuse.optimize(model_with_relus(), passes=[*DEFAULT_PASSES, BreakRelu()], verify=True)


@pytest.mark.parametrize("bad", [("bad1",), ("bad1", "bad2")])
def test_bisect_undoes_only_the_wrong_rewrites(bad):
    model = model_with_relus(bad)
    result, report = onnx_fuse.optimize_with_report(model, passes=[*DEFAULT_PASSES, BreakRelu()], verify="bisect")
    assert sorted(node for _, _, node in report.undone) == sorted(bad)
    assert op_counts(result)["Sigmoid"] == 0 and op_counts(result)["BatchNormalization"] == 0
    assert report.passes["break_relu"].rewrites == 5 - len(bad)
    assert report.verification["max_rel_error"] < 1e-5


def test_cli_verify_exit_code_and_nothing_written(tmp_path, capsys, monkeypatch):
    onnx.save(model_with_relus(), str(tmp_path / "m.onnx"))
    import onnx_fuse.api

    monkeypatch.setattr(onnx_fuse.api, "_all_passes", lambda: (*DEFAULT_PASSES, BreakRelu()))
    assert main([str(tmp_path / "m.onnx"), "-o", str(tmp_path / "out.onnx"), "--verify"]) == EXIT_VERIFY
    assert not (tmp_path / "out.onnx").exists()
    assert "verify: FAILED" in capsys.readouterr().err
    assert main([str(tmp_path / "m.onnx"), "-o", str(tmp_path / "out.onnx"), "--verify=bisect"]) == EXIT_OK
    assert "undid break_relu at bad1" in capsys.readouterr().err
    assert op_counts(onnx.load(str(tmp_path / "out.onnx")))["Sigmoid"] == 0


# ---- verification the user can tune: tolerance, seed, trials, real inputs, integer inputs ----------

from onnx import TensorProto  # noqa: E402

from onnx_fuse.cli import EXIT_USAGE  # noqa: E402
from onnx_fuse.verify import VerifyOptions, compare, compared_values, compute_dtype  # noqa: E402


class LeakRelu(Pass):
    """Slightly wrong on purpose: the Relus named 'leak*' become LeakyRelu(alpha=0.01), off by
    at most 0.01 * |x| where the original is 0: caught only by an absolute tolerance below that."""

    name = "leak_relu"
    anchors = ("Relu",)

    def match(self, view, index):
        return index if view.node(index).name.startswith("leak") else None

    def check(self, view, index):
        return Retype(index)

    def rewrite(self, view, index, plan):
        node = view.node(index)
        view.replace_node(index, helper.make_node("LeakyRelu", list(node.input), list(node.output),
                                                  name="leaked", alpha=0.01))


def leaky_model_file(tmp_path):
    b = ModelBuilder()
    b.output(b.node("Relu", [b.batchnorm(conv(b, b.input([1, 4, 6, 6]), 4, 4), 4)]))
    b.nodes[-1].name = "leak1"
    path = tmp_path / "leaky.onnx"
    onnx.save(b.model(), str(path))
    return path


@pytest.fixture
def leaky_passes(monkeypatch):
    import onnx_fuse.api

    monkeypatch.setattr(onnx_fuse.api, "_all_passes", lambda: (*DEFAULT_PASSES, LeakRelu()))


def test_the_verdict_line_names_the_tolerance(tmp_path, capsys, leaky_passes):
    path = leaky_model_file(tmp_path)
    assert main([str(path), str(tmp_path / "o.onnx"), "--verify"]) == EXIT_VERIFY
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.endswith("; nothing written\n")
    assert "verify: FAILED (output 'relu_out" in err and "rtol 0.0001, atol 1e-05 x max|output|" in err
    assert "computes in float32, 1 trial, random inputs, seed 0)" in err
    assert not (tmp_path / "o.onnx").exists()
    # the same run with an absolute tolerance above the error passes, and says so
    assert main([str(path), str(tmp_path / "o.onnx"), "--verify", "--atol", "0.5", "--rtol", "0"]) == EXIT_OK
    out = capsys.readouterr().out
    assert "verify: PASSED (max abs " in out and "rtol 0, atol 0.5;" in out
    assert op_counts(onnx.load(str(tmp_path / "o.onnx")))["LeakyRelu"] == 1


def test_rtol_is_relative_to_each_element():
    b = ModelBuilder()
    b.output(b.node("Mul", [b.input([2, 8]), b.const(np.float32(1.0))]))
    original = b.model()
    scaled = onnx.ModelProto()
    scaled.CopyFrom(original)
    scaled.graph.initializer[0].CopyFrom(onnx.numpy_helper.from_array(np.float32(1.001), original.graph.initializer[0].name))
    assert compare(original, scaled, options=VerifyOptions(rtol=2e-3, atol=0))["verdict"] == "PASSED"
    with pytest.raises(onnx_fuse.VerificationError) as failed:
        compare(original, scaled, options=VerifyOptions(rtol=5e-4, atol=0))
    assert failed.value.result["verdict"] == "FAILED" and failed.value.result["rtol"] == 5e-4


def test_seed_and_trials(tmp_path, monkeypatch):
    import onnx_fuse.verify

    seen = []
    real = onnx_fuse.verify.random_feeds
    monkeypatch.setattr(onnx_fuse.verify, "random_feeds", lambda *a, **k: seen.append(real(*a, **k)) or seen[-1])
    model = model_with_relus(())
    _, report = onnx_fuse.optimize_with_report(model, verify=VerifyOptions(seed=7, trials=3))
    assert report.verification["trials"] == 3 and report.verification["seed"] == 7
    assert len(seen) == 3 and not np.array_equal(seen[0]["x"], seen[1]["x"])
    first = seen[0]["x"]
    seen.clear()
    onnx_fuse.optimize(model, verify=VerifyOptions(seed=7, trials=1))
    assert np.array_equal(seen[0]["x"], first)
    seen.clear()
    onnx_fuse.optimize(model, verify=VerifyOptions(seed=8, trials=1))
    assert not np.array_equal(seen[0]["x"], first)


def test_load_inputs_npz_npy_and_positional(model_file, tmp_path, capsys):
    path = model_file
    negative = -np.ones((1, 4, 6, 6), np.float32) * 100
    np.savez(tmp_path / "named.npz", x=negative)
    np.save(tmp_path / "one.npy", negative)
    np.savez(tmp_path / "fixture.npz", in0=negative, out0=np.zeros(1))  # the fixtures' layout
    np.savez(tmp_path / "zeros.npz", x=np.zeros((1, 4, 6, 6), np.float32))
    for name in ("named.npz", "one.npy", "fixture.npz"):
        _, report = onnx_fuse.optimize_with_report(path, verify=VerifyOptions(inputs=tmp_path / name))
        assert report.verification["inputs"] == f"inputs from {tmp_path / name}"
        assert report.verification["verdict"] == "PASSED" and report.verification["trials"] == 1
    # two files are two trials
    out = tmp_path / "o.onnx"
    assert main([str(path), str(out), "--load-inputs", str(tmp_path / "named.npz"),
                 "--load-inputs", str(tmp_path / "zeros.npz")]) == EXIT_OK
    assert "2 trials, inputs from" in capsys.readouterr().out


def test_loaded_inputs_decide_the_verdict(tmp_path, leaky_passes):
    """The leak is invisible on inputs where every Relu input is positive, visible elsewhere."""
    b = ModelBuilder()
    b.output(b.node("Relu", [b.input([1, 8])]))
    b.nodes[-1].name = "leak1"
    np.save(tmp_path / "positive.npy", np.ones((1, 8), np.float32))
    np.save(tmp_path / "negative.npy", -np.ones((1, 8), np.float32))
    model = b.model()
    onnx_fuse.optimize(model, verify=VerifyOptions(inputs=tmp_path / "positive.npy"))
    with pytest.raises(onnx_fuse.VerificationError):
        onnx_fuse.optimize(model, verify=VerifyOptions(inputs=tmp_path / "negative.npy"))


@pytest.mark.parametrize("content, message", [
    ({"y": np.zeros((1, 4, 6, 6), np.float32)}, "no graph input named 'y'; the model's inputs are 'x'"),
    ({"x": np.zeros((1, 4, 6, 6), np.float64)}, "input 'x' is float64, the model takes tensor(float)"),
    ({"x": np.zeros((1, 4, 5), np.float32)}, "onnxruntime refuses them"),
])
def test_bad_loaded_inputs_are_a_usage_error(model_file, tmp_path, capsys, content, message):
    np.savez(tmp_path / "bad.npz", **content)
    out = tmp_path / "o.onnx"
    assert main([str(model_file), str(out), "--load-inputs", str(tmp_path / "bad.npz")]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err
    assert not out.exists()


def test_a_npy_for_a_model_with_two_inputs_is_refused(tmp_path):
    b = ModelBuilder()
    b.output(b.node("Add", [b.input([2], name="a"), b.input([2], name="b")]))
    np.save(tmp_path / "a.npy", np.zeros(2, np.float32))
    with pytest.raises(onnx_fuse.InputError, match="a .npy holds one array, and the model has 2 inputs"):
        onnx_fuse.optimize(b.model(), verify=VerifyOptions(inputs=tmp_path / "a.npy"))


def branch_model(selector_op="Equal"):
    """An int64 input k selects a branch: If(k == 2) then Relu 'bad1' (broken by BreakRelu) else
    Identity. Random k in 0..3 takes the broken branch only by luck."""
    b = ModelBuilder()
    y = b.batchnorm(conv(b, b.input([1, 4, 6, 6]), 4, 4), 4)
    k = b.input([], name="k", elem=TensorProto.INT64)
    cast = b.node("Cast", [k], to=TensorProto.INT32)
    condition = b.node(selector_op, [cast, b.const(np.array(2, np.int32), "two", dtype=np.int32)])
    spec = [helper.make_tensor_value_info("branch_out", TensorProto.FLOAT, [1, 4, 6, 6])]
    then_graph = helper.make_graph([helper.make_node("Relu", [y], ["branch_out"], name="bad1")], "then", [], spec)
    else_graph = helper.make_graph([helper.make_node("Identity", [y], ["branch_out"])], "else", [], spec)
    b.output(b.node("If", [condition], then_branch=then_graph, else_branch=else_graph))
    return b.model()


def test_compared_values_are_taken_through_casts():
    assert compared_values(branch_model()) == {"k": [1, 2, 3]}
    assert compared_values(branch_model("Less")) == {"k": [1, 2, 3]}
    assert compared_values(model_with_relus()) == {}
    as_condition = branch_model()
    equal = next(n for n in as_condition.graph.node if n.op_type == "Equal")
    as_condition.graph.node.remove(equal)
    cast = next(n for n in as_condition.graph.node if n.op_type == "Cast")
    cast.attribute[0].i = TensorProto.BOOL
    cast.output[0] = equal.output[0]
    assert compared_values(as_condition) == {"k": [0, 1]}


def test_integer_inputs_take_the_values_they_are_compared_with():
    model = branch_model()
    broken = [*DEFAULT_PASSES, BreakRelu()]
    with pytest.raises(onnx_fuse.VerificationError) as failed:  # by default k = 1, 2, 3: the If takes both ways
        onnx_fuse.optimize(model, passes=broken, verify=True)
    assert failed.value.result["trials"] == 3
    # the negative twin: a range the user gives that never selects the broken branch sees nothing
    _, report = onnx_fuse.optimize_with_report(model, passes=broken, verify=VerifyOptions(int_ranges={"k": (3, 9)}))
    assert report.verification["verdict"] == "PASSED"
    with pytest.raises(onnx_fuse.VerificationError):
        onnx_fuse.optimize(model, passes=broken, verify=VerifyOptions(int_ranges={"k": (2, 2)}))
    # bisect finds the broken branch and keeps the rest
    result, report = onnx_fuse.optimize_with_report(model, passes=broken, verify="bisect")
    assert [node for _, _, node in report.undone] == ["bad1"] and op_counts(result)["BatchNormalization"] == 0


def test_int_range_on_the_command_line(tmp_path, capsys, monkeypatch):
    import onnx_fuse.api

    monkeypatch.setattr(onnx_fuse.api, "_all_passes", lambda: (*DEFAULT_PASSES, BreakRelu()))
    onnx.save(branch_model(), str(tmp_path / "m.onnx"))
    out = str(tmp_path / "o.onnx")
    assert main([str(tmp_path / "m.onnx"), out, "--int-range", "k:3,9", "-q"]) == EXIT_OK
    assert main([str(tmp_path / "m.onnx"), out, "--int-range", "3,9", "-q"]) == EXIT_OK  # every integer input
    assert main([str(tmp_path / "m.onnx"), out, "--verify"]) == EXIT_VERIFY
    assert main([str(tmp_path / "m.onnx"), out, "--int-range", "k:9,3"]) == EXIT_USAGE
    assert "9 is greater than 3" in capsys.readouterr().err


def keep_io_types_model(seed=0, channels=16):
    """float32 at the edges, float16 inside: what onnxconverter-common's
    convert_float_to_float16(model, keep_io_types=True) writes."""
    b = ModelBuilder(dtype=np.float16, seed=seed)
    h = b.node("Cast", [b.input([1, channels, 12, 12], elem=TensorProto.FLOAT)], to=TensorProto.FLOAT16)
    for _ in range(3):
        h = b.node("Relu", [b.batchnorm(conv(b, h, channels, channels), channels)])
    b.output(b.node("Cast", [h], to=TensorProto.FLOAT), elem=TensorProto.FLOAT)
    return b.model()


def test_the_tolerance_follows_the_precision_the_model_computes_in(monkeypatch):
    model = keep_io_types_model()
    assert compute_dtype(model) == "float16"
    assert compute_dtype(model_with_relus()) == "float32"
    result, report = onnx_fuse.optimize_with_report(model, verify=True)
    assert op_counts(result)["BatchNormalization"] == 0
    v = report.verification
    assert v["verdict"] == "PASSED" and v["compute_dtype"] == "float16" and (v["rtol"], v["atol"]) == (1e-2, 1e-2)
    # the negative twin: held to float32's tolerance (the dtype of its outputs), the correct
    # float16 result would be refused
    from onnx_fuse import verify as verify_module

    monkeypatch.setattr(verify_module, "compute_dtype", lambda model: "float32")
    with pytest.raises(onnx_fuse.VerificationError, match="computes in float32"):
        onnx_fuse.optimize(model, verify=True)


def test_verify_options_are_checked():
    with pytest.raises(ValueError, match="trials must be at least 1"):
        VerifyOptions(trials=0)
    with pytest.raises(ValueError, match="rtol must be a number >= 0"):
        VerifyOptions(rtol=-1)
    with pytest.raises(ValueError, match="verify is True, False, 'bisect' or a VerifyOptions"):
        onnx_fuse.optimize(model_with_relus(), verify="yes")
