"""Just enough of the protobuf wire format to find where a model file keeps its weights.

A large model is mostly the raw_data of its initializers. Reading the file through these
functions lets the loader parse everything else and leave those bytes in the file (read per
tensor when a rewrite needs them, copied by the kernel when it does not), and lets the writer
put weights into the output without first building them into one serialized string.
"""

from __future__ import annotations

MODEL_GRAPH = 7  # ModelProto.graph
GRAPH_INITIALIZER = 5  # GraphProto.initializer
GRAPH_INPUT = 11  # GraphProto.input
GRAPH_OUTPUT = 12  # GraphProto.output
GRAPH_SPARSE_INITIALIZER = 15  # GraphProto.sparse_initializer
TENSOR_RAW_DATA = 9  # TensorProto.raw_data
TENSOR_EXTERNAL_DATA = 13  # TensorProto.external_data
TENSOR_DATA_LOCATION = 14  # TensorProto.data_location
LENGTH_DELIMITED = 2


class WireError(ValueError):
    """The bytes are not the protobuf message we expected (the caller falls back to a full parse)."""


def varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low = value & 0x7F
        value >>= 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def tag(number: int, wire_type: int = LENGTH_DELIMITED) -> bytes:
    return varint(number << 3 | wire_type)


def length_delimited(number: int, payload_length: int) -> bytes:
    """The tag and length that precede a length-delimited field of `payload_length` bytes."""
    return tag(number) + varint(payload_length)


def _read_varint(buf, pos: int, end: int) -> tuple[int, int]:
    value = shift = 0
    while pos < end:
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            break
    raise WireError("bad varint")


def fields(buf, start: int, end: int):
    """(field number, wire type, field start, value start, value end) of each field of the message
    in buf[start:end]; for a length-delimited field the value is its payload."""
    pos = start
    while pos < end:
        field_start = pos
        key, pos = _read_varint(buf, pos, end)
        number, wire_type = key >> 3, key & 7
        if wire_type == 0:
            _, value_end = _read_varint(buf, pos, end)
        elif wire_type == 1:
            value_end = pos + 8
        elif wire_type == LENGTH_DELIMITED:
            length, pos = _read_varint(buf, pos, end)
            value_end = pos + length
        elif wire_type == 5:
            value_end = pos + 4
        else:
            raise WireError(f"wire type {wire_type} (groups) in field {number}")
        if number == 0 or value_end > end:
            raise WireError("field runs past the end of its message")
        yield number, wire_type, field_start, pos, value_end
        pos = value_end


def only_field(buf, start: int, end: int, number: int) -> tuple[int, int, int] | None:
    """(field start, value start, value end) of the one length-delimited field `number` of a
    message; None when it is absent; WireError when it occurs more than once (protobuf would merge)."""
    found = None
    for n, wire_type, field_start, value_start, value_end in fields(buf, start, end):
        if n == number:
            if found is not None or wire_type != LENGTH_DELIMITED:
                raise WireError(f"field {number} occurs twice")
            found = field_start, value_start, value_end
    return found
