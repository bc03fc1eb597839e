"""Every model in the onnx package's backend test data that onnxruntime can run comes out valid,
with the same outputs; the `light` models with BatchNormalization have none left after a Conv."""

from collections import Counter
from pathlib import Path

import onnx
import pytest
from onnx import numpy_helper
from support import assert_same_function, optimize, session

DATA = Path(onnx.__file__).parent / "backend" / "test" / "data"
MODELS = sorted(DATA.glob("*/*/model.onnx")) + sorted(DATA.glob("light/*.onnx"))
FOLDED_LIGHT = ["light_resnet50", "light_densenet121", "light_inception_v2", "light_shufflenet"]


def runnable(model):
    try:
        onnx.checker.check_model(model, full_check=True)
        session(model)
    except Exception:
        return False
    return True


def recorded_inputs(path: Path, model):
    """The first recorded test inputs beside the model, if any."""
    folder = path.parent / "test_data_set_0"
    if not folder.is_dir():
        return None
    names = [vi.name for vi in model.graph.input if vi.name not in {t.name for t in model.graph.initializer}]
    tensors = [numpy_helper.to_array(onnx.load_tensor(str(p))) for p in sorted(folder.glob("input_*.pb"))]
    return dict(zip(names, tensors)) if len(tensors) == len(names) else None


def test_backend_data_is_there():
    assert len(MODELS) > 100


@pytest.mark.parametrize("path", MODELS, ids=[str(p.relative_to(DATA)) for p in MODELS])
def test_backend_model(path):
    model = onnx.load(str(path))
    if not runnable(model):
        pytest.skip("onnxruntime cannot run the original")
    result, _ = optimize(model)
    feeds = recorded_inputs(path, model)
    if feeds is not None and any(v.dtype.kind not in "fiub" for v in feeds.values()):
        feeds = None
    if feeds is None and any(vi.type.tensor_type.elem_type not in (1, 10, 11) for vi in model.graph.input):
        onnx.checker.check_model(result, full_check=True)
        return
    assert_same_function(model, result, feeds=feeds)


def ops_after_conv(model):
    producer = {out: node for node in model.graph.node for out in node.output}
    return Counter(node.op_type for node in model.graph.node
                   if node.op_type in ("BatchNormalization", "Mul", "Add", "Sub", "Div")
                   and any(producer.get(i) is not None and producer[i].op_type == "Conv" for i in node.input))


@pytest.mark.parametrize("name", FOLDED_LIGHT)
def test_light_models_fold_every_batchnorm_after_a_conv(name):
    model = onnx.load(str(DATA / "light" / f"{name}.onnx"))
    assert ops_after_conv(model)["BatchNormalization"] > 0
    result, report = optimize(model)
    assert ops_after_conv(result) == Counter()
    assert report.passes["conv_bn"].rewrites == ops_after_conv(model)["BatchNormalization"]
    assert len(result.graph.input) == len(result.graph.initializer) + 1  # IR 3: initializers are inputs
