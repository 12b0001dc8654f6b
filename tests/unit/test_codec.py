"""Codecs round-trip every dtype and shape they accept, and refuse bad payloads."""

from __future__ import annotations

import dataclasses
from dataclasses import replace
from typing import Any

import numpy as np
import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from runtime.codec import (
    FP16_MAX,
    LOSSLESS_DTYPES,
    Codec,
    CodecSpec,
    Encoded,
    decode,
    encode,
)
from runtime.errors import CodecError
from runtime.protocol import tensor_from_proto, tensor_to_proto

shapes = hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=6)


@settings(max_examples=300, deadline=None)
@given(
    data=st.data(),
    dtype=st.sampled_from(sorted(LOSSLESS_DTYPES)),
    codec=st.sampled_from([Codec.RAW, Codec.ZSTD]),
    shuffle=st.booleans(),
    level=st.integers(1, 9),
)
def test_lossless_codecs_round_trip_bit_exact(data, dtype, codec, shuffle, level):
    array = data.draw(hnp.arrays(np.dtype(dtype), shapes))
    encoded = encode(array, CodecSpec(codec=codec, shuffle=shuffle, level=level))
    decoded = decode(encoded)
    assert decoded.dtype == array.dtype and decoded.shape == array.shape
    # bitwise: NaN payloads and signed zeros included
    assert decoded.tobytes() == np.ascontiguousarray(array).tobytes()


finite32 = st.floats(-1e6, 1e6, width=32)


@settings(max_examples=200, deadline=None)
@given(array=hnp.arrays(np.float32, shapes, elements=finite32), shuffle=st.booleans())
def test_fp16_is_within_half_precision_rounding(array, shuffle):
    decoded = decode(encode(array, CodecSpec(codec=Codec.FP16_ZSTD, shuffle=shuffle)))
    assert decoded.dtype == np.float32 and decoded.shape == array.shape
    clipped = np.clip(array, -FP16_MAX, FP16_MAX)
    # float16 keeps 11 significant bits; below 2**-14 it is subnormal with step 2**-24
    bound = np.abs(clipped) * 2.0**-11 + 2.0**-24
    assert (np.abs(decoded - clipped) <= bound).all()


@settings(max_examples=200, deadline=None)
@given(
    data=st.data(),
    dtype=st.sampled_from(["float32", "float64"]),
    per_channel=st.booleans(),
)
def test_int8_is_within_half_a_quantization_step(data, dtype, per_channel):
    array = data.draw(
        hnp.arrays(
            np.dtype(dtype),
            hnp.array_shapes(min_dims=1, max_dims=4, max_side=6),
            elements=st.floats(-1e4, 1e4, width=32),
        )
    )
    axis = data.draw(st.integers(0, array.ndim - 1)) if per_channel else None
    encoded = encode(array, CodecSpec(codec=Codec.INT8_ZSTD, axis=axis))
    decoded = decode(encoded)
    assert decoded.dtype == array.dtype and decoded.shape == array.shape
    scale = np.asarray(encoded.scale)
    if axis is not None:
        shape = [1] * array.ndim
        shape[axis] = -1
        scale = scale.reshape(shape)
    # the stated bound: half a step, step = (max(x, 0) - min(x, 0)) / 255 per channel,
    # plus the rounding of the result to the tensor's own dtype
    rounding = np.abs(array.astype(np.float64)) * np.finfo(array.dtype).eps
    assert (np.abs(decoded.astype(np.float64) - array) <= scale * 0.5 + rounding).all()


def test_shuffle_helps_dense_floats_and_the_ratio_is_real():
    rng = np.random.default_rng(0)
    dense = rng.standard_normal((64, 32, 32)).astype(np.float32)
    plain = encode(dense, CodecSpec(codec=Codec.ZSTD))
    shuffled = encode(dense, CodecSpec(codec=Codec.ZSTD, shuffle=True))
    assert len(shuffled.payload) < len(plain.payload) < dense.nbytes


@pytest.mark.parametrize("codec", [Codec.FP16_ZSTD, Codec.INT8_ZSTD])
def test_lossy_codecs_refuse_integer_tensors(codec):
    with pytest.raises(CodecError, match="cannot carry int64"):
        encode(np.arange(4), CodecSpec(codec=codec))


