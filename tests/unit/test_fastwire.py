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
    small, back = fastwire.read(full.SerializeToString(), pb.InferRequest)
    assert small.model == model and small.cut == "c1"
    for array, encoded in zip(arrays, back, strict=True):
        np.testing.assert_array_equal(decode(encoded), array)


def test_a_flood_of_tensors_or_fields_is_refused_quickly():
    with pytest.raises(InvalidInputError, match="more than 1024 tensors"):
        fastwire.read(b"\x22\x00" * 2000, pb.InferRequest)
    with pytest.raises(InvalidInputError, match="more than 4096 fields"):
        fastwire.read(b"\x0a\x00" * 5000, pb.InferRequest)


def test_groups_are_skipped_and_overlong_tags_refused():
    group = b"\x33" + b"\x08\x01" + b"\x34"  # field 6 group holding a varint, then its end
    small, tensors = fastwire.read(b"\x0a\x01m" + group, pb.InferRequest)
    assert small.model == "m" and tensors == []
    with pytest.raises(InvalidInputError, match="longer than 5 bytes"):
        fastwire.read(b"\xa2\x80\x80\x80\x80\x00", pb.InferRequest)
