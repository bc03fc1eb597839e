"""Reading models from what users hand us (path, bytes, ModelProto, exporter objects) and writing
them atomically, so an interrupted or failed run never leaves a partial output file.
"""

from __future__ import annotations

import mmap
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import helper, numpy_helper

from . import wire

PROTOBUF_LIMIT = 2**31 - 1
# Tensors this large stay out of the protobuf: a lazy load leaves them in the model's file, and
# new ones go to ExternalData.store
LARGE_TENSOR_BYTES = 64 << 10


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
    """Read the model at `path`. Its external data is read into the model or, with lazy=True, left
    in its files (only checked), to be read per tensor by `ExternalData.read` and copied by
    `write_model`. With lazy=True the large initializers of the main graph stay in the model's own
    file too: they are parsed as external data whose location is the model file itself."""
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if path.is_dir():
        raise InputError(f"{path}: is a directory, not an .onnx file")
    if path.stat().st_size == 0:
        raise InputError(f"{path}: the file is empty")
    model = _parse_leaving_weights(path) if lazy else None
    if model is None:
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


def _parse_leaving_weights(path: Path) -> onnx.ModelProto | None:
    """The model parsed without the raw_data of its large main-graph initializers, which are
    pointed at where they lie in the file; None when there are none (or the file is not a
    message we can scan: the caller's full parse then says what is wrong)."""
    try:
        with open(path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            pieces, lazy = _skeleton(mapped)
            if not lazy:
                return None
            model = onnx.ModelProto()
            model.ParseFromString(b"".join(pieces))
    except (wire.WireError, DecodeError, OSError, ValueError):
        return None
    initializers = model.graph.initializer
    for index, offset, length in lazy:
        point_to(initializers[index], path.name, offset, length)
    return model


def _skeleton(buf) -> tuple[list, list]:
    """The pieces of a serialized model with the raw_data fields of large main-graph initializers
    cut out, and (initializer index, offset, length) of each cut."""
    graph = wire.only_field(buf, 0, len(buf), wire.MODEL_GRAPH)
    if graph is None:
        return [], []
    graph_field, graph_start, graph_end = graph
    graph_pieces, lazy = [], []
    position = graph_start
    index = -1
    for number, _, field_start, start, end in wire.fields(buf, graph_start, graph_end):
        if number != wire.GRAPH_INITIALIZER:
            continue
        index += 1
        if end - start < LARGE_TENSOR_BYTES:
            if index >= 1024 and not lazy:
                return [], []  # many small weights and no large one: an ordinary parse is as good
            continue
        raw = None
        for tensor_field, _, raw_field, raw_start, raw_end in wire.fields(buf, start, end):
            if tensor_field in (wire.TENSOR_EXTERNAL_DATA, wire.TENSOR_DATA_LOCATION):  # leave it to onnx
                raw = None
                break
            if tensor_field == wire.TENSOR_RAW_DATA:
                raw = raw_field, raw_start, raw_end
        if raw is None or raw[2] - raw[1] < LARGE_TENSOR_BYTES:
            continue
        raw_field, raw_start, raw_end = raw
        graph_pieces += [buf[position:field_start],
                         wire.length_delimited(wire.GRAPH_INITIALIZER, (end - start) - (raw_end - raw_field)),
                         buf[start:raw_field], buf[raw_end:end]]
        position = end
        lazy.append((index, raw_start, raw_end - raw_start))
    graph_pieces.append(buf[position:graph_end])
    graph_length = sum(len(piece) for piece in graph_pieces)
    pieces = [buf[:graph_field], wire.length_delimited(wire.MODEL_GRAPH, graph_length), *graph_pieces,
              buf[graph_end:]]
    return pieces, lazy


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


def needs_external_data(model: onnx.ModelProto, external: "ExternalData | None" = None) -> bool:
    """Whether the model must be written with external data: some tensors are in files, or it is
    too large for one protobuf (counted per tensor: the whole model may not even be measurable)."""
    size = 0
    for tensor in all_tensors(model):
        if external is not None and (external.is_inline(tensor) or tensor.name in external.held):
            size += int(_external_info(tensor)["length"])
        elif is_external(tensor):
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
    """Tensors whose data is not in memory: the input's, in its external files or (loaded lazily)
    in the model file itself, and the new large ones of the main graph, written to `scratch` (the
    output's data file, being staged) or, with `hold`, kept as arrays until the output is written."""

    def __init__(self, source: Path, scratch: Path | None = None):
        self.source_folder = source.parent
        self.model_file = source.name
        self.scratch = scratch
        self.hold = False
        self.scratch_names: set[str] = set()
        self.scratch_size = 0
        self.held: dict[str, np.ndarray] = {}

    def takes(self, nbytes: int, main_graph: bool) -> bool:
        """Whether `store` should take a new tensor of this size rather than the model's memory."""
        return nbytes >= LARGE_TENSOR_BYTES and (self.scratch is not None or (self.hold and main_graph))

    def is_inline(self, tensor) -> bool:
        """Whether the tensor's data lies in the model file itself (left there by a lazy load)."""
        return is_external(tensor) and _external_info(tensor).get("location") == self.model_file

    def file_of(self, tensor) -> Path:
        if tensor.name in self.scratch_names:
            return self.scratch
        return external_file(tensor, self.source_folder)

    def read(self, tensor) -> np.ndarray:
        if not is_external(tensor):
            return tensor_values(tensor)
        if tensor.name in self.held:
            return self.held[tensor.name]
        return read_tensor_file(tensor, self.file_of(tensor))

    def store(self, tensor, values: np.ndarray):
        """Point `tensor` at `values`, written to the scratch file or held."""
        if self.scratch is None:
            values = np.ascontiguousarray(values)
            values.flags.writeable = False
            self.held[tensor.name] = values
            point_to(tensor, HELD, 0, values.nbytes)
            return
        values = np.ascontiguousarray(values.byteswap() if sys.byteorder == "big" else values)
        with open(self.scratch, "ab") as handle:
            values.tofile(handle)
        point_to(tensor, self.scratch.name, self.scratch_size, values.nbytes)
        self.scratch_names.add(tensor.name)
        self.scratch_size += values.nbytes


HELD = "<held in memory by onnx-fuse>"  # never written: write_model puts the values in their place


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
    if data_name is None and not needs_external_data(model, external):
        return None
    data_name = data_name or f"{path.name}.data"
    if Path(data_name).name != data_name or data_name == path.name:
        raise InputError(f"--external-data {data_name!r}: give a plain file name other than the model's")
    inputs = {external_file(t, external.source_folder).resolve() for t in external_tensors(model)
              if t.name not in external.scratch_names and t.name not in external.held} if external else set()
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
    it (appended to the staged scratch data, when the passes already wrote new tensors there).
    Without `data_name`, tensors still in files or held go into the model file as it is written,
    and the model is left without its initializers."""
    if data_name is None:
        if external is not None and any(is_external(t) for t in model.graph.initializer):
            _write_streamed(model, path, external)
            return
        with open(path, "wb") as handle:
            handle.write(model.SerializeToString())
        return
    data_path = path.parent / data_name
    scratch = external.scratch if external is not None else None
    if scratch is not None and scratch.exists() and scratch != data_path:
        os.replace(scratch, data_path)
    offset = data_path.stat().st_size if data_path.exists() else 0
    kept = external.scratch_names if external is not None else set()
    with open(data_path, "ab", buffering=0) as data:
        for tensor in all_tensors(model):
            if tensor.name in kept and is_external(tensor):
                point_to(tensor, data_name, *_external_span(tensor, data_path))
                continue
            if is_external(tensor):
                length = _write_data(data, tensor, external)
            elif tensor.HasField("raw_data") and tensor.ByteSize() >= threshold:
                length = len(tensor.raw_data)
                _write_all(data, tensor.raw_data)
            else:
                continue
            point_to(tensor, data_name, offset, length)
            offset += length
    with open(path, "wb") as handle:
        handle.write(model.SerializeToString())


def _write_data(out, tensor, external: ExternalData) -> int:
    """Write the data of a tensor that is not in memory (held, or in a file) to the unbuffered
    file `out`; returns its length."""
    if tensor.name in external.held:
        values = external.held[tensor.name]
        values = values.byteswap() if sys.byteorder == "big" else values
        _write_all(out, memoryview(values).cast("B"))
        return values.nbytes
    target = external.file_of(tensor)
    start, length = _external_span(tensor, target)
    with open(target, "rb") as source:
        _copy_span(source, out, start, length)
    return length


def _write_streamed(model: onnx.ModelProto, path: Path, external: ExternalData):
    """Write the model in one file without first serializing its weights into memory: the
    initializers go, each with its data, at the end of the graph's bytes."""
    entries = []  # (serialized tensor, or one without its data; the tensor when its data follows)
    for tensor in model.graph.initializer:
        if not is_external(tensor):
            entries.append((tensor.SerializeToString(), None, 0))
            continue
        shell = onnx.TensorProto()
        shell.CopyFrom(tensor)
        shell.ClearField("data_location")
        del shell.external_data[:]
        entries.append((shell.SerializeToString(), tensor, int(_external_info(tensor)["length"])))
    del model.graph.initializer[:]
    whole = model.SerializeToString()
    graph_field, graph_start, graph_end = wire.only_field(whole, 0, len(whole), wire.MODEL_GRAPH)
    heads = []
    for shell, tensor, length in entries:
        data_head = wire.length_delimited(wire.TENSOR_RAW_DATA, length) if tensor is not None else b""
        heads.append(wire.length_delimited(wire.GRAPH_INITIALIZER, len(shell) + len(data_head) + length)
                     + shell + data_head)
    graph_length = graph_end - graph_start + sum(len(head) + length for head, (_, _, length) in zip(heads, entries))
    with open(path, "wb", buffering=0) as out:
        pending = bytearray(whole[:graph_field])
        pending += wire.length_delimited(wire.MODEL_GRAPH, graph_length)
        pending += whole[graph_start:graph_end]
        for head, (_, tensor, length) in zip(heads, entries):
            pending += head
            if tensor is not None:
                _write_all(out, pending)
                pending.clear()
                if _write_data(out, tensor, external) != length:
                    raise InputError(f"tensor '{tensor.name}' changed size while being written")
        pending += whole[graph_end:]
        _write_all(out, pending)


def _write_all(out, data):
    view = memoryview(data)
    while view:
        view = view[out.write(view):]


def _copy_span(source, out, start: int, length: int, chunk: int = 64 << 20):
    """Copy `length` bytes at `start` of the open file `source` to the unbuffered file `out`: by
    the kernel where it can (no copy through this process), else a chunk at a time."""
    end = start + length
    try:
        while start < end:
            copied = os.copy_file_range(source.fileno(), out.fileno(), end - start, start)
            if copied == 0:
                raise InputError("external data ended early")
            start += copied
        return
    except (AttributeError, OSError):
        pass  # no copy_file_range here (or across these file systems): copy through memory
    source.seek(start)
    while start < end:
        block = source.read(min(chunk, end - start))
        if not block:
            raise InputError("external data ended early")
        _write_all(out, block)
        start += len(block)
