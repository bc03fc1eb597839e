"""onnx-fuse: rewrite ONNX models into their fastest exact form.

    import onnx_fuse
    model = onnx_fuse.optimize("model.onnx")          # or a ModelProto, bytes, ONNXProgram, gs.Graph
    report = onnx_fuse.optimize_file("in.onnx", "out.onnx")
"""

__version__ = "0.1.0"

# The public names are imported on first use, so that `onnx-fuse --version` and `--help` start
# without importing onnx and onnxruntime.
_PUBLIC = {
    "optimize": "api", "optimize_file": "api", "optimize_with_report": "api", "list_passes": "api",
    "Report": "report", "InputError": "io", "VerificationError": "verify", "VerifyOptions": "verify",
}

__all__ = [*_PUBLIC, "__version__"]


def __getattr__(name):
    if name in _PUBLIC:
        import importlib

        value = getattr(importlib.import_module(f".{_PUBLIC[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_PUBLIC))
