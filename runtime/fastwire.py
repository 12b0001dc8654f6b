"""Protobuf messages read and written without copying their payloads, with bounded work.

These are the ordinary protobuf encodings (any protobuf library reads what this
writes, and this reads what any writes); only the large ``bytes`` fields, the
*bulk* (tensor payloads, stream chunks, probe payloads, KServe raw and typed
contents), are handled by hand. Writing joins the small fields, serialized by
protobuf, and each payload (bytes or a view of an array) into one buffer: one
copy instead of three. Reading walks a message's fields, takes each bulk field
as a view of the received bytes, and lets protobuf parse the rest.

The walk is Python work on the server's event loop, so it is bounded like a
library's parser: it counts every field it walks (MAX_FIELDS per request),
every nested message it reads by hand (MAX_NESTED), and the bytes it gives
protobuf (MAX_SMALL_BYTES: names, shapes, parameters; a message whose small
fields are larger is refused, not parsed), and it refuses protobuf groups,
which no message of splitinfer.v1 or KServe v2 has. Whatever the request's
size, reading it costs at most these bounds; the bulk is never touched.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from runtime.codec import Encoded
from runtime.errors import InvalidInputError
from runtime.protocol import tensor_from_proto, tensor_to_proto
from runtime.wire import splitinfer_pb2 as pb

TENSORS_FIELD = 4  # InferRequest.tensors and InferResponse.outputs
PAYLOAD_FIELD = 10  # Tensor.payload
_VARINT, _FIXED64, _LEN, _GROUP_START, _GROUP_END, _FIXED32 = range(6)
MAX_FIELDS = 16384  # fields walked per request, nested ones included
MAX_NESTED = 1024  # messages read by hand per request (tensors, inputs)
MAX_SMALL_BYTES = 64 * 1024  # bytes per request parsed by protobuf: everything but the bulk


@dataclass(frozen=True)
class Layout:
    """How one message type is taken apart: ``bulk`` fields are kept as views of the
    received bytes (a length-delimited value; for a repeated scalar, its packed or
    unpacked elements), ``nested`` message fields are read with their own layout,
    and every other field goes to protobuf's ``message`` class."""

    message: Any
    bulk: frozenset[int] = frozenset()
    nested: Mapping[int, Layout] = field(default_factory=dict)


@dataclass
class Parts:
    """A message read by a Layout: its small fields (a protobuf message), each bulk
    field's values as (wire type, view) in wire order, and each nested field's parts."""

    message: Any
    bulk: dict[int, list[tuple[int, memoryview]]] = field(default_factory=dict)
    nested: dict[int, list[Parts]] = field(default_factory=dict)

    def payload(self, number: int) -> memoryview | bytes:
        """The bulk bytes field ``number``: its last value, as in protobuf, or b""."""
        values = self.bulk.get(number)
        return values[-1][1] if values else b""


@dataclass
class _Counts:
    fields: int = 0
    nested: int = 0
    small: int = 0


def parse(data: bytes | memoryview, layout: Layout) -> Parts:
    """``data`` read by ``layout``; InvalidInputError for bytes that are not such a
    message or that exceed the reader's bounds."""
    view = memoryview(data)
    return _read(view, 0, len(view), layout, _Counts())


def _read(view: memoryview, start: int, end: int, layout: Layout, counts: _Counts) -> Parts:
    name = layout.message.DESCRIPTOR.name
    small: list[memoryview] = []
    parts = Parts(None)
    for number, wire_type, key_start, value, stop in _fields(view, start, end, counts):
        if number in layout.nested and wire_type == _LEN:
            counts.nested += 1
            if counts.nested > MAX_NESTED:
                raise InvalidInputError(f"more than {MAX_NESTED} nested messages in one request")
            nested = _read(view, value, stop, layout.nested[number], counts)
            parts.nested.setdefault(number, []).append(nested)
        elif number in layout.bulk:
            parts.bulk.setdefault(number, []).append((wire_type, view[value:stop]))
        else:
            counts.small += stop - key_start
            if counts.small > MAX_SMALL_BYTES:
                raise InvalidInputError(
                    f"the request's fields other than tensor data take more than "
                    f"{MAX_SMALL_BYTES} bytes (at field {number} of a {name}): names, shapes "
                    "and parameters are never that large"
                )
            small.append(view[key_start:stop])
    try:
        parts.message = layout.message.FromString(b"".join(small))
    except Exception as exc:
        raise InvalidInputError(f"the request is not a valid {name}: {exc}") from None
    return parts


