"""Tensor codecs: the one place where tensors become bytes and bytes become tensors.

=============  =======  ===================================================
name           lossy    payload
=============  =======  ===================================================
``raw``        no       the tensor's bytes, C order, little-endian
``zstd``       no       a zstd frame of those bytes, optionally byte-shuffled
``fp16+zstd``  yes      float16 values (clipped to ±65504), then as ``zstd``
``int8+zstd``  yes      int8 ``q = clip(round(x / scale) + zero_point)``,
                        then as ``zstd``; scale and zero point per tensor or
                        per channel of ``axis``; ``x ≈ (q - zero_point) * scale``,
                        within half a step (plus the result's own rounding)
``delta+zstd`` no       a stream's frames: the bits of ``x`` XOR those of
                        the same tensor in the previous frame, then as
                        ``zstd`` (a key frame: XOR with zeros, i.e. ``zstd``)
``delta+int8+  yes      a stream's frames: ``x - reference`` as ``int8+zstd``;
zstd``                  the reference is the previous frame *as the receiver
                        reconstructed it*, so errors do not add up
=============  =======  ===================================================

The two delta codecs keep state on both sides of a stream (:class:`DeltaEncoder`,
:class:`DeltaDecoder`): one reference per tensor slot (model, cut and tensor
name), reset to zeros by a key frame. Without that state, :func:`encode` makes
key frames and :func:`decode` reads only key frames.

*Byte shuffle* stores byte 0 of every element, then byte 1, and so on: dense
float data compresses better so, sparse (post-ReLU) data often worse, which is
why it is a parameter and the profiler measures both. Every zstd frame carries
its content size and a checksum, so corruption is detected.

Decoding trusts nothing: the dtype must be one the codec accepts, the element
count must fit ``max_bytes``, a raw payload must have exactly the right size, a
zstd frame may not claim or produce more than the tensor's size (a 1 KB frame
claiming 10 GB is refused before any allocation), and quantization parameters
must be finite and match the shape. Each failure is a :class:`CodecError`
saying what was expected and what came.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum

import numpy as np
import zstandard

from runtime.errors import CodecError

CODEC_VERSION = 1
DEFAULT_MAX_BYTES = 1 << 30  # 1 GiB: the largest tensor a decoder will allocate
FP16_MAX = 65504.0
MAX_DELTA_BACKOFF = 16  # frames a delta encoder goes without trying a delta that did not pay

LOSSLESS_DTYPES = frozenset(
    {
        "bool",
        "int8",
        "uint8",
        "int16",
        "uint16",
        "int32",
        "uint32",
        "int64",
        "uint64",
        "float16",
        "float32",
        "float64",
    }
)
FLOAT_DTYPES = frozenset({"float16", "float32", "float64"})


class Codec(str, Enum):
    """Codec names, as they travel on the wire."""

    RAW = "raw"
    ZSTD = "zstd"
    FP16_ZSTD = "fp16+zstd"
    INT8_ZSTD = "int8+zstd"
    DELTA_ZSTD = "delta+zstd"
    DELTA_INT8_ZSTD = "delta+int8+zstd"

    @property
    def lossy(self) -> bool:
        return self in (Codec.FP16_ZSTD, Codec.INT8_ZSTD, Codec.DELTA_INT8_ZSTD)

    @property
    def delta(self) -> bool:
        """Whether frames depend on the stream's previous frame."""
        return self in (Codec.DELTA_ZSTD, Codec.DELTA_INT8_ZSTD)

    @property
    def base(self) -> Codec:
        """The codec of a key frame's payload: ``zstd`` for ``delta+zstd``."""
        return {Codec.DELTA_ZSTD: Codec.ZSTD, Codec.DELTA_INT8_ZSTD: Codec.INT8_ZSTD}.get(
            self, self
        )

    @classmethod
    def parse(cls, name: str) -> Codec:
        """The codec called ``name``; CodecError listing the known ones otherwise."""
        try:
            return cls(name)
        except ValueError:
            known = ", ".join(c.value for c in cls)
            raise CodecError(f"unknown codec {name!r}; known codecs: {known}") from None

    def accepts(self, dtype: str) -> bool:
        """Whether this codec can carry tensors of ``dtype``."""
        if self.lossy:
            return dtype in ("float32", "float64")
        return dtype in LOSSLESS_DTYPES


DEFAULT_LEVEL = 1


