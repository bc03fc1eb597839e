import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper
from support import ModelBuilder, assert_same_function, conv, op_counts, optimize

import onnx_fuse
from onnx_fuse.passes import DEFAULT_PASSES


def conv_bn(seed=0):
    b = ModelBuilder(seed=seed)
    b.output(b.node("Relu", [b.batchnorm(conv(b, b.input([1, 4, 6, 6]), 4, 4), 4)]))
    return b.model()


class ExportedProgram:
    """Stands for what torch.onnx.export(..., dynamo=True) returns."""

    def __init__(self, model):
        self.model_proto = model


@pytest.mark.parametrize("kind", ["proto", "bytes", "path", "str", "program"])
def test_optimize_takes_every_kind_of_input(kind, tmp_path):
    model = conv_bn()
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    source = {"proto": model, "bytes": model.SerializeToString(), "path": path, "str": str(path),
              "program": ExportedProgram(model)}[kind]
    result = onnx_fuse.optimize(source)
    assert isinstance(result, onnx.ModelProto)
    assert op_counts(result) == {"Conv": 1, "Relu": 1}


def test_optimize_file_writes_the_result(tmp_path):
    onnx.save(conv_bn(), str(tmp_path / "in.onnx"))
    report = onnx_fuse.optimize_file(tmp_path / "in.onnx", tmp_path / "out.onnx")
    assert report.passes["conv_bn"].rewrites == 1
    assert op_counts(onnx.load(str(tmp_path / "out.onnx"))) == {"Conv": 1, "Relu": 1}


def test_optimize_file_refuses_to_overwrite_its_input(tmp_path):
    path = tmp_path / "in.onnx"
    onnx.save(conv_bn(), str(path))
    before = path.read_bytes()
    with pytest.raises(onnx_fuse.InputError, match="inplace"):
        onnx_fuse.optimize_file(path, path)
    assert path.read_bytes() == before
    onnx_fuse.optimize_file(path, path, inplace=True)
    assert op_counts(onnx.load(str(path))) == {"Conv": 1, "Relu": 1}


def test_passes_and_skip_select():
    model = conv_bn()
    assert op_counts(onnx_fuse.optimize(model, passes=["conv_affine"]))["BatchNormalization"] == 1
    assert op_counts(onnx_fuse.optimize(model, skip=["conv_bn"]))["BatchNormalization"] == 1
    assert op_counts(onnx_fuse.optimize(model, passes="conv_bn"))["BatchNormalization"] == 0
    with pytest.raises(ValueError, match="unknown pass 'nope'"):
        onnx_fuse.optimize(model, passes=["nope"])


def test_list_passes():
    names = [name for name, _ in onnx_fuse.list_passes()]
    assert names == [p.name for p in DEFAULT_PASSES]
    assert all(summary for _, summary in onnx_fuse.list_passes())


def test_report_counts():
    _, report = optimize(conv_bn())
    assert report.before.nodes == 3 and report.after.nodes == 2
    assert report.before.ops["BatchNormalization"] == 1 and report.after.ops["BatchNormalization"] == 0
    assert report.to_dict()["rewrites"] == 1
    assert "BatchNormalization" in report.summary()


def test_verify_reports_the_error():
    _, report = optimize(conv_bn(), verify=True)
    assert report.verification["max_abs_error"] < 1e-5


def test_twice_equals_once_and_runs_are_deterministic():
    once = onnx_fuse.optimize(conv_bn()).SerializeToString()
    assert onnx_fuse.optimize(conv_bn()).SerializeToString() == once
    assert onnx_fuse.optimize(once).SerializeToString() == once


def test_metadata_and_interface_are_preserved():
    model = conv_bn()
    model.doc_string = "a model"
    model.producer_name, model.producer_version = "tests", "1"
    model.graph.doc_string = "a graph"
    helper.set_model_props(model, {"author": "us"})
    model.opset_import.append(helper.make_opsetid("com.example", 3))
    result = onnx_fuse.optimize(model)
    for field in ("doc_string", "producer_name", "producer_version", "ir_version", "metadata_props", "opset_import"):
        assert getattr(result, field) == getattr(model, field)
    assert result.graph.doc_string == "a graph"


