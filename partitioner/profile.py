"""Measure a model on this machine: what every candidate cut costs.

A profile is one device's view: head and tail latency of every candidate cut
(timed on the extracted head and tail models themselves, since ONNX Runtime's
per-node profile names its fused graph, not ours), the full model's latency,
and for every tensor that can cross a cut its bytes and, per codec, encoded
bytes and encode/decode time on real activations. For lossy codecs it records
the error they cause in the model's outputs at each cut. ``slowdown`` stands
for a device that many times slower: every time in the profile is multiplied
by it, and the profile says so.

One profile per device (``edge``, ``cloud``); the planner reads the edge's head
and encode times and the cloud's tail and decode times.
"""

from __future__ import annotations

import dataclasses
import json
import math
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from partitioner.cuts import Cut, enumerate_cuts
from partitioner.graph import ModelGraph, is_sendable
from partitioner.split import model_sha256, submodel, write_artifacts
from runtime.artifacts import CutArtifact, Manifest, TensorSpec, read_json
from runtime.codec import (
    Codec,
    CodecSpec,
    DeltaDecoder,
    DeltaEncoder,
    decode,
    encode,
    encoded_size,
)
from runtime.engine import CutRunner, Feeds, SessionOptions, make_session, run_session
from runtime.errors import ProfileError, SplitInferError

PROFILE_FORMAT = 1
PROFILE_KIND = "splitinfer-profile"

DEFAULT_CODECS = (
    CodecSpec(codec=Codec.RAW),
    CodecSpec(codec=Codec.ZSTD),
    CodecSpec(codec=Codec.ZSTD, shuffle=True),
    CodecSpec(codec=Codec.FP16_ZSTD, shuffle=True),
    CodecSpec(codec=Codec.INT8_ZSTD),
)
# measured when the profile is given a sequence of frames (profile --frames)
DELTA_CODECS = (
    CodecSpec(codec=Codec.DELTA_ZSTD, shuffle=True),
    CodecSpec(codec=Codec.DELTA_INT8_ZSTD),
)
FRAMES_GENERATED = 16
COLD_GAP_S = 0.05  # a request's idle gap; the cold cost no longer grows past it here
COLD_RUNS = 5
CODEC_RUNS = 3  # each sample's encoding and decoding timed this often, the fastest kept
PROFILE_MEMORY = 2 << 30  # weights (bytes) the profiler keeps loaded from one round to the next


@dataclass(frozen=True, kw_only=True)
class ProfileOptions:
    """How to measure. Times are per request of ``batch`` samples."""

    device: str = "edge"
    threads: int = 1
    slowdown: float = 1.0
    batch: int = 1
    warmup: int = 3
    repeats: int = 15  # timed runs of each model, spread over the rounds
    rounds: int = 3  # passes over all cuts, each timing every head and tail in turn
    min_time_ms: float = 30.0
    codecs: tuple[CodecSpec, ...] = DEFAULT_CODECS
    max_tensors: int | None = 8
    providers: tuple[str, ...] = ("cpu",)  # ONNX Runtime's, as runtime.engine names them


@dataclass(frozen=True)
class Timing:
    median_ms: float
    p90_ms: float


@dataclass(frozen=True)
class CodecCost:
    """Per request: bytes on the wire and the time to encode and to decode them."""

    bytes: float
    encode_ms: float
    decode_ms: float


@dataclass(frozen=True)
class OutputError:
    """What a lossy codec at a cut does to the model's outputs (worst output)."""

    max_abs: float
    rel_l2: float
    top1: float | None  # agreement of the arg-max, when outputs look like class scores


@dataclass(frozen=True)
class CutProfile:
    id: str
    tensors: tuple[str, ...]
    head_nodes: int
    head_ms: Timing | None
    tail_ms: Timing | None
    bytes: float  # raw bytes per request
    output_bytes: float  # bytes of the outputs the tail returns, per request
    codecs: dict[str, CodecCost]
    errors: dict[str, OutputError] = field(default_factory=dict)