def test_unknown_codec_name_is_an_error_not_raw():
    with pytest.raises(CodecError, match=r"unknown codec 'lz4'.*raw, zstd"):
        Codec.parse("lz4")


def _zstd(array, **kwargs):
    return encode(array, CodecSpec(codec=Codec.ZSTD, **kwargs))


def test_a_corrupted_payload_is_a_clear_error():
    encoded = _zstd(np.arange(1000, dtype=np.float32))
    payload = bytearray(encoded.payload)
    payload[len(payload) // 2] ^= 0xFF
    with pytest.raises(CodecError, match="corrupted zstd payload"):
        decode(dataclasses.replace(encoded, payload=bytes(payload)))
    with pytest.raises(CodecError, match="not a zstd frame"):
        decode(dataclasses.replace(encoded, payload=b"garbage!" * 10))


def test_a_truncated_payload_is_a_clear_error():
    encoded = _zstd(np.arange(1000, dtype=np.float32))
    with pytest.raises(CodecError):
        decode(dataclasses.replace(encoded, payload=encoded.payload[:-7]))
    raw = encode(np.arange(10, dtype=np.int32))
    with pytest.raises(CodecError, match="raw payload has 36 bytes, expected 40"):
        decode(dataclasses.replace(raw, payload=raw.payload[:-4]))


def test_a_decompression_bomb_is_refused_before_allocating():
    # a 100-byte frame that expands to 1 MiB, for a 64-byte tensor: the header says so
    bomb = zstandard.ZstdCompressor(write_content_size=True, write_checksum=True).compressobj()
    small = _zstd(np.zeros(16, dtype=np.float32))
    frame = zstandard.ZstdCompressor(write_content_size=True, write_checksum=True).compress(
        bytes(1 << 20)
    )
    with pytest.raises(CodecError, match=r"frame claims 1048576 bytes, but shape \[16\] needs 64"):
        decode(dataclasses.replace(small, payload=frame))
    # a frame with no content size (streaming mode) is decoded only up to the tensor's size
    streamed = bomb.compress(bytes(1 << 20)) + bomb.flush()
    assert zstandard.frame_content_size(streamed) == -1
    with pytest.raises(CodecError, match="did not decompress full frame"):
        decode(dataclasses.replace(small, payload=streamed))
    # and a shape that claims 10 GB is refused before any allocation
    with pytest.raises(CodecError, match="more than the limit"):
        decode(Encoded(Codec.ZSTD, "float32", (50_000, 50_000), small.payload))


def test_a_streamed_frame_of_the_right_size_decodes():
    array = np.arange(256, dtype=np.float32)
    stream = zstandard.ZstdCompressor(write_checksum=True).compressobj()
    payload = stream.compress(array.tobytes()) + stream.flush()
    assert np.array_equal(decode(Encoded(Codec.ZSTD, "float32", (256,), payload)), array)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"dtype": "complex64"}, "cannot carry 'complex64'"),
        ({"shape": (4, -1)}, "must lie in"),
        ({"version": 9}, "version 9"),
        ({"scale": (1.0, 2.0)}, "needs 1 scale"),
        ({"scale": (float("nan"),)}, "finite and positive"),
        ({"zero_point": (300,)}, r"\[-128, 127\]"),
        ({"axis": 5}, "axis 5 is out of range"),
    ],
)
def test_inconsistent_headers_are_refused(change, message):
    encoded = encode(
        np.linspace(-1, 1, 16, dtype=np.float32).reshape(4, 4), CodecSpec(codec=Codec.INT8_ZSTD)
    )
    with pytest.raises(CodecError, match=message):
        decode(dataclasses.replace(encoded, **change))


