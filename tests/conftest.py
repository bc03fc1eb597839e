import logging
import sys
from pathlib import Path

import onnx
import pytest

# tests/support.py is shared by tests/ and tests/passes/
sys.path.insert(0, str(Path(__file__).parent))
logging.getLogger("onnx_fuse").setLevel(logging.DEBUG)


@pytest.fixture
def model_file(tmp_path):
    """A Conv -> BatchNormalization model saved as in.onnx."""
    from support import ModelBuilder, conv

    b = ModelBuilder()
    b.output(b.batchnorm(conv(b, b.input([1, 4, 6, 6]), 4, 4), 4))
    path = tmp_path / "in.onnx"
    onnx.save(b.model(), str(path))
    return path
