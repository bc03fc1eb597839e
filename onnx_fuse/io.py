"""Reading models from what users hand us (path, bytes, ModelProto, exporter objects) and writing
them atomically, so an interrupted or failed run never leaves a partial output file.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError

PROTOBUF_LIMIT = 2**31 - 1


class InputError(Exception):
    """The input cannot be used; the message says what is wrong and what to do."""


def _check_model(model: onnx.ModelProto, what: str) -> onnx.ModelProto:
    if model.ir_version == 0 or not model.HasField("graph"):
        raise InputError(f"{what} is not an ONNX model (no IR version or no graph)")
    return model


def load(source) -> onnx.ModelProto:
    """A fresh ModelProto from a path, bytes, a ModelProto (copied) or an object with `.model_proto`."""
    if isinstance(source, onnx.ModelProto):
        copy = onnx.ModelProto()
        copy.CopyFrom(source)
        return _check_model(copy, "the given ModelProto")
    if hasattr(source, "model_proto"):
        return load(source.model_proto)
    if isinstance(source, (bytes, bytearray, memoryview)):
        model = onnx.ModelProto()
        try:
            model.ParseFromString(bytes(source))
        except DecodeError as error:
            raise InputError(f"the given bytes are not an ONNX model ({error})") from None
        return _check_model(model, "the given bytes")
    if isinstance(source, (str, os.PathLike)):
        return load_path(Path(source))
    raise InputError(f"cannot read a model from {type(source).__name__}: give a path, bytes or a ModelProto")


def load_path(path: Path) -> onnx.ModelProto:
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if path.is_dir():
        raise InputError(f"{path}: is a directory, not an .onnx file")
    if path.stat().st_size == 0:
        raise InputError(f"{path}: the file is empty")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except DecodeError as error:
        raise InputError(f"{path}: not an ONNX model, the file does not parse ({error})") from None
    _check_model(model, str(path))
    try:
        onnx.external_data_helper.load_external_data_for_model(model, str(path.parent))
    except (OSError, ValueError, onnx.checker.ValidationError) as error:
        raise InputError(f"{path}: cannot read its external data ({error})") from None
    return model


def save(model: onnx.ModelProto, path, *, overwrite_ok: bool = True) -> None:
    """Write `model` to `path` atomically: a temporary file in the same folder, then a rename."""
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise InputError(f"{path}: the output folder {folder} does not exist")
    data = model.SerializeToString()
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(temporary, path)
    except BaseException:
        try:
            os.unlink(temporary)
        except FileNotFoundError:
            pass
        raise
