import numpy as np
import pytest
from onnx import helper
from support import ModelBuilder, assert_same_function, assert_unchanged, op_counts, optimize


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


def test_refuse_branch_names_that_clash_with_the_graph():
    model = if_model()
    then_graph = next(a.g for a in model.graph.node[-2].attribute if a.name == "then_branch")
    clash = model.graph.node[0].output[0]  # the Cast's output, in the enclosing graph
    then_graph.node[0].output[0] = clash
    then_graph.node[1].input[0] = clash
    assert_unchanged(model, "a name the enclosing graph has too", passes=["inline_if"])