@dataclass(frozen=True, kw_only=True)
class CodecSpec:
    """A codec and its encoder settings."""

    codec: Codec = Codec.RAW
    # zstd's level: 1, the fastest, for every codec the label names (a label carries no
    # level, so the level a profile prices must be the one a runtime parsing it runs)
    level: int = DEFAULT_LEVEL
    shuffle: bool = False
    axis: int | None = None  # int8: quantize per channel along this axis

    @property
    def label(self) -> str:
        """``zstd``, ``zstd+shuffle``, ``int8+zstd/axis1``: a readable name with settings."""
        text = self.codec.value
        if self.shuffle and self.codec is not Codec.RAW:
            text += "+shuffle"
        if self.axis is not None and self.codec.base is Codec.INT8_ZSTD:
            text += f"/axis{self.axis}"
        return text

    @classmethod
    def parse(cls, label: str, *, level: int = DEFAULT_LEVEL) -> CodecSpec:
        """The inverse of :attr:`label`: ``"int8+zstd/axis1"`` -> CodecSpec."""
        name, _, axis_text = label.partition("/axis")
        shuffle = name.endswith("+shuffle")
        codec = Codec.parse(name.removesuffix("+shuffle"))
        try:
            axis = int(axis_text) if axis_text else None
        except ValueError:
            raise CodecError(f"bad codec label {label!r}: the axis must be an integer") from None
        return cls(codec=codec, level=level, shuffle=shuffle, axis=axis)


@dataclass(frozen=True)
class Encoded:
    """A tensor as it travels: everything a decoder needs, and the payload."""

    codec: Codec
    dtype: str
    shape: tuple[int, ...]
    payload: bytes | memoryview  # a raw tensor's payload may be a view of its array
    shuffle: bool = False
    scale: tuple[float, ...] = ()
    zero_point: tuple[int, ...] = ()
    axis: int | None = None
    version: int = CODEC_VERSION
    name: str = ""  # the tensor's name in the model, when it travels
    key_frame: bool = False  # delta codecs: the reference is zeros, not the last frame


def encode(array: np.ndarray, spec: CodecSpec = CodecSpec(), *, name: str = "") -> Encoded:
    """Encode ``array`` (called ``name``) with ``spec``; CodecError if the codec cannot
    carry its dtype."""
    array = np.asarray(array)
    dtype = array.dtype.name
    if not spec.codec.accepts(dtype):
        raise CodecError(f"codec {spec.codec.value} cannot carry {dtype} tensors")
    if not 1 <= spec.level <= 22:
        raise CodecError(f"zstd level {spec.level} is out of range (1 to 22)")
    if spec.axis is not None and not -array.ndim <= spec.axis < array.ndim:
        raise CodecError(f"axis {spec.axis} is out of range for a tensor of rank {array.ndim}")
    shape = tuple(int(d) for d in array.shape)
    little = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
    if spec.codec.delta:  # alone, a frame of a stream is a key frame
        return DeltaEncoder().encode(little, spec, slot=name, name=name)
    if spec.codec is Codec.RAW:  # a view, not a copy: the wire writer copies it once
        view = memoryview(little.reshape(-1).view(np.uint8))  # type: ignore[arg-type]
        return Encoded(Codec.RAW, dtype, shape, view, name=name)
    if spec.codec is Codec.ZSTD:
        return Encoded(
            spec.codec, dtype, shape, _compress(little, spec), shuffle=spec.shuffle, name=name
        )
    if spec.codec is Codec.FP16_ZSTD:
        half = np.clip(little, -FP16_MAX, FP16_MAX).astype("<f2")
        return Encoded(
            spec.codec, dtype, shape, _compress(half, spec), shuffle=spec.shuffle, name=name
        )
    scale, zero_point = _quantization(little, spec.axis)
    q = _quantize(little, scale, zero_point, spec.axis)
    return Encoded(
        Codec.INT8_ZSTD,
        dtype,
        shape,
        _compress(q, spec),
        shuffle=spec.shuffle,
        scale=tuple(float(s) for s in scale),
        zero_point=tuple(int(z) for z in zero_point),
        axis=spec.axis,
        name=name,
    )