def test_unknown_ops_and_custom_domains_pass_through():
    b = ModelBuilder()
    x = b.input([1, 4, 6, 6])
    y = b.node("Relu", [x])
    b.nodes[-1].domain = "com.example"
    b.output(b.batchnorm(conv(b, y, 4, 4), 4))
    model = b.model(domains=["com.example"])
    result = onnx_fuse.optimize(model)
    assert op_counts(result) == {"Relu": 1, "Conv": 1}
    assert result.graph.node[0] == model.graph.node[0]


def test_subgraphs_are_optimized():
    inner = conv_bn(seed=1)
    outer = ModelBuilder(seed=2)
    x = outer.input([1, 4, 6, 6], name=inner.graph.input[0].name)
    cond = outer.input([], name="cond", elem=onnx.TensorProto.BOOL)
    then_graph = helper.make_graph(list(inner.graph.node), "then", [], list(inner.graph.output),
                                   list(inner.graph.initializer))
    else_graph = helper.make_graph([helper.make_node("Relu", [x], ["else_out"])], "else", [],
                                   [helper.make_tensor_value_info("else_out", 1, [1, 4, 6, 6])])
    outer.output(outer.node("If", [cond], then_branch=then_graph, else_branch=else_graph))
    model = outer.model()
    result, report = optimize(model)
    assert report.passes["conv_bn"].rewrites == 1
    then_graph = next(a.g for a in result.graph.node[0].attribute if a.name == "then_branch")
    then_ops = {n.op_type for n in then_graph.node}
    assert then_ops == {"Conv", "Relu"}
    for value in (True, False):
        feeds = {"cond": np.array(value), x: np.random.default_rng(0).standard_normal((1, 4, 6, 6)).astype(np.float32)}
        assert_same_function(model, result, feeds=feeds)


def model_calling(function, **attrs):
    """A model whose graph is one call of the local `function` on x [1, 4, 6, 6]."""
    graph = helper.make_graph([helper.make_node(function.name, ["x"], ["y"], domain=function.domain, **attrs)], "g",
                              [helper.make_tensor_value_info("x", 1, [1, 4, 6, 6])],
                              [helper.make_tensor_value_info("y", 1, [1, 4, 6, 6])])
    model = helper.make_model(graph, functions=[function],
                              opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(function.domain, 1)])
    model.ir_version = 8
    return model


def test_local_functions_are_optimized():
    inner = conv_bn(seed=3)
    constants = [helper.make_node("Constant", [], [t.name], value=t) for t in inner.graph.initializer]
    function = helper.make_function("local", "ConvBlock", [inner.graph.input[0].name],
                                     [inner.graph.output[0].name], constants + list(inner.graph.node),
                                     [helper.make_opsetid("", 17)])
    model = model_calling(function)
    result, report = optimize(model)
    assert report.passes["conv_bn"].rewrites == 1
    ops = {n.op_type for n in result.functions[0].node}
    assert "BatchNormalization" not in ops and "Conv" in ops
    assert_same_function(model, result)


def test_bad_inputs_raise_one_clear_error(tmp_path):
    with pytest.raises(onnx_fuse.InputError, match="no such file"):
        onnx_fuse.optimize(tmp_path / "missing.onnx")
    with pytest.raises(onnx_fuse.InputError, match="is a directory"):
        onnx_fuse.optimize(tmp_path)
    (tmp_path / "empty.onnx").write_bytes(b"")
    with pytest.raises(onnx_fuse.InputError, match="empty"):
        onnx_fuse.optimize(tmp_path / "empty.onnx")
    (tmp_path / "junk.onnx").write_bytes(np.random.default_rng(0).bytes(1000))
    with pytest.raises(onnx_fuse.InputError, match="not an ONNX model"):
        onnx_fuse.optimize(tmp_path / "junk.onnx")
    with pytest.raises(onnx_fuse.InputError, match="not an ONNX model"):
        onnx_fuse.optimize(numpy_helper.from_array(np.ones(3)).SerializeToString())


