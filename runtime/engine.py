"""Run the models of an artifact directory with ONNX Runtime, in process.

:class:`CutRunner` runs one cut's head and tail back to back: the reference
that a split must equal, and the engine the device and cloud halves are built
from. Nothing here touches a socket.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import onnxruntime as ort

from runtime.artifacts import CutArtifact, Manifest, TensorSpec
from runtime.errors import ArtifactError, InvalidInputError, ModelError

T = TypeVar("T")

Feeds = Mapping[str, np.ndarray]


@dataclass(frozen=True, kw_only=True)
class SessionOptions:
    """How ONNX Runtime sessions are built.

    ``optimize=False`` turns off graph optimizations and weight prepacking:
    every node then runs as written, with the same kernel whether its weights
    are initializers or inputs, which makes a split bit-exact with the full
    model. (Fusions such as Conv+Relu otherwise differ in rounding when a cut
    separates them, and so do prepacked and plain convolution kernels.)
    """

    threads: int = 1
    optimize: bool = True
    providers: tuple[str, ...] = ("cpu",)  # see parse_providers
    # Bind inputs and outputs to host buffers (ONNX Runtime's I/O binding): an output
    # whose shape is known before the run is written by the device straight into the
    # numpy array that is returned, not copied to ONNX Runtime's buffer and then again.
    # None: on when the first provider is not the CPU.
    io_binding: bool | None = None


PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "rocm": "ROCMExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
    "dml": "DmlExecutionProvider",
}


def parse_providers(text: str) -> tuple[str, ...]:
    """``"cuda,cpu"`` or ``"cuda:1,cpu"`` (a device id) -> the providers, checked against
    what this ONNX Runtime has; ValueError naming what is available otherwise. The
    order is the preference: ONNX Runtime runs each node on the first that can."""
    available = ort.get_available_providers()
    short = {v: k for k, v in PROVIDERS.items()}
    names = [short.get(p, p) for p in available]
    chosen = tuple(p.strip() for p in text.split(",") if p.strip())
    if not chosen:
        raise ValueError(f"no execution provider given; available here: {', '.join(names)}")
    for item in chosen:
        name, _, device = item.partition(":")
        full = PROVIDERS.get(name, name)
        if full not in available:
            raise ValueError(
                f"execution provider {name!r} is not available in this ONNX Runtime; "
                f"available here: {', '.join(names)} (GPU providers need onnxruntime-gpu "
                "instead of onnxruntime: pip install 'splitinfer[gpu]')"
            )
        if device and not device.isdigit():
            raise ValueError(f"bad device id in {item!r}: expected a number, like cuda:1")
    return chosen


def _providers(chosen: tuple[str, ...]) -> tuple[list[str], list[dict[str, str]]]:
    """ONNX Runtime's providers and provider options for ``parse_providers``' names."""
    names, options = [], []
    for item in chosen:
        name, _, device = item.partition(":")
        names.append(PROVIDERS.get(name, name))
        options.append({"device_id": device} if device else {})
    return names, options


def make_session(
    path: str | Path, options: SessionOptions = SessionOptions()
) -> ort.InferenceSession:
    """An ONNX Runtime CPU session for a model file (external data is found beside it)."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = options.threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    if not options.optimize:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        so.add_session_config_entry("session.disable_prepacking", "1")
    try:
        providers, provider_options = _providers(options.providers)
        session = ort.InferenceSession(
            str(path), so, providers=providers, provider_options=provider_options
        )
    except Exception as exc:  # ORT raises its own Fail/InvalidGraph types
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"{path}: ONNX Runtime cannot load the model: {first}") from exc
    bind = options.io_binding
    if bind is None:
        bind = session.get_providers()[0] != PROVIDERS["cpu"]
    session.splitinfer_io_binding = bind  # read by run_session
    return session


def run_session(
    session: ort.InferenceSession, feeds: Feeds, options: ort.RunOptions | None = None
) -> dict[str, np.ndarray]:
    """Run a session on the feeds it takes; returns every output by name. ``options``
    lets another thread stop the run (``options.terminate = True``)."""
    wanted = {i.name: feeds[i.name] for i in session.get_inputs()}
    if getattr(session, "splitinfer_io_binding", False):
        return _run_bound(session, wanted, options)
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, wanted, options), strict=True))


_ORT_TYPES = {
    f"tensor({name})": np.dtype(dtype)
    for name, dtype in [
        ("float", "float32"), ("double", "float64"), ("float16", "float16"),
        ("int8", "int8"), ("int16", "int16"), ("int32", "int32"), ("int64", "int64"),
        ("uint8", "uint8"), ("uint16", "uint16"), ("uint32", "uint32"),
        ("uint64", "uint64"), ("bool", "bool"),
    ]
}  # fmt: skip


