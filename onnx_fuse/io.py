"""Reading models from what users hand us (path, bytes, ModelProto, exporter objects) and writing
them atomically, so an interrupted or failed run never leaves a partial output file.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import helper, numpy_helper

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


def load_path(path: Path, lazy: bool = False) -> onnx.ModelProto:
    """Read the model at `path`. Its external data is read into the model, or, with lazy=True,
    left in its files (only checked), to be read per tensor by `read_tensor` and copied by `save`."""
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
    folder = path.resolve().parent
    for tensor in external_tensors(model):
        external_file(tensor, folder, str(path))
        if not lazy:
            tensor.raw_data = read_external_bytes(tensor, folder)
            tensor.data_location = onnx.TensorProto.DEFAULT
            del tensor.external_data[:]
    return model


def all_tensors(model: onnx.ModelProto):
    """Every TensorProto of the model: initializers and Constant values, in subgraphs and functions."""
    def in_nodes(nodes):
        for node in nodes:
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.TENSOR:
                    yield attr.t
                elif attr.type == onnx.AttributeProto.GRAPH:
                    yield from in_graph(attr.g)
                elif attr.type == onnx.AttributeProto.GRAPHS:
                    for graph in attr.graphs:
                        yield from in_graph(graph)

    def in_graph(graph):
        yield from graph.initializer
        yield from in_nodes(graph.node)

    yield from in_graph(model.graph)
    for function in model.functions:
        yield from in_nodes(function.node)


def is_external(tensor) -> bool:
    return tensor.HasField("data_location") and tensor.data_location == onnx.TensorProto.EXTERNAL


def external_tensors(model: onnx.ModelProto):
    return [t for t in all_tensors(model) if is_external(t)]


def _external_info(tensor) -> dict:
    return {entry.key: entry.value for entry in tensor.external_data}


def external_file(tensor, folder: Path, what: str = "the model") -> Path:
    """The file holding a tensor's data, which must lie inside the model's folder (else refused
    before anything is read)."""
    location = _external_info(tensor).get("location", "")
    target = (folder / location).resolve()
    if not location or Path(location).is_absolute() or folder.resolve() not in target.parents:
        raise InputError(f"{what}: tensor '{tensor.name}' points to external data at {location!r}, "
                         f"outside the model's folder; refusing to read it")
    if not target.is_file():
        raise InputError(f"{what}: external data file {location!r} of tensor '{tensor.name}' is missing; "
                         f"keep it beside the model")
    return target


def _external_span(tensor, target: Path) -> tuple[int, int]:
    info = _external_info(tensor)
    offset = int(info.get("offset", 0))
    size = target.stat().st_size
    length = int(info["length"]) if "length" in info else size - offset
    if offset < 0 or length < 0 or offset + length > size:
        raise InputError(f"external data of tensor '{tensor.name}' lies past the end of {target.name}")
    return offset, length


def read_external_bytes(tensor, folder: Path) -> bytes:
    target = external_file(tensor, folder)
    offset, length = _external_span(tensor, target)
    with open(target, "rb") as handle:
        handle.seek(offset)
        return handle.read(length)


def needs_external_data(model: onnx.ModelProto) -> bool:
    """Whether the model must be written with external data: some tensors are in files, or it is
    too large for one protobuf (counted per tensor: the whole model may not even be measurable)."""
    size = 0
    for tensor in all_tensors(model):
        if is_external(tensor):
            return True
        size += tensor.ByteSize()
    return size + sum(node.ByteSize() for node in model.graph.node) > PROTOBUF_LIMIT - (64 << 20)


def tensor_values(tensor) -> np.ndarray:
    """The value of an in-memory tensor; raw little-endian data is viewed, not copied (the array
    is read-only, which also guards the weights against being changed in place)."""
    if tensor.HasField("raw_data") and sys.byteorder == "little" and tensor.data_type in RAW_VIEWABLE:
        return np.frombuffer(tensor.raw_data, dtype=RAW_VIEWABLE[tensor.data_type]).reshape(tuple(tensor.dims))
    return numpy_helper.to_array(tensor)


RAW_VIEWABLE = {t: helper.tensor_dtype_to_np_dtype(t) for t in (
    onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16,
    onnx.TensorProto.INT64, onnx.TensorProto.INT32, onnx.TensorProto.INT8, onnx.TensorProto.UINT8)}


def read_tensor_file(tensor, target: Path) -> np.ndarray:
    """A tensor's value read from its external file: only this tensor's bytes."""
    offset, length = _external_span(tensor, target)
    dtype = helper.tensor_dtype_to_np_dtype(tensor.data_type)
    if dtype.kind not in "fiub" and dtype.name != "bfloat16":
        copy = onnx.TensorProto()
        copy.CopyFrom(tensor)
        with open(target, "rb") as handle:
            handle.seek(offset)
            copy.raw_data = handle.read(length)
        copy.data_location = onnx.TensorProto.DEFAULT
        del copy.external_data[:]
        return numpy_helper.to_array(copy)
    values = np.fromfile(target, dtype=np.uint8, count=length, offset=offset).view(dtype)
    if sys.byteorder == "big":
        values = values.byteswap()
    return values.reshape(tuple(tensor.dims))


class ExternalData:
    """Tensors whose data lies in files: the input's, in `source_folder`, and the new ones written
    to `scratch` (the output's data file, being staged) instead of being held in memory."""

    def __init__(self, source_folder: Path, scratch: Path | None = None):
        self.source_folder = source_folder
        self.scratch = scratch
        self.scratch_names: set[str] = set()
        self.scratch_size = 0

    def file_of(self, tensor) -> Path:
        if tensor.name in self.scratch_names:
            return self.scratch
        return external_file(tensor, self.source_folder)

    def read(self, tensor) -> np.ndarray:
        if not is_external(tensor):
            return tensor_values(tensor)
        return read_tensor_file(tensor, self.file_of(tensor))

    def store(self, tensor, values: np.ndarray):
        """Write `values` to the scratch file and point `tensor` at them."""
        values = np.ascontiguousarray(values.byteswap() if sys.byteorder == "big" else values)
        with open(self.scratch, "ab") as handle:
            values.tofile(handle)
        point_to(tensor, self.scratch.name, self.scratch_size, values.nbytes)
        self.scratch_names.add(tensor.name)
        self.scratch_size += values.nbytes


def point_to(tensor, location: str, offset: int, length: int):
    del tensor.external_data[:]
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(length))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    tensor.data_location = onnx.TensorProto.EXTERNAL
    tensor.ClearField("raw_data")


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