@dataclass(frozen=True)
class Profile:
    model: str
    sha256: str
    device: str
    machine: dict[str, Any]
    ort_version: str
    threads: int
    slowdown: float
    batch: int
    samples: int
    full_ms: Timing
    cuts: tuple[CutProfile, ...]
    tensors: dict[str, dict[str, CodecCost]]  # per tensor, per codec label
    # a split call's own cost on loopback (partitioner.calls.CallCost): fixed, and per
    # tensor; and its bytes on the wire beyond the tensors' payloads
    call_ms: float = 0.0
    tensor_ms: float = 0.0
    call_bytes: float = 0.0
    tensor_bytes: float = 0.0
    answer_bytes: float = 0.0
    # what a run costs beyond a warm one when this machine idled before it (its caches
    # gone cold), as a request's run does between requests: paid once per run, on
    # either side; not scaled by ``slowdown`` (an emulated device adds it once)
    cold_ms: float = 0.0

    def cut(self, cut_id: str) -> CutProfile:
        for cut in self.cuts:
            if cut.id == cut_id:
                return cut
        raise ProfileError(f"the {self.device} profile has no cut {cut_id!r}")

    def scaled_to(self, device: str, full_ms: float) -> Profile:
        """This profile as the emulated device whose full-model run, measured between
        requests, takes ``full_ms`` would measure it: the slowdown is what remains of
        that run beyond this machine's cold cost, which the device pays once."""
        if full_ms <= self.cold_ms:
            raise ProfileError(
                f"a full-model run of {full_ms:.2f} ms is no slower than this machine's cost "
                f"of a run after idling ({self.cold_ms:.2f} ms): nothing to scale"
            )
        return self.emulating(device, (full_ms - self.cold_ms) / self.full_ms.median_ms)

    def emulating(self, device: str, slowdown: float) -> Profile:
        """This profile as a device ``slowdown`` times slower would measure it."""
        k = slowdown
        cuts = tuple(
            CutProfile(
                id=c.id,
                tensors=c.tensors,
                head_nodes=c.head_nodes,
                head_ms=None if c.head_ms is None else _scaled(c.head_ms, k),
                tail_ms=None if c.tail_ms is None else _scaled(c.tail_ms, k),
                bytes=c.bytes,
                output_bytes=c.output_bytes,
                codecs={label: _scaled_cost(cost, k) for label, cost in c.codecs.items()},
                errors=dict(c.errors),
            )
            for c in self.cuts
        )
        return dataclasses.replace(
            self,
            device=device,
            slowdown=self.slowdown * k,
            full_ms=_scaled(self.full_ms, k),
            cuts=cuts,
            tensors={
                name: {label: _scaled_cost(cost, k) for label, cost in per.items()}
                for name, per in self.tensors.items()
            },
        )

    def with_cuts(self, later: Profile) -> Profile:
        """This profile with the cuts of ``later`` (a later profile of the same model on
        the same machine, of other cuts) that it lacks. Their times are scaled by the
        ratio of the two profiles' full-model times, so that the machine being busier
        or idler between the two does not shift them against these."""
        if later.sha256 != self.sha256:
            raise ProfileError(f"the later profile is of another model ({later.model})")
        known = {c.id for c in self.cuts}
        drift = self.full_ms.median_ms / later.full_ms.median_ms
        added = [c for c in later.emulating(self.device, drift).cuts if c.id not in known]
        return dataclasses.replace(self, cuts=(*self.cuts, *added))

    def to_json(self) -> dict[str, Any]:
        body = asdict(self)
        body["cuts"] = [asdict(c) for c in self.cuts]
        return {"format": PROFILE_FORMAT, "kind": PROFILE_KIND, **body}

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_json(), indent=1) + "\n")


# --------------------------------------------------------------------------- inputs


def calibration_feeds(
    graph: ModelGraph, *, calib: Path | None = None, samples: int = 4, seed: int = 0
) -> dict[str, np.ndarray]:
    """Calibration inputs, batched along axis 0.

    From ``calib``: one ``<input name>.npy`` per model input, or for a one-input
    model any ``*.npy`` files, concatenated. Otherwise ``samples`` example
    inputs (normal floats, zero integers).
    """
    if calib is None:
        from runtime.engine import example_feeds

        return example_feeds([graph.spec(i) for i in graph.inputs], batch=samples, seed=seed)
    if not calib.is_dir():
        raise SplitInferError(f"{calib}: not a directory of .npy files")
    feeds, sources = {}, {}  # sources: the files each input was read from, for messages
    for name in graph.inputs:
        path = calib / f"{name}.npy"
        if path.exists():
            feeds[name], sources[name] = _read(path), str(path)
    if not feeds and len(graph.inputs) == 1:
        files = sorted(calib.glob("*.npy"))
        if files:
            arrays = [_read(f) for f in files]
            name = graph.inputs[0]
            sources[name] = str(files[0]) if len(files) == 1 else f"{calib}/*.npy"
            for path, array in zip(files, arrays, strict=True):
                _check_calibration(str(path), array, graph.spec(name))
            feeds[name] = np.concatenate(arrays)
    missing = [i for i in graph.inputs if i not in feeds]
    if missing:
        raise SplitInferError(
            f"{calib}: no calibration data for input {missing[0]!r} (expected {missing[0]}.npy)"
        )
    for name, array in feeds.items():
        _check_calibration(sources[name], array, graph.spec(name))
    counts = {len(a) for a in feeds.values()}
    if len(counts) != 1:
        raise SplitInferError(f"{calib}: inputs have different sample counts {sorted(counts)}")
    return feeds


