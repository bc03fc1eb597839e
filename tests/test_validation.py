"""Every input is validated before any rewrite: an invalid model gets one line saying what is
wrong and where, exit code 2, and no output, through the command, optimize_file and optimize."""

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper
from support import ModelBuilder, conv

import onnx_fuse
from onnx_fuse.cli import EXIT_OK, EXIT_USAGE, main


def conv_bn(channels=4, seed=0) -> onnx.ModelProto:
    b = ModelBuilder(seed=seed)
    b.output(b.batchnorm(conv(b, b.input([1, channels, 6, 6]), channels, channels), channels))
    return b.model()


def node(model, op):
    return next(n for n in model.graph.node if n.op_type == op)


def weight(model):
    return next(t for t in model.graph.initializer if len(t.dims) == 4)


def set_attribute(model, op, name, value):
    target = node(model, op)
    for attr in list(target.attribute):
        if attr.name == name:
            target.attribute.remove(attr)
    target.attribute.append(helper.make_attribute(name, value))


def external(model, tmp_path, edit):
    """Save with every tensor in w.bin, then edit the external_data entries of the weight."""
    onnx.save(model, str(tmp_path / "in.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
              location="w.bin", size_threshold=0)
    saved = onnx.load(str(tmp_path / "in.onnx"), load_external_data=False)
    entries = {e.key: e for e in weight(saved).external_data}
    edit(entries)
    return saved


def group_as_string(model, tmp_path):
    set_attribute(model, "Conv", "group", "1")
    return model


def epsilon_as_string(model, tmp_path):
    set_attribute(model, "BatchNormalization", "epsilon", "1e-5")
    return model


def _set(entries, key, value):
    entries[key].value = value


def offset_not_a_number(model, tmp_path):
    return external(model, tmp_path, lambda e: _set(e, "offset", "abc"))


def nul_in_location(model, tmp_path):
    return external(model, tmp_path, lambda e: _set(e, "location", "w.bin\0evil"))


def length_disagrees_with_dims(model, tmp_path):
    return external(model, tmp_path, lambda e: _set(e, "length", str(int(e["length"].value) - 4)))


def raw_data_short(model, tmp_path):
    w = weight(model)
    w.raw_data = w.raw_data[:-8]
    return model


def large_raw_data_short(model, tmp_path):
    return raw_data_short(conv_bn(channels=48), tmp_path)  # 48x48x3x3 float32: left in the file by a lazy read


def absurd_dims(model, tmp_path):
    w = weight(model)
    w.dims[0] = 2 ** 40
    return model


def negative_dim(model, tmp_path):
    w = weight(model)
    w.dims[0] = -w.dims[0]
    return model


def zero_element_conv_weight(model, tmp_path):
    w = weight(model)
    w.CopyFrom(numpy_helper.from_array(np.zeros((0, 4, 3, 3), dtype=np.float32), w.name))
    return model


def duplicate_initializer(model, tmp_path):
    model.graph.initializer.append(model.graph.initializer[0])
    return model


def input_listed_twice(model, tmp_path):
    model.graph.input.append(model.graph.input[0])
    return model


def two_value_fields(model, tmp_path):
    w = weight(model)
    w.float_data.extend(numpy_helper.to_array(w).reshape(-1).tolist())
    return model


HOSTILE = {
    group_as_string: "group",
    epsilon_as_string: "epsilon",
    offset_not_a_number: "offset 'abc' is not a whole number",
    nul_in_location: "location",
    length_disagrees_with_dims: "does not match its dims",
    raw_data_short: "568 bytes",
    large_raw_data_short: "82936",
    absurd_dims: "158329674399744",
    negative_dim: "egative dimension",
    zero_element_conv_weight: "no elements",
    duplicate_initializer: "is not unique",
    input_listed_twice: "graph input",
    two_value_fields: "value",
}


@pytest.fixture(params=["checker", "large graph"])
def checker_mode(request, monkeypatch):
    """Graphs of over io.CHECKER_NODES nodes are checked without onnx.checker: the same inputs
    must be refused there too."""
    if request.param == "large graph":
        monkeypatch.setattr(onnx_fuse.io, "CHECKER_NODES", 0)
    return request.param


@pytest.mark.parametrize("make", list(HOSTILE), ids=lambda f: f.__name__)
def test_an_invalid_model_is_refused_in_one_line_before_any_rewrite(make, tmp_path, capsys, checker_mode):
    model = make(conv_bn(), tmp_path)
    path = tmp_path / "in.onnx"
    path.write_bytes(model.SerializeToString())
    out = tmp_path / "out.onnx"
    assert main([str(path), "-o", str(out)]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("onnx-fuse: error:") and str(path) in err, err
    assert HOSTILE[make] in err, err
    assert not out.exists()
    with pytest.raises(onnx_fuse.InputError):
        onnx_fuse.optimize_file(path, out)
    if make not in (offset_not_a_number, nul_in_location, length_disagrees_with_dims):
        with pytest.raises(onnx_fuse.InputError, match=HOSTILE[make].replace("(", r"\(")):
            onnx_fuse.optimize(model)


def test_the_valid_twin_is_rewritten(tmp_path):
    path = tmp_path / "in.onnx"
    onnx.save(conv_bn(), str(path))
    assert main([str(path), "-o", str(tmp_path / "out.onnx"), "-q"]) == EXIT_OK


def test_an_output_without_a_shape_is_not_an_error():
    """onnx.checker wants shapes on the main graph's inputs and outputs; onnxruntime does not."""
    model = conv_bn()
    model.graph.output[0].type.tensor_type.ClearField("shape")
    assert onnx_fuse.optimize_with_report(model)[1].rewrites == 1


@pytest.mark.parametrize("shape", ["x:1,-3,6,6", "x:-1"])
def test_a_negative_input_shape_is_refused(shape, tmp_path, capsys):
    path = tmp_path / "in.onnx"
    onnx.save(conv_bn(), str(path))
    assert main([str(path), "-o", str(tmp_path / "out.onnx"), "--verify", "--input-shape", shape]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "every size must be at least 1" in err
