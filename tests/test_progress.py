"""The status line: what a long run is doing, on a terminal only, gone when the run ends."""

import io

import onnx_fuse
from onnx_fuse import cli
from onnx_fuse.progress import Progress


def test_optimize_file_reports_what_it_is_doing(model_file, tmp_path):
    seen = []
    onnx_fuse.optimize_file(model_file, tmp_path / "out.onnx", verify=True, progress=seen.append)
    assert seen == ["reading", "conv_bn: 1 rewrites (graph)", "verifying in onnxruntime", "writing"]


def test_status_is_throttled_and_cleared():
    stream = io.StringIO()
    status = Progress(stream, prefix="p: ", interval=3600, delay=0)
    status("first")
    status("second, too soon to show")
    assert stream.getvalue() == "\rp: first"
    status.done()
    assert stream.getvalue().endswith("\r" + " " * len("p: first") + "\r")


def test_short_runs_show_nothing():
    stream = io.StringIO()
    status = Progress(stream, delay=3600)
    status("reading")
    status.done()
    assert stream.getvalue() == ""


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_cli_status_line_on_a_terminal_only_and_gone_at_the_end(model_file, tmp_path, monkeypatch, capsys):
    source = model_file
    assert cli.main([str(source), "-o", str(tmp_path / "a.onnx")]) == cli.EXIT_OK
    assert "\r" not in capsys.readouterr().err  # not a terminal: no status
    terminal = Terminal()
    monkeypatch.setattr(cli.sys, "stderr", terminal)
    monkeypatch.setattr(Progress.__init__, "__defaults__", ("", 0.0, 0.0))  # show every status
    assert cli.main([str(source), "-o", str(tmp_path / "b.onnx")]) == cli.EXIT_OK
    written = terminal.getvalue()
    assert "onnx-fuse: in.onnx: reading" in written and "writing" in written
    assert written.endswith("\r") and written.rsplit("\r", 2)[-2].strip() == "", "the line is cleared"