def decode(encoded: Encoded, *, max_bytes: int = DEFAULT_MAX_BYTES) -> np.ndarray:
    """The tensor in ``encoded``, after checking it; CodecError on any inconsistency.

    ``raw`` and ``zstd`` tensors come back read-only (views of the payload's
    bytes, which saves a copy); take ``.copy()`` to write to one.
    """
    codec, shape, dtype, count = _checked_header(encoded, max_bytes)
    # raw and zstd tensors are read-only views of their bytes: no copy on the hot path
    if codec is Codec.RAW:
        values = _exact_buffer(encoded.payload, count * dtype.itemsize, "raw payload")
        return np.frombuffer(values, dtype=dtype).reshape(shape)
    if codec is Codec.ZSTD:
        values = _decompress(encoded, count, dtype.itemsize)
        return np.frombuffer(values, dtype=dtype).reshape(shape)
    if codec is Codec.FP16_ZSTD:
        half = np.frombuffer(_decompress(encoded, count, 2), dtype="<f2")
        return half.astype(dtype).reshape(shape)
    if codec.delta:
        if not encoded.key_frame:
            raise CodecError(
                f"a {codec.value} frame that is not a key frame needs its stream's previous "
                "frame: it travels only on a stream"
            )
        return DeltaDecoder(max_bytes=max_bytes).decode(encoded, slot=encoded.name)
    scale, zero_point, axis = _checked_quantization(encoded, shape)
    q = np.frombuffer(_decompress(encoded, count, 1), dtype=np.int8).reshape(shape)
    return _dequantize(q, scale, zero_point, axis, dtype)


def _checked_header(
    encoded: Encoded, max_bytes: int
) -> tuple[Codec, tuple[int, ...], np.dtype, int]:
    """What every decoder checks before it reads a payload: a known codec and version,
    bytes, a dtype the codec carries, a valid shape within ``max_bytes``. Returns the
    codec, the shape, the little-endian dtype and the element count."""
    codec = encoded.codec
    if not isinstance(codec, Codec):
        codec = Codec.parse(str(codec))
    if not isinstance(encoded.payload, (bytes, bytearray, memoryview)):
        raise CodecError(f"the payload must be bytes, not {type(encoded.payload).__name__}")
    if encoded.version != CODEC_VERSION:
        raise CodecError(
            f"codec version {encoded.version} is not supported (expected {CODEC_VERSION})"
        )
    if not isinstance(encoded.dtype, str) or not codec.accepts(encoded.dtype):
        raise CodecError(f"codec {codec.value} cannot carry {encoded.dtype!r} tensors")
    shape = _checked_shape(encoded.shape)
    count = math.prod(shape)
    dtype = np.dtype(encoded.dtype).newbyteorder("<")
    if count * dtype.itemsize > max_bytes:
        raise CodecError(
            f"tensor of shape {list(encoded.shape)} and dtype {encoded.dtype} needs "
            f"{count * dtype.itemsize} bytes, more than the limit of {max_bytes}"
        )
    return codec, shape, dtype, count


def encoded_size(encoded: Encoded) -> int:
    """Bytes this tensor costs on the wire: payload plus quantization parameters."""
    return len(encoded.payload) + 12 * len(encoded.scale)


# --------------------------------------------------------------------------- zstd


def _compress(array: np.ndarray, spec: CodecSpec) -> bytes:
    data = _shuffle(array) if spec.shuffle else array.tobytes()
    compressor = zstandard.ZstdCompressor(
        level=spec.level, write_content_size=True, write_checksum=True
    )
    return compressor.compress(data)


def _decompress(encoded: Encoded, count: int, itemsize: int) -> bytes:
    expected = count * itemsize
    payload = encoded.payload  # zstandard reads any buffer: no copy of the payload
    name = encoded.codec.value
    try:
        claimed = zstandard.frame_content_size(payload)
        checksum = zstandard.get_frame_parameters(payload).has_checksum
    except (zstandard.ZstdError, ValueError) as exc:
        raise CodecError(f"corrupted {name} payload: not a zstd frame ({exc})") from exc
    if not checksum:
        raise CodecError(f"{name} frames must carry a checksum (zstd's --check)")
    if claimed not in (-1, expected):
        raise CodecError(
            f"{name} frame claims {claimed} bytes, but shape {list(encoded.shape)} needs {expected}"
        )
    try:
        # Bounded either way: with a content size (checked above) decompress()
        # allocates exactly that; without one (streaming mode) max_output_size holds.
        # One frame and nothing after it; zstd's C code does it all (without the GIL).
        data = zstandard.ZstdDecompressor().decompress(
            payload, max_output_size=expected, allow_extra_data=False
        )
    except zstandard.ZstdError as exc:
        if "unused data" in str(exc):
            raise CodecError(
                f"corrupted {name} payload: {exc} (one frame, nothing after it)"
            ) from None
        raise CodecError(f"corrupted {name} payload: {exc}") from None
    _exact_buffer(data, expected, f"decompressed {name} payload")
    return _unshuffle(data, itemsize) if encoded.shuffle and itemsize > 1 else data


