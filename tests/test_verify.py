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
    with pytest.raises(onnx_fuse.VerificationError, match="differs"):
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
    assert "verification failed, nothing written" in capsys.readouterr().err
    assert main([str(tmp_path / "m.onnx"), "-o", str(tmp_path / "out.onnx"), "--verify=bisect"]) == EXIT_OK
    assert "undid break_relu at bad1" in capsys.readouterr().err
    assert op_counts(onnx.load(str(tmp_path / "out.onnx")))["Sigmoid"] == 0