def _run_bound(
    session: ort.InferenceSession, feeds: Feeds, options: ort.RunOptions | None
) -> dict[str, np.ndarray]:
    """``run_session`` through I/O binding. An output's shape is known before the run
    when each of its dimensions is a number or a name that an input's dimension has
    (the batch): such outputs are preallocated and bound by address; the others are
    left to ONNX Runtime and copied out once."""
    binding = session.io_binding()
    sizes: dict[str, int] = {}
    for spec in session.get_inputs():
        value = np.ascontiguousarray(feeds[spec.name])
        binding.bind_cpu_input(spec.name, value)
        for dim, size in zip(spec.shape, value.shape, strict=False):
            if isinstance(dim, str):
                sizes.setdefault(dim, size)
    results: dict[str, np.ndarray] = {}
    later: list[str] = []
    for spec in session.get_outputs():
        known = [d if isinstance(d, int) else sizes.get(d) for d in spec.shape]
        dtype = _ORT_TYPES.get(spec.type)
        shape = [d for d in known if d is not None]
        if dtype is None or len(shape) != len(known):
            binding.bind_output(spec.name, "cpu")
            later.append(spec.name)
            continue
        array = np.empty(shape, dtype)
        binding.bind_output(spec.name, "cpu", 0, dtype.type, shape, array.ctypes.data)
        results[spec.name] = array
    session.run_with_iobinding(binding, options)
    if later:
        values = binding.get_outputs()
        bound = [o.name for o in session.get_outputs()]
        for name in later:
            results[name] = values[bound.index(name)].numpy()
    return {o.name: results[o.name] for o in session.get_outputs()}


class SlowDevice:
    """Emulates a device ``factor`` times slower than this machine. After a run that
    took ``elapsed``, it sleeps ``factor - 1`` times the fastest run of the same work
    (``key``) seen so far: the device's compute is ``factor`` times this machine's,
    and a momentary delay of this shared machine is added once, not ``factor`` times.

    The fastest run is measured warm: a run after a sleep finds this machine's caches
    cold (on this VM, memory left alone for 0.1 s is slower to read again), and without
    warm runs every sleep would inflate the device by a different amount for each
    caller. The first run of a key is repeated three times at once, unreported; the
    next CALIBRATIONS runs are each repeated once more inside their own sleep, where it
    fits, so that one busy moment of this machine during the first calibration does not
    make that work slower for good. Work that changes state (a delta encoder: its
    reference, its counters) is never repeated: ``repeatable=False`` dilates its own
    runs only. Thread-safe."""

    CALIBRATIONS = 4

    def __init__(self, factor: float) -> None:
        self.factor = factor
        self._fastest: dict[object, float] = {}
        self._runs: dict[object, int] = {}
        self._lock = threading.Lock()

    def run(
        self, key: object, call: Callable[..., T], *args: Any, repeatable: bool = True
    ) -> tuple[T, float]:
        """``call(*args)`` on the device: its result and the device's time in ms."""
        start = time.perf_counter()
        result = call(*args)
        elapsed = time.perf_counter() - start
        if self.factor <= 1:
            return result, elapsed * 1000
        with self._lock:
            known = self._fastest.get(key, math.inf)
            runs = self._runs.get(key, 0)
            self._runs[key] = runs + 1
        warm_runs = 0
        if repeatable and runs == 0:  # calibrate on warm caches: the fastest of three more
            warm_runs = 3
        elif repeatable and runs <= self.CALIBRATIONS and self.factor >= 3:
            warm_runs = 1  # within this run's own sleep, where it fits twice
        for _ in range(warm_runs):
            known = min(known, _timed(call, args))
        with self._lock:
            fastest = min(self._fastest.get(key, math.inf), known, elapsed)
            self._fastest[key] = fastest
        extra = fastest * (self.factor - 1)
        if warm_runs != 1:
            time.sleep(extra)
        else:  # the sleep less what the warm run took of it
            time.sleep(max(0.0, start + elapsed + extra - time.perf_counter()))
        return result, (elapsed + extra) * 1000


def _timed(call: Callable[..., Any], args: tuple[Any, ...]) -> float:
    start = time.perf_counter()
    call(*args)
    return time.perf_counter() - start


