"""InferRequest and InferResponse bytes, written and read without copying payloads.

These are the ordinary protobuf encodings of the splitinfer.v1 messages (any
protobuf library reads what this writes, and this reads what any writes);
only the tensors' ``payload`` fields are handled by hand. Writing joins the
small fields, serialized by protobuf, and each payload (bytes or a view of an
array) into one buffer: one copy instead of three. Reading walks the message's
top-level fields, takes each payload as a view of the received bytes, and
lets protobuf parse the rest. On these machines a fresh 4 MiB buffer costs
milliseconds to touch, so each copy saved is time saved.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from runtime.codec import Encoded
from runtime.errors import InvalidInputError
from runtime.protocol import tensor_from_proto, tensor_to_proto
from runtime.wire import splitinfer_pb2 as pb

TENSORS_FIELD = 4  # InferRequest.tensors and InferResponse.outputs
PAYLOAD_FIELD = 10  # Tensor.payload
_LEN = 2
# Reading is Python work on the server's event loop: bound it.
MAX_FIELDS = 4096  # per message
MAX_TENSORS = 1024  # per request


def _varint_bytes(value: int) -> bytes:
    out = bytearray()
    while True:
        low = value & 0x7F
        value >>= 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def _key(field: int, wire_type: int) -> bytes:
    return _varint_bytes(field << 3 | wire_type)


def write(header: Any, tensors: Sequence[Encoded]) -> bytes:
    """``header`` (an InferRequest or InferResponse without tensors) plus ``tensors``
    as field 4, each payload copied once, into the final buffer."""
    parts: list[Any] = [header.SerializeToString()]
    for encoded in tensors:
        small = tensor_to_proto(encoded, payload=False).SerializeToString()
        payload = encoded.payload
        inner = [small, _key(PAYLOAD_FIELD, _LEN), _varint_bytes(len(payload))]
        size = sum(len(p) for p in inner) + len(payload)
        parts += [_key(TENSORS_FIELD, _LEN), _varint_bytes(size), *inner, payload]
    return b"".join(parts)


def read(data: bytes, message_class: Any) -> tuple[Any, list[Encoded]]:
    """The message's small fields (parsed by protobuf) and its tensors, whose payloads
    are views of ``data``. InvalidInputError for bytes that are not such a message."""
    view = memoryview(data)
    rest: list[memoryview] = []
    tensors: list[Encoded] = []
    for field, wire_type, start, value, end in _fields(view, 0, len(view)):
        if field == TENSORS_FIELD and wire_type == _LEN:
            if len(tensors) >= MAX_TENSORS:
                raise InvalidInputError(f"more than {MAX_TENSORS} tensors in one message")
            tensors.append(_tensor(view, value, end))
        else:
            rest.append(view[start:end])
    try:
        return message_class.FromString(b"".join(rest)), tensors
    except Exception as exc:
        raise InvalidInputError(
            f"the request is not a valid {message_class.__name__}: {exc}"
        ) from None


def _tensor(view: memoryview, start: int, end: int) -> Encoded:
    rest: list[memoryview] = []
    payload: memoryview | None = None
    for field, wire_type, key_start, value, stop in _fields(view, start, end):
        if field == PAYLOAD_FIELD and wire_type == _LEN:
            payload = view[value:stop]  # the last one wins, as in protobuf
        else:
            rest.append(view[key_start:stop])
    try:
        message = pb.Tensor.FromString(b"".join(rest))
    except Exception as exc:
        raise InvalidInputError(f"a tensor is not a valid Tensor message: {exc}") from None
    return tensor_from_proto(message, payload=payload if payload is not None else b"")


def _fields(view: memoryview, start: int, end: int) -> Iterator[tuple[int, int, int, int, int]]:
    """(field, wire type, key offset, value offset, end offset) of each field."""
    pos = start
    count = 0
    while pos < end:
        count += 1
        if count > MAX_FIELDS:
            raise InvalidInputError(f"more than {MAX_FIELDS} fields in one message")
        key_start = pos
        key, pos = _varint(view, pos, end)
        if pos - key_start > 5:
            raise InvalidInputError("the message has a field tag longer than 5 bytes")
        field, wire_type = key >> 3, key & 7
        value = pos
        if wire_type == 0:
            _, pos = _varint(view, pos, end)
        elif wire_type == 1:
            pos += 8
        elif wire_type == _LEN:
            length, value = _varint(view, pos, end)
            pos = value + length
        elif wire_type == 5:
            pos += 4
        elif wire_type == 3:  # a group (deprecated, but valid): skip to its end
            pos = _skip_group(view, pos, end, field)
        else:
            raise InvalidInputError(f"the message has a field of unsupported wire type {wire_type}")
        if pos > end or field == 0:
            raise InvalidInputError("the message is truncated or malformed")
        yield field, wire_type, key_start, value, pos


def _skip_group(view: memoryview, pos: int, end: int, field: int) -> int:
    depth = 1
    while pos < end:
        key, pos = _varint(view, pos, end)
        inner, wire_type = key >> 3, key & 7
        if wire_type == 4:
            depth -= 1
            if depth == 0:
                if inner != field:
                    break
                return pos
        elif wire_type == 3:
            depth += 1
        elif wire_type == 0:
            _, pos = _varint(view, pos, end)
        elif wire_type == 1:
            pos += 8
        elif wire_type == _LEN:
            length, pos = _varint(view, pos, end)
            pos += length
        elif wire_type == 5:
            pos += 4
        else:
            break
    raise InvalidInputError("the message has a group that does not end")


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
