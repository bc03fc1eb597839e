import numpy as np
from onnx import helper, numpy_helper
from support import ModelBuilder, assert_optimizes_to, assert_unchanged


def constant(b, values):
    return b.node("Constant", [], value=numpy_helper.from_array(np.asarray(values, np.float32), b.name("value")))


def test_unread_constants_go():
    b = ModelBuilder()
    x = b.input([1, 4])
    constant(b, [1.0, 2.0])  # paddle2onnx leaves such Constants behind
    used = constant(b, [0.5])
    constant(b, [[3.0]])
    b.output(b.node("Mul", [x, used]))
    assert_optimizes_to(b.model(), {"Constant": 1, "Mul": 1}, {"dead_constant": 2})


def test_constants_that_are_outputs_or_read_stay():
    """The negative twin: one Constant is a graph output, one is read by a subgraph, one by a node."""
    b = ModelBuilder()
    x = b.input([1, 4])
    outer = constant(b, [2.0])
    branch = helper.make_graph([helper.make_node("Mul", ["x", outer], ["y_then"])], "then", [],
                               [helper.make_tensor_value_info("y_then", 1, None)])
    other = helper.make_graph([helper.make_node("Identity", ["x"], ["y_else"])], "else", [],
                              [helper.make_tensor_value_info("y_else", 1, None)])
    b.output(b.node("If", [b.node("Greater", [b.node("ReduceSum", [x]), b.const(np.array(0, np.float32))])],
                    then_branch=branch, else_branch=other))
    b.output(constant(b, [1.0, 2.0]))
    b.output(b.node("Add", [x, constant(b, [0.5])]))
    assert_unchanged(b.model(), "is a graph output", passes=["dead_constant"])
