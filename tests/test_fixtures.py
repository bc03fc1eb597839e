"""Real exports from PyTorch, Keras (tf2onnx) and Paddle (paddle2onnx), made by fixtures/make_*.py:
after onnx-fuse no normalization or constant affine op follows a Conv, and the outputs still match
the framework's own to 1e-5 relative."""

from collections import Counter

import numpy as np
import onnx
import pytest
from support import FIXTURES, MANIFEST, assert_matches_framework, optimize, session

from onnx_fuse.idioms import find_idioms
from onnx_fuse.scope import GraphScope, NameScope

AFFINE = ("BatchNormalization", "Mul", "Add", "Sub", "Div")


def load_fixture(name):
    data = np.load(FIXTURES / f"{name}.npz")
    inputs = [data[f"in{i}"] for i in range(sum(k.startswith("in") for k in data.files))]
    outputs = [data[f"out{i}"] for i in range(sum(k.startswith("out") for k in data.files))]
    return onnx.load(str(FIXTURES / f"{name}.onnx")), inputs, outputs


def run(model, inputs):
    sess = session(model)
    return sess.run(None, {arg.name: value for arg, value in zip(sess.get_inputs(), inputs)})


def constants(model):
    return {t.name for t in model.graph.initializer} | {
        out for node in model.graph.node if node.op_type == "Constant" for out in node.output}


def idiom_outputs(model) -> set:
    """Outputs of the nodes of idioms a runtime fuses (GELU's Div of a Conv's output stays)."""
    graph = GraphScope(model.graph, opset=17, ir_version=model.ir_version, names=NameScope.of(model))
    return {graph.node(i).output[0] for i in find_idioms(graph, graph.indices_of)}


def affine_after_conv(model) -> Counter:
    """Normalizations, and Mul/Add/Sub/Div by a constant, that read a Conv's output (outside idioms)."""
    producer = {out: node for node in model.graph.node for out in node.output}
    const = constants(model)
    kept = idiom_outputs(model)
    found = Counter()
    for node in model.graph.node:
        if node.op_type not in AFFINE or node.output[0] in kept:
            continue
        reads_conv = any(i in producer and producer[i].op_type in ("Conv", "ConvTranspose") for i in node.input)
        if reads_conv and (node.op_type == "BatchNormalization" or any(i in const for i in node.input)):
            found[node.op_type] += 1
    return found


def known_gap(name):
    """A fixture onnx-fuse does not bring to its deploy form yet: the manifest says why."""
    gap = MANIFEST[name].get("onnx_fuse_gap")
    return pytest.mark.xfail(reason=gap, strict=True) if gap else ()


def test_fixtures_are_there():
    frameworks = Counter(entry["framework"] for entry in MANIFEST.values())
    assert frameworks["pytorch"] >= 4 and frameworks["keras"] >= 3 and frameworks["paddle"] >= 2


@pytest.mark.parametrize("name", sorted(MANIFEST))
def test_fixture_folds_and_matches_the_framework(name):
    model, inputs, expected = load_fixture(name)
    assert_matches_framework(run(model, inputs), expected, name)
    result, report = optimize(model)
    onnx.checker.check_model(result, full_check=True)
    assert affine_after_conv(result) == Counter(), report.refused
    assert_matches_framework(run(result, inputs), expected, name)
    ops_before = Counter(n.op_type for n in model.graph.node)
    ops_after = Counter(n.op_type for n in result.graph.node)
    assert ops_after["Transpose"] <= ops_before["Transpose"]
    if affine_after_conv(model):
        assert report.rewrites > 0


@pytest.mark.parametrize("name", [pytest.param(n, marks=known_gap(n))
                                  for n, e in sorted(MANIFEST.items()) if e.get("deploy")])
def test_train_form_comes_out_no_larger_than_the_frameworks_deploy_form(name):
    """The framework's own deploy conversion (fuse_conv_bn_eval, switch_to_deploy,
    convert_to_deploy), exported, and put through onnx-fuse too: onnx-fuse's result on the
    train-form export is no larger, and computes what the deploy form computes."""
    model, inputs, expected = load_fixture(name)
    deploy_name = MANIFEST[name]["deploy"]
    deploy, deploy_inputs, deploy_expected = load_fixture(deploy_name)
    sizes = {}
    if MANIFEST[name].get("needs_input_shape"):
        sizes = {"input_shapes": {vi.name: list(x.shape) for vi, x in zip(model.graph.input, inputs)}}
    result, report = optimize(model, **sizes)
    fused_deploy, _ = optimize(deploy, **sizes)
    ops, deploy_ops = Counter(n.op_type for n in result.graph.node), Counter(n.op_type for n in fused_deploy.graph.node)
    assert len(result.graph.node) <= len(fused_deploy.graph.node), (ops - deploy_ops, report.refused)
    assert ops["Conv"] <= deploy_ops["Conv"]
    assert_matches_framework(run(result, deploy_inputs), deploy_expected, deploy_name)


@pytest.mark.parametrize("name", sorted(n for n, e in MANIFEST.items() if e.get("needs_input_shape")))
def test_without_the_input_size_the_size_dependent_merge_is_refused_with_the_remedy(name):
    model, inputs, expected = load_fixture(name)
    result, report = optimize(model)
    assert any("--input-shape" in r.reason for r in report.refused), report.refused
    assert_matches_framework(run(result, inputs), expected, name)
    assert [d.dim_value for d in result.graph.input[0].type.tensor_type.shape.dim][1:3] == [0, 0]
