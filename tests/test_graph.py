"""Graph.shape_value: the entries of shape arithmetic an exporter wrote out, None where a size is
not recorded."""

import numpy as np
from onnx import TensorProto
from support import ModelBuilder

from onnx_fuse.graph import Graph
from onnx_fuse.scope import NameScope


def view(model) -> Graph:
    return Graph(model.graph, opset=17, ir_version=model.ir_version, names=NameScope(model))


def shape_arithmetic():
    b = ModelBuilder()
    x = b.input(["batch", 4, 6, 8])
    shape = b.node("Shape", [x])
    names = {
        "whole": shape,
        "tail": b.node("Shape", [x], start=2),
        "batch": b.node("Gather", [shape, b.const(np.array(0), "i", np.int64)], axis=0),
        "width": b.node("Unsqueeze", [b.node("Gather", [shape, b.const(np.array(-1), "i", np.int64)], axis=0),
                                      b.const([0], "axes", np.int64)]),
        "sliced": b.node("Slice", [shape, b.const([1], "s", np.int64), b.const([1 << 62], "e", np.int64)]),
        "doubled": b.node("Mul", [shape, b.const([2], "two", np.int64)]),
        "floats": b.node("Cast", [b.node("Max", [b.node("Cast", [shape], to=TensorProto.FLOAT),
                                                  b.const([1, 5, 1, 1], "m", np.float32)])], to=TensorProto.INT64),
        "joined": b.node("Concat", [b.node("Slice", [shape, b.const([0], "s", np.int64), b.const([1], "e", np.int64)]),
                                    b.const([3, 1], "c", np.int64)], axis=0),
        "not_shape": b.node("Relu", [b.node("Cast", [shape], to=TensorProto.FLOAT)]),
        "big_float": b.node("Cast", [b.node("Add", [shape, b.const([(1 << 25) + 1], "big", np.int64)])],
                            to=TensorProto.FLOAT),
    }
    for name in names.values():
        b.output(name)
    return view(b.model()), names


def test_shape_value_follows_shape_arithmetic():
    graph, names = shape_arithmetic()
    assert graph.shape_value(names["whole"]) == (None, 4, 6, 8)
    assert graph.shape_value(names["tail"]) == (6, 8)
    assert graph.shape_value(names["batch"]) == (None,)
    assert graph.shape_value(names["width"]) == (8,)
    assert graph.shape_value(names["sliced"]) == (4, 6, 8)
    assert graph.shape_value(names["doubled"]) == (None, 8, 12, 16)
    assert graph.shape_value(names["floats"]) == (None, 5, 6, 8)
    assert graph.shape_value(names["joined"]) == (None, 3, 1)


def test_shape_value_is_none_past_what_it_follows():
    """The negative twin: a Relu is not shape arithmetic; 2^25 + 5 in float32 would be rounded."""
    graph, names = shape_arithmetic()
    assert graph.shape_value(names["not_shape"]) is None
    assert graph.shape_value(names["big_float"]) is None
