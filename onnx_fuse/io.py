"""Reading models from what users hand us (path, bytes, ModelProto, exporter objects) and writing
them atomically, so an interrupted or failed run never leaves a partial output file.
"""

from __future__ import annotations

import hashlib
import mmap
import os
import re
import shutil
import socket
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import helper, numpy_helper

from . import wire

PROTOBUF_LIMIT = 2**31 - 1
PROTOBUF_HEADROOM = 64 << 20  # what the graph's other fields may take beyond the tensors and nodes counted
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
    if not path.is_file():  # read once it would be gone: the checks and the job each read the model
        raise InputError(f"{path}: is a pipe or a device, not a file; save the model to a file first")
    if path.stat().st_size == 0:
        raise InputError(f"{path}: the file is empty")
    model = _parse_leaving_weights(path) if lazy else None
    if model is None:
        try:
            model = onnx.load(str(path), load_external_data=False)
        except DecodeError as error:
            raise InputError(f"{path}: not an ONNX model, the file does not parse ({error})") from None
    _check_model(model, str(path))
    # external data lies beside the path as given, a symlink's own folder (as onnx and onnxruntime read it)
    folder = path.absolute().parent
    for tensor in external_tensors(model):
        try:
            external_file(tensor, folder, str(path))
        except InputError as error:
            if path.is_symlink() and "is missing" in str(error):
                raise InputError(f"{error}: beside the symlink, where onnx and onnxruntime read it, not beside "
                                 f"its target") from None
            raise
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
    if "\0" in location:
        raise InputError(f"{what}: tensor '{tensor.name}': its external data location {location!r} is not a file name")
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
        if external is not None and (external.is_inline(tensor) or is_held(tensor) or is_scratch(tensor)):
            size += int(_external_info(tensor)["length"])
        elif is_external(tensor):
            return True
        size += tensor.ByteSize()
    return size + sum(node.ByteSize() for node in model.graph.node) > PROTOBUF_LIMIT - PROTOBUF_HEADROOM


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
        self.scratch_size = 0
        self.held: dict[str, np.ndarray] = {}  # by name: only main-graph tensors are held
        self.files: dict[str, Path] = {}  # location -> its file, checked once (passes read often)

    def takes(self, nbytes: int, main_graph: bool) -> bool:
        """Whether `store` should take a new tensor of this size rather than the model's memory."""
        return nbytes >= LARGE_TENSOR_BYTES and (self.scratch is not None or (self.hold and main_graph))

    def is_inline(self, tensor) -> bool:
        """Whether the tensor's data lies in the model file itself (left there by a lazy load)."""
        return is_external(tensor) and _external_info(tensor).get("location") == self.model_file

    def file_of(self, tensor) -> Path:
        if is_scratch(tensor):
            return self.scratch
        location = _external_info(tensor).get("location", "")
        if location not in self.files:
            self.files[location] = external_file(tensor, self.source_folder)
        return self.files[location]

    def read(self, tensor) -> np.ndarray:
        if not is_external(tensor):
            return tensor_values(tensor)
        if is_held(tensor):
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
        point_to(tensor, SCRATCH, self.scratch_size, values.nbytes)
        self.scratch_size += values.nbytes


# Locations of the tensors a fold made, never written as they are: write_model puts the values in
# their place. Told apart by location, not by name: tensors of sibling subgraphs may share a name.
HELD = "<held in memory by onnx-fuse>"
SCRATCH = "<in the output's data file, being staged by onnx-fuse>"


def is_held(tensor) -> bool:
    return is_external(tensor) and _external_info(tensor).get("location") == HELD


def is_scratch(tensor) -> bool:
    return is_external(tensor) and _external_info(tensor).get("location") == SCRATCH


VALUE_FIELDS = ("raw_data", "float_data", "int32_data", "string_data", "int64_data", "double_data",
                "uint64_data")


def point_to(tensor, location: str, offset: int, length: int):
    for field in VALUE_FIELDS:  # the file holds the one value now
        tensor.ClearField(field)
    del tensor.external_data[:]
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(length))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    tensor.data_location = onnx.TensorProto.EXTERNAL