class CutRunner:
    """One cut's head and tail, loaded from an artifact directory and run in process."""

    def __init__(
        self,
        directory: str | Path,
        manifest: Manifest,
        cut: CutArtifact,
        options: SessionOptions = SessionOptions(),
        *,
        load_tail: bool = True,
    ) -> None:
        self.cut = cut
        self.outputs = [o.name for o in manifest.outputs]
        root = Path(directory)
        self.head = None if cut.head is None else make_session(inside(root, cut.head), options)
        self.tail = None
        if cut.tail is not None and load_tail:  # a device needs only the head
            self.tail = make_session(inside(root, cut.tail), options)

    def run_head(self, feeds: Feeds) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Run the head: (tensors to send, model outputs kept on the device)."""
        produced = {} if self.head is None else run_session(self.head, feeds)
        available = {**feeds, **produced}
        sent = {t.name: available[t.name] for t in self.cut.tensors}
        kept = {name: produced[name] for name in self.cut.head_outputs}
        return sent, kept

    def run_tail(self, tensors: Feeds) -> dict[str, np.ndarray]:
        """Run the tail on the cut tensors: the remaining model outputs."""
        return {} if self.tail is None else run_session(self.tail, tensors)

    def run(self, feeds: Feeds) -> dict[str, np.ndarray]:
        """Head then tail: every model output, in model order."""
        sent, kept = self.run_head(feeds)
        results = {**kept, **self.run_tail(sent)}
        return {name: results[name] for name in self.outputs}


def inside(root: Path, relative: str) -> Path:
    """``root / relative``, refusing a manifest path that leads out of ``root``."""
    path = (root / relative).resolve()
    if root.resolve() not in path.parents:
        raise ArtifactError(f"manifest path {relative!r} points outside {root}")
    return path


def example_feeds(
    specs: Sequence[TensorSpec], *, batch: int = 1, seed: int = 0
) -> dict[str, np.ndarray]:
    """Inputs of the right type and shape: normal floats, zero integers, False booleans.

    Symbolic or unknown dimensions become ``batch`` for the first dimension and 1
    elsewhere.
    """
    rng = np.random.default_rng(seed)
    feeds = {}
    for spec in specs:
        if spec.shape is None:
            raise ModelError(f"input {spec.name!r} has no known rank; pass real inputs instead")
        shape = [
            d if isinstance(d, int) else (batch if axis == 0 else 1)
            for axis, d in enumerate(spec.shape)
        ]
        dtype = np.dtype(spec.dtype)
        if dtype.kind == "f":
            feeds[spec.name] = rng.standard_normal(shape).astype(dtype)
        else:
            feeds[spec.name] = np.zeros(shape, dtype=dtype)
    return feeds


def check_feeds(specs: Sequence[TensorSpec], feeds: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """``feeds`` checked against the model's inputs before anything runs: exactly their
    names, each with its dtype, rank and fixed dimensions, named dimensions (the batch)
    the same across inputs. InvalidInputError says what was expected, what came and
    what to do."""
    wanted = ", ".join(f"{s.name} {_spec(s)}" for s in specs)
    names = {s.name for s in specs}
    unknown = [n for n in feeds if n not in names]
    if unknown:
        raise InvalidInputError(f"unknown input {unknown[0]!r}: the model takes {wanted}")
    checked: dict[str, np.ndarray] = {}
    symbols: dict[str, tuple[int, str]] = {}
    for spec in specs:
        if spec.name not in feeds:
            raise InvalidInputError(f"missing input {spec.name!r}: the model takes {wanted}")
        value = np.asarray(feeds[spec.name])
        where = f"input {spec.name!r}"
        if value.dtype.name != spec.dtype:
            raise InvalidInputError(
                f"{where}: expected {spec.dtype}, received {value.dtype.name} "
                f"(convert it with .astype({spec.dtype!r}))"
            )
        if spec.shape is not None:
            if value.ndim != len(spec.shape):
                raise InvalidInputError(
                    f"{where}: expected rank {len(spec.shape)} {_spec(spec)}, received rank "
                    f"{value.ndim} {list(value.shape)}"
                )
            for axis, (want, got) in enumerate(zip(spec.shape, value.shape, strict=True)):
                if isinstance(want, int) and want != got:
                    raise InvalidInputError(
                        f"{where}: dimension {axis} must be {want} {_spec(spec)}, received "
                        f"{got} {list(value.shape)}"
                    )
                if isinstance(want, str):
                    seen = symbols.setdefault(want, (got, spec.name))
                    if seen[0] != got:
                        raise InvalidInputError(
                            f"{where}: dimension {want!r} is {got}, but input {seen[1]!r} has "
                            f"it as {seen[0]}"
                        )
        checked[spec.name] = value
    return checked


def _spec(spec: TensorSpec) -> str:
    dims = (
        "?" if spec.shape is None else ", ".join("?" if d is None else str(d) for d in spec.shape)
    )
    return f"{spec.dtype}[{dims}]"