def _read(path: Path) -> np.ndarray:
    from runtime.artifacts import read_npy

    try:
        return read_npy(path)
    except ValueError as exc:
        raise SplitInferError(str(exc)) from None


def _check_calibration(source: str, array: np.ndarray, spec: TensorSpec) -> None:
    """One input's calibration data (read from ``source``) against the model's input."""
    if array.dtype.name != spec.dtype:
        raise SplitInferError(
            f"{source} has dtype {array.dtype}, the model's input {spec.name!r} takes {spec.dtype}"
        )
    shape = spec.shape
    if array.ndim == 0:
        raise SplitInferError(f"{source} is a scalar; expected samples along axis 0")
    if shape is None:
        return
    if array.ndim != len(shape):
        raise SplitInferError(
            f"{source} has shape {list(array.shape)}, the model's input {spec.name!r} has rank "
            f"{len(shape)} ({list(shape)})"
        )
    for axis, (want, got) in enumerate(zip(shape[1:], array.shape[1:], strict=True), 1):
        if isinstance(want, int) and want != got:
            raise SplitInferError(
                f"{source} has {got} on dimension {axis}, the model's input {spec.name!r} "
                f"takes {want} ({list(shape)})"
            )


def _batches(
    graph: ModelGraph, feeds: Mapping[str, np.ndarray], batch: int
) -> list[dict[str, np.ndarray]]:
    """Requests of ``batch`` samples; a model with a fixed batch size takes the feeds whole."""
    fixed = [i for i in graph.inputs if isinstance((graph.spec(i).shape or (None,))[0], int)]
    if fixed:
        return [dict(feeds)]
    count = len(next(iter(feeds.values())))
    out = []
    for start in range(0, count - batch + 1, batch):
        out.append({k: v[start : start + batch] for k, v in feeds.items()})
    if not out:
        raise SplitInferError(f"calibration data has {count} samples, fewer than --batch {batch}")
    return out


# --------------------------------------------------------------------------- measuring


def _samples(
    call: Callable[[], object], *, warmup: int, repeats: int, min_time_ms: float
) -> list[float]:
    """The times, in ms, of at least ``repeats`` calls after ``warmup`` calls, going on
    until ``min_time_ms`` have been spent (fast calls are noisy)."""
    for _ in range(warmup):
        call()
    samples: list[float] = []
    spent = 0.0
    while len(samples) < repeats or (spent < min_time_ms and len(samples) < 100 * repeats):
        start = time.perf_counter()
        call()
        samples.append((time.perf_counter() - start) * 1000.0)
        spent += samples[-1]
    return samples


def _summary(samples: Sequence[float]) -> Timing:
    """Median and 90th percentile."""
    return Timing(float(np.median(samples)), float(np.percentile(samples, 90)))


def _scaled(t: Timing, k: float) -> Timing:
    return Timing(t.median_ms * k, t.p90_ms * k)


class Progress:
    """A one-line progress bar on stderr."""

    def __init__(self, total: int, label: str, *, stream: Any = None) -> None:
        self.total = max(total, 1)
        self.label = label
        self.done = 0
        self.stream = stream if stream is not None else sys.stderr

    def step(self, what: str = "") -> None:
        self.done += 1
        width = 30
        filled = width * self.done // self.total
        bar = "#" * filled + "." * (width - filled)
        line = f"{self.label} [{bar}] {self.done}/{self.total}"
        if self.stream.isatty():
            end = "\n" if self.done >= self.total else ""
            self.stream.write(f"\r{line} {what[:30]:<30}{end}")
        elif self.done * 4 // self.total != (self.done - 1) * 4 // self.total:
            self.stream.write(line + "\n")  # a log file gets a line every quarter
        self.stream.flush()


