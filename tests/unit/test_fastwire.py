"""runtime.fastwire reads and writes what protobuf does, and bounds its own work."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime import fastwire
from runtime.codec import Codec, CodecSpec, decode, encode
from runtime.errors import InvalidInputError
from runtime.protocol import tensor_to_proto
from runtime.wire import splitinfer_pb2 as pb


@settings(max_examples=100, deadline=None)
@given(
    shapes=st.lists(st.lists(st.integers(0, 5), max_size=3), max_size=3),
    model=st.text(max_size=10),
    codec=st.sampled_from([Codec.RAW, Codec.ZSTD]),
)
def test_fastwire_and_protobuf_agree_both_ways(shapes, model, codec):
    arrays = [np.arange(int(np.prod(s)), dtype=np.float32).reshape(s) for s in shapes]
    tensors = [encode(a, CodecSpec(codec=codec), name=f"t{i}") for i, a in enumerate(arrays)]
    header = pb.InferRequest(model=model, cut="c1", request_id="r")
    # written by fastwire, read by protobuf
    parsed = pb.InferRequest.FromString(fastwire.write(header, tensors))
    assert parsed.model == model and len(parsed.tensors) == len(arrays)
    # written by protobuf, read by fastwire
    full = pb.InferRequest(model=model, cut="c1", request_id="r")
    for t in tensors:
        tensor_to_proto(t, full.tensors.add())
    small, back = fastwire.read(full.SerializeToString())
    assert small.model == model and small.cut == "c1"
    for array, encoded in zip(arrays, back, strict=True):
        np.testing.assert_array_equal(decode(encoded), array)


def test_a_flood_of_tensors_or_fields_is_refused_quickly():
    with pytest.raises(InvalidInputError, match="more than 1024 nested messages"):
        fastwire.read(b"\x22\x00" * 2000)
    with pytest.raises(InvalidInputError, match="more than 16384 fields"):
        fastwire.read(b"\x18\x00" * 20000)  # request_id, again and again


def test_groups_are_refused_and_overlong_tags_too():
    group = b"\x33" + b"\x08\x01" + b"\x34"  # field 6 group holding a varint, then its end
    with pytest.raises(InvalidInputError, match="protobuf group"):
        fastwire.read(b"\x0a\x01m" + group)
    # a message that is one huge group: refused at its first byte, not walked
    with pytest.raises(InvalidInputError, match="protobuf group"):
        fastwire.read(b"\x33" + b"\x08\x01" * 100_000 + b"\x34")
    with pytest.raises(InvalidInputError, match="longer than 5 bytes"):
        fastwire.read(b"\xa2\x80\x80\x80\x80\x00")


def test_small_fields_are_bounded_but_payloads_are_not_parsed():
    big_name = pb.InferRequest(model="m" * (fastwire.MAX_SMALL_BYTES + 1)).SerializeToString()
    with pytest.raises(InvalidInputError, match="other than tensor data"):
        fastwire.read(big_name)
    payload = np.zeros(1 << 20, np.uint8)  # a MiB of payload is no small field
    tensors = [encode(payload, name="x")]
    header, back = fastwire.read(fastwire.write(pb.InferRequest(model="m"), tensors))
    assert header.model == "m" and len(back[0].payload) == 1 << 20