def check_input(model: onnx.ModelProto, what: str, folder: Path | None = None):
    """Refuse what onnx.checker calls invalid (an opset this onnx does not know, names read but
    never defined or defined twice, wrong attribute types, ...) and what it does not look at
    (external data references, data lengths that disagree with the dims). `folder` holds the
    model's external data."""
    known = onnx.defs.onnx_opset_version()
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx") and entry.version > known:
            raise InputError(f"{what}: uses opset {entry.version}, newer than the installed onnx "
                             f"{onnx.__version__} knows ({known}); upgrade onnx")
    _check_graph(model.graph, set(), what)
    for tensor in external_tensors(model):
        _check_tensor(tensor, what)
    _check_weights(model.graph, what)
    _run_checker(model, what, folder)


# Elements per entry of each typed value field (complex numbers take two), for the tensor types
# whose data length follows from their dims; raw_data holds ITEM_BYTES bytes per element.
_T = onnx.TensorProto
TYPED_FIELD = {
    _T.FLOAT: "float_data", _T.COMPLEX64: "float_data", _T.DOUBLE: "double_data", _T.COMPLEX128: "double_data",
    _T.INT64: "int64_data", _T.UINT32: "uint64_data", _T.UINT64: "uint64_data", _T.STRING: "string_data",
    **{t: "int32_data" for t in (_T.INT32, _T.INT16, _T.INT8, _T.UINT16, _T.UINT8, _T.BOOL, _T.FLOAT16,
                                 _T.BFLOAT16)},
}
PER_ELEMENT = {_T.COMPLEX64: 2, _T.COMPLEX128: 2}
ITEM_BYTES = {t: helper.tensor_dtype_to_np_dtype(t).itemsize for t in TYPED_FIELD if t != _T.STRING}


def _check_tensor(tensor, what: str):
    """What onnx.checker does not look at (external data), or is not shown (large initializers,
    see _run_checker): dims, data lengths, external data references."""
    where = f"{what}: tensor '{tensor.name}'"
    if any(d < 0 for d in tensor.dims):
        raise InputError(f"{where} has a negative dimension (dims {list(tensor.dims)})")
    elements = 1
    for d in tensor.dims:
        elements *= d
    expected = ITEM_BYTES[tensor.data_type] * elements if tensor.data_type in ITEM_BYTES else None
    if is_external(tensor):
        info = _external_info(tensor)
        location = info.get("location", "")
        if not location or "\0" in location:
            raise InputError(f"{where}: its external data location {location!r} is not a file name")
        for key in ("offset", "length"):
            if key in info and not info[key].isdigit():
                raise InputError(f"{where}: external data {key} {info[key]!r} is not a whole number")
        if expected is not None and "length" in info and int(info["length"]) != expected:
            raise InputError(f"{where}: external data length {info['length']} does not match its dims "
                             f"{list(tensor.dims)} ({expected} bytes)")
        return
    fields = [f for f in VALUE_FIELDS if (tensor.HasField(f) if f == "raw_data" else len(getattr(tensor, f)))]
    if len(fields) > 1:
        raise InputError(f"{where} has two values ({' and '.join(fields)})")
    if tensor.data_type not in TYPED_FIELD:
        return
    if not fields:
        if elements:
            raise InputError(f"{where} has dims {list(tensor.dims)} but no data")
        return
    if fields[0] == "raw_data":
        if tensor.data_type != _T.STRING and len(tensor.raw_data) != expected:
            raise InputError(f"{where}: raw data of {len(tensor.raw_data)} bytes, its dims {list(tensor.dims)} "
                             f"need {expected}")
    elif fields[0] != TYPED_FIELD[tensor.data_type] or len(getattr(tensor, fields[0])) != elements * PER_ELEMENT.get(
            tensor.data_type, 1):
        raise InputError(f"{where}: {len(getattr(tensor, fields[0]))} values in {fields[0]}, its type and dims "
                         f"{list(tensor.dims)} need {elements * PER_ELEMENT.get(tensor.data_type, 1)} in "
                         f"{TYPED_FIELD[tensor.data_type]}")


