"""Differential check of two models in onnxruntime with its own graph optimizations disabled,
so that onnxruntime's fusions cannot hide (or cause) a difference. The inputs are random (seeded),
drawn per input type, or loaded from .npz/.npy files; the tolerance follows the precision the
model computes in.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from .io import InputError

# dtype name -> (rtol, atol as a fraction of the output's largest magnitude)
TOLERANCES = {
    "float64": (1e-9, 1e-9),
    "float32": (1e-4, 1e-5),
    "float16": (1e-2, 1e-2),
    "bfloat16": (5e-2, 5e-2),
}
# from the most to the least precise: a model computes in the least precise float type it holds
PRECISION_ORDER = ("float64", "float32", "float16", "bfloat16")
ONNX_FLOAT_NAMES = {onnx.TensorProto.DOUBLE: "float64", onnx.TensorProto.FLOAT: "float32",
                    onnx.TensorProto.FLOAT16: "float16", onnx.TensorProto.BFLOAT16: "bfloat16"}
DEFAULT_INT_RANGE = (0, 3)  # integer inputs with nothing to go by: 0..3, as before
MAX_DEFAULT_TRIALS = 8  # trials run by default to visit every compared value of an integer input


class VerificationError(Exception):
    """The optimized model's outputs differ from the original's. `result` holds the verdict
    (the dict `compare` returns, with verdict "FAILED") when a comparison was made."""

    def __init__(self, message: str, result: dict | None = None):
        super().__init__(message)
        self.result = result


class CannotVerify(InputError):
    """onnxruntime cannot run the original model on the inputs verification made up for it."""


@dataclass
class VerifyOptions:
    """How `verify` compares the original and the optimized model.

    seed      the random inputs' seed (trial t uses seed + t)
    rtol      relative tolerance: |optimized - original| <= atol + rtol * |original|
    atol      absolute tolerance; None: the default for the precision the model computes in,
              times each output's largest magnitude (at least 1)
    trials    how many random input sets to run; None: 1, or enough to visit each value an
              integer input is compared with (at most 8). Loaded inputs run one set per source.
    inputs    real inputs instead of random ones: a .npz (arrays named as the graph inputs) or
              .npy (a model with one input) path, a dict name -> array, or a list of these, one
              trial each; inputs missing from them are drawn at random
    int_ranges  name -> (low, high), inclusive, for integer inputs (name "" for all of them);
              unnamed integer inputs take the constants the model compares them with, or 0..3
    bisect    on a mismatch, find the rewrites responsible, undo only those, keep the rest
    """

    seed: int = 0
    rtol: float | None = None
    atol: float | None = None
    trials: int | None = None
    inputs: object = None
    int_ranges: dict = field(default_factory=dict)
    bisect: bool = False

    def __post_init__(self):
        if self.trials is not None and self.trials < 1:
            raise ValueError(f"trials must be at least 1, not {self.trials}")
        for name, value in (("rtol", self.rtol), ("atol", self.atol)):
            if value is not None and not value >= 0:
                raise ValueError(f"{name} must be a number >= 0, not {value}")
        for name, (low, high) in self.int_ranges.items():
            if low > high:
                raise ValueError(f"integer range of {name or 'all inputs'!r}: {low} > {high}")

    @classmethod
    def of(cls, verify) -> "VerifyOptions | None":
        """The options meant by the API's `verify=`: False/None, True, "bisect" or VerifyOptions."""
        if verify is None or verify is False:
            return None
        if verify is True:
            return cls()
        if verify == "bisect":
            return cls(bisect=True)
        if isinstance(verify, cls):
            return verify
        raise ValueError(f"verify is True, False, 'bisect' or a VerifyOptions, not {verify!r}")

    def input_files(self) -> list:
        """The files `inputs` names (the run reads them, so it must not write over them)."""
        given = self.inputs if isinstance(self.inputs, (list, tuple)) else [self.inputs]
        return [Path(item) for item in given if isinstance(item, (str, os.PathLike))]


