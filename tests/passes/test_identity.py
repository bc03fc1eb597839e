import numpy as np
import pytest
from onnx import helper
from support import (ModelBuilder, assert_optimizes_to, assert_same_function, assert_unchanged, conv, if_reading,
                     op_counts, optimize)


def paddle_chain(b, x):
    """paddle2onnx's learnable affine after a Conv: Conv -> Identity -> Mul -> Identity -> Add -> Identity."""
    y = b.node("Identity", [conv(b, x, 4, 4)])
    y = b.node("Identity", [b.node("Mul", [y, b.const(np.array([1.7], np.float32), "scale")])])
    return b.node("Identity", [b.node("Add", [y, b.const(np.array([0.3], np.float32), "bias")])])


def test_identity_chain_goes_and_the_affine_folds_into_the_conv():
    b = ModelBuilder(seed=2)
    b.output(b.node("Relu", [paddle_chain(b, b.input([1, 4, 5, 5]))]))
    assert_optimizes_to(b.model(), {"Conv": 1, "Relu": 1}, {"identity": 3})


def test_graph_output_keeps_its_name():
    b = ModelBuilder(seed=2)
    y = paddle_chain(b, b.input([1, 4, 5, 5]))
    b.output(y)
    model = b.model()
    result, _ = optimize(model)
    assert op_counts(result) == {"Conv": 1}
    assert [o.name for o in result.graph.output] == [y] and result.graph.node[0].output[0] == y
    assert_same_function(model, result)


def test_identity_from_a_graph_input_to_a_graph_output_stays():
    b = ModelBuilder()
    b.output(b.node("Identity", [b.input([1, 4])]))
    assert_unchanged(b.model(), "cannot take its name", passes=["identity"])


def test_identity_whose_source_is_also_an_output_stays():
    b = ModelBuilder()
    y = b.node("Relu", [b.input([1, 4])])
    b.output(y)
    b.output(b.node("Identity", [y]))
    assert_unchanged(b.model(), "cannot take its name", passes=["identity"])


def test_identity_read_inside_a_subgraph_stays():
    b = ModelBuilder()
    y = b.node("Identity", [b.node("Relu", [b.input([1, 4])])])
    branch = helper.make_graph([helper.make_node("Neg", [y], ["n"])], "b", [],
                               [helper.make_tensor_value_info("n", 1, [1, 4])])
    b.output(b.node("If", [b.const(np.array(True), "c", dtype=np.bool_)], then_branch=branch, else_branch=branch))
    assert_unchanged(b.model(), "a subgraph reads", passes=["identity"])


@pytest.mark.parametrize("twice", [False, True])
def test_a_reader_of_both_sides_reads_the_source(twice):
    b = ModelBuilder()
    x = b.node("Relu", [b.input([1, 4])])
    y = b.node("Identity", [x])
    b.output(b.node("Add", [x, y] if not twice else [y, y]))
    model = b.model()
    result, _ = optimize(model, passes=["identity"])
    assert op_counts(result) == {"Relu": 1, "Add": 1}
    assert_same_function(model, result)


def cast_identity_cast(subgraph_reads: bool):
    """Keras mixed precision and float16 converters write Cast -> Identity -> Cast round trips;
    the second Cast's output is read by the main graph, or also by an If branch."""
    b = ModelBuilder(seed=3)
    x = b.input([2, 4])
    wide = b.node("Identity", [b.node("Cast", [b.node("Relu", [x])], to=11)])  # to double
    back = b.node("Cast", [wide], to=1)
    b.output(b.node("Neg", [back]))
    if subgraph_reads:
        b.output(if_reading(b, back))
    return b.model()


def test_identity_between_two_casts_goes():
    model = cast_identity_cast(subgraph_reads=False)
    result, report = optimize(model)
    assert op_counts(result) == {"Relu": 1, "Cast": 2, "Neg": 1} and report.rewrites == 1
    assert_same_function(model, result)


def test_identity_between_two_casts_a_subgraph_reads_stays():
    """The negative twin: onnxruntime (1.32, also with ORT_DISABLE_ALL) removes a Cast pair that
    round-trips exactly and then fails the If: "Missing Input". The Identity keeps it running."""
    model = cast_identity_cast(subgraph_reads=True)
    assert_unchanged(model, "parts two Casts")
    for cond in (True, False):
        feeds = {"x": np.random.default_rng(0).normal(size=(2, 4)).astype(np.float32), "cond": np.array(cond)}
        assert_same_function(model, optimize(model)[0], feeds=feeds)