def _check_weights(graph, what: str):
    """A Conv or ConvTranspose whose constant weight has no elements (onnx.checker's shape
    inference says so only on a full check)."""
    dims = {t.name: list(t.dims) for t in graph.initializer}
    for node in graph.node:
        if node.op_type in ("Conv", "ConvTranspose") and node.domain in ("", "ai.onnx") and len(node.input) > 1:
            shape = dims.get(node.input[1])
            if shape is not None and 0 in shape:
                raise InputError(f"{what}: {node.op_type} '{node.name or node.output[0]}' has a weight with no "
                                 f"elements (dims {shape})")


# Up to this many nodes onnx.checker runs with its full check (strict shape inference); above it,
# onnx.checker would hold a second copy of the graph, and the attribute types are checked here
CHECKER_NODES = 20000


def _check_attribute_types(graph, opset: int, what: str):
    """Attributes of the main graph's default-domain nodes have the types their schemas say."""
    schemas = {}
    for node in graph.node:
        if node.domain not in ("", "ai.onnx"):
            continue
        if node.op_type not in schemas:
            try:
                schema = onnx.defs.get_schema(node.op_type, opset, "")
                schemas[node.op_type] = {name: a.type for name, a in schema.attributes.items()}
            except onnx.defs.SchemaError:
                schemas[node.op_type] = None
        types = schemas[node.op_type]
        if types is None:
            continue
        for attr in node.attribute:
            expected = types.get(attr.name)
            if expected is not None and not attr.ref_attr_name and attr.type != expected:
                raise InputError(f"{what}: node '{node.name or node.op_type}': attribute '{attr.name}' is "
                                 f"{onnx.AttributeProto.AttributeType.Name(attr.type)}, expected "
                                 f"{onnx.AttributeProto.AttributeType.Name(expected)}")


def _run_checker(model: onnx.ModelProto, what: str, folder: Path | None = None):
    """onnx.checker on the model's bytes as they would be without its large, external or sparse
    main-graph initializers (each becomes a graph input of its type and dims, checked by
    _check_tensor instead): the checker cannot see external data it is not given the folder of,
    its shape inference has no sparse types for most ops, and a copy of the weights would double
    the memory. The bytes are edited on the wire: no second Python copy of a large graph."""
    hidden = [is_external(t) or t.ByteSize() >= LARGE_TENSOR_BYTES for t in model.graph.initializer]
    for tensor, hide in zip(model.graph.initializer, hidden):
        if hide and not is_external(tensor):
            _check_tensor(tensor, what)
    if len(model.graph.node) > CHECKER_NODES:
        opset = next((e.version for e in model.opset_import if e.domain in ("", "ai.onnx")), 0)
        _check_attribute_types(model.graph, opset, what)
        for tensor in all_tensors(model):
            if not is_external(tensor):  # what the checker would have looked at
                _check_tensor(tensor, what)
        return
    full = True
    main = len(model.graph.initializer)
    inner = [t for i, t in enumerate(all_tensors(model)) if i >= main and is_external(t)]
    saved = []
    for tensor in inner:  # external data in subgraphs or Constant nodes (usually small): shown as it is
        length = int(_external_info(tensor).get("length", 0))
        if folder is not None and length < LARGE_TENSOR_BYTES:
            data = read_external_bytes(tensor, folder)  # shape inference may need the values
        else:
            data, full = bytes(length), False  # no values to infer shapes from
        copy = onnx.TensorProto()
        copy.CopyFrom(tensor)
        saved.append(copy)
        del tensor.external_data[:]
        tensor.ClearField("data_location")
        tensor.raw_data = data
    try:
        whole = model.SerializeToString()
    finally:
        for tensor, copy in zip(inner, saved):
            tensor.CopyFrom(copy)
    graph_field, graph_start, graph_end = wire.only_field(whole, 0, len(whole), wire.MODEL_GRAPH)
    listed = {vi.name for vi in model.graph.input}
    pieces, added = [], []
    index = -1
    for number, _, field_start, start, end in wire.fields(whole, graph_start, graph_end):
        if number == wire.GRAPH_INITIALIZER:
            index += 1
            if hidden[index]:
                tensor = model.graph.initializer[index]
                if tensor.name not in listed:
                    added.append(helper.make_tensor_value_info(tensor.name, tensor.data_type, list(tensor.dims)))
                continue
        elif number == wire.GRAPH_SPARSE_INITIALIZER:
            sparse = onnx.SparseTensorProto.FromString(whole[start:end])
            try:
                onnx.checker.check_sparse_tensor(sparse)
            except onnx.checker.ValidationError as error:
                raise InputError(f"{what}: not a valid model: {' '.join(str(error).split())[:300]}") from None
            if sparse.values.name not in listed:
                added.append(helper.make_tensor_value_info(sparse.values.name, sparse.values.data_type,
                                                           list(sparse.dims)))
            continue
        elif number in (wire.GRAPH_INPUT, wire.GRAPH_OUTPUT):
            vi = onnx.ValueInfoProto.FromString(whole[start:end])
            if vi.type.HasField("tensor_type") and not vi.type.tensor_type.HasField("shape"):
                # onnx.checker wants the shapes of the main graph's inputs and outputs, which
                # onnxruntime and onnx-fuse do without: an unknown one is not an error
                full = False  # a made-up rank would not infer
                vi.type.tensor_type.shape.SetInParent()
                data = vi.SerializeToString()
                pieces.append(wire.length_delimited(number, len(data)) + data)
                continue
        pieces.append(whole[field_start:end])
    for vi in added:
        data = vi.SerializeToString()
        pieces.append(wire.length_delimited(wire.GRAPH_INPUT, len(data)) + data)
    graph_length = sum(len(piece) for piece in pieces)
    shell = b"".join([whole[:graph_field], wire.length_delimited(wire.MODEL_GRAPH, graph_length), *pieces,
                      whole[graph_end:]])
    del whole, pieces
    try:
        onnx.checker.check_model(shell, full_check=full)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as error:
        text = " ".join(str(error).split())
        raise InputError(f"{what}: not a valid model: {text[:300]}") from None


