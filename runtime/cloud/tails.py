"""The cloud's engine: every tail of one or more artifact directories, checked
input, and ONNX Runtime. No sockets here; runtime.cloud.server puts gRPC on top.

Every request is checked against the cut before anything is decoded or run:
model and cut known, exactly the cut's tensors, each with the cut's dtype,
rank and fixed dimensions, symbolic dimensions (the batch) consistent across
tensors, sizes within the limits. Decoding then checks the payload itself
(runtime.codec).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort

from runtime.artifacts import CutArtifact, Manifest, TensorSpec, load_manifest
from runtime.codec import Codec, CodecSpec, Encoded, decode, encode
from runtime.engine import SessionOptions, example_feeds, inside, make_session, run_session
from runtime.errors import (
    ArtifactError,
    CodecError,
    InvalidInputError,
    NotFoundError,
    ShuttingDownError,
    shown,
)

MiB = 1 << 20
SHRINK_AFTER_SAMPLES = 4  # runs of more samples give their arena memory back
log = logging.getLogger("splitinfer.server")


@dataclass(frozen=True, kw_only=True)
class HostLimits:
    """What one server takes. Message sizes are gRPC's; tensor bytes are decoded sizes.

    ``max_message_bytes`` also bounds how long gRPC itself holds the event loop to
    take in one message (about 1.3 ms per MiB on a 2-core machine; several arriving
    at once queue up): a larger tensor travels in chunks on InferStream, as
    runtime.device.client sends it. Answers are not read on the loop: they may be larger.
    ``max_memory_bytes`` is the one budget for everything requests make the server
    hold (runtime.cloud.budget).
    """

    max_message_bytes: int = 4 * MiB  # received; answers may be up to max_answer_bytes
    # a REST request's body: read in chunks as it arrives (none holds the event loop),
    # each counted in the memory budget, within body_timeout_s
    max_http_body_bytes: int = 256 * MiB
    body_timeout_s: float = 30.0
    max_answer_bytes: int = 64 * MiB
    max_tensor_bytes: int = 1024 * MiB
    max_memory_bytes: int = 1024 * MiB
    max_concurrent: int = 2  # tails computing at once
    max_queued: int = 32  # requests waiting for a worker; beyond: RESOURCE_EXHAUSTED
    max_probe_bytes: int = 4 * MiB  # a probe's payload, each way
    max_streams: int = 64  # InferStream and ModelStreamInfer calls open at once
    max_streams_per_connection: int = 16
    max_calls_per_connection: int = 100  # HTTP/2 streams at once (gRPC's max_concurrent_streams)
    stream_window_bytes: int = 1 * MiB  # a call's bytes gRPC buffers before they are read


@dataclass
class ServedModel:
    """One artifact directory: its manifest and a session per servable tail."""

    directory: Path
    manifest: Manifest
    sessions: dict[str, ort.InferenceSession] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.manifest.model


@dataclass(frozen=True)
class Timing:
    decode_ms: float
    compute_ms: float
    encode_ms: float


class TailHost:
    """Hosts every tail of the given artifact directories."""

    def __init__(
        self,
        directories: Sequence[str | Path],
        *,
        limits: HostLimits = HostLimits(),
        session_options: SessionOptions | None = None,
    ) -> None:
        self.limits = limits
        # exact: no graph optimizations, so that answers are bit-identical to a local run
        self.exact = session_options is not None and not session_options.optimize
        self.models: dict[str, ServedModel] = {}
        self._running: set[ort.RunOptions] = set()  # of the tails running now
        self._lock = threading.Lock()
        self._stopping = False
        for directory in directories:
            served = ServedModel(Path(directory), load_manifest(directory))
            if served.name in self.models:
                raise ArtifactError(
                    f"two artifact directories hold a model named {served.name!r}: "
                    f"{self.models[served.name].directory} and {directory}"
                )
            for cut in served.manifest.cuts:
                if cut.tail is not None:
                    session = make_session(
                        inside(served.directory, cut.tail), session_options or SessionOptions()
                    )
                    _warm(session, cut)
                    served.sessions[cut.id] = session
            if not served.sessions:
                raise ArtifactError(
                    f"{directory}: none of its {len(served.manifest.cuts)} cut(s) has a tail "
                    "(cuts/<id>/tail.onnx in manifest.json): nothing to serve; split at a cut "
                    "other than edge"
                )
            self.models[served.name] = served

    def model(self, name: str) -> ServedModel:
        served = self.models.get(name)
        if served is None:
            hosted = ", ".join(sorted(self.models)) or "none"
            raise NotFoundError(f"no model {shown(name)} on this server; it hosts: {hosted}")
        return served

    def cut(self, model: str, cut_id: str) -> tuple[ServedModel, CutArtifact]:
        served = self.model(model)
        for cut in served.manifest.cuts:
            if cut.id == cut_id:
                if cut_id not in served.sessions:
                    raise NotFoundError(
                        f"cut {shown(cut_id)} of {shown(model)} runs entirely on the device: "
                        "this server has no tail for it"
                    )
                return served, cut
        served_ids = ", ".join(served.sessions) or "none"
        raise NotFoundError(
            f"no cut {shown(cut_id)} in model {shown(model)}; served cuts: {served_ids}"
        )

    def check(
        self,
        model: str,
        cut_id: str,
        tensors: Sequence[Encoded],
        max_samples: int | None = None,
    ) -> CutArtifact:
        """Everything that can be checked before decoding; raises a RequestError.
        ``max_samples`` bounds the batch dimension (the tail's max_batch_size)."""
        _, cut = self.cut(model, cut_id)
        expected = {t.name: t for t in cut.tensors}
        names = [t.name for t in tensors]
        if len(set(names)) != len(names):
            twice = next(n for n in names if names.count(n) > 1)
            raise InvalidInputError(f"tensor {shown(twice)} appears twice in the request")
        wanted = ", ".join(expected)
        unexpected = [n for n in names if n not in expected]
        if unexpected:
            raise InvalidInputError(
                f"unexpected tensor {shown(unexpected[0])}: cut {cut_id!r} takes exactly [{wanted}]"
            )
        missing = [n for n in expected if n not in names]
        if missing:
            raise InvalidInputError(
                f"missing tensor {missing[0]!r}: cut {cut_id!r} takes exactly [{wanted}]"
            )
        symbols: dict[str, tuple[int, str]] = {}
        for tensor in tensors:
            self._check_tensor(tensor, expected[tensor.name], symbols)
        batch = self.batch_axis_symbol(model, cut_id)
        if max_samples is not None and batch in symbols:
            samples, name = symbols[batch]
            if samples > max_samples:
                raise InvalidInputError(
                    f"tensor {shown(name)} carries {samples} samples; this server takes at most "
                    f"{max_samples} in one request (the tail's max_batch_size): send fewer"
                )
        return cut

    def _check_tensor(
        self, tensor: Encoded, spec: TensorSpec, symbols: dict[str, tuple[int, str]]
    ) -> None:
        where = f"tensor {shown(tensor.name)}"
        if tensor.dtype != spec.dtype:
            raise InvalidInputError(
                f"{where}: expected dtype {spec.dtype}, received {tensor.dtype[:32]}"
            )
        shape = list(tensor.shape)
        if spec.shape is not None:
            if len(shape) != len(spec.shape):
                raise InvalidInputError(
                    f"{where}: expected rank {len(spec.shape)} ({_show(spec.shape)}), "
                    f"received rank {len(shape)} ({_show(shape)})"
                )
            for axis, (want, got) in enumerate(zip(spec.shape, shape, strict=True)):
                if got < 0:
                    raise InvalidInputError(f"{where}: dimension {axis} is negative ({got})")
                if isinstance(want, int) and want != got:
                    raise InvalidInputError(
                        f"{where} has mismatch on dim={axis}: expected {want} "
                        f"({_show(spec.shape)}), received {got} ({_show(shape)})"
                    )
                if isinstance(want, str):
                    seen = symbols.setdefault(want, (got, tensor.name))
                    if seen[0] != got:
                        raise InvalidInputError(
                            f"{where}: dimension {want!r} is {got}, but {shown(seen[1])} has it as "
                            f"{seen[0]}"
                        )
        if any(d < 0 for d in shape):
            raise InvalidInputError(
                f"{where}: dimensions must be non-negative, received {_show(shape)}"
            )
        nbytes = math.prod(shape) * np.dtype(spec.dtype).itemsize
        if nbytes > self.limits.max_tensor_bytes:
            raise InvalidInputError(
                f"{where} of shape {_show(shape)} would take {nbytes} bytes, more than this "
                f"server's limit of {self.limits.max_tensor_bytes}"
            )

    def run(
        self,
        model: str,
        cut_id: str,
        tensors: Sequence[Encoded],
        response_codec: CodecSpec | None = None,
    ) -> tuple[list[Encoded], Timing]:
        """Check, decode, run the tail, encode its outputs (raw unless ``response_codec``)."""
        response_codec = check_response_codec(response_codec)
        start = time.perf_counter()
        feeds = self.decode(model, cut_id, tensors)
        decoded = time.perf_counter()
        results = self.compute(model, cut_id, feeds)
        computed = time.perf_counter()
        outputs = self.encode(model, cut_id, results, response_codec)
        done = time.perf_counter()
        return outputs, Timing(
            (decoded - start) * 1000, (computed - decoded) * 1000, (done - computed) * 1000
        )

    def decode(self, model: str, cut_id: str, tensors: Sequence[Encoded]) -> dict[str, np.ndarray]:
        """The tail's feeds from checked tensors."""
        self.check(model, cut_id, tensors)
        return {t.name: decode(t, max_bytes=self.limits.max_tensor_bytes) for t in tensors}

    def compute(
        self, model: str, cut_id: str, feeds: dict[str, np.ndarray]
    ) -> dict[str, np.ndarray]:
        """Run the tail on decoded feeds: every output by name. ShuttingDownError once
        ``terminate`` has been called (a run it stopped included)."""
        served, _ = self.cut(model, cut_id)
        options = ort.RunOptions()
        if _samples(feeds) > SHRINK_AFTER_SAMPLES:
            # ONNX Runtime's arena keeps what its largest run needed; a large batch's
            # memory goes back once the run is done, a single request's arena stays warm
            options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
        with self._lock:
            if self._stopping:
                raise ShuttingDownError("the server is shutting down")
            self._running.add(options)
        try:
            return run_session(served.sessions[cut_id], feeds, options)
        except Exception:
            if self._stopping:  # ONNX Runtime's own error says only that it was told to
                raise ShuttingDownError("the server is shutting down") from None
            raise
        finally:
            with self._lock:
                self._running.discard(options)

    def terminate(self) -> None:
        """Stop every running tail (ONNX Runtime checks between nodes) and refuse new
        runs: a server that is shutting down does not wait for long tails."""
        with self._lock:
            self._stopping = True
            for options in self._running:
                options.terminate = True

    def encode(
        self,
        model: str,
        cut_id: str,
        results: dict[str, np.ndarray],
        response_codec: CodecSpec | None = None,
    ) -> list[Encoded]:
        """The cut's tail outputs, in order, encoded for the response (raw by default)."""
        _, cut = self.cut(model, cut_id)
        spec = response_codec or CodecSpec()
        return [_encode_output(name, results[name], spec) for name in cut.tail_outputs]

    def batch_axis_symbol(self, model: str, cut_id: str) -> str | None:
        """The symbol of the leading dimension every tail input and output shares (the
        batch), or None when the tail cannot run requests stacked along it."""
        served, _ = self.cut(model, cut_id)
        session = served.sessions[cut_id]
        firsts = [
            arg.shape[0] if arg.shape else None
            for arg in [*session.get_inputs(), *session.get_outputs()]
        ]
        if not firsts or not isinstance(firsts[0], str) or len(set(firsts)) != 1:
            return None
        return firsts[0]


def _samples(feeds: dict[str, np.ndarray]) -> int:
    first = next(iter(feeds.values()), None)
    return int(first.shape[0]) if first is not None and first.ndim else 1


def _warm(session: ort.InferenceSession, cut: CutArtifact) -> None:
    """One run on example inputs before serving: ONNX Runtime's first run of a session
    costs several times the next ones, and a client timing its first call would take
    that for the tail's cost. A tail that fails on made-up inputs is served all the same."""
    try:
        run_session(session, example_feeds(cut.tensors, batch=1))
    except Exception as exc:  # made-up values may break data-dependent ops
        log.info("warming cut %s failed on example inputs: %s", cut.id, exc)


def check_response_codec(spec: CodecSpec | None) -> CodecSpec:
    """Outputs travel losslessly: raw unless zstd is asked for."""
    spec = spec or CodecSpec()
    if spec.codec.lossy or spec.codec.delta:
        raise CodecError(
            f"outputs are sent losslessly: response codec {spec.codec.value} "
            "is not allowed (use raw or zstd)"
        )
    return spec


def _encode_output(name: str, value: object, spec: CodecSpec) -> Encoded:
    if not isinstance(value, np.ndarray):
        raise InvalidInputError(f"output {name!r} is not a tensor and cannot be sent")
    codec = spec if spec.codec.accepts(value.dtype.name) else CodecSpec(codec=Codec.RAW)
    return encode(value, codec, name=name)


def _show(shape: Sequence[object], most: int = 8) -> str:
    """A shape as messages show it: a client's may have thousands of dimensions."""
    dims = [str(d) for d in shape[:most]]
    if len(shape) > most:
        dims.append(f"... ({len(shape)} dimensions)")
    return "[" + ", ".join(dims) + "]"
