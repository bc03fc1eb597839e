import logging
import sys
from pathlib import Path

# tests/support.py is shared by tests/ and tests/passes/
sys.path.insert(0, str(Path(__file__).parent))
logging.getLogger("onnx_fuse").setLevel(logging.DEBUG)