def _check_graph(graph, outer: set, what: str):
    initializers = [t.name for t in graph.initializer] + [t.values.name for t in graph.sparse_initializer]
    local = set(initializers)
    if len(local) != len(initializers):
        twice = next(name for name in local if initializers.count(name) > 1)
        raise InputError(f"{what}: initializer name '{twice}' is not unique")
    inputs = [vi.name for vi in graph.input]
    if len(set(inputs)) != len(inputs):
        twice = next(name for name in inputs if inputs.count(name) > 1)
        raise InputError(f"{what}: graph input '{twice}' is listed twice")
    local.update(inputs)
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


def output_data_name(model: onnx.ModelProto, path: Path, data_name: str | None,
                     external: "ExternalData | None") -> str | None:
    """The data file to write beside `path`, or None when the model fits in one file."""
    if data_name is None and not needs_external_data(model, external):
        return None
    data_name = f"{path.name}.data" if data_name is None else data_name
    if (not data_name or "\0" in data_name or Path(data_name).name != data_name or data_name in (".", "..")
            or data_name == path.name):
        raise InputError(f"--external-data {data_name!r}: give a plain file name other than the model's")
    return data_name


# Every file onnx-fuse stages is in a folder named so: the next run into that folder recognises
# the leftovers of a killed run (its process is gone) and removes them.
STAGE_PREFIX = ".onnx-fuse-tmp-"
_HOST = hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]
_STAGE_NAME = re.compile(re.escape(STAGE_PREFIX) + r"(\d+)-([0-9a-f]{8})-")


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # it exists, owned by someone else
    return True


def remove_stale_stages(folder: Path):
    """Remove what runs of onnx-fuse on this machine that were killed (SIGKILL, power loss) left
    staged in `folder`."""
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return
    for entry in entries:
        found = _STAGE_NAME.match(entry.name)
        if found is None or found.group(2) != _HOST:
            continue
        pid = int(found.group(1))
        if pid != os.getpid() and not _process_alive(pid):
            shutil.rmtree(entry.path, ignore_errors=True)


def check_writable(folder: Path):
    """Refuse, before anything is written, a folder where files cannot be created."""
    try:
        probe = tempfile.mkdtemp(prefix=f"{STAGE_PREFIX}{os.getpid()}-{_HOST}-probe.", dir=folder)
    except OSError as error:
        raise InputError(f"{folder}: cannot write in this folder ({error.strerror})") from None
    os.rmdir(probe)