def test_function_attribute_references_are_refused_not_guessed():
    """Found by the fuzzer: a BN inside a function whose epsilon is the function's attribute."""
    inner = conv_bn(seed=4)
    constants = [helper.make_node("Constant", [], [t.name], value=t) for t in inner.graph.initializer]
    nodes = list(inner.graph.node)
    bn = nodes[1]
    del bn.attribute[:]
    bn.attribute.append(helper.make_attribute_ref("epsilon", onnx.AttributeProto.FLOAT))
    bn.attribute[0].ref_attr_name = "eps"
    function = helper.make_function("local", "Block", [inner.graph.input[0].name], [inner.graph.output[0].name],
                                    constants + nodes, [helper.make_opsetid("", 17)], attributes=["eps"])
    model = model_calling(function, eps=1e-3)
    result, report = optimize(model)
    assert report.passes["conv_bn"].rewrites == 0
    assert any("refer to function attributes" in r.reason for r in report.refused)
    assert_same_function(model, result)


@pytest.mark.parametrize("shapes,message", [
    ({"nope": [1, 4, 6, 6]}, "has no such input"),
    ({"x": [1, 4, -6, 6]}, "whole number >= 1"),
    ({"x": [1, 4, 6]}, "the input has rank 4"),
    ({"x": [1, 5, 6, 6]}, "the model fixes it at 4"),
])
def test_input_shapes_are_checked_against_the_model(shapes, message):
    with pytest.raises(onnx_fuse.InputError, match=message):
        onnx_fuse.optimize(conv_bn(), input_shapes=shapes)


def test_given_input_shapes_are_written_into_the_result():
    model = conv_bn()
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "N"
    result = onnx_fuse.optimize(model, input_shapes={"x": [3, 4, 6, 6]})
    assert [d.dim_value for d in result.graph.input[0].type.tensor_type.shape.dim] == [3, 4, 6, 6]
    assert op_counts(result) == {"Conv": 1, "Relu": 1}


# ---- the keywords, spelled out -----------------------------------------------------------------

@pytest.mark.parametrize("function", [onnx_fuse.optimize, onnx_fuse.optimize_with_report, onnx_fuse.optimize_file])
def test_keyword_arguments_are_spelled_out(function):
    import inspect

    parameters = inspect.signature(function).parameters
    assert not any(p.kind is p.VAR_KEYWORD for p in parameters.values())
    assert {"passes", "skip", "verify", "input_shapes", "fold_overridable_initializers"} <= set(parameters)
    assert "branch" in function.__doc__


def test_passes_and_skip_take_comma_separated_names():
    model = conv_bn()
    assert op_counts(onnx_fuse.optimize(model, skip="conv_bn,bn_conv"))["BatchNormalization"] == 1
    assert op_counts(onnx_fuse.optimize(model, skip="bn_conv, conv_bn"))["BatchNormalization"] == 1
    assert op_counts(onnx_fuse.optimize(model, skip="bn_conv"))["BatchNormalization"] == 0
    assert op_counts(onnx_fuse.optimize(model, passes="gemm_bn,conv_bn"))["BatchNormalization"] == 0
    assert op_counts(onnx_fuse.optimize(model, passes="gemm_bn,bn_conv"))["BatchNormalization"] == 1
    with pytest.raises(ValueError, match="unknown pass 'conv_bn,bn_conv '"):
        onnx_fuse.optimize(model, skip=["conv_bn,bn_conv "])  # a list holds names, not lists of names


def test_verify_options_in_the_api():
    _, report = onnx_fuse.optimize_with_report(conv_bn(), verify=onnx_fuse.VerifyOptions(seed=3, trials=2, rtol=1e-3))
    v = report.verification
    assert (v["verdict"], v["seed"], v["trials"], v["rtol"]) == ("PASSED", 3, 2, 1e-3)


def test_the_public_names_import_lazily():
    import subprocess
    import sys

    code = ("import sys, onnx_fuse\nassert 'onnx' not in sys.modules\n"
            "from onnx_fuse import optimize, VerifyOptions, InputError, VerificationError, Report\n"
            "assert 'onnx' in sys.modules and callable(optimize)\n"
            "assert set(onnx_fuse.__all__) <= set(dir(onnx_fuse))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
