"""onnx-fuse: rewrite ONNX models into their fastest exact form.

    import onnx_fuse
    model = onnx_fuse.optimize("model.onnx")          # or a ModelProto, bytes, ONNXProgram
    report = onnx_fuse.optimize_file("in.onnx", "out.onnx")
"""

from .api import list_passes, optimize, optimize_file, optimize_with_report
from .io import InputError
from .report import Report
from .verify import VerificationError

__version__ = "0.1.0"

__all__ = ["optimize", "optimize_file", "optimize_with_report", "list_passes", "Report",
           "InputError", "VerificationError", "__version__"]
