"""Never clobber, never corrupt: no write of a run lands on a file the run reads or on another
output of the run; writes are staged and leave nothing behind when interrupted or killed."""

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from support import ModelBuilder, conv, op_counts

import onnx_fuse
from onnx_fuse import io
from onnx_fuse.cli import EXIT_OK, EXIT_USAGE, main

EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report it


def conv_bn_model(seed=0, channels=4) -> onnx.ModelProto:
    b = ModelBuilder(seed=seed)
    b.output(b.batchnorm(conv(b, b.input([1, channels, 6, 6]), channels, channels), channels))
    return b.model()


def save_external(model: onnx.ModelProto, path: Path, location: str):
    onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location=location,
              size_threshold=0)


def files(folder: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def one_error_line(capsys, *words):
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("onnx-fuse: error:"), err
    for word in words:
        assert word in err, err
    return err


def run_ort(path: Path, feeds):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"]).run(None, feeds)


FEEDS = {"x": np.random.default_rng(3).standard_normal((1, 4, 6, 6)).astype(np.float32)}


# ---- outputs over inputs, outputs over outputs ----------------------------------------------------

def test_two_inputs_of_one_name_into_one_folder_are_refused_before_writing(tmp_path, capsys):
    for folder, seed in (("a", 1), ("b", 2)):
        (tmp_path / folder).mkdir()
        onnx.save(conv_bn_model(seed), str(tmp_path / folder / "m.onnx"))
    out = tmp_path / "out"
    out.mkdir()
    code = main([str(tmp_path / "a" / "m.onnx"), str(tmp_path / "b" / "m.onnx"), "-o", str(out), "-q"])
    assert code == EXIT_USAGE
    one_error_line(capsys, "would both be written here")
    assert list(out.iterdir()) == []


def test_a_refused_run_leaves_no_output_folder(tmp_path, capsys):
    for folder, seed in (("a", 1), ("b", 2)):
        (tmp_path / folder).mkdir()
        onnx.save(conv_bn_model(seed), str(tmp_path / folder / "m.onnx"))
    out = tmp_path / "out"
    assert main([str(tmp_path / "a"), str(tmp_path / "b"), "-o", str(out), "-q"]) == EXIT_USAGE
    one_error_line(capsys, "would both be written here")
    assert not out.exists()


@pytest.mark.parametrize("how", ["twice", "folder_and_file", "dot_dot"])
def test_one_model_given_twice_is_refused_before_writing(tmp_path, capsys, how):
    """Its output would be written twice, the second time over an output of the same run."""
    (tmp_path / "in").mkdir()
    model = tmp_path / "in" / "m.onnx"
    onnx.save(conv_bn_model(), str(model))
    other = {"twice": str(model), "folder_and_file": str(tmp_path / "in"),
             "dot_dot": str(tmp_path / "in" / ".." / "in" / "m.onnx")}[how]
    out = tmp_path / "out"
    assert main([str(model), other, "-o", str(out), "-q"]) == EXIT_USAGE
    one_error_line(capsys, "given twice")
    assert not out.exists()


@pytest.mark.parametrize("link", [os.symlink, os.link])
def test_two_names_of_one_model_are_two_outputs_but_not_two_writes_in_place(tmp_path, capsys, link):
    """A link is a model of its own name (a folder's latest.onnx beside v3.onnx): it gets its own
    output. In place, both would write the one file, and that is refused."""
    (tmp_path / "in").mkdir()
    model = tmp_path / "in" / "m.onnx"
    onnx.save(conv_bn_model(), str(model))
    link(model, tmp_path / "in" / "latest.onnx")
    out = tmp_path / "out"
    assert main([str(tmp_path / "in"), "-o", str(out), "-q"]) == EXIT_OK
    assert sorted(p.name for p in out.iterdir()) == ["latest.onnx", "m.onnx"]
    assert (out / "latest.onnx").read_bytes() == (out / "m.onnx").read_bytes()
    before = model.read_bytes()
    assert main([str(tmp_path / "in"), "-o", str(tmp_path / "in"), "--inplace", "-q"]) == EXIT_USAGE
    one_error_line(capsys, "would both be written here")
    assert model.read_bytes() == before


def test_an_output_over_another_input_of_the_run_is_refused(tmp_path, capsys):
    (tmp_path / "a").mkdir()
    out = tmp_path / "out"
    out.mkdir()
    onnx.save(conv_bn_model(1), str(tmp_path / "a" / "m.onnx"))
    onnx.save(conv_bn_model(2), str(out / "m.onnx"))  # input of the run, and where a/m.onnx would go
    before = files(out)
    assert main([str(out / "m.onnx"), str(tmp_path / "a" / "m.onnx"), "-o", str(out), "-q"]) == EXIT_USAGE
    one_error_line(capsys, "would overwrite the input model")
    assert files(out) == before


def test_external_data_name_equal_to_the_input_model_is_refused(tmp_path, capsys):
    model = tmp_path / "in.onnx"
    onnx.save(conv_bn_model(), str(model))
    before = files(tmp_path)
    assert main([str(model), "-o", str(tmp_path / "out.onnx"), "--external-data", "in.onnx"]) == EXIT_USAGE
    one_error_line(capsys, "would overwrite the input model")
    assert files(tmp_path) == before


def test_output_equal_to_the_inputs_data_file_is_refused(tmp_path, capsys):
    model = tmp_path / "in.onnx"
    save_external(conv_bn_model(), model, "weights.bin")
    before = files(tmp_path)
    assert main([str(model), "-o", str(tmp_path / "weights.bin")]) == EXIT_USAGE
    one_error_line(capsys, "would overwrite external data of")
    assert files(tmp_path) == before


def test_default_data_name_of_the_output_equal_to_the_inputs_data_file_is_refused(tmp_path, capsys):
    model = tmp_path / "in.onnx"
    save_external(conv_bn_model(), model, "out.onnx.data")  # what out.onnx's data would be called
    before = files(tmp_path)
    assert main([str(model), "-o", str(tmp_path / "out.onnx")]) == EXIT_USAGE
    one_error_line(capsys, "would overwrite external data of")
    assert files(tmp_path) == before


def test_external_data_name_equal_to_another_inputs_data_file_is_refused(tmp_path, capsys):
    (tmp_path / "a").mkdir()
    out = tmp_path / "out"
    out.mkdir()
    save_external(conv_bn_model(1), out / "other.onnx", "shared.bin")
    onnx.save(conv_bn_model(2), str(tmp_path / "a" / "m.onnx"))
    before = files(out)
    code = main([str(out / "other.onnx"), str(tmp_path / "a" / "m.onnx"), "-o", str(out),
                 "--external-data", "shared.bin", "-q", "--inplace"])
    assert code == EXIT_USAGE
    assert "would overwrite external data of" in capsys.readouterr().err
    assert files(out) == before


def test_output_through_a_symlink_or_hard_link_to_the_input_is_refused(tmp_path, capsys):
    model = tmp_path / "in.onnx"
    onnx.save(conv_bn_model(), str(model))
    before = model.read_bytes()
    (tmp_path / "soft.onnx").symlink_to(model)
    os.link(model, tmp_path / "hard.onnx")
    for name in ("soft.onnx", "hard.onnx"):
        assert main([str(model), "-o", str(tmp_path / name)]) == EXIT_USAGE
        one_error_line(capsys, "would overwrite the input model")
    assert model.read_bytes() == before


def test_the_api_refuses_an_output_over_the_inputs_data_file(tmp_path):
    model = tmp_path / "in.onnx"
    save_external(conv_bn_model(), model, "w.bin")
    before = files(tmp_path)
    with pytest.raises(onnx_fuse.InputError, match="would overwrite external data of"):
        onnx_fuse.optimize_file(model, tmp_path / "w.bin")
    with pytest.raises(onnx_fuse.InputError, match="would overwrite external data of"):
        onnx_fuse.optimize_file(model, tmp_path / "out.onnx", external_data="w.bin")
    assert files(tmp_path) == before


def test_inplace_may_replace_its_own_files(tmp_path):
    model = tmp_path / "in.onnx"
    save_external(conv_bn_model(), model, "w.bin")
    expected = run_ort(model, FEEDS)
    onnx_fuse.optimize_file(model, model, inplace=True, external_data="w.bin")
    assert op_counts(onnx.load(str(model))) == {"Conv": 1}
    np.testing.assert_allclose(run_ort(model, FEEDS)[0], expected[0], rtol=1e-5, atol=1e-5)


# ---- the report ----------------------------------------------------------------------------------

def test_report_equal_to_the_input_is_refused_before_writing(tmp_path, capsys):
    model = tmp_path / "in.onnx"
    onnx.save(conv_bn_model(), str(model))
    before = files(tmp_path)
    assert main([str(model), "-o", str(tmp_path / "out.onnx"), "--report", str(model)]) == EXIT_USAGE
    one_error_line(capsys, "would overwrite the input model")
    assert files(tmp_path) == before


def test_report_equal_to_the_inputs_data_file_is_refused_before_writing(tmp_path, capsys):
    model = tmp_path / "in.onnx"
    save_external(conv_bn_model(), model, "w.bin")
    before = files(tmp_path)
    assert main([str(model), "-o", str(tmp_path / "out.onnx"), "--report", str(tmp_path / "w.bin")]) == EXIT_USAGE
    one_error_line(capsys, "the report")
    assert files(tmp_path) == before


def test_report_equal_to_the_output_is_refused(tmp_path, capsys):
    model = tmp_path / "in.onnx"
    onnx.save(conv_bn_model(), str(model))
    out = tmp_path / "out.onnx"
    assert main([str(model), "-o", str(out), "--report", str(out)]) == EXIT_USAGE
    one_error_line(capsys, "would both be written here")
    assert not out.exists()


def test_report_into_a_missing_folder_is_refused_before_writing(tmp_path, capsys):
    model = tmp_path / "in.onnx"
    onnx.save(conv_bn_model(), str(model))
    out = tmp_path / "out.onnx"
    assert main([str(model), "-o", str(out), "--report", str(tmp_path / "nowhere" / "r.json")]) == EXIT_USAGE
    one_error_line(capsys, "does not exist")
    assert not out.exists()


def test_report_is_written_atomically(tmp_path, monkeypatch):
    model = tmp_path / "in.onnx"
    onnx.save(conv_bn_model(), str(model))
    report = tmp_path / "r.json"
    assert main([str(model), "-o", str(tmp_path / "out.onnx"), "--report", str(report), "-q"]) == EXIT_OK
    assert report.read_text().startswith("{")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.onnx", "out.onnx", "r.json"]


@pytest.mark.parametrize("over", ["output", "report", "external_data"])
def test_the_verifications_inputs_file_is_never_written_over(tmp_path, capsys, over):
    """--load-inputs feeds.npz is read by the run: the report used to land on it."""
    model = tmp_path / "in.onnx"
    onnx.save(conv_bn_model(), str(model))
    feeds = tmp_path / "feeds.npz"
    np.savez(feeds, **FEEDS)
    before = files(tmp_path)
    out = {"output": ["-o", str(feeds)], "report": ["-o", str(tmp_path / "o.onnx"), "--report", str(feeds)],
           "external_data": ["-o", str(tmp_path / "o.onnx"), "--external-data", "feeds.npz"]}[over]
    assert main([str(model), "--load-inputs", str(feeds), *out, "-q"]) == EXIT_USAGE
    one_error_line(capsys, "would overwrite the inputs file")
    assert files(tmp_path) == before


def test_the_apis_verification_inputs_file_is_never_written_over(tmp_path):
    from onnx_fuse.verify import VerifyOptions

    model = tmp_path / "in.onnx"
    onnx.save(conv_bn_model(), str(model))
    feeds = tmp_path / "feeds.npz"
    np.savez(feeds, **FEEDS)
    before = files(tmp_path)
    with pytest.raises(io.InputError, match="would overwrite the inputs file"):
        onnx_fuse.optimize_file(model, feeds, verify=VerifyOptions(inputs=[{}, str(feeds)]))
    assert files(tmp_path) == before


# ---- outputs that are devices or pipes -----------------------------------------------------------

def _read_fifo_in_background(fifo: Path) -> list:
    got = []

    def drain():
        with open(fifo, "rb") as handle:
            got.append(handle.read())

    thread = threading.Thread(target=drain, daemon=True)
    thread.start()
    got.append(thread)
    return got


def _fifo(tmp_path) -> Path:
    if not hasattr(os, "mkfifo"):
        pytest.skip("no named pipes here")
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    return fifo


@pytest.mark.parametrize("what", ["output", "report"])
def test_a_pipe_or_device_is_written_into_not_replaced(tmp_path, what):
    """`onnx-fuse in.onnx /dev/null --verify`, `--report /dev/stdout`: replacing the device by a
    file (as root, /dev/null itself) would be the worst thing an atomic write can do."""
    fifo = _fifo(tmp_path)
    model = tmp_path / "in.onnx"
    onnx.save(conv_bn_model(), str(model))
    regular = tmp_path / "regular"
    regular.mkdir()
    got = _read_fifo_in_background(fifo)
    if what == "output":
        assert main([str(model), str(fifo), "-q"]) == EXIT_OK
        assert main([str(model), str(regular / "out.onnx"), "-q"]) == EXIT_OK
        expected = (regular / "out.onnx").read_bytes()
    else:
        assert main([str(model), str(regular / "out.onnx"), "--report", str(fifo), "-q"]) == EXIT_OK
        expected = None
    got[0].join(10)
    assert fifo.is_fifo()
    assert len(got) == 2, "nothing was written into the pipe"
    if expected is not None:
        assert got[1] == expected
    else:
        assert got[1].startswith(b"{") and b'"schema"' in got[1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.onnx", "pipe", "regular"]


def test_a_pipe_cannot_take_an_output_with_external_data(tmp_path, capsys):
    fifo = _fifo(tmp_path)
    model = tmp_path / "in.onnx"
    onnx.save(conv_bn_model(), str(model))
    assert main([str(model), str(fifo), "--external-data", "w.data", "-q"]) == EXIT_USAGE
    one_error_line(capsys, "a device or a pipe", "give a file name")
    assert fifo.is_fifo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.onnx", "pipe"]


def test_a_pipe_as_input_is_one_clear_line(tmp_path, capsys):
    """A pipe can be read once; it was reported as 'the file is empty'."""
    fifo = _fifo(tmp_path)
    assert main([str(fifo), str(tmp_path / "o.onnx"), "-q"]) == EXIT_USAGE
    one_error_line(capsys, "is a pipe or a device", "save the model to a file first")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pipe"]


def test_a_model_written_to_standard_output_is_not_mixed_with_the_summary(tmp_path):
    """`onnx-fuse in.onnx /dev/stdout | ...`: the stream is the model alone; the summary goes to
    standard error."""
    if not Path("/dev/stdout").exists():
        pytest.skip("no /dev/stdout here")
    model = tmp_path / "in.onnx"
    onnx.save(conv_bn_model(), str(model))
    run = subprocess.run([sys.executable, "-m", "onnx_fuse", str(model), "/dev/stdout"], capture_output=True,
                         cwd=tmp_path)
    assert run.returncode == EXIT_OK, run.stderr
    assert op_counts(onnx.load_from_string(run.stdout)) == {"Conv": 1}
    assert b"nodes" in run.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.onnx"]


# ---- folders that cannot be written --------------------------------------------------------------

def test_many_inputs_into_an_unwritable_folder_is_one_line(tmp_path, capsys, monkeypatch):
    for name in ("a.onnx", "b.onnx", "c.onnx"):
        onnx.save(conv_bn_model(), str(tmp_path / name))
    out = tmp_path / "out"
    out.mkdir()

    def refuse(*args, **kwargs):  # what a read-only folder does (tests may run as root, who can write anyway)
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(io.tempfile, "mkdtemp", refuse)
    code = main([str(tmp_path / n) for n in ("a.onnx", "b.onnx", "c.onnx")] + ["-o", str(out)])
    assert code == EXIT_USAGE
    one_error_line(capsys, "cannot write", "Permission denied")


def test_many_inputs_into_a_folder_that_cannot_be_created_is_one_line(tmp_path, capsys, monkeypatch):
    for name in ("a.onnx", "b.onnx"):
        onnx.save(conv_bn_model(), str(tmp_path / name))

    def refuse(self, *args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "mkdir", refuse)
    code = main([str(tmp_path / "a.onnx"), str(tmp_path / "b.onnx"), "-o", str(tmp_path / "out")])
    assert code == EXIT_USAGE
    one_error_line(capsys, "cannot create", "Permission denied")


# ---- interrupted and killed runs -------------------------------------------------------------------

def stages(folder: Path) -> list:
    return [p.name for p in folder.iterdir() if p.name.startswith(io.STAGE_PREFIX)]


@pytest.mark.parametrize("signum,code", [(signal.SIGINT, EXIT_INTERRUPTED), (signal.SIGTERM, 128 + signal.SIGTERM)])
def test_a_signal_while_writing_leaves_no_temporary_file(tmp_path, capsys, monkeypatch, signum, code):
    model = tmp_path / "in.onnx"
    onnx.save(conv_bn_model(), str(model))
    write = io.write_model

    def write_then_signal(*args, **kwargs):
        write(*args, **kwargs)
        os.kill(os.getpid(), signum)  # arrives while the output is still staged
        for _ in range(1000):  # the handler runs between bytecodes
            pass

    monkeypatch.setattr(io, "write_model", write_then_signal)
    assert main([str(model), "-o", str(tmp_path / "out.onnx")]) == code
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.strip().count("\n") == 0 and "no partial output" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.onnx"]


def test_the_next_run_removes_what_a_killed_run_left(tmp_path, capsys):
    model = tmp_path / "in.onnx"
    onnx.save(conv_bn_model(), str(model))
    out = tmp_path / "out.onnx"
    killed = subprocess.run([sys.executable, "-c", f"""
import os, signal
from onnx_fuse import io
with io.staged({str(out)!r}) as stage:
    (stage / "out.onnx").write_bytes(b"partial")
    os.kill(os.getpid(), signal.SIGKILL)
"""])
    assert killed.returncode == -signal.SIGKILL
    assert len(stages(tmp_path)) == 1
    alive = tmp_path / f"{io.STAGE_PREFIX}{os.getppid()}-{io._HOST}-other.onnx.x"  # a live run's: kept
    alive.mkdir()
    assert main([str(model), "-o", str(out), "-q"]) == EXIT_OK
    assert stages(tmp_path) == [alive.name]
    assert op_counts(onnx.load(str(out))) == {"Conv": 1}


# ---- a result over 2 GB --------------------------------------------------------------------------

def test_a_result_that_outgrows_one_protobuf_is_written_with_external_data(tmp_path, monkeypatch):
    """A Conv whose weight is a ConstantOfShape: the input is tiny, the folded weight is not. The
    protobuf limit is lowered so that the test needs no 2 GB."""
    channels = 64
    shape = numpy_helper.from_array(np.array([channels, channels, 3, 3], dtype=np.int64), "wshape")
    stats = [numpy_helper.from_array(v.astype(np.float32), n) for v, n in
             zip([np.full(channels, 1.5), np.full(channels, 0.1), np.full(channels, 0.2), np.full(channels, 0.9)],
                 ["s", "bb", "m", "v"])]
    nodes = [helper.make_node("ConstantOfShape", ["wshape"], ["w"],
                              value=numpy_helper.from_array(np.array([0.01], dtype=np.float32))),
             helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c", "s", "bb", "m", "v"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, channels, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, channels, 4, 4])],
                              [shape] + stats)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    source = tmp_path / "in.onnx"
    onnx.save(model, str(source))
    assert source.stat().st_size < 4096
    monkeypatch.setattr(io, "PROTOBUF_LIMIT", 100_000)
    monkeypatch.setattr(io, "PROTOBUF_HEADROOM", 0)
    out = tmp_path / "out.onnx"
    report = onnx_fuse.optimize_file(source, out)
    assert report.rewrites >= 1
    assert (tmp_path / "out.onnx.data").exists()
    assert out.stat().st_size < 100_000
    feeds = {"x": np.random.default_rng(0).standard_normal((1, channels, 4, 4)).astype(np.float32)}
    np.testing.assert_allclose(run_ort(out, feeds)[0], run_ort(source, feeds)[0], rtol=1e-4, atol=1e-4)


# ---- symlinked inputs ------------------------------------------------------------------------------

def linked_model(tmp_path, beside_link, beside_target):
    """link/m.onnx -> target/real.onnx, whose weights are external (w.bin): onnx and onnxruntime
    read w.bin beside the link, not beside its target."""
    (tmp_path / "target").mkdir()
    (tmp_path / "link").mkdir()
    model = conv_bn_model(channels=4)
    save_external(model, tmp_path / "target" / "real.onnx", "w.bin")
    genuine = (tmp_path / "target" / "w.bin").read_bytes()
    if not beside_target:
        (tmp_path / "target" / "w.bin").unlink()
    if beside_link:  # other weights, of the same size: what onnxruntime computes with through the link
        values = np.frombuffer(genuine, dtype=np.float32) * 0.5 + 0.25
        (tmp_path / "link" / "w.bin").write_bytes(values.astype(np.float32).tobytes())
    link = tmp_path / "link" / "m.onnx"
    link.symlink_to(tmp_path / "target" / "real.onnx")
    return link


@pytest.mark.parametrize("beside_target", [True, False])
def test_a_symlinked_model_reads_its_data_where_onnxruntime_does(tmp_path, beside_target):
    link = linked_model(tmp_path, beside_link=True, beside_target=beside_target)
    expected = run_ort(link, FEEDS)
    out = tmp_path / "out.onnx"
    onnx_fuse.optimize_file(link, out)
    assert op_counts(onnx.load(str(out))) == {"Conv": 1}
    np.testing.assert_allclose(run_ort(out, FEEDS)[0], expected[0], rtol=1e-5, atol=1e-5)


def test_a_symlinked_model_without_data_beside_the_link_is_refused(tmp_path):
    link = linked_model(tmp_path, beside_link=False, beside_target=True)
    with pytest.raises(onnx_fuse.InputError, match="missing.*beside the symlink"):
        onnx_fuse.optimize_file(link, tmp_path / "out.onnx")
    assert not (tmp_path / "out.onnx").exists()


# ---- float_data weights ----------------------------------------------------------------------------

def test_a_large_weight_in_float_data_comes_out_with_one_value(tmp_path):
    channels = 64  # a 64x64x3x3 float32 weight: 147 KB, over the size that goes to the data file
    b = ModelBuilder(seed=4)
    x = b.input([1, channels, 5, 5])
    b.output(b.batchnorm(conv(b, x, channels, channels), channels))
    model = b.model()
    for tensor in model.graph.initializer:
        if len(tensor.dims) == 4:
            values = numpy_helper.to_array(tensor)
            tensor.ClearField("raw_data")
            tensor.float_data.extend(values.reshape(-1).tolist())
    source = tmp_path / "in.onnx"
    onnx.save(model, str(source))
    for external in (None, "out.data"):
        out = tmp_path / f"out{external is None}.onnx"
        onnx_fuse.optimize_file(source, out, external_data=external)
        result = onnx.load(str(out))
        onnx.checker.check_model(result, full_check=True)
        feeds = {"x": np.random.default_rng(0).standard_normal((1, channels, 5, 5)).astype(np.float32)}
        np.testing.assert_allclose(run_ort(out, feeds)[0], run_ort(source, feeds)[0], rtol=1e-4, atol=1e-4)
