"""onnx-graphsurgeon at the API boundary: optimize(gs.Graph) returns a gs.Graph, the same model as
gs's own export -> optimize -> import, on every fixture. Skipped where onnx-graphsurgeon is not
installed (it is no dependency of onnx-fuse)."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from support import assert_matches_framework, op_counts, session

import onnx_fuse

gs = pytest.importorskip("onnx_graphsurgeon")

FIXTURES = sorted((Path(__file__).resolve().parent.parent / "fixtures").glob("*.onnx"))


@pytest.mark.parametrize("path", FIXTURES, ids=[p.stem for p in FIXTURES])
def test_a_gs_graph_in_a_gs_graph_out(path, capfd):
    graph = gs.import_onnx(onnx.load(str(path)))
    untouched = gs.export_onnx(graph).SerializeToString()
    result = onnx_fuse.optimize(graph)
    assert isinstance(result, gs.Graph)
    assert "[E]" not in "".join(capfd.readouterr())  # gs logs an error for an attribute it lacks: none probed
    assert gs.export_onnx(graph).SerializeToString() == untouched  # the caller's graph is left as it was
    # the same as gs's own export, then onnx-fuse on the ModelProto, then gs's own import
    by_hand = gs.import_onnx(onnx_fuse.optimize(gs.export_onnx(gs.import_onnx(onnx.load(str(path))))))
    exported = gs.export_onnx(result)
    assert exported.SerializeToString() == gs.export_onnx(by_hand).SerializeToString()
    onnx.checker.check_model(exported, full_check=True)
    # and it computes what the framework computed
    data = np.load(path.with_suffix(".npz"))
    sess = session(exported)
    feeds = {arg.name: data[f"in{i}"] for i, arg in enumerate(sess.get_inputs())}
    expected = [data[f"out{i}"] for i in range(len(sess.get_outputs()))]
    assert_matches_framework(sess.run(None, feeds), expected, path.stem, tolerance=1e-4)
    assert op_counts(exported) == op_counts(onnx_fuse.optimize(str(path)))


def test_a_gs_graph_with_the_report_and_verify():
    path = next(p for p in FIXTURES if p.stem == "torch_repvgg_keepbn")
    result, report = onnx_fuse.optimize_with_report(gs.import_onnx(onnx.load(str(path))), verify=True)
    assert isinstance(result, gs.Graph) and len(result.nodes) == 13
    assert report.rewrites == 17 and report.verification["verdict"] == "PASSED"


def test_other_gs_objects_are_refused_in_one_line():
    node = gs.Node(op="Relu", inputs=[], outputs=[])
    with pytest.raises(onnx_fuse.InputError, match="give a gs.Graph"):
        onnx_fuse.optimize(node)


def test_graphsurgeon_is_imported_only_for_a_gs_graph():
    code = ("import sys, onnx, onnx_fuse\n"
            "m = onnx.load(sys.argv[1])\n"
            "onnx_fuse.optimize(m)\n"
            "assert 'onnx_graphsurgeon' not in sys.modules\n")
    done = subprocess.run([sys.executable, "-c", code, str(FIXTURES[0])], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