class staged:
    """A temporary folder beside `path`; on success its files are renamed into place (data files
    first, the model last), on failure or interruption the folder is removed. Nothing partial is
    ever visible.

    A `path` that is a device or a pipe (/dev/null, /dev/stdout) is written into, not replaced:
    the file is staged in the system's temporary folder and then copied there. Such an output
    cannot have a data file beside it."""

    def __init__(self, path):
        self.path = Path(path)
        self.folder = self.path.parent if str(self.path.parent) else Path(".")
        self.stream = self.path.exists() and not self.path.is_file() and not self.path.is_dir()

    def __enter__(self) -> Path:
        if not self.folder.is_dir():
            raise InputError(f"{self.path}: the output folder {self.folder} does not exist")
        if self.path.is_dir():
            raise InputError(f"{self.path}: is a directory; give a file name for the output")
        where = Path(tempfile.gettempdir()) if self.stream else self.folder
        remove_stale_stages(where)
        try:
            self.stage = Path(tempfile.mkdtemp(prefix=f"{STAGE_PREFIX}{os.getpid()}-{_HOST}-{self.path.name}.",
                                               dir=where))
        except OSError as error:
            raise InputError(f"{self.path}: cannot write in {where} ({error.strerror})") from None
        return self.stage

    def __exit__(self, kind, error, trace):
        try:
            if kind is None:
                written = sorted(self.stage.iterdir(), key=lambda p: p.name == self.path.name)
                if self.stream:
                    self._write_into(written)
                else:
                    for item in written:
                        os.replace(item, self.folder / item.name)
        except OSError as failure:
            raise InputError(f"{self.path}: cannot write ({failure.strerror})") from None
        finally:
            shutil.rmtree(self.stage, ignore_errors=True)
        if isinstance(error, OSError):
            raise InputError(f"{self.path}: cannot write ({error.strerror})") from None
        return False

    def _write_into(self, written: list):
        if [item.name for item in written] != [self.path.name]:
            raise InputError(f"{self.path}: is a device or a pipe, and this output needs its external data "
                             f"in a file beside it; give a file name")
        with open(written[0], "rb") as source, open(self.path, "wb") as target:
            shutil.copyfileobj(source, target, 1 << 20)


def write_bytes(path, data: bytes):
    """Write a small file (a report) atomically, through the same staging as models."""
    path = Path(path)
    with staged(path) as stage:
        (stage / path.name).write_bytes(data)


def model_files(path: Path, model: onnx.ModelProto) -> list[Path]:
    """The files a model loaded from `path` is read from: the model file and its external data."""
    folder = path.absolute().parent
    files = [path]
    for tensor in external_tensors(model):
        location = _external_info(tensor).get("location", "")
        if location:
            files.append(folder / location)
    return files


def _file_keys(path: Path) -> set:
    """What identifies a file: its resolved path (through symlinks) and, when it exists, its inode
    (so that a hard link is the same file too)."""
    path = Path(path)
    keys = {str(path.absolute().resolve())}
    try:
        status = os.stat(path)
        keys.add((status.st_dev, status.st_ino))
    except OSError:
        pass
    return keys