def _fields(
    view: memoryview, start: int, end: int, counts: _Counts
) -> Iterator[tuple[int, int, int, int, int]]:
    """(field, wire type, key offset, value offset, end offset) of each field."""
    pos = start
    while pos < end:
        counts.fields += 1
        if counts.fields > MAX_FIELDS:
            raise InvalidInputError(f"more than {MAX_FIELDS} fields in one request")
        key_start = pos
        key, pos = _varint(view, pos, end)
        if pos - key_start > 5:
            raise InvalidInputError("the message has a field tag longer than 5 bytes")
        number, wire_type = key >> 3, key & 7
        value = pos
        if wire_type == _VARINT:
            _, pos = _varint(view, pos, end)
        elif wire_type == _FIXED64:
            pos += 8
        elif wire_type == _LEN:
            length, value = _varint(view, pos, end)
            pos = value + length
        elif wire_type == _FIXED32:
            pos += 4
        elif wire_type in (_GROUP_START, _GROUP_END):
            raise InvalidInputError(
                f"the message has a protobuf group (field {number}, wire type {wire_type}); "
                "no splitinfer or KServe message has groups"
            )
        else:
            raise InvalidInputError(f"the message has a field of unsupported wire type {wire_type}")
        if pos > end or number == 0:
            raise InvalidInputError("the message is truncated or malformed")
        yield number, wire_type, key_start, value, pos


def _varint(view: memoryview, pos: int, end: int) -> tuple[int, int]:
    result = shift = 0
    while pos < end:
        byte = view[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            break
    raise InvalidInputError("the message has a truncated or overlong varint")


def varint_bytes(value: int) -> bytes:
    out = bytearray()
    while True:
        low = value & 0x7F
        value >>= 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def key(number: int, wire_type: int = _LEN) -> bytes:
    return varint_bytes(number << 3 | wire_type)


def bulk_field(number: int, payload: bytes | memoryview) -> list[bytes | memoryview]:
    """The pieces of one length-delimited field holding ``payload`` (not joined)."""
    return [key(number), varint_bytes(len(payload)), payload]


# ---------------------------------------------------------------- splitinfer.v1


TENSOR = Layout(pb.Tensor, bulk=frozenset({PAYLOAD_FIELD}))
INFER_REQUEST = Layout(pb.InferRequest, nested={TENSORS_FIELD: TENSOR})
INFER_RESPONSE = Layout(pb.InferResponse, nested={TENSORS_FIELD: TENSOR})
CHUNK_DATA_FIELD = 3
STREAM_REQUEST = Layout(
    pb.StreamRequest,
    nested={1: INFER_REQUEST, 2: Layout(pb.Chunk, bulk=frozenset({CHUNK_DATA_FIELD}))},
)
PROBE_REQUEST = Layout(pb.ProbeRequest, bulk=frozenset({1}))


def write(header: Any, tensors: Sequence[Encoded]) -> bytes:
    """``header`` (an InferRequest or InferResponse without tensors) plus ``tensors``
    as field 4, each payload copied once, into the final buffer."""
    parts: list[Any] = [header.SerializeToString()]
    for encoded in tensors:
        small = tensor_to_proto(encoded, payload=False).SerializeToString()
        inner = [small, *bulk_field(PAYLOAD_FIELD, encoded.payload)]
        parts += [key(TENSORS_FIELD), varint_bytes(sum(len(p) for p in inner)), *inner]
    return b"".join(parts)


def read(data: bytes | memoryview, layout: Layout = INFER_REQUEST) -> tuple[Any, list[Encoded]]:
    """An InferRequest's (or with INFER_RESPONSE, an InferResponse's) small fields,
    parsed by protobuf, and its tensors, whose payloads are views of ``data``."""
    parts = parse(data, layout)
    return parts.message, tensors_of(parts)


def tensors_of(parts: Parts) -> list[Encoded]:
    """The tensors of a read InferRequest or InferResponse."""
    return [
        tensor_from_proto(t.message, payload=t.payload(PAYLOAD_FIELD))
        for t in parts.nested.get(TENSORS_FIELD, [])
    ]