def test_a_zstd_payload_is_one_checksummed_frame_and_nothing_else():
    encoded = _zstd(np.arange(1000, dtype=np.float32))
    frame = encoded.payload
    skippable = b"\x50\x2a\x4d\x18\x04\x00\x00\x00abcd"
    for extra in (b"garbage", frame, skippable):
        with pytest.raises(CodecError, match="nothing after it"):
            decode(dataclasses.replace(encoded, payload=frame + extra))
    for cut in (1, 4):  # into the checksum
        with pytest.raises(CodecError, match="corrupted zstd payload"):
            decode(dataclasses.replace(encoded, payload=frame[:-cut]))
    unchecked = zstandard.ZstdCompressor(write_checksum=False).compress(
        np.arange(1000, dtype=np.float32).tobytes()
    )
    with pytest.raises(CodecError, match="must carry a checksum"):
        decode(dataclasses.replace(encoded, payload=unchecked))


@pytest.mark.parametrize(
    "change",
    [
        {"shape": (True, 4)},
        {"shape": (0, 2**70)},
        {"shape": 4},
        {"zero_point": (2**70,)},
        {"zero_point": (None,)},
        {"zero_point": (1.5,)},
        {"scale": ("1",)},
        {"axis": "0"},
        {"codec": "nope"},
        {"payload": "abcd"},
    ],
)
def test_hostile_headers_are_codec_errors(change):
    encoded = encode(
        np.linspace(-1, 1, 16, dtype=np.float32).reshape(4, 4), CodecSpec(codec=Codec.INT8_ZSTD)
    )
    with pytest.raises(CodecError):
        decode(dataclasses.replace(encoded, **change))


def test_numpy_integer_dimensions_are_fine():
    encoded = encode(np.arange(6, dtype=np.int32).reshape(2, 3))
    shape: Any = (np.int64(2), np.int64(3))
    assert decode(dataclasses.replace(encoded, shape=shape)).shape == (2, 3)


@pytest.mark.parametrize(
    "array, spec, message",
    [
        (np.array([-1.7e308, 1.7e308]), CodecSpec(codec=Codec.INT8_ZSTD), "overflows"),
        (np.float32(3.5), CodecSpec(codec=Codec.INT8_ZSTD, axis=0), "axis 0 is out of range"),
        (np.zeros((0, 3)), CodecSpec(codec=Codec.INT8_ZSTD, axis=5), "axis 5 is out of range"),
        (np.zeros(3), CodecSpec(codec=Codec.ZSTD, level=100), "level 100"),
    ],
)
def test_the_encoder_refuses_what_it_could_not_decode(array, spec, message):
    with pytest.raises(CodecError, match=message):
        encode(array, spec)


def _frames(count: int, seed: int = 0) -> list[np.ndarray]:
    """A feature map that drifts slowly: most values stay, a patch moves each frame."""
    rng = np.random.default_rng(seed)
    base = np.maximum(rng.standard_normal((1, 8, 16, 16)).astype(np.float32), 0)
    frames = []
    for n in range(count):
        frame = base.copy()
        y, x = (n * 3) % 12, (n * 5) % 12
        frame[:, :, y : y + 4, x : x + 4] += rng.standard_normal((1, 8, 4, 4)).astype(np.float32)
        frames.append(frame)
    if count > 7:
        frames[7][0, 0, 0, :3] = [np.nan, -0.0, np.inf]  # bits, not values, travel
    return frames


def test_delta_zstd_is_bit_exact_over_a_stream_with_key_frames_and_a_reconnect():
    from runtime.codec import DeltaDecoder, DeltaEncoder

    rng = np.random.default_rng(1)
    spec = CodecSpec.parse("delta+zstd+shuffle")
    encoder, decoder = DeltaEncoder(key_every=25), DeltaDecoder()
    sizes: dict[bool, list[int]] = {True: [], False: []}
    for n, frame in enumerate(_frames(100)):
        if n == 50:  # a reconnect: both sides start over
            encoder.reset()
            decoder = DeltaDecoder()
        encoded = encoder.encode(frame, spec, slot="c1/x", name="x", key=rng.random() < 0.05)
        assert encoded.key_frame == (n in (0, 50) or encoded.key_frame)
        sizes[encoded.key_frame].append(len(encoded.payload))
        # it travels: through the protobuf message and back
        wire = tensor_from_proto(tensor_to_proto(encoded))
        got = decoder.decode(wire, slot="c1/x")
        assert got.tobytes() == frame.tobytes(), n
    assert 2 <= len(sizes[True]) < 20
    assert np.median(sizes[False]) * 2 < np.median(sizes[True])  # deltas are smaller
    plain = len(encode(_frames(1)[0], CodecSpec.parse("zstd+shuffle")).payload)
    assert sizes[True][0] == plain  # a key frame is the plain zstd frame