def _shuffle(array: np.ndarray) -> bytes:
    itemsize = array.dtype.itemsize
    return np.ascontiguousarray(array).view(np.uint8).reshape(-1, itemsize).T.tobytes()


def _unshuffle(data: bytes, itemsize: int) -> bytes:
    planes = np.frombuffer(data, dtype=np.uint8).reshape(itemsize, -1)
    return planes.T.tobytes()


def _exact_buffer(data: bytes | memoryview, expected: int, what: str) -> bytes | memoryview:
    if len(data) != expected:
        more = " or more" if len(data) > expected else ""
        raise CodecError(f"{what} has {len(data)} bytes{more}, expected {expected}")
    return data


MAX_DIM = 1 << 40


def _checked_shape(shape: object) -> tuple[int, ...]:
    """The shape as plain ints: non-negative integers (numpy ints too, bools not)."""
    if not isinstance(shape, (tuple, list)):
        raise CodecError(f"bad shape {shape!r}: expected a sequence of dimensions")
    dims = []
    for d in shape:
        if isinstance(d, (bool, np.bool_)) or not isinstance(d, (int, np.integer)):
            raise CodecError(f"bad shape {list(shape)}: dimensions must be integers")
        if not 0 <= int(d) <= MAX_DIM:
            raise CodecError(f"bad shape {list(shape)}: dimensions must lie in [0, 2**40]")
        dims.append(int(d))
    return tuple(dims)


# --------------------------------------------------------------------------- int8


