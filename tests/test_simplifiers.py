"""onnx-fuse before or after onnxsim and onnxslim, on every fixture: both orders compute what the
framework computed, and whichever tool runs second finds nothing left to do (onnx-fuse: the same
bytes; the simplifier: the same nodes, in the same order, on the same tensors). Skipped for a
tool that is not installed."""

from pathlib import Path

import numpy as np
import onnx
import pytest
from support import assert_matches_framework, session

import onnx_fuse

FIXTURES = sorted((Path(__file__).resolve().parent.parent / "fixtures").glob("*.onnx"))
# Where the order matters, and why (each checked: both orders still compute the same numbers).
ORDER_GAPS = {
    ('torch_convnext_deploy', 'onnxsim'): 'onnxsim run on its own output again reorders the Constant nodes it keeps (so without onnx-fuse too)',
    ('torch_convnext_layerscale', 'onnxsim'): 'onnxsim run on its own output again reorders the Constant nodes it keeps (so without onnx-fuse too)',
    ('torch_repvit_head_deploy', 'onnxsim'): 'onnxsim run on its own output again reorders the Constant nodes it keeps (so without onnx-fuse too)',
    ('torch_repvit_head_keepbn', 'onnxsim'): 'onnxsim run on its own output again reorders the Constant nodes it keeps (so without onnx-fuse too)',
    ('torch_levit_dynamo', 'onnxsim'): 'the simplifier writes the rank-3 MatMul + Add that reshape_bn leaves as Reshape, Gemm, Reshape',
    ('torch_levit_dynamo', 'onnxslim'): 'the simplifier writes the rank-3 MatMul + Add that reshape_bn leaves as Reshape, Gemm, Reshape',
    ('torch_levit_keepbn', 'onnxsim'): 'the simplifier writes the rank-3 MatMul + Add that reshape_bn leaves as Reshape, Gemm, Reshape',
    ('torch_levit_keepbn', 'onnxslim'): 'the simplifier writes the rank-3 MatMul + Add that reshape_bn leaves as Reshape, Gemm, Reshape',
    ('torch_prescale_keepbn', 'onnxsim'): 'onnxsim keeps one folded weight as a Constant node; after onnx-fuse it has none to keep',
}


def simplify_with_onnxsim(model):
    import onnxsim

    simplified, ok = onnxsim.simplify(model)
    assert ok
    return simplified


def simplify_with_onnxslim(model):
    import onnxslim

    return onnxslim.slim(model)


TOOLS = {"onnxsim": simplify_with_onnxsim, "onnxslim": simplify_with_onnxslim}


def nodes(model):
    return [(n.op_type, list(n.input), list(n.output)) for n in model.graph.node]


def assert_computes_the_fixture(model, path):
    data = np.load(path.with_suffix(".npz"))
    sess = session(model)
    feeds = {arg.name: data[f"in{i}"] for i, arg in enumerate(sess.get_inputs())}
    expected = [data[f"out{i}"] for i in range(len(sess.get_outputs()))]
    assert_matches_framework(sess.run(None, feeds), expected, path.stem, tolerance=1e-4)


@pytest.mark.parametrize("tool", sorted(TOOLS))
@pytest.mark.parametrize("path", FIXTURES, ids=[p.stem for p in FIXTURES])
def test_onnx_fuse_then_the_simplifier(tool, path):
    pytest.importorskip(tool)
    simplify = TOOLS[tool]
    fused = simplify(onnx_fuse.optimize(str(path)))
    assert_computes_the_fixture(fused, path)
    again = onnx_fuse.optimize(fused)
    assert again.SerializeToString() == fused.SerializeToString()


@pytest.mark.parametrize("tool", sorted(TOOLS))
@pytest.mark.parametrize("path", FIXTURES, ids=[p.stem for p in FIXTURES])
def test_the_simplifier_then_onnx_fuse(tool, path):
    pytest.importorskip(tool)
    simplify = TOOLS[tool]
    simplified = simplify(onnx.load(str(path)))
    fused = onnx_fuse.optimize(simplified)
    assert_computes_the_fixture(fused, path)
    assert len(fused.graph.node) <= len(simplified.graph.node)
    assert onnx_fuse.optimize(fused).SerializeToString() == fused.SerializeToString()


def order_gap(path, tool):
    reason = ORDER_GAPS.get((path.stem, tool))
    return pytest.mark.xfail(reason=reason, strict=True) if reason else ()


@pytest.mark.parametrize("tool,path", [pytest.param(t, p, marks=order_gap(p, t), id=f"{p.stem}-{t}")
                                       for p in FIXTURES for t in sorted(TOOLS)])
def test_both_orders_end_with_the_same_operators(tool, path):
    """And the simplifier, run again after onnx-fuse, finds nothing more to do."""
    pytest.importorskip(tool)
    simplify = TOOLS[tool]
    fused = onnx_fuse.optimize(simplify(onnx.load(str(path))))
    assert nodes(simplify(fused)) == nodes(fused)
    fused_first = simplify(onnx_fuse.optimize(str(path)))
    assert sorted(op for op, _, _ in nodes(fused)) == sorted(op for op, _, _ in nodes(fused_first))
