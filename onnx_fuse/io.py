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
    load_external_data(model, path)
    return model


def external_tensors(model: onnx.ModelProto):
    """Every tensor of the model (graphs, subgraphs, Constant nodes) whose data lies in a file."""
    for tensor in onnx.external_data_helper._get_all_tensors(model):
        if tensor.HasField("data_location") and tensor.data_location == onnx.TensorProto.EXTERNAL:
            yield tensor


def load_external_data(model: onnx.ModelProto, path: Path):
    """Read external data, refusing any location outside the model's folder (never read it)."""
    folder = path.resolve().parent
    for tensor in external_tensors(model):
        info = {entry.key: entry.value for entry in tensor.external_data}
        location = info.get("location", "")
        target = (folder / location).resolve()
        if not location or Path(location).is_absolute() or folder not in target.parents:
            raise InputError(f"{path}: tensor '{tensor.name}' points to external data at {location!r}, "
                             f"outside the model's folder; refusing to read it")
        if not target.is_file():
            raise InputError(f"{path}: external data file {location!r} of tensor '{tensor.name}' is missing; "
                             f"keep it beside the model")
        try:
            onnx.external_data_helper.load_external_data_for_tensor(tensor, str(folder))
        except (OSError, ValueError) as error:
            raise InputError(f"{path}: cannot read external data {location!r} ({error})") from None


def check_input(model: onnx.ModelProto, what: str):
    """Refuse what cannot be optimized safely: an opset this onnx does not know, and graphs that
    read names nothing defines or define a name twice (what onnx.checker calls invalid)."""
    known = onnx.defs.onnx_opset_version()
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx") and entry.version > known:
            raise InputError(f"{what}: uses opset {entry.version}, newer than the installed onnx "
                             f"{onnx.__version__} knows ({known}); upgrade onnx")
    _check_graph(model.graph, set(), what)


def _check_graph(graph, outer: set, what: str):
    local = {t.name for t in graph.initializer} | {t.name for t in graph.sparse_initializer}
    local.update(vi.name for vi in graph.input)
    for node in graph.node:
        for name in node.input:
            if name and name not in local and name not in outer:
                raise InputError(f"{what}: node '{node.name or node.op_type}' reads '{name}', which no input, "
                                 f"initializer or earlier node defines")
        for attr in node.attribute:
            for sub in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)):
                _check_graph(sub, outer | local, what)
        for name in node.output:
            if not name:
                continue
            if name in local:
                raise InputError(f"{what}: the name '{name}' is defined twice")
            local.add(name)
    for vi in graph.output:
        if vi.name not in local and vi.name not in outer:
            raise InputError(f"{what}: graph output '{vi.name}' is not computed by the graph")


def save(model: onnx.ModelProto, path, *, overwrite_ok: bool = True) -> None:
    """Write `model` to `path` atomically: a temporary file in the same folder, then a rename."""
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise InputError(f"{path}: the output folder {folder} does not exist")
    if path.is_dir():
        raise InputError(f"{path}: is a directory; give a file name for the output")
    data = model.SerializeToString()
    try:
        fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    except OSError as error:
        raise InputError(f"{path}: cannot write in {folder} ({error.strerror})") from None
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(temporary, path)
    except BaseException as error:
        try:
            os.unlink(temporary)
        except FileNotFoundError:
            pass
        if isinstance(error, OSError):
            raise InputError(f"{path}: cannot write ({error.strerror})") from None
        raise