def test_delta_int8_errors_do_not_add_up():
    """The reference is what the receiver reconstructed: after 100 frames the error is
    still within half a quantization step of the last delta."""
    from runtime.codec import DeltaDecoder, DeltaEncoder

    spec = CodecSpec.parse("delta+int8+zstd")
    encoder, decoder = DeltaEncoder(), DeltaDecoder()
    frames = _frames(100)
    frames[7] = frames[6].copy()  # int8 carries no inf or NaN
    for frame in frames:
        encoded = encoder.encode(frame, spec, slot="s")
        got = decoder.decode(tensor_from_proto(tensor_to_proto(encoded)), slot="s")
        step = encoded.scale[0]
        assert np.max(np.abs(got - frame)) <= step / 2 * 1.001 + 1e-6
    assert encoder.key_frames < 5  # the first, and when a residual costs more than a key


def test_delta_frames_without_their_reference_are_refused():
    from runtime.codec import DeltaDecoder, DeltaEncoder

    spec = CodecSpec.parse("delta+zstd")
    encoder, decoder = DeltaEncoder(), DeltaDecoder()
    frames = _frames(3)
    decoder.decode(encoder.encode(frames[0], spec, slot="s"), slot="s")
    second = encoder.encode(frames[1], spec, slot="s")
    assert not second.key_frame
    with pytest.raises(CodecError, match="no previous frame of it: send a key frame"):
        DeltaDecoder().decode(second, slot="s")
    with pytest.raises(CodecError, match="travels only on a stream"):
        decode(second)  # alone, only a key frame can be read
    other = encoder.encode(frames[2][:, :4], spec, slot="s")
    assert other.key_frame  # a new shape starts over
    bad = replace(second, shape=(1, 8, 16, 8))
    with pytest.raises(CodecError, match="send a key frame"):
        decoder.decode(bad, slot="s")
    with pytest.raises(CodecError, match="no previous frame"):  # the slot was reset
        decoder.decode(second, slot="s")
    # alone, encode makes key frames that decode reads
    assert decode(encode(frames[0], spec)).tobytes() == frames[0].tobytes()


def test_a_delta_encoder_stops_trying_deltas_that_do_not_pay(monkeypatch):
    """A pan changes every value: each delta is as large as a key frame and costs a
    second compression. After such a miss the encoder sends key frames for 1, 2, 4 ...
    frames before trying again; on a still scene it keeps sending deltas."""
    from runtime.codec import MAX_DELTA_BACKOFF, DeltaDecoder, DeltaEncoder

    compressions = []
    frame_of = DeltaEncoder._frame

    def counted(*args: Any) -> Any:
        compressions.append(1)
        return frame_of(*args)

    monkeypatch.setattr(DeltaEncoder, "_frame", staticmethod(counted))
    rng = np.random.default_rng(3)
    spec = CodecSpec.parse("delta+zstd")
    encoder, decoder = DeltaEncoder(), DeltaDecoder()
    for _ in range(60):
        frame = rng.standard_normal((1, 4, 16, 16)).astype(np.float32)  # nothing repeats
        encoded = encoder.encode(frame, spec, slot="s")
        assert decoder.decode(encoded, slot="s").tobytes() == frame.tobytes()
    assert encoder.key_frames == 60
    # tried after 1, 2, 4, 8, 16, 16 key frames: 6 deltas compressed in vain, not 59
    assert len(compressions) - 60 <= 7, len(compressions)
    # a still scene after the pan: deltas resume within the backoff and then stay
    still = rng.standard_normal((1, 4, 16, 16)).astype(np.float32)
    keys = []
    for _ in range(3 * MAX_DELTA_BACKOFF):
        encoded = encoder.encode(still, spec, slot="s")
        decoder.decode(encoded, slot="s")
        keys.append(encoded.key_frame)
    assert not any(keys[MAX_DELTA_BACKOFF + 1 :])