class WriteGuard:
    """The files one run reads and writes. Every write is claimed here first: a write over a file
    the run reads (a model, its external data, resolved through symlinks and hard links) or over
    another output of the run is refused before anything is written."""

    def __init__(self):
        self.inputs: dict = {}  # file key -> (what it is, the model it belongs to)
        self.outputs: dict = {}  # file key -> (what it is, who writes it)

    def add_input(self, path: Path, what: str, owner: str):
        """Register a file the run reads (for `owner`, whose own --inplace output may replace it)."""
        keys = _file_keys(path)
        for key in keys:
            self.inputs.setdefault(key, (what, owner))
        for key in keys:
            if key in self.outputs and self.outputs[key][1] != owner:
                raise InputError(f"{path}: {what} is also where {self.outputs[key][0]} would be written; "
                                 f"choose another output name")

    def add_inputs_files(self, paths):
        """Register the files of real inputs the verification reads (--load-inputs)."""
        for path in paths:
            self.add_input(Path(path), f"the inputs file {path}", "--load-inputs")

    def add_model(self, path: Path, model: onnx.ModelProto):
        for index, file in enumerate(model_files(path, model)):
            self.add_input(file, f"the input model {path}" if index == 0 else f"external data of {path}", str(path))

    def claim(self, path: Path, what: str, owner: str, replaceable=()):
        """Register `path` as written by `owner` (one model of the run, or the report); refused
        when the run reads it (unless listed in `replaceable`: --inplace) or another output
        is written there."""
        allowed = set().union(*(_file_keys(p) for p in replaceable)) if replaceable else set()
        keys = _file_keys(path)
        for key in keys:
            if key in self.inputs and key not in allowed:
                read_as, reader = self.inputs[key]
                hint = ("pass --inplace (inplace=True) to replace it" if reader == owner
                        else "choose another output name")
                raise InputError(f"{path}: {what} would overwrite {read_as}; {hint}")
            if key in self.outputs and self.outputs[key][1] != owner:
                raise InputError(f"{path}: {what} and {self.outputs[key][0]} would both be written here; "
                                 f"give them different names or folders")
        for key in keys:
            self.outputs[key] = (what, owner)


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
    with open(data_path, "ab", buffering=0) as data:
        for tensor in all_tensors(model):
            if is_scratch(tensor) and int(_external_info(tensor)["length"]) >= threshold:
                point_to(tensor, data_name, *_external_span(tensor, data_path))
                continue
            if is_external(tensor) and int(_external_info(tensor).get("length", threshold)) < threshold:
                _inline(tensor, external)  # small tensors (shapes, axes) go in the model, where runtimes want them
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


def _inline(tensor, external: ExternalData):
    """Put a small tensor's data, held or in a file, into the tensor itself."""
    if is_held(tensor):
        values = external.held[tensor.name]
        data = (values.byteswap() if sys.byteorder == "big" else values).tobytes()
    else:
        target = external.file_of(tensor)
        start, length = _external_span(tensor, target)
        with open(target, "rb") as source:
            source.seek(start)
            data = source.read(length)
    del tensor.external_data[:]
    tensor.ClearField("data_location")
    tensor.raw_data = data


def _write_data(out, tensor, external: ExternalData) -> int:
    """Write the data of a tensor that is not in memory (held, or in a file) to the unbuffered
    file `out`; returns its length."""
    if is_held(tensor):
        values = external.held[tensor.name]
        values = values.byteswap() if sys.byteorder == "big" else values
        _write_all(out, memoryview(np.ascontiguousarray(values).reshape(-1).view(np.uint8)))  # any dtype
        return values.nbytes
    target = external.file_of(tensor)
    start, length = _external_span(tensor, target)
    with open(target, "rb") as source:
        _copy_span(source, out, start, length)
    return length


def _write_streamed(model: onnx.ModelProto, path: Path, external: ExternalData):
    """Write the model in one file without first serializing its weights into memory: the
    initializers go, each with its data, where protobuf puts them (before the graph's fields
    numbered higher), so that the bytes are those of SerializeToString."""
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
    split = next((field_start for number, _, field_start, _, _ in wire.fields(whole, graph_start, graph_end)
                  if number > wire.GRAPH_INITIALIZER), graph_end)
    heads = []
    for shell, tensor, length in entries:
        data_head = wire.length_delimited(wire.TENSOR_RAW_DATA, length) if tensor is not None else b""
        heads.append(wire.length_delimited(wire.GRAPH_INITIALIZER, len(shell) + len(data_head) + length)
                     + shell + data_head)
    graph_length = graph_end - graph_start + sum(len(head) + length for head, (_, _, length) in zip(heads, entries))
    with open(path, "wb", buffering=0) as out:
        pending = bytearray(whole[:graph_field])
        pending += wire.length_delimited(wire.MODEL_GRAPH, graph_length)
        pending += whole[graph_start:split]
        for head, (_, tensor, length) in zip(heads, entries):
            pending += head
            if tensor is not None:
                _write_all(out, pending)
                pending.clear()
                if _write_data(out, tensor, external) != length:
                    raise InputError(f"tensor '{tensor.name}' changed size while being written")
        pending += whole[split:]
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