def output_data_name(model: onnx.ModelProto, path: Path, data_name: str | None, external: "ExternalData | None",
                     replace_input: bool = False) -> str | None:
    """The data file to write beside `path`, or None when the model fits in one file."""
    if data_name is None and not needs_external_data(model):
        return None
    data_name = data_name or f"{path.name}.data"
    if Path(data_name).name != data_name or data_name == path.name:
        raise InputError(f"--external-data {data_name!r}: give a plain file name other than the model's")
    inputs = {external_file(t, external.source_folder).resolve() for t in external_tensors(model)
              if external is None or t.name not in external.scratch_names} if external else set()
    if not replace_input and (path.parent / data_name).resolve() in inputs:
        raise InputError(f"{path.parent / data_name} holds the input's external data and would be "
                         f"replaced; choose another name with --external-data NAME")
    return data_name


def save(model: onnx.ModelProto, path, *, external: "ExternalData | None" = None, data_name: str | None = None,
         threshold: int = 1024, replace_input: bool = False) -> None:
    """Write `model` to `path` atomically: into a temporary folder beside it, then renamed.

    The model goes to one file when it can; with external data (the input had some, the model
    exceeds protobuf's 2 GB, or `data_name` is given) every tensor of at least `threshold` bytes
    goes to `data_name` (default: the output's name + ".data") beside it. Tensors still in the
    input's files are copied from there in chunks; the input's files are never written.
    """
    path = Path(path)
    data_name = output_data_name(model, path, data_name, external, replace_input)
    with staged(path) as stage:
        write_model(model, stage / path.name, external=external, data_name=data_name, threshold=threshold)


class staged:
    """A temporary folder beside `path`; on success its files are renamed into place (data files
    first, the model last), on failure the folder is removed. Nothing partial is ever visible."""

    def __init__(self, path):
        self.path = Path(path)
        self.folder = self.path.parent if str(self.path.parent) else Path(".")

    def __enter__(self) -> Path:
        if not self.folder.is_dir():
            raise InputError(f"{self.path}: the output folder {self.folder} does not exist")
        if self.path.is_dir():
            raise InputError(f"{self.path}: is a directory; give a file name for the output")
        try:
            self.stage = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.", dir=self.folder))
        except OSError as error:
            raise InputError(f"{self.path}: cannot write in {self.folder} ({error.strerror})") from None
        return self.stage

    def __exit__(self, kind, error, trace):
        try:
            if kind is None:
                written = sorted(self.stage.iterdir(), key=lambda p: p.name == self.path.name)
                for item in written:
                    os.replace(item, self.folder / item.name)
        except OSError as failure:
            raise InputError(f"{self.path}: cannot write ({failure.strerror})") from None
        finally:
            shutil.rmtree(self.stage, ignore_errors=True)
        if isinstance(error, OSError):
            raise InputError(f"{self.path}: cannot write ({error.strerror})") from None
        return False


def write_model(model: onnx.ModelProto, path: Path, *, external: "ExternalData | None" = None,
                data_name: str | None = None, threshold: int = 1024):
    """Write the model file at `path`, and with `data_name` its large tensors to that file beside
    it (appended to the staged scratch data, when the passes already wrote new tensors there)."""
    if data_name is None:
        with open(path, "wb") as handle:
            handle.write(model.SerializeToString())
        return
    data_path = path.parent / data_name
    scratch = external.scratch if external is not None else None
    if scratch is not None and scratch.exists() and scratch != data_path:
        os.replace(scratch, data_path)
    offset = data_path.stat().st_size if data_path.exists() else 0
    kept = external.scratch_names if external is not None else set()
    with open(data_path, "ab") as data:
        for tensor in all_tensors(model):
            if tensor.name in kept and is_external(tensor):
                point_to(tensor, data_name, *_external_span(tensor, data_path))
                continue
            if is_external(tensor):
                target = external.file_of(tensor)
                start, length = _external_span(tensor, target)
                with open(target, "rb") as source:
                    source.seek(start)
                    _copy_span(source, data, length)
            elif tensor.HasField("raw_data") and tensor.ByteSize() >= threshold:
                length = len(tensor.raw_data)
                data.write(tensor.raw_data)
            else:
                continue
            point_to(tensor, data_name, offset, length)
            offset += length
    with open(path, "wb") as handle:
        handle.write(model.SerializeToString())


def _copy_span(source, target, length: int, chunk: int = 64 << 20):
    while length > 0:
        block = source.read(min(chunk, length))
        if not block:
            raise InputError("external data ended early")
        target.write(block)
        length -= len(block)
