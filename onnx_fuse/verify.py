"""Differential check of two models in onnxruntime with its own graph optimizations disabled,
so that onnxruntime's fusions cannot hide (or cause) a difference.
"""

from __future__ import annotations

import numpy as np
import onnx

from .io import InputError

TOLERANCES = {  # dtype name -> (rtol, atol relative to the output's scale)
    "float64": (1e-9, 1e-9),
    "float32": (1e-4, 1e-5),
    "float16": (1e-2, 1e-2),
    "bfloat16": (5e-2, 5e-2),
}


class VerificationError(Exception):
    """The optimized model's outputs differ from the original's."""


class CannotVerify(InputError):
    """onnxruntime cannot run the original model on the inputs verification made up for it."""


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
    "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(bool)": np.bool_,
    "tensor(int8)": np.int8, "tensor(uint8)": np.uint8,
}


def random_feeds(sess, seed: int = 0, shapes: dict | None = None) -> dict:
    """Random inputs for every graph input of a session; unknown dimensions default to 1."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for arg in sess.get_inputs():
        shape = (shapes or {}).get(arg.name) or [d if isinstance(d, int) and d > 0 else 1 for d in arg.shape]
        dtype = ORT_TYPES.get(arg.type)
        if dtype is None:
            raise CannotVerify(f"cannot verify: cannot make random data for input '{arg.name}' of type {arg.type}")
        if np.dtype(dtype).kind == "f":
            feeds[arg.name] = rng.standard_normal(shape).astype(dtype)
        elif dtype is np.bool_:
            feeds[arg.name] = rng.integers(0, 2, shape).astype(bool)
        else:
            feeds[arg.name] = rng.integers(0, 4, shape).astype(dtype)
    return feeds


def run(model: onnx.ModelProto, feeds: dict, external_folder=None) -> list:
    sess = session(model, external_folder)
    names = {arg.name for arg in sess.get_inputs()}
    return sess.run(None, {k: v for k, v in feeds.items() if k in names})


def compare(original: onnx.ModelProto, optimized: onnx.ModelProto, *, seed: int = 0,
            shapes: dict | None = None, external_folder=None) -> dict:
    """Run both on the same random inputs; raise VerificationError on a mismatch."""
    try:
        reference = session(original, external_folder)
        feeds = random_feeds(reference, seed, shapes)
        names = {arg.name for arg in reference.get_inputs()}
        expected = reference.run(None, {k: v for k, v in feeds.items() if k in names})
    except CannotVerify:
        raise
    except Exception as error:  # onnxruntime's own errors have no common base class
        raise CannotVerify(f"cannot verify: onnxruntime fails on the original model with random inputs "
                           f"({_first_line(error)}); the inputs it needs cannot be made up, so run without "
                           f"--verify") from None
    try:
        actual = run(optimized, feeds, external_folder)
    except Exception as error:
        raise VerificationError(f"onnxruntime fails on the optimized model ({_first_line(error)})") from None
    worst_abs = worst_rel = 0.0
    for index, (e, a) in enumerate(zip(expected, actual)):
        e, a = np.asarray(e), np.asarray(a)
        if e.shape != a.shape or e.dtype != a.dtype:
            raise VerificationError(f"output {index}: shape/dtype {a.shape} {a.dtype}, expected {e.shape} {e.dtype}")
        if e.dtype.kind not in "fc":
            if not np.array_equal(e, a):
                raise VerificationError(f"output {index} differs")
            continue
        rtol, atol = TOLERANCES.get(e.dtype.name, (1e-4, 1e-5))
        scale = float(np.max(np.abs(e))) if e.size else 0.0
        diff = np.abs(e.astype(np.float64) - a.astype(np.float64))
        max_abs = float(np.max(diff)) if diff.size else 0.0
        worst_abs = max(worst_abs, max_abs)
        worst_rel = max(worst_rel, max_abs / scale if scale else max_abs)
        nan_mismatch = np.any(np.isnan(e) != np.isnan(a))
        if nan_mismatch or np.any(diff > atol * max(scale, 1.0) + rtol * np.abs(e)):
            raise VerificationError(f"output {index} differs: max abs error {max_abs:.3g} (scale {scale:.3g})")
    return {"max_abs_error": worst_abs, "max_rel_error": worst_rel, "outputs": len(expected)}


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return (lines[0] if lines else type(error).__name__)[:300]