def profile_model(
    graph: ModelGraph,
    feeds: Mapping[str, np.ndarray],
    options: ProfileOptions = ProfileOptions(),
    *,
    cuts: Sequence[Cut] | None = None,
    progress: bool = True,
    frames: Sequence[Mapping[str, np.ndarray]] = (),
    calls: bool = False,
) -> Profile:
    """Measure every cut of ``graph`` (candidates by default) on this machine. With
    ``frames`` (a stream's consecutive inputs, one sample each), the delta codecs are
    measured on them too: what a frame costs after the one before it. With ``calls``,
    what a split call costs on loopback beyond its compute and bytes
    (partitioner.calls)."""
    cuts = (
        list(cuts) if cuts is not None else enumerate_cuts(graph, max_tensors=options.max_tensors)
    )
    batches = _batches(graph, feeds, options.batch)
    session_options = SessionOptions(threads=options.threads, providers=options.providers)
    with tempfile.TemporaryDirectory(prefix="splitinfer-profile-") as tmp:
        # throwaway copies: no checker (split checks its own), the weights written once
        manifest = write_artifacts(graph, cuts, tmp, check=False, shared_weights=True)
        # every tensor some node reads: any of them can cross a cut the min-cut finds
        names = [t for t in graph.consumers if is_sendable(graph.spec(t))]
        activations = _activations(graph, names, Path(tmp), batches)
        steps = len(manifest.cuts) * max(1, options.rounds) + 2
        bar = Progress(steps, f"profiling ({options.device})") if progress else None
        full = make_session(Path(tmp) / manifest.full, session_options)
        if bar:
            bar.step("full model")
        tensor_costs = _tensor_codec_costs(activations, names, options)
        if frames:
            sequence = _activations(graph, names, Path(tmp), [dict(f) for f in frames])
            for name, per in _delta_codec_costs(sequence, names).items():
                tensor_costs[name].update(per)
            options = replace(options, codecs=(*options.codecs, *DELTA_CODECS))
        if bar:
            bar.step("codecs")
        timed, errors = _time_cuts(
            tmp,
            manifest,
            full,
            activations,
            tensor_costs,
            options,
            session_options,
            _weight_bytes(graph),
            bar,
        )
        full_ms = _summary(timed[FULL, ""])
        cold_ms = _cold_ms(full, batches[0], full_ms)
        cut_profiles = [
            _profile_cut(cut, activations, tensor_costs, options, timed, errors[cut.id])
            for cut in manifest.cuts
        ]
    k = options.slowdown
    call = None
    if calls:
        from partitioner.calls import local_call_cost

        call = local_call_cost()
    return Profile(
        model=graph.name,
        sha256=model_sha256(graph.model),
        device=options.device,
        machine={**_machine(), "providers": list(options.providers)},
        ort_version=ort.__version__,
        threads=options.threads,
        slowdown=k,
        batch=options.batch,
        samples=sum(len(next(iter(b.values()))) for b in batches),
        full_ms=_scaled(full_ms, k),
        cuts=tuple(cut_profiles),
        tensors={
            name: {label: _scaled_cost(c, k) for label, c in per.items()}
            for name, per in tensor_costs.items()
        },
        cold_ms=cold_ms,
        **({} if call is None else asdict(call)),
    )


def _cold_ms(session: ort.InferenceSession, feeds: Mapping[str, np.ndarray], warm: Timing) -> float:
    """What a run after COLD_GAP_S of idling costs beyond a warm run (the median of
    COLD_RUNS such runs): memory left alone is slower to read again. Measured on the
    full model and paid as a constant by every run, head or tail (on this machine it
    varies little with the size of the run)."""
    times = []
    for _ in range(COLD_RUNS):
        time.sleep(COLD_GAP_S)
        start = time.perf_counter()
        run_session(session, feeds)
        times.append((time.perf_counter() - start) * 1000)
    return max(0.0, statistics.median(times) - warm.median_ms)