def session(model: onnx.ModelProto, external_folder=None):
    """An onnxruntime session with its optimizations off; tensors left in external files are read
    from `external_folder`."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    if external_folder is not None:
        options.add_session_config_entry("session.model_external_initializers_file_folder_path",
                                         str(external_folder))
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


ORT_TYPES = {
    "tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16,
    "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int16)": np.int16, "tensor(int8)": np.int8,
    "tensor(uint64)": np.uint64, "tensor(uint32)": np.uint32, "tensor(uint16)": np.uint16,
    "tensor(uint8)": np.uint8, "tensor(bool)": np.bool_,
}


# ---- what the model computes in ---------------------------------------------------------

def _graphs(model: onnx.ModelProto):
    """The main graph, every subgraph, and the local functions (as node lists)."""
    def walk(nodes):
        for node in nodes:
            for attr in node.attribute:
                for graph in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else
                              attr.graphs if attr.type == onnx.AttributeProto.GRAPHS else []):
                    yield graph
                    yield from walk(graph.node)

    yield model.graph
    yield from walk(model.graph.node)
    for function in model.functions:
        yield function
        yield from walk(function.node)


def compute_dtype(model: onnx.ModelProto) -> str:
    """The least precise float type the model computes in: that of its float weights, Constants
    and Cast targets, and of its inputs and outputs. A float16 model with float32 inputs and
    outputs (onnxconverter-common's keep_io_types) computes in float16."""
    seen = set()
    for graph in _graphs(model):
        for tensor in getattr(graph, "initializer", ()):
            seen.add(tensor.data_type)
        for value in list(getattr(graph, "input", ())) + list(getattr(graph, "output", ())):
            if not isinstance(value, str) and value.type.HasField("tensor_type"):
                seen.add(value.type.tensor_type.elem_type)
        for node in graph.node:
            for attr in node.attribute:
                if node.op_type in ("Cast", "CastLike") and attr.name == "to":
                    seen.add(attr.i)
                elif attr.type == onnx.AttributeProto.TENSOR:
                    seen.add(attr.t.data_type)
    names = {ONNX_FLOAT_NAMES[t] for t in seen if t in ONNX_FLOAT_NAMES}
    return max(names, key=PRECISION_ORDER.index) if names else "float32"


# ---- integer inputs: the values the model compares them with ------------------------------

COMPARISONS = {"Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual"}
PASS_THROUGH = {"Cast", "Identity", "Squeeze", "Unsqueeze", "Reshape", "Flatten"}  # same values
SMALL_CONSTANT = 64  # elements; larger constants are not branch selectors


def _small_constants(model) -> dict:
    constants = {}
    for graph in _graphs(model):
        for tensor in getattr(graph, "initializer", ()):
            if np.prod(tensor.dims, dtype=np.int64) <= SMALL_CONSTANT and tensor.data_location != onnx.TensorProto.EXTERNAL:
                constants[tensor.name] = tensor
        for node in graph.node:
            if node.op_type == "Constant" and node.output:
                for attr in node.attribute:
                    if attr.name == "value" and np.prod(attr.t.dims, dtype=np.int64) <= SMALL_CONSTANT:
                        constants[node.output[0]] = attr.t
                    elif attr.name in ("value_int", "value_ints"):
                        constants[node.output[0]] = onnx.helper.make_tensor(
                            "", onnx.TensorProto.INT64, [] if attr.name == "value_int" else [len(attr.ints)],
                            [attr.i] if attr.name == "value_int" else list(attr.ints))
    return constants


def compared_values(model: onnx.ModelProto) -> dict:
    """Graph input name -> sorted candidate values, for integer inputs that the model compares
    (Equal, Less, Greater, ...) with constants, directly or through Cast/Identity/reshapes: each
    constant k, and k - 1 and k + 1, so that every branch a comparison selects can be taken; an
    input cast to bool (an If condition) takes 0 and 1."""
    from onnx import numpy_helper

    readers = {}
    for graph in _graphs(model):
        for node in graph.node:
            for name in node.input:
                readers.setdefault(name, []).append(node)
    constants = _small_constants(model)
    found = {}
    for value in model.graph.input:
        elem = value.type.tensor_type.elem_type if value.type.HasField("tensor_type") else 0
        if value.name in constants or elem not in (onnx.TensorProto.INT64, onnx.TensorProto.INT32,
                                                   onnx.TensorProto.INT16, onnx.TensorProto.INT8):
            continue
        candidates, names, seen = set(), [value.name], set()
        while names:
            name = names.pop()
            if name in seen:
                continue
            seen.add(name)
            for node in readers.get(name, ()):
                if node.op_type == "Cast" and any(a.name == "to" and a.i == onnx.TensorProto.BOOL
                                                  for a in node.attribute):
                    candidates.update((0, 1))  # a condition: false and true
                elif node.op_type in PASS_THROUGH and node.input[0] == name:
                    names.extend(node.output)
                elif node.op_type in COMPARISONS:
                    for other in node.input:
                        if other != name and other in constants:
                            for k in numpy_helper.to_array(constants[other]).ravel().tolist():
                                k = int(round(k))
                                candidates.update((k - 1, k, k + 1))
        if candidates:
            found[value.name] = sorted(candidates)
    return found


# ---- inputs -------------------------------------------------------------------------------

def load_inputs(source, input_names: list) -> dict:
    """One set of inputs from a .npz / .npy path or a dict. Arrays of an .npz are matched to the
    graph inputs by name, or by position when named in0, in1, ... or arr_0, arr_1, ... (what
    numpy.savez writes for unnamed arrays). A .npy is the only input of a one-input model."""
    if isinstance(source, dict):
        arrays, what = dict(source), "the given inputs"
    else:
        path = Path(os.fspath(source))
        what = str(path)
        if not path.is_file():
            raise InputError(f"{path}: no such file (the inputs to verify with)")
        if path.suffix == ".npy":
            if len(input_names) != 1:
                raise InputError(f"{path}: a .npy holds one array, and the model has {len(input_names)} inputs "
                                 f"({', '.join(input_names)}): give an .npz with one array per input name")
            return {input_names[0]: np.load(path, allow_pickle=False)}
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
    unknown = [key for key in arrays if key not in input_names]
    if unknown:
        # positional names: numpy.savez's arr_0, arr_1, ..., or in0, in1, ... (with out0, ... beside
        # them, as the fixtures' .npz files hold them)
        for prefix, ignored in (("arr_", ()), ("in", tuple(k for k in arrays if k.startswith("out")))):
            given = [k for k in arrays if k not in ignored]
            if sorted(given) == sorted(f"{prefix}{i}" for i in range(len(given))) and 0 < len(given) <= len(input_names):
                return {input_names[i]: arrays[f"{prefix}{i}"] for i in range(len(given))}
        raise InputError(f"{what}: no graph input named {', '.join(map(repr, unknown))}; "
                         f"the model's inputs are {', '.join(map(repr, input_names))}")
    return arrays


def random_feeds(sess, seed: int = 0, shapes: dict | None = None, int_values: dict | None = None,
                 int_ranges: dict | None = None, trial: int = 0) -> dict:
    """Random inputs for every graph input of a session; unknown dimensions default to 1.
    Integer inputs take values from `int_ranges` (name -> (low, high), "" for all), else from
    `int_values` (name -> candidates; a one-element input takes candidate number `trial`), else
    0..3."""
    rng = np.random.default_rng(seed + trial)
    feeds = {}
    for arg in sess.get_inputs():
        shape = (shapes or {}).get(arg.name) or [d if isinstance(d, int) and d > 0 else 1 for d in arg.shape]
        dtype = ORT_TYPES.get(arg.type)
        if dtype is None:
            raise CannotVerify(f"cannot verify: cannot make random data for input '{arg.name}' of type "
                               f"{arg.type}; give it with --load-inputs")
        if np.dtype(dtype).kind == "f":
            feeds[arg.name] = rng.standard_normal(shape).astype(dtype)
        elif dtype is np.bool_:
            feeds[arg.name] = rng.integers(0, 2, shape).astype(bool)
        else:
            ranges = int_ranges or {}
            span = ranges.get(arg.name, ranges.get(""))
            candidates = (int_values or {}).get(arg.name)
            if span is None and candidates:
                info = np.iinfo(dtype)
                candidates = [c for c in candidates if info.min <= c <= info.max]
                if int(np.prod(shape)) == 1:
                    feeds[arg.name] = np.full(shape, candidates[trial % len(candidates)], dtype)
                else:
                    feeds[arg.name] = rng.choice(np.asarray(candidates, dtype), shape)
                continue
            low, high = span or DEFAULT_INT_RANGE
            feeds[arg.name] = rng.integers(low, high, shape, endpoint=True).astype(dtype)
    return feeds


def run(model: onnx.ModelProto, feeds: dict, external_folder=None) -> list:
    sess = session(model, external_folder)
    names = {arg.name for arg in sess.get_inputs()}
    return sess.run(None, {k: v for k, v in feeds.items() if k in names})


# ---- the comparison -----------------------------------------------------------------------

def verdict_line(result: dict) -> str:
    """One line: `verify: PASSED (max abs .., max rel .., rtol .., atol .., ...)`."""
    atol = f"{result['atol']:.3g}" + (" x max|output|" if result["atol_relative"] else "")
    trials = f"{result['trials']} trial" + ("s" if result["trials"] != 1 else "")
    where = f"output '{result['output']}', " if result.get("output") and result["verdict"] == "FAILED" else ""
    return (f"verify: {result['verdict']} ({where}max abs {result['max_abs_error']:.3g}, "
            f"max rel {result['max_rel_error']:.3g}, rtol {result['rtol']:.3g}, atol {atol}; "
            f"computes in {result['compute_dtype']}, {trials}, {result['inputs']})")


def compare(original: onnx.ModelProto, optimized: onnx.ModelProto, *, seed: int = 0,
            shapes: dict | None = None, external_folder=None, options: VerifyOptions | None = None) -> dict:
    """Run both on the same inputs; return the verdict dict (verdict PASSED), or raise
    VerificationError (its `.result` the verdict FAILED) on a mismatch.

    An output passes when every element has |optimized - original| <= atol + rtol * |original|
    and NaN where the original has NaN. The default rtol and atol are those of the least
    precise float type the model computes in (see `compute_dtype`), atol times the output's
    largest magnitude (at least 1); max rel is max abs over that magnitude."""
    options = options or VerifyOptions(seed=seed)
    try:
        reference = session(original, external_folder)
    except Exception as error:
        raise CannotVerify(f"cannot verify: onnxruntime cannot load the original model ({_first_line(error)})") from None
    input_names = [arg.name for arg in reference.get_inputs()]
    precision = compute_dtype(original)
    default_rtol, default_atol = TOLERANCES[precision]
    rtol = default_rtol if options.rtol is None else options.rtol
    atol = default_atol if options.atol is None else options.atol
    int_values = compared_values(original)
    if options.inputs is not None:
        sources = options.inputs if isinstance(options.inputs, (list, tuple)) else [options.inputs]
        loaded = [load_inputs(source, input_names) for source in sources]
        described = "inputs from " + ", ".join(str(s) if not isinstance(s, dict) else "the caller" for s in sources)
    else:
        loaded = None
        trials = options.trials or min(MAX_DEFAULT_TRIALS, max([1] + [len(v) for v in int_values.values()]))
        described = f"random inputs, seed {options.seed}"
    feed_sets = []
    for trial in range(len(loaded) if loaded is not None else trials):
        feeds = random_feeds(reference, options.seed, shapes, int_values, options.int_ranges, trial)
        if loaded is not None:
            for arg in reference.get_inputs():
                given = loaded[trial].get(arg.name)
                if given is not None and ORT_TYPES.get(arg.type) not in (None, given.dtype.type):
                    raise InputError(f"{described}: input '{arg.name}' is {given.dtype}, the model takes {arg.type}")
            feeds.update(loaded[trial])
        feed_sets.append(feeds)
    result = {"verdict": "PASSED", "max_abs_error": 0.0, "max_rel_error": 0.0, "rtol": rtol, "atol": atol,
              "atol_relative": options.atol is None, "compute_dtype": precision, "trials": len(feed_sets),
              "seed": options.seed, "inputs": described, "outputs": 0, "output": None}
    try:
        candidate = session(optimized, external_folder)
    except Exception as error:
        raise VerificationError(f"onnxruntime cannot load the optimized model ({_first_line(error)})") from None
    output_names = [arg.name for arg in reference.get_outputs()]
    failure = None
    for trial, feeds in enumerate(feed_sets):
        try:
            expected = reference.run(None, {k: v for k, v in feeds.items() if k in input_names})
        except Exception as error:  # onnxruntime's own errors have no common base class
            if loaded is None:
                raise CannotVerify(f"cannot verify: onnxruntime fails on the original model with made-up inputs "
                                   f"({_first_line(error)}); give real ones (--load-inputs) or the values "
                                   f"integer inputs take (--int-range)") from None
            raise InputError(f"{described}: onnxruntime refuses them: {_first_line(error)}") from None
        names = {arg.name for arg in candidate.get_inputs()}
        try:
            actual = candidate.run(None, {k: v for k, v in feeds.items() if k in names})
        except Exception as error:
            raise VerificationError(f"onnxruntime fails on the optimized model ({_first_line(error)})") from None
        result["outputs"] = len(expected)
        for index, (e, a) in enumerate(zip(expected, actual)):
            e, a = np.asarray(e), np.asarray(a)
            name = output_names[index] if index < len(output_names) else str(index)
            if e.shape != a.shape or e.dtype != a.dtype:
                result.update(verdict="FAILED", output=name)
                raise VerificationError(f"output '{name}': shape/dtype {a.shape} {a.dtype}, expected "
                                        f"{e.shape} {e.dtype}", result)
            if e.dtype.kind not in "fc":
                if not np.array_equal(e, a) and failure is None:
                    failure = name
                continue
            scale = float(np.max(np.abs(e[np.isfinite(e)]))) if np.isfinite(e).any() else 0.0
            diff = np.abs(e.astype(np.float64) - a.astype(np.float64))
            finite = np.isfinite(diff)
            max_abs = float(np.max(diff[finite])) if finite.any() else 0.0
            result["max_abs_error"] = max(result["max_abs_error"], max_abs)
            result["max_rel_error"] = max(result["max_rel_error"], max_abs / scale if scale else max_abs)
            allowed = (atol * max(scale, 1.0) if options.atol is None else atol) + rtol * np.abs(e.astype(np.float64))
            same_special = (np.isnan(e) == np.isnan(a)) & (np.isinf(e) == np.isinf(a)) & \
                           ((e == a) | ~np.isinf(e))  # infinities of the same sign
            bad = ~same_special | (finite & (diff > allowed))
            if np.any(bad) and failure is None:
                failure = name
    if failure is not None:
        result.update(verdict="FAILED", output=failure)
        raise VerificationError(verdict_line(result), result)
    return result


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return (lines[0] if lines else type(error).__name__)[:300]
