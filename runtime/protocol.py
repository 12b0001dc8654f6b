"""Conversions between runtime objects and the splitinfer.v1 protobuf messages."""

from __future__ import annotations

from runtime.artifacts import TensorSpec
from runtime.codec import Codec, Encoded
from runtime.wire import splitinfer_pb2 as pb


def tensor_to_proto(
    encoded: Encoded, message: pb.Tensor | None = None, *, payload: bool = True
) -> pb.Tensor:
    """Fill ``message`` (a new Tensor by default) from ``encoded`` (without the payload
    when ``payload`` is false: runtime.fastwire writes it).

    Pass ``request.tensors.add()`` to write the payload straight into its place:
    building the outer message from a list of Tensors would copy every payload again.
    """
    message = pb.Tensor() if message is None else message
    message.name = encoded.name
    message.dtype = encoded.dtype
    message.shape.extend(encoded.shape)
    message.codec = encoded.codec.value
    message.codec_version = encoded.version
    message.shuffle = encoded.shuffle
    message.scale.extend(encoded.scale)
    message.zero_point.extend(encoded.zero_point)
    message.key_frame = encoded.key_frame
    if payload:
        message.payload = bytes(encoded.payload)
    if encoded.axis is not None:
        message.axis = encoded.axis
    return message


def tensor_from_proto(message: pb.Tensor, payload: bytes | memoryview | None = None) -> Encoded:
    """An Encoded tensor; CodecError for an unknown codec (never read as raw)."""
    return Encoded(
        codec=Codec.parse(message.codec or "raw"),
        dtype=message.dtype,
        shape=tuple(int(d) for d in message.shape),
        payload=message.payload if payload is None else payload,
        shuffle=message.shuffle,
        scale=tuple(message.scale),
        zero_point=tuple(int(z) for z in message.zero_point),
        axis=message.axis if message.HasField("axis") else None,
        version=message.codec_version or 1,
        name=message.name,
        key_frame=message.key_frame,
    )


def spec_to_proto(spec: TensorSpec) -> pb.TensorSpec:
    dims = spec.shape or ()
    return pb.TensorSpec(
        name=spec.name,
        dtype=spec.dtype,
        shape=[d if isinstance(d, int) else -1 for d in dims],
        dim_names=[d if isinstance(d, str) else "" for d in dims],
    )
