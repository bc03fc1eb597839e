"""onnx-fuse: rewrite ONNX models into their fastest exact form.

    import onnx_fuse
    model = onnx_fuse.optimize("model.onnx")          # or a ModelProto, bytes, ONNXProgram
    report = onnx_fuse.optimize_file("in.onnx", "out.onnx")
"""

from pathlib import Path as _Path

# The passes live in the top-level passes/ folder and install as onnx_fuse.passes. Run from a
# source checkout (python -m onnx_fuse in the repository), find them there too.
if not (_Path(__file__).parent / "passes").is_dir() and (_Path(__file__).parent.parent / "passes" / "__init__.py").is_file():
    __path__.append(str(_Path(__file__).parent.parent))

from .api import list_passes, optimize, optimize_file, optimize_with_report
from .io import InputError
from .report import Report
from .verify import VerificationError

__version__ = "0.1.0"

__all__ = ["optimize", "optimize_file", "optimize_with_report", "list_passes", "Report",
           "InputError", "VerificationError", "__version__"]