def _machine() -> dict[str, Any]:
    import os

    return {
        "node": platform.node(),
        "system": platform.system(),
        "machine": platform.machine(),
        "processor": platform.processor(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
    }


def _scaled_cost(cost: CodecCost, k: float) -> CodecCost:
    return CodecCost(cost.bytes, cost.encode_ms * k, cost.decode_ms * k)


def _activations(
    graph: ModelGraph, names: Sequence[str], directory: Path, batches: list[dict[str, np.ndarray]]
) -> list[dict[str, np.ndarray]]:
    """The tensors ``names`` and the model outputs, for each batch."""
    outputs = list(dict.fromkeys([*graph.outputs, *[t for t in names if t in graph.producer]]))
    probe = submodel(graph, graph.all_mask, outputs, f"{graph.name}_probe")
    from partitioner.split import save_model

    path = save_model(probe, directory / "probe.onnx", check=False)
    session = make_session(path, SessionOptions(optimize=False))
    result = []
    for batch in batches:
        values = run_session(session, batch)
        result.append({**batch, **values})
    return result


def _tensor_codec_costs(
    activations: list[dict[str, np.ndarray]], names: Sequence[str], options: ProfileOptions
) -> dict[str, dict[str, CodecCost]]:
    costs: dict[str, dict[str, CodecCost]] = {}
    for name in names:
        per: dict[str, CodecCost] = {}
        for spec in options.codecs:
            if not spec.codec.accepts(activations[0][name].dtype.name):
                continue
            sizes, enc, dec = [], [], []
            for values in activations:
                array = values[name]
                fastest = (math.inf, math.inf)  # warm: the first run pays for the buffers
                for _ in range(CODEC_RUNS):
                    start = time.perf_counter()
                    encoded = encode(array, spec)
                    middle = time.perf_counter()
                    decode(encoded)
                    end = time.perf_counter()
                    fastest = (min(fastest[0], middle - start), min(fastest[1], end - middle))
                enc.append(fastest[0] * 1000.0)
                dec.append(fastest[1] * 1000.0)
                sizes.append(encoded_size(encoded))
            per[spec.label] = CodecCost(
                float(np.mean(sizes)), float(np.median(enc)), float(np.median(dec))
            )
        costs[name] = per
    return costs


def _delta_codec_costs(
    sequence: list[dict[str, np.ndarray]], names: Sequence[str]
) -> dict[str, dict[str, CodecCost]]:
    """Each tensor's delta codecs over a stream of frames, in order: the mean bytes and
    median times of the frames after the first (a key frame, whatever the codec)."""
    costs: dict[str, dict[str, CodecCost]] = {}
    for name in names:
        per: dict[str, CodecCost] = {}
        for spec in DELTA_CODECS:
            if not spec.codec.accepts(sequence[0][name].dtype.name):
                continue
            encoder, decoder = DeltaEncoder(), DeltaDecoder()
            sizes, enc, dec = [], [], []
            for values in sequence:
                start = time.perf_counter()
                encoded = encoder.encode(values[name], spec, slot=name)
                middle = time.perf_counter()
                decoder.decode(encoded, slot=name)
                enc.append((middle - start) * 1000.0)
                dec.append((time.perf_counter() - middle) * 1000.0)
                sizes.append(encoded_size(encoded))
            steady = slice(1, None) if len(sizes) > 1 else slice(None)
            per[spec.label] = CodecCost(
                float(np.mean(sizes[steady])),
                float(np.median(enc[steady])),
                float(np.median(dec[steady])),
            )
        costs[name] = per
    return costs


def frame_sequence(
    graph: ModelGraph, frames: Path | str, feeds: Mapping[str, np.ndarray]
) -> list[dict[str, np.ndarray]]:
    """A stream's frames for ``profile --frames``: from a directory, one ``.npy`` file
    per frame of a one-input model (in name order, each one sample); or ``"still"``:
    a generated still camera, the first calibration sample with a block (an eighth of
    its last two dimensions) of the second sample moving across it, FRAMES_GENERATED
    frames."""
    if len(graph.inputs) != 1:
        raise SplitInferError(
            f"--frames takes frames of a one-input model; this one has {len(graph.inputs)} inputs"
        )
    name = graph.inputs[0]
    spec = graph.spec(name)
    if str(frames) == "still":
        source = feeds[name]
        if source.ndim < 2 or np.dtype(source.dtype).kind != "f":
            raise SplitInferError(
                f"--frames still moves a block across a float input of rank 2 or more; "
                f"input {name!r} is {source.dtype}{list(source.shape)}: give a directory"
            )
        background = source[:1]
        mover = source[1:2] if len(source) > 1 else source[:1][..., ::-1, ::-1]
        rows, cols = background.shape[-2], background.shape[-1]
        h, w = max(1, rows // 8), max(1, cols // 8)
        sequence = []
        for n in range(FRAMES_GENERATED):
            y = (n * max(1, h // 2)) % max(1, rows - h + 1)
            x = (n * max(1, w // 2)) % max(1, cols - w + 1)
            frame = background.copy()
            frame[..., y : y + h, x : x + w] = mover[..., y : y + h, x : x + w]
            sequence.append({name: frame})
        return sequence
    directory = Path(frames)
    if not directory.is_dir():
        raise SplitInferError(f"{directory}: not a directory of .npy frames (or 'still')")
    files = sorted(directory.glob("*.npy"))
    if len(files) < 2:
        raise SplitInferError(f"{directory}: --frames needs at least two .npy frames")
    sequence = []
    for path in files:
        array = _read(path)
        _check_calibration(str(path), array, spec)
        if len(array) != 1:
            raise SplitInferError(f"{path}: a frame is one sample, this file has {len(array)}")
        sequence.append({name: array})
    return sequence


FULL = ""  # the full model's key among the timed runs (no cut has an empty id)


def _time_cuts(
    directory: str,
    manifest: Manifest,
    full: ort.InferenceSession,
    activations: list[dict[str, np.ndarray]],
    tensor_costs: Mapping[str, Mapping[str, CodecCost]],
    options: ProfileOptions,
    session_options: SessionOptions,
    weight_bytes: int,
    bar: Progress | None,
) -> tuple[dict[tuple[str, str], list[float]], dict[str, dict[str, OutputError]]]:
    """Every run time, in ms, of the full model and of each cut's head and tail (keyed
    by cut id and "head" or "tail"), and each cut's lossy codecs' output errors.

    The runs are spread over ``options.rounds`` rounds, each timing the full model and
    then every cut in turn (backwards every other round), so that a busy moment of the
    machine weighs on many cuts a little rather than on the one being timed: timed one
    cut after another, a head could come out 70% slower than in the next profile, and
    the plan with it. Cuts stay loaded between rounds while their weights fit
    PROFILE_MEMORY (a cut's head and tail hold about the model's weights); the others
    are loaded again each round."""
    first = activations[0]
    rounds = max(1, options.rounds)
    per_round = max(1, math.ceil(options.repeats / rounds))
    times: dict[tuple[str, str], list[float]] = {}
    errors: dict[str, dict[str, OutputError]] = {}
    kept: dict[str, CutRunner] = {}
    room = PROFILE_MEMORY

    def measure(key: tuple[str, str], session: ort.InferenceSession, feeds: Feeds) -> None:
        times.setdefault(key, []).extend(
            _samples(
                lambda: run_session(session, feeds),
                warmup=options.warmup,
                repeats=per_round,
                min_time_ms=options.min_time_ms / rounds,
            )
        )

    for round_ in range(rounds):
        measure((FULL, ""), full, first)
        for cut in manifest.cuts if round_ % 2 == 0 else manifest.cuts[::-1]:
            runner = kept.get(cut.id) or CutRunner(directory, manifest, cut, session_options)
            if round_ == 0:
                errors[cut.id] = _output_errors(runner, activations, options, tensor_costs)
                if weight_bytes <= room:
                    kept[cut.id] = runner
                    room -= weight_bytes
            if runner.head is not None:
                measure((cut.id, "head"), runner.head, first)
            if runner.tail is not None:
                sent = {t.name: first[t.name] for t in cut.tensors}
                measure((cut.id, "tail"), runner.tail, sent)
            if bar:
                bar.step(cut.id)
    return times, errors


def _weight_bytes(graph: ModelGraph) -> int:
    """The bytes of the model's weights (dense ones: what a session holds)."""
    total = 0
    for w in graph.weights.values():
        itemsize = onnx.helper.tensor_dtype_to_np_dtype(w.data_type).itemsize
        total += math.prod(w.dims) * itemsize
    return total


def _output_errors(
    runner: CutRunner,
    activations: list[dict[str, np.ndarray]],
    options: ProfileOptions,
    tensor_costs: Mapping[str, Mapping[str, CodecCost]],
) -> dict[str, OutputError]:
    """What each lossy codec that can send every tensor of the cut does to the outputs."""
    if runner.tail is None:
        return {}
    return {
        spec.label: _output_error(runner, activations, spec)
        for spec in options.codecs
        if spec.codec.lossy and all(spec.label in tensor_costs[t.name] for t in runner.cut.tensors)
    }


def _profile_cut(
    cut: CutArtifact,
    activations: list[dict[str, np.ndarray]],
    tensor_costs: Mapping[str, Mapping[str, CodecCost]],
    options: ProfileOptions,
    timed: Mapping[tuple[str, str], list[float]],
    errors: dict[str, OutputError],
) -> CutProfile:
    first = activations[0]
    head_ms = _summary(timed[cut.id, "head"]) if (cut.id, "head") in timed else None
    tail_ms = _summary(timed[cut.id, "tail"]) if (cut.id, "tail") in timed else None
    k = options.slowdown
    labels = [s.label for s in options.codecs]
    codecs = {}
    for label in labels:
        parts = [tensor_costs[t.name].get(label) for t in cut.tensors]
        if all(p is not None for p in parts):
            codecs[label] = CodecCost(
                sum(p.bytes for p in parts if p),
                sum(p.encode_ms for p in parts if p) * k,
                sum(p.decode_ms for p in parts if p) * k,
            )
    return CutProfile(
        id=cut.id,
        tensors=tuple(t.name for t in cut.tensors),
        head_nodes=cut.head_nodes,
        head_ms=None if head_ms is None else _scaled(head_ms, k),
        tail_ms=None if tail_ms is None else _scaled(tail_ms, k),
        bytes=float(sum(first[t.name].nbytes for t in cut.tensors)),
        output_bytes=float(sum(first[name].nbytes for name in cut.tail_outputs)),
        codecs=codecs,
        errors=errors,
    )


def _output_error(
    runner: CutRunner, activations: list[dict[str, np.ndarray]], spec: CodecSpec
) -> OutputError:
    max_abs, rel_l2, agree, total = 0.0, 0.0, 0, 0
    classifier = True
    for values in activations:
        exact = {t.name: values[t.name] for t in runner.cut.tensors}
        lossy = {name: decode(encode(a, spec)) for name, a in exact.items()}
        want, got = runner.run_tail(exact), runner.run_tail(lossy)
        for name, w in want.items():
            if not isinstance(w, np.ndarray) or w.dtype.kind not in "fc":
                continue
            g = got[name]
            diff = np.abs(g.astype(np.float64) - w)
            max_abs = max(max_abs, float(diff.max(initial=0.0)))
            norm = float(np.linalg.norm(w.astype(np.float64)))
            rel_l2 = max(rel_l2, float(np.linalg.norm(diff)) / norm if norm else 0.0)
            if w.ndim == 2 and w.shape[1] > 1:
                agree += int((np.argmax(g, 1) == np.argmax(w, 1)).sum())
                total += w.shape[0]
            else:
                classifier = False
    top1 = agree / total if classifier and total else None
    return OutputError(max_abs, rel_l2, top1)


# --------------------------------------------------------------------------- reading


def load_profile(path: str | Path, graph: ModelGraph | None = None) -> Profile:
    """Read and check a profile; with ``graph``, check that it was taken of that model."""
    path = Path(path)
    raw = read_json(path, "profile", ProfileError)
    if not isinstance(raw, dict) or raw.get("kind") != PROFILE_KIND:
        raise ProfileError(f'{path}: not a splitinfer profile (no "kind": "{PROFILE_KIND}")')
    if raw.get("format") != PROFILE_FORMAT:
        raise ProfileError(
            f"{path}: profile format {raw.get('format')!r}, expected {PROFILE_FORMAT}"
        )
    try:
        profile = _profile_from_json(raw)
    except Exception as exc:  # any shape of JSON can come in
        raise ProfileError(f"{path}: malformed profile: missing or bad field {exc}") from exc
    _check_numbers(profile, path)
    if graph is not None and profile.sha256 != model_sha256(graph.model):
        raise ProfileError(
            f"{path} was taken of another model ({profile.model}, sha256 {profile.sha256[:12]}…), "
            f"not of {graph.name} (sha256 {model_sha256(graph.model)[:12]}…): profile this model"
        )
    return profile


def _timing(obj: Any) -> Timing | None:
    return None if obj is None else Timing(float(obj["median_ms"]), float(obj["p90_ms"]))


def _cost(obj: Any) -> CodecCost:
    return CodecCost(float(obj["bytes"]), float(obj["encode_ms"]), float(obj["decode_ms"]))


def _profile_from_json(raw: dict[str, Any]) -> Profile:
    cuts = []
    for c in raw["cuts"]:
        errors = {
            str(k): OutputError(
                float(v["max_abs"]),
                float(v["rel_l2"]),
                None if v.get("top1") is None else float(v["top1"]),
            )
            for k, v in c.get("errors", {}).items()
        }
        cuts.append(
            CutProfile(
                id=str(c["id"]),
                tensors=tuple(c["tensors"]),
                head_nodes=int(c["head_nodes"]),
                head_ms=_timing(c["head_ms"]),
                tail_ms=_timing(c["tail_ms"]),
                bytes=float(c["bytes"]),
                output_bytes=float(c["output_bytes"]),
                codecs={k: _cost(v) for k, v in c["codecs"].items()},
                errors=errors,
            )
        )
    full = _timing(raw["full_ms"])
    if full is None:
        raise ValueError("full_ms")
    return Profile(
        model=str(raw["model"]),
        sha256=str(raw["sha256"]),
        device=str(raw["device"]),
        machine=dict(raw.get("machine", {})),
        ort_version=str(raw.get("ort_version", "")),
        threads=int(raw["threads"]),
        slowdown=float(raw["slowdown"]),
        batch=int(raw["batch"]),
        samples=int(raw["samples"]),
        full_ms=full,
        cuts=tuple(cuts),
        tensors={
            name: {k: _cost(v) for k, v in per.items()} for name, per in raw["tensors"].items()
        },
        call_ms=float(raw.get("call_ms", 0.0)),  # older profiles: not measured
        tensor_ms=float(raw.get("tensor_ms", 0.0)),
        call_bytes=float(raw.get("call_bytes", 0.0)),
        tensor_bytes=float(raw.get("tensor_bytes", 0.0)),
        answer_bytes=float(raw.get("answer_bytes", 0.0)),
        cold_ms=float(raw.get("cold_ms", 0.0)),
    )


def _check_numbers(profile: Profile, path: Path) -> None:
    def check(value: float | None, where: str) -> None:
        if value is not None and (not np.isfinite(value) or value < 0):
            raise ProfileError(
                f"{path}: {where} is {value}; times and sizes must be finite and >= 0"
            )

    if not (math.isfinite(profile.slowdown) and profile.slowdown > 0):
        raise ProfileError(f"{path}: slowdown must be a positive number")
    if profile.batch < 1 or profile.samples < 1 or not 1 <= profile.threads <= 1024:
        raise ProfileError(f"{path}: batch and samples must be at least 1, threads 1 to 1024")
    ids = [c.id for c in profile.cuts]
    if len(set(ids)) != len(ids):
        raise ProfileError(f"{path}: cut ids appear twice")
    check(profile.full_ms.median_ms, "full_ms.median_ms")
    check(profile.full_ms.p90_ms, "full_ms.p90_ms")
    for name in ("cold_ms", "call_ms", "tensor_ms", "call_bytes", "tensor_bytes", "answer_bytes"):
        check(getattr(profile, name), name)
    for cut in profile.cuts:
        for side, timing in (("head_ms", cut.head_ms), ("tail_ms", cut.tail_ms)):
            if timing is not None:
                check(timing.median_ms, f"cut {cut.id} {side}.median_ms")
                check(timing.p90_ms, f"cut {cut.id} {side}.p90_ms")
        check(cut.bytes, f"cut {cut.id} bytes")
        check(cut.output_bytes, f"cut {cut.id} output_bytes")
        for label, cost in cut.codecs.items():
            for name in ("bytes", "encode_ms", "decode_ms"):
                check(getattr(cost, name), f"cut {cut.id} codec {label} {name}")
        for label, error in cut.errors.items():
            check(error.max_abs, f"cut {cut.id} codec {label} max_abs")
            check(error.rel_l2, f"cut {cut.id} codec {label} rel_l2")
            if error.top1 is not None and not 0 <= error.top1 <= 1:
                raise ProfileError(f"{path}: cut {cut.id} codec {label} top1 must be in [0, 1]")
    for tensor, per in profile.tensors.items():
        for label, cost in per.items():
            for name in ("bytes", "encode_ms", "decode_ms"):
                check(getattr(cost, name), f"tensor {tensor} codec {label} {name}")