def _quantization(array: np.ndarray, axis: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Affine scale and zero point mapping [min, max] (with 0 inside) onto [-128, 127]."""
    if array.size == 0:
        count = 1 if axis is None else array.shape[axis]
        return np.ones(count, np.float64), np.zeros(count, np.int64)
    if axis is None:
        low = np.array([min(float(np.min(array)), 0.0)])
        high = np.array([max(float(np.max(array)), 0.0)])
    else:
        if not -array.ndim <= axis < array.ndim:
            raise CodecError(f"axis {axis} is out of range for a tensor of rank {array.ndim}")
        others = tuple(i for i in range(array.ndim) if i != axis % array.ndim)
        low = np.minimum(np.min(array, axis=others), 0.0).astype(np.float64)
        high = np.maximum(np.max(array, axis=others), 0.0).astype(np.float64)
    if not (np.isfinite(low).all() and np.isfinite(high).all()):
        raise CodecError("int8+zstd cannot carry inf or NaN values")
    with np.errstate(over="ignore"):
        scale = (high - low) / 255.0
    if not np.isfinite(scale).all():
        raise CodecError("int8+zstd cannot carry values this large (their range overflows)")
    scale = np.where(scale > 0, scale, 1.0)
    zero_point = np.clip(np.round(-128 - low / scale), -128, 127).astype(np.int64)
    return scale, zero_point


def _broadcast(values: np.ndarray, ndim: int, axis: int | None) -> np.ndarray:
    if axis is None:
        return values.reshape(())
    shape = [1] * ndim
    shape[axis % ndim] = -1
    return values.reshape(shape)


def _quantize(
    array: np.ndarray, scale: np.ndarray, zero_point: np.ndarray, axis: int | None
) -> np.ndarray:
    s = _broadcast(scale, array.ndim, axis)
    z = _broadcast(zero_point, array.ndim, axis)
    return np.clip(np.round(array / s) + z, -128, 127).astype(np.int8)


def _dequantize(
    q: np.ndarray, scale: np.ndarray, zero_point: np.ndarray, axis: int | None, dtype: np.dtype
) -> np.ndarray:
    s = _broadcast(scale, q.ndim, axis)
    z = _broadcast(zero_point, q.ndim, axis)
    return ((q.astype(np.float64) - z) * s).astype(dtype)


def _checked_quantization(
    encoded: Encoded, shape: tuple[int, ...]
) -> tuple[np.ndarray, np.ndarray, int | None]:
    axis = encoded.axis
    if axis is None:
        channels = 1
    else:
        ndim = len(shape)
        if isinstance(axis, bool) or not isinstance(axis, int) or not -ndim <= axis < ndim:
            raise CodecError(f"axis {axis!r} is out of range for a tensor of rank {ndim}")
        channels = shape[axis]
    if len(encoded.scale) != channels or len(encoded.zero_point) != channels:
        raise CodecError(
            f"int8+zstd needs {channels} scale(s) and zero point(s), "
            f"got {len(encoded.scale)} and {len(encoded.zero_point)}"
        )
    if not all(isinstance(s, (float, int, np.floating, np.integer)) for s in encoded.scale):
        raise CodecError("int8+zstd scales must be numbers")
    if not all(_is_int(z) and -128 <= int(z) <= 127 for z in encoded.zero_point):
        raise CodecError("int8+zstd zero points must be integers in [-128, 127]")
    scale = np.asarray(encoded.scale, dtype=np.float64)
    zero_point = np.asarray([int(z) for z in encoded.zero_point], dtype=np.int64)
    if not (np.isfinite(scale).all() and (scale > 0).all()):
        raise CodecError("int8+zstd scales must be finite and positive")
    return scale, zero_point, axis


def _is_int(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


# --------------------------------------------------------------------------- delta


def _bits(array: np.ndarray) -> np.ndarray:
    """The array's elements as unsigned integers of the same width (bool as uint8)."""
    return array.view(f"<u{array.dtype.itemsize}")


class DeltaEncoder:
    """The sending side of a stream's delta codecs: per slot (a name for one tensor of
    one cut, the same on both sides), the reference the receiver will hold.

    A frame is a key frame when the slot has no reference (the first frame, or after
    :meth:`reset`: an error or a reconnect), when its dtype or shape changed, every
    ``key_every`` frames of a slot (0: never for that reason), when asked (``key``),
    and when the delta came out no smaller than the slot's last key frame (a scene
    change, a pan). Such a frame was compressed twice, so after it the slot sends key
    frames without trying a delta for 1, 2, 4 ... up to MAX_DELTA_BACKOFF frames, as
    long as deltas keep not paying. Not thread-safe: one stream's frames are encoded in
    order."""

    def __init__(self, *, key_every: int = 0) -> None:
        self.key_every = key_every
        self._refs: dict[str, np.ndarray] = {}
        self._since_key: dict[str, int] = {}
        self._key_bytes: dict[str, int] = {}
        self._backoff: dict[str, int] = {}  # key frames to send before the next delta try
        self._skip: dict[str, int] = {}
        self.key_frames = 0
        self.frames = 0

    def reset(self) -> None:
        """Forget every reference: each slot's next frame is a key frame."""
        self._refs.clear()
        self._since_key.clear()

    def encode(
        self, array: np.ndarray, spec: CodecSpec, *, slot: str, name: str = "", key: bool = False
    ) -> Encoded:
        """``array`` as the next frame of ``slot``, with ``spec`` (a delta codec)."""
        if not spec.codec.delta:
            raise CodecError(f"{spec.codec.value} is not a delta codec")
        array = np.asarray(array)
        if not spec.codec.accepts(array.dtype.name):
            raise CodecError(f"codec {spec.codec.value} cannot carry {array.dtype.name} tensors")
        little = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
        ref = self._refs.get(slot)
        key = (
            key
            or ref is None
            or ref.dtype != little.dtype
            or ref.shape != little.shape
            or (self.key_every > 0 and self._since_key.get(slot, 0) >= self.key_every)
        )
        if not key and self._skip.get(slot, 0) > 0:  # deltas did not pay lately
            self._skip[slot] -= 1
            key = True
        encoded, recon = self._frame(little, spec, None if key else ref, name)
        if not key:
            if len(encoded.payload) >= self._key_bytes.get(slot, 0):
                encoded, recon = self._frame(little, spec, None, name)  # no gain: a key frame
                key = True
                backoff = min(max(2 * self._backoff.get(slot, 0), 1), MAX_DELTA_BACKOFF)
                self._backoff[slot] = self._skip[slot] = backoff
            else:
                self._backoff[slot] = 0
        if key:
            self._key_bytes[slot] = len(encoded.payload)
            self._since_key[slot] = 0
            self.key_frames += 1
        self._since_key[slot] = self._since_key.get(slot, 0) + 1
        self._refs[slot] = recon
        self.frames += 1
        return encoded

    @staticmethod
    def _frame(
        x: np.ndarray, spec: CodecSpec, ref: np.ndarray | None, name: str
    ) -> tuple[Encoded, np.ndarray]:
        """One frame against ``ref`` (None: a key frame) and the receiver's result."""
        shape = tuple(int(d) for d in x.shape)
        if spec.codec is Codec.DELTA_ZSTD:
            bits = _bits(x) if ref is None else _bits(x) ^ _bits(ref)
            payload = _compress(bits, spec)
            encoded = Encoded(
                spec.codec, x.dtype.name, shape, payload, shuffle=spec.shuffle,
                name=name, key_frame=ref is None,
            )  # fmt: skip
            return encoded, x.copy()
        if spec.axis is not None and not -x.ndim <= spec.axis < x.ndim:
            raise CodecError(f"axis {spec.axis} is out of range for a tensor of rank {x.ndim}")
        diff = x.astype(np.float64) if ref is None else x.astype(np.float64) - ref
        scale, zero_point = _quantization(diff, spec.axis)
        q = _quantize(diff, scale, zero_point, spec.axis)
        encoded = Encoded(
            spec.codec, x.dtype.name, shape, _compress(q, spec), shuffle=spec.shuffle,
            scale=tuple(float(v) for v in scale), zero_point=tuple(int(z) for z in zero_point),
            axis=spec.axis, name=name, key_frame=ref is None,
        )  # fmt: skip
        return encoded, _reconstruct(ref, q, scale, zero_point, spec.axis, x.dtype)


def _reconstruct(
    ref: np.ndarray | None,
    q: np.ndarray,
    scale: np.ndarray,
    zero_point: np.ndarray,
    axis: int | None,
    dtype: np.dtype,
) -> np.ndarray:
    """``ref + dequantized q`` in the frame's dtype: the same operations on both sides,
    so that sender and receiver hold bit-identical references."""
    step = _dequantize(q, scale, zero_point, axis, np.dtype(np.float64))
    return (step if ref is None else ref.astype(np.float64) + step).astype(dtype)


class DeltaDecoder:
    """The receiving side of a stream's delta codecs: per slot, the last frame as
    reconstructed. :attr:`nbytes` is what the references hold (a server counts it in
    its memory budget); ``max_slots`` bounds how many there are."""

    def __init__(self, *, max_bytes: int = DEFAULT_MAX_BYTES, max_slots: int = 64) -> None:
        self.max_bytes = max_bytes
        self.max_slots = max_slots
        self._refs: dict[str, np.ndarray] = {}

    @property
    def nbytes(self) -> int:
        return sum(r.nbytes for r in self._refs.values())

    def reset(self, slot: str | None = None) -> None:
        """Forget one slot's reference (after an error), or every one."""
        if slot is None:
            self._refs.clear()
        else:
            self._refs.pop(slot, None)

    def decode(self, encoded: Encoded, *, slot: str) -> np.ndarray:
        """The frame in ``encoded`` (read-only); CodecError when it does not fit the slot's
        reference, after which the slot has none (the sender's next key frame restores
        it)."""
        try:
            return self._decode(encoded, slot)
        except CodecError:
            self._refs.pop(slot, None)
            raise

    def _decode(self, encoded: Encoded, slot: str) -> np.ndarray:
        codec = encoded.codec
        if not isinstance(codec, Codec) or not codec.delta:
            raise CodecError(f"{getattr(codec, 'value', codec)} is not a delta codec")
        codec, shape, dtype, count = _checked_header(encoded, self.max_bytes)
        ref = None
        if not encoded.key_frame:
            ref = self._refs.get(slot)
            if ref is None:
                raise CodecError(
                    f"tensor {slot!r}: a {codec.value} delta frame, but this stream has no "
                    "previous frame of it: send a key frame"
                )
            if ref.dtype != dtype or ref.shape != shape:
                raise CodecError(
                    f"tensor {slot!r}: a delta frame of {encoded.dtype}{list(shape)}, but the "
                    f"previous frame was {ref.dtype.name}{list(ref.shape)}: send a key frame"
                )
        elif slot not in self._refs and len(self._refs) >= self.max_slots:
            raise CodecError(f"a stream may keep at most {self.max_slots} delta references")
        if codec is Codec.DELTA_ZSTD:
            data = _decompress(encoded, count, dtype.itemsize)
            bits = np.frombuffer(data, dtype=f"<u{dtype.itemsize}").reshape(shape)
            if ref is not None:
                bits = bits ^ _bits(ref)
            value = bits.view(dtype) if ref is not None else bits.view(dtype).copy()
        else:
            scale, zero_point, axis = _checked_quantization(encoded, shape)
            q = np.frombuffer(_decompress(encoded, count, 1), dtype=np.int8).reshape(shape)
            value = _reconstruct(ref, q, scale, zero_point, axis, dtype)
        value.flags.writeable = False
        self._refs[slot] = value
        return value
