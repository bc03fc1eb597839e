import numpy as np
import onnx
import pytest
from onnx import helper
from support import ModelBuilder, assert_same_function, assert_unchanged, if_reading, op_counts, optimize, random_inputs

import onnx_fuse


def if_model(condition_is_constant=True, value=True):
    b = ModelBuilder(seed=9)
    x = b.input([1, 4, 5, 5])
    if condition_is_constant:
        cond = b.node("Identity", [b.node("Cast", [b.const([1.0 if value else 0.0], "alpha")], to=9)])
    else:
        cond = b.input([], name="cond", elem=9)
    w = b.const(b.weights(4, 4, 3, 3), "w")
    bn = [b.const(v, n) for v, n in zip([np.full(4, 1.5), np.full(4, 0.1), np.full(4, 0.2), np.full(4, 0.9)],
                                          ["s", "bb", "m", "v"])]
    then_nodes = [helper.make_node("Conv", [x, w], ["t0"], pads=[1] * 4),
                  helper.make_node("BatchNormalization", ["t0"] + bn, ["t1"])]
    then_graph = helper.make_graph(then_nodes, "then", [], [helper.make_tensor_value_info("t1", 1, [1, 4, 5, 5])])
    else_graph = helper.make_graph([helper.make_node("Identity", [x], ["e0"])], "else", [],
                                   [helper.make_tensor_value_info("e0", 1, [1, 4, 5, 5])])
    y = b.node("If", [cond], then_branch=then_graph, else_branch=else_graph)
    b.output(b.node("Relu", [y]))
    return b.model()


@pytest.mark.parametrize("value,ops", [(True, {"Conv": 1, "Relu": 1}), (False, {"Relu": 1})])
def test_inline_constant_if(value, ops):
    model = if_model(value=value)
    result, report = optimize(model)
    assert op_counts(result) == ops
    assert report.passes["inline_if"].rewrites == 1
    assert_same_function(model, result)


def test_refuse_condition_that_is_an_input():
    assert_unchanged(if_model(condition_is_constant=False), "is not a constant", passes=["inline_if"])


def test_a_branch_that_redefines_an_outer_name_is_an_invalid_input():
    model = if_model()
    then_graph = next(a.g for a in model.graph.node[-2].attribute if a.name == "then_branch")
    clash = model.graph.node[0].output[0]  # the Cast's output, in the enclosing graph
    then_graph.node[0].output[0] = clash
    then_graph.node[1].input[0] = clash
    with pytest.raises(onnx_fuse.InputError, match="not a valid model"):
        onnx_fuse.optimize(model)


def two_ifs_reusing_names(second_constant: bool):
    """Two Ifs whose branches use the same local names (valid: sibling subgraphs may repeat
    names): once the first is inlined its names stand in the main graph, beside the second's."""
    model = if_model()
    first = model.graph.node[-2]
    for attr in first.attribute:  # node names too: onnxruntime wants them unique within a graph
        for index, inner in enumerate(attr.g.node):
            inner.name = f"{attr.name}_node{index}"
    second = onnx.NodeProto()
    second.CopyFrom(first)
    second.output[0] = "second_if"
    second.name = "second"
    if not second_constant:
        model.graph.input.append(helper.make_tensor_value_info("cond2", onnx.TensorProto.BOOL, []))
        second.input[0] = "cond2"
    model.graph.node.insert(len(model.graph.node) - 1, second)
    relu = model.graph.node[-1]
    model.graph.node.append(helper.make_node("Add", [relu.output[0], "second_if"], ["sum_out"]))
    model.graph.output[0].name = "sum_out"
    return model


@pytest.mark.parametrize("second_constant", [True, False])
def test_inlined_names_that_a_sibling_subgraph_uses_are_renamed(second_constant):
    model = two_ifs_reusing_names(second_constant)
    onnx.checker.check_model(model, full_check=True)
    result, report = optimize(model, passes=["inline_if"])
    assert report.passes["inline_if"].rewrites == (2 if second_constant else 1)
    onnx.checker.check_model(result, full_check=True)  # SSA: no name defined twice across scopes
    feeds = {"cond2": np.array(True)} if not second_constant else None
    assert_same_function(model, result, feeds=feeds and {**random_inputs(model), **feeds})
    names = [out for node in result.graph.node for out in node.output]
    assert len(names) == len(set(names))
    node_names = [node.name for node in result.graph.node if node.name]
    assert len(node_names) == len(set(node_names))


def test_inlined_names_that_do_not_clash_keep_their_names():
    result, _ = optimize(if_model(), passes=["inline_if"])
    assert "t0" in {out for node in result.graph.node for out in node.output}


def cast_in_branch(later_if_reads: bool):
    """An If on a constant whose branch casts back what a Cast outside it widened (TensorFlow's
    tf.cond around mixed-precision code); what it gives is read by a Relu, or by another If's branch."""
    b = ModelBuilder(seed=5)
    wide = b.node("Cast", [b.node("Relu", [b.input([2, 4])])], to=11)  # to double
    taken = helper.make_graph([helper.make_node("Cast", [wide], ["t"], to=1)], "then", [],
                              [helper.make_tensor_value_info("t", 1, None)])
    other = helper.make_graph([helper.make_node("Cast", [wide], ["e"], to=1),
                               helper.make_node("Neg", ["e"], ["en"])], "else", [],
                              [helper.make_tensor_value_info("en", 1, None)])
    y = b.node("If", [b.const(np.array(True), "k", dtype=np.bool_)], then_branch=taken, else_branch=other)
    b.output(b.node("Relu", [y]))
    if later_if_reads:
        b.output(if_reading(b, y))
    return b.model()


def test_a_branch_casting_back_an_outer_cast_is_inlined():
    model = cast_in_branch(later_if_reads=False)
    result, report = optimize(model)
    assert op_counts(result) == {"Relu": 2, "Cast": 2} and report.passes["inline_if"].rewrites == 1
    assert_same_function(model, result)


def test_a_branch_casting_back_an_outer_cast_that_a_subgraph_reads_on_stays():
    """The negative twin: inlined, the two Casts would stand side by side and another If's branch
    would read their output; onnxruntime (1.32, also under ORT_DISABLE_ALL) removes such an exact
    Cast pair and then fails that If with "Missing Input"."""
    model = cast_in_branch(later_if_reads=True)
    report = assert_unchanged(model, "a Cast of the branch reads a Cast outside it", passes=["inline_if"])
    assert report.passes["inline_if"].rewrites == 0
    result, _ = optimize(model)
    assert op_counts(result)["If"] == 2
    for cond in (True, False):
        feeds = {"x": np.random.default_rng(0).normal(size=(2, 4)).astype(np.float32), "cond": np.array(cond)}
        assert_same_function(model, result, feeds=feeds)
