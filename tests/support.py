"""Building small models, running them in onnxruntime with its optimizations off, and comparing."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

import onnx_fuse

FLOAT_TYPES = {np.float32: TensorProto.FLOAT, np.float16: TensorProto.FLOAT16, np.float64: TensorProto.DOUBLE}
TOLERANCE = {np.float32: (1e-5, 1e-6), np.float64: (1e-10, 1e-12), np.float16: (1e-2, 1e-2)}


class ModelBuilder:
    """A graph under construction: numpy weights become initializers with unique names."""

    def __init__(self, dtype=np.float32, seed=0):
        self.dtype = np.dtype(dtype).type
        self.rng = np.random.default_rng(seed)
        self.nodes, self.inits, self.inputs, self.outputs = [], [], [], []
        self.count = 0

    def name(self, hint):
        self.count += 1
        return f"{hint}{self.count}"

    def const(self, values, hint="c", dtype=None):
        name = self.name(hint)
        self.inits.append(numpy_helper.from_array(np.asarray(values, dtype=dtype or self.dtype), name))
        return name

    def input(self, shape, name="x", elem=None):
        self.inputs.append(helper.make_tensor_value_info(name, elem or FLOAT_TYPES[self.dtype], shape))
        return name

    def node(self, op, inputs, n_out=1, **attrs):
        outs = [self.name(op.lower() + "_out") for _ in range(n_out)]
        self.nodes.append(helper.make_node(op, list(inputs), outs, name=self.name(op), **attrs))
        return outs[0] if n_out == 1 else outs

    def output(self, name, elem=None):
        self.outputs.append(helper.make_tensor_value_info(name, elem or FLOAT_TYPES[self.dtype], None))

    def weights(self, *shape, scale=None):
        fan_in = int(np.prod(shape[1:])) or 1
        return (self.rng.standard_normal(shape) * (scale or fan_in ** -0.5)).astype(self.dtype)

    def bn_params(self, c):
        """Randomized statistics, far from identity, so that a wrong fold shows."""
        return [self.const(self.rng.uniform(0.5, 1.5, c), "scale"), self.const(self.rng.normal(0, 0.5, c), "bnbias"),
                self.const(self.rng.normal(0, 0.5, c), "mean"), self.const(self.rng.uniform(0.05, 2.0, c), "var")]

    def batchnorm(self, x, c, epsilon=1e-3, **attrs):
        return self.node("BatchNormalization", [x] + self.bn_params(c), epsilon=epsilon, **attrs)

    def model(self, opset=17, ir_version=None, domains=()):
        graph = helper.make_graph(self.nodes, "test", self.inputs, self.outputs, self.inits)
        opsets = [helper.make_opsetid("", opset)] + [helper.make_opsetid(d, 1) for d in domains]
        model = helper.make_model(graph, opset_imports=opsets)
        model.ir_version = ir_version or min(onnx.IR_VERSION, 8 if opset <= 17 else 10)
        # outputs are declared without a shape; take the rank and sizes from shape inference
        inferred = onnx.shape_inference.infer_shapes(model)
        known = {vi.name: vi for vi in list(inferred.graph.value_info) + list(inferred.graph.output)}
        for output in model.graph.output:
            if output.name in known and known[output.name].type.tensor_type.HasField("shape"):
                output.type.CopyFrom(known[output.name].type)
        return model


def op_counts(model) -> Counter:
    return Counter(n.op_type for n in model.graph.node)


def session(model):
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def random_inputs(model, seed=1):
    """Random data for every graph input that is not an initializer; dynamic dimensions are 2."""
    rng = np.random.default_rng(seed)
    initializers = {t.name for t in model.graph.initializer}
    feeds = {}
    for arg in model.graph.input:
        if arg.name in initializers:
            continue
        tensor_type = arg.type.tensor_type
        dtype = helper.tensor_dtype_to_np_dtype(tensor_type.elem_type)
        shape = [d.dim_value if d.HasField("dim_value") else 2 for d in tensor_type.shape.dim]
        feeds[arg.name] = rng.standard_normal(shape).astype(dtype)
    return feeds


def assert_same_function(original, optimized, feeds=None, dtype=np.float32):
    """Both models pass the checker and give the same outputs in onnxruntime (ORT_DISABLE_ALL)."""
    onnx.checker.check_model(optimized, full_check=True)
    feeds = feeds or random_inputs(original)
    try:
        expected = session(original).run(None, feeds)
        actual = session(optimized).run(None, feeds)
    except ort.capi.onnxruntime_pybind11_state.NotImplemented:
        # onnxruntime's CPU kernels lack some dtypes (float64, float16 Conv): use onnx's reference
        expected = ReferenceEvaluator(original).run(None, feeds)
        actual = ReferenceEvaluator(optimized).run(None, feeds)
    rtol, atol = TOLERANCE[np.dtype(dtype).type]
    assert len(expected) == len(actual)
    for e, a in zip(expected, actual):
        assert e.shape == a.shape and e.dtype == a.dtype
        scale = max(1.0, float(np.max(np.abs(e))))
        np.testing.assert_allclose(a, e, rtol=rtol, atol=atol * scale)


def optimize(model, **options):
    """onnx_fuse.optimize_with_report, checking the input was left untouched."""
    before = model.SerializeToString()
    result, report = onnx_fuse.optimize_with_report(model, **options)
    assert model.SerializeToString() == before, "the input model was modified"
    return result, report


def assert_optimizes_to(model, ops: dict, rewrites: dict | None = None, **options):
    """The positive case: the result has exactly these op counts (and these passes made these
    many rewrites), and computes what the model computes."""
    result, report = optimize(model, **options)
    assert op_counts(result) == ops, report.refused
    for name, count in (rewrites or {}).items():
        assert report.passes[name].rewrites == count, (name, report.passes[name].rewrites)
    assert_same_function(model, result)
    return result, report


def assert_unchanged(model, reason=None, **options):
    """The negative twin: nothing is rewritten, the bytes are identical, and the reason is recorded."""
    result, report = optimize(model, **options)
    assert result.SerializeToString() == model.SerializeToString()
    assert report.rewrites == 0
    if reason is not None:
        reasons = [r.reason for r in report.refused]
        assert any(reason in r for r in reasons), reasons
    return report


def conv(b: ModelBuilder, x, cin, cout, *, rank=2, k=3, groups=1, bias=True, transpose=False, **attrs):
    """A Conv (or ConvTranspose) with random weights; pads keep the spatial size unless given."""
    kernel = (k,) * rank
    if transpose:
        w = b.weights(cin, cout // groups, *kernel)
    else:
        w = b.weights(cout, cin // groups, *kernel)
    inputs = [x, b.const(w, "w")]
    if bias:
        inputs.append(b.const(b.rng.normal(0, 0.5, cout), "b"))
    if "auto_pad" not in attrs:
        attrs.setdefault("pads", [k // 2] * (2 * rank))
    return b.node("ConvTranspose" if transpose else "Conv", inputs, group=groups, **attrs)


def if_reading(b: ModelBuilder, name: str, cond: str = "cond"):
    """An If on a graph input `cond` whose branches (Abs, Neg) read `name` from the enclosing graph."""
    branches = []
    for op in ("Abs", "Neg"):
        out = b.name(op.lower())
        branches.append(helper.make_graph([helper.make_node(op, [name], [out])], b.name("branch"), [],
                                          [helper.make_tensor_value_info(out, FLOAT_TYPES[b.dtype], None)]))
    return b.node("If", [b.input([], cond, elem=TensorProto.BOOL)], then_branch=branches[0], else_branch=branches[1])


FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
MANIFEST = {name: entry for path in sorted(FIXTURES.glob("manifest_*.json"))
            for name, entry in json.loads(path.read_text()).items()}


def assert_matches_framework(actual, expected, name=None, tolerance=1e-5):
    """Within `tolerance` relative of the framework's outputs, or the fixture's own tolerance when
    the manifest gives a looser one (a float16 conversion holds float16's)."""
    own = MANIFEST.get(name, {}).get("tolerance", {})
    rtol, atol_rel = max(tolerance, own.get("rtol", 0)), max(tolerance, own.get("atol_rel", 0))
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected):
        np.testing.assert_allclose(a, e, rtol=rtol, atol=atol_rel * float(np.max(np.abs(e))))
