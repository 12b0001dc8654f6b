"""The KServe v2 gRPC protocol (``inference.GRPCInferenceService``, the one Triton
speaks) over the same TailService as splitinfer.v1, on the same port.

Each tail is a model named ``<model>__<cut>`` with the single version "1"
(:func:`model_name`); RepositoryIndex lists them. Tensors travel raw, in
``raw_input_contents`` / ``raw_output_contents`` (or typed ``contents`` on the
way in); gzip and deflate work as gRPC compression, but cost far more than
zstd through splitinfer.v1, the fast path. Requests go through the same checks,
limits, admission and batching as the native protocol, and need the same bearer
token, except ServerLive and ServerReady (liveness and readiness probes). RPCs
splitinfer does not implement (statistics, repository load and unload, shared
memory, trace and log settings) answer UNIMPLEMENTED.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import math
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import onnx
from tritonclient.grpc import model_config_pb2 as mc
from tritonclient.grpc import service_pb2 as kpb

from runtime import fastwire
from runtime.cloud.batching import BatchOptions
from runtime.cloud.budget import Hold
from runtime.cloud.metrics import Call
from runtime.cloud.service import (
    SENT_COPIES,
    TailService,
    answer_queue,
    respond,
    same,
    spawn,
    status_and_message,
    stream_answers,
)
from runtime.codec import Codec, Encoded
from runtime.errors import (
    InvalidInputError,
    NotFoundError,
    OverloadedError,
    UnsupportedModelError,
    shown,
)
from runtime.kserve_types import DATATYPES, DTYPES, SHA256_PARAMETER, model_name

SERVICE_NAME = "inference.GRPCInferenceService"
PROTOCOL = "kserve"  # the metrics' protocol label
VERSION = "1"
PLATFORM = "onnxruntime_onnx"
# what ServerMetadata says this server implements beyond the core protocol
EXTENSIONS = ("statistics", "binary_tensor_data")

# InferTensorContents field per datatype, for inputs sent typed instead of raw
CONTENTS = {
    "BOOL": "bool_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
}


@dataclass(frozen=True)
class Port:
    """One input or output of a tail: name, numpy dtype and dims (-1: dynamic)."""

    name: str
    dtype: str
    dims: tuple[int, ...]


def tail_signature(path: str | Path) -> tuple[list[Port], list[Port]]:
    """The inputs and outputs of an ONNX tail, read without its weights."""
    model = onnx.load(str(path), load_external_data=False)
    initializers = {i.name for i in model.graph.initializer}

    def ports(values: Iterable[onnx.ValueInfoProto]) -> list[Port]:
        found = []
        for value in values:
            if value.name in initializers:
                continue
            tensor = value.type.tensor_type
            dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).name
            dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim)
            found.append(Port(value.name, dtype, dims))
        return found

    return ports(model.graph.input), ports(model.graph.output)


def batch_dimension(path: str | Path) -> bool:
    """Whether every input and output of the tail has the same symbolic leading
    dimension: it can take requests stacked along it."""
    model = onnx.load(str(path), load_external_data=False)
    initializers = {i.name for i in model.graph.initializer}
    values = [v for v in model.graph.input if v.name not in initializers]
    values += list(model.graph.output)
    firsts = set()
    for value in values:
        dims = value.type.tensor_type.shape.dim
        if not dims or not dims[0].dim_param:
            return False
        firsts.add(dims[0].dim_param)
    return len(firsts) == 1


def session_signature(session: Any) -> tuple[list[Port], list[Port]]:
    """The inputs and outputs of a loaded ONNX Runtime session (no file read)."""

    def ports(args: Iterable[Any]) -> list[Port]:
        found = []
        for arg in args:
            element = arg.type.removeprefix("tensor(").removesuffix(")")
            dtype = ORT_TYPES.get(element, element)
            dims = tuple(d if isinstance(d, int) else -1 for d in arg.shape or ())
            found.append(Port(arg.name, dtype, dims))
        return found

    return ports(session.get_inputs()), ports(session.get_outputs())


def triton_config(
    name: str,
    inputs: Sequence[Port],
    outputs: Sequence[Port],
    *,
    max_batch_size: int,
    batching: BatchOptions | None = None,
    sha256: str | None = None,
) -> mc.ModelConfig:
    """The Triton model configuration of one ONNX tail: inputs, outputs, dtypes and
    dims. With ``max_batch_size`` (a tail with a dynamic batch dimension: at most that
    many samples per request) dims leave the batch out, and with ``batching`` on,
    requests are batched dynamically."""
    config = mc.ModelConfig(
        name=name,
        platform=PLATFORM,
        backend="onnxruntime",
        max_batch_size=max_batch_size,
        instance_group=[mc.ModelInstanceGroup(count=1, kind=mc.ModelInstanceGroup.KIND_CPU)],
    )
    for ports, field in ((inputs, config.input), (outputs, config.output)):
        for port in ports:
            if port.dtype not in DTYPES:
                raise UnsupportedModelError(
                    f"tensor {port.name!r} of type {port.dtype} has no KServe v2 datatype"
                )
            entry = field.add()
            entry.name = port.name
            entry.data_type = mc.DataType.Value("TYPE_" + DTYPES[port.dtype])
            entry.dims.extend(port.dims[1:] if max_batch_size else port.dims)
    if max_batch_size and batching is not None and batching.enabled:
        config.dynamic_batching.max_queue_delay_microseconds = int(batching.max_delay_ms * 1000)
    if sha256:  # which model the tail was cut from: a device compares it with its own
        config.parameters[SHA256_PARAMETER].string_value = sha256
    return config


def normalized(config: mc.ModelConfig) -> mc.ModelConfig:
    """``config`` with the defaults Triton fills in when it loads a model, as its
    ModelConfig RPC answers: the latest version, a named instance group, the model
    file's name, pinned memory for inputs and outputs."""
    done = mc.ModelConfig()
    done.CopyFrom(config)
    done.version_policy.latest.num_versions = 1
    done.default_model_filename = done.default_model_filename or "model.onnx"
    for index, group in enumerate(done.instance_group):
        group.name = group.name or f"{done.name}_{index}"
    done.optimization.input_pinned_memory.enable = True
    done.optimization.output_pinned_memory.enable = True
    return done


@dataclass(frozen=True)
class _Tail:
    model: str
    cut: str


class KServeServicer:
    """inference.GRPCInferenceService over a TailService."""

    def __init__(self, service: TailService) -> None:
        self.service = service
        self.host = service.host
        self.tails: dict[str, _Tail] = {}
        for name, served in self.host.models.items():
            for cut in served.manifest.cuts:
                if cut.id in served.sessions and cut.tail is not None:
                    self.tails[model_name(name, cut.id)] = _Tail(name, cut.id)

    # ---- lookups

    def _tail(self, name: str, version: str) -> _Tail:
        tail = self.tails.get(name)
        if tail is None:
            raise NotFoundError(f"no model {name!r} on this server; see RepositoryIndex")
        if version not in ("", VERSION):
            raise NotFoundError(f"model {name!r} has no version {version!r}; it has {VERSION!r}")
        return tail

    def _signature(self, name: str) -> tuple[list[Port], list[Port]]:
        tail = self.tails[name]
        return session_signature(self.host.models[tail.model].sessions[tail.cut])

    def _check(
        self, request: bytes, context: grpc.aio.ServicerContext, kind: Any, *, token: bool = True
    ) -> Any:
        """The bearer token (unless ``token`` is false), then the request: a ``kind``
        message whose fields are all small (runtime.fastwire bounds what it parses)."""
        if token:
            self.service.authorize(context)
        return fastwire.parse(request, fastwire.Layout(kind)).message

    # ---- health and metadata

    async def ServerLive(self, request: bytes, context: grpc.aio.ServicerContext) -> Any:
        async def live() -> kpb.ServerLiveResponse:
            self._check(request, context, kpb.ServerLiveRequest, token=False)
            return kpb.ServerLiveResponse(live=True)

        return await respond(context, live())

    async def ServerReady(self, request: bytes, context: grpc.aio.ServicerContext) -> Any:
        async def ready() -> kpb.ServerReadyResponse:
            self._check(request, context, kpb.ServerReadyRequest, token=False)
            return kpb.ServerReadyResponse(ready=True)

        return await respond(context, ready())

    async def ModelReady(self, request: bytes, context: grpc.aio.ServicerContext) -> Any:
        async def ready() -> kpb.ModelReadyResponse:
            asked = self._check(request, context, kpb.ModelReadyRequest)
            known = asked.name in self.tails and asked.version in ("", VERSION)
            return kpb.ModelReadyResponse(ready=known)

        return await respond(context, ready())

    async def ServerMetadata(self, request: bytes, context: grpc.aio.ServicerContext) -> Any:
        async def metadata() -> kpb.ServerMetadataResponse:
            self._check(request, context, kpb.ServerMetadataRequest)
            return kpb.ServerMetadataResponse(
                name="splitinfer", version=_version(), extensions=list(EXTENSIONS)
            )

        return await respond(context, metadata())

    async def ModelMetadata(self, request: bytes, context: grpc.aio.ServicerContext) -> Any:
        async def metadata() -> kpb.ModelMetadataResponse:
            asked = self._check(request, context, kpb.ModelMetadataRequest)
            self._tail(asked.name, asked.version)
            inputs, outputs = self._signature(asked.name)
            tensor = kpb.ModelMetadataResponse.TensorMetadata
            return kpb.ModelMetadataResponse(
                name=asked.name,
                versions=[VERSION],
                platform=PLATFORM,
                inputs=[tensor(name=p.name, datatype=_datatype(p), shape=p.dims) for p in inputs],
                outputs=[tensor(name=p.name, datatype=_datatype(p), shape=p.dims) for p in outputs],
            )

        return await respond(context, metadata())

    async def ModelConfig(self, request: bytes, context: grpc.aio.ServicerContext) -> Any:
        async def config() -> kpb.ModelConfigResponse:
            asked = self._check(request, context, kpb.ModelConfigRequest)
            return kpb.ModelConfigResponse(config=self.config(asked.name, asked.version))

        return await respond(context, config())

    def config(self, name: str, version: str) -> mc.ModelConfig:
        """One tail's configuration, as Triton answers it (normalized)."""
        tail = self._tail(name, version)
        inputs, outputs = self._signature(name)
        made = triton_config(
            name,
            inputs,
            outputs,
            max_batch_size=self.service.max_batch_size(tail.model, tail.cut),
            # what this server does: an exact one never batches
            batching=None if self.host.exact else self.service.batching,
            sha256=self.host.models[tail.model].manifest.sha256,
        )
        return normalized(made)

    async def RepositoryIndex(self, request: bytes, context: grpc.aio.ServicerContext) -> Any:
        async def index() -> kpb.RepositoryIndexResponse:
            self._check(request, context, kpb.RepositoryIndexRequest)
            entry = kpb.RepositoryIndexResponse.ModelIndex
            return kpb.RepositoryIndexResponse(
                models=[entry(name=n, version=VERSION, state="READY") for n in sorted(self.tails)]
            )

        return await respond(context, index())

    async def ModelStatistics(self, request: bytes, context: grpc.aio.ServicerContext) -> Any:
        async def statistics() -> kpb.ModelStatisticsResponse:
            asked = self._check(request, context, kpb.ModelStatisticsRequest)
            return self.statistics(asked.name, asked.version)

        return await respond(context, statistics())

    def statistics(self, name: str = "", version: str = "") -> kpb.ModelStatisticsResponse:
        """The statistics extension: one tail's, or every tail's when ``name`` is empty."""
        if name:
            tail = self._tail(name, version)
            tails = [(tail.model, tail.cut)]
        else:
            tails = [(t.model, t.cut) for _, t in sorted(self.tails.items())]
        return self.service.metrics.statistics.proto(tails)

    # ---- inference

    async def ModelInfer(self, request: bytes, context: grpc.aio.ServicerContext) -> Any:
        call = self.service.metrics.call(PROTOCOL)

        async def infer() -> bytes:
            self.service.authorize(context)
            hold = self.service.begin(context, len(request), "the request")
            parts = fastwire.parse(request, MODEL_INFER_REQUEST)
            return await self._infer(parts, context, call, hold)

        return await respond(context, infer(), call)

    async def _infer(
        self,
        parts: fastwire.Parts,
        context: grpc.aio.ServicerContext,
        call: Call,
        hold: Hold,
        *,
        stream: bool = False,
    ) -> bytes:
        """One request, read by MODEL_INFER_REQUEST: its ModelInferResponse's bytes."""
        request = parts.message
        tensors, typed = _tensors(parts)

        async def convert(tail: _Tail, tensors: list[Encoded]) -> list[Encoded]:
            if not typed:
                return tensors
            # shapes and sizes checked, and their bytes held, before any conversion
            self.service.check(tail.model, tail.cut, tensors)
            nbytes = sum(_nbytes(tensors[i]) for i in typed)
            hold.grow(nbytes, "the request's typed contents")
            work = lambda: _converted(parts, tensors, typed)  # noqa: E731
            return await self.service.offload(work, nbytes, stream=stream)

        asked = [o.name for o in request.outputs]
        outputs, server_ms = await self.run(
            request.model_name,
            request.model_version,
            asked,
            tensors,
            context,
            call,
            hold,
            stream=stream,
            convert=convert,
            classified=[o.name for o in request.outputs if "classification" in o.parameters],
        )
        response = kpb.ModelInferResponse(
            model_name=request.model_name, model_version=VERSION, id=request.id
        )
        response.parameters["server_ms"].double_param = server_ms
        for output in outputs:
            response.outputs.add(
                name=output.name, datatype=DTYPES[output.dtype], shape=output.shape
            )
        size = sum(len(o.payload) for o in outputs)

        def write() -> bytes:
            pieces = [fastwire.bulk_field(RAW_OUTPUT_CONTENTS, o.payload) for o in outputs]
            return b"".join([response.SerializeToString(), *(b for p in pieces for b in p)])

        data = await self.service.offload(write, size, stream=stream)
        hold.grow(SENT_COPIES * len(data), "the answer")
        return data

    async def run(
        self,
        name: str,
        version: str,
        asked: list[str],
        tensors: list[Encoded],
        context: Any,
        call: Call,
        hold: Hold,
        *,
        stream: bool = False,
        convert: Callable[[_Tail, list[Encoded]], Awaitable[list[Encoded]]] | None = None,
        classified: Sequence[str] = (),
    ) -> tuple[list[Encoded], float]:
        """One inference request of either KServe protocol (gRPC, REST): the outputs
        asked for (all by default), in order, and the time the server spent (ms).
        ``classified``: outputs asked for as classifications (``class_count``), which
        this server does not implement: refused, never answered with the tensor."""
        if classified:
            raise InvalidInputError(
                f"output {shown(classified[0])} asks for a classification (class_count): "
                "this server does not implement the classification extension; ask for the "
                "output tensor and take its top classes"
            )
        tail = self._tail(name, version)
        call.label(tail.model, tail.cut, Codec.RAW.value)
        wanted = self._outputs(name, asked)
        if convert is not None:
            tensors = await convert(tail, tensors)
        call.bytes_in = sum(len(t.payload) for t in tensors)
        answer = await self.service.infer(
            tail.model, tail.cut, tensors, None, context, hold, stream=stream, call=call
        )
        by_name = {o.name: o for o in answer.outputs}
        outputs = [by_name[n] for n in wanted]
        call.bytes_out = sum(len(o.payload) for o in outputs)
        server_ms = answer.queue_ms + answer.decode_ms + answer.compute_ms + answer.encode_ms
        return outputs, server_ms

    def _outputs(self, name: str, asked: list[str]) -> list[str]:
        """The outputs a request asks for (all by default), checked before any work."""
        _, outputs = self._signature(name)
        wanted = asked or [o.name for o in outputs]
        known = {o.name: o for o in outputs}
        if len(set(wanted)) != len(wanted):
            raise InvalidInputError("an output is requested twice")
        for output in wanted:
            if output not in known:
                raise InvalidInputError(
                    f"model {shown(name)} has no output {shown(output)}; "
                    f"it has {', '.join(sorted(known))}"
                )
            if known[output].dtype not in DTYPES:  # before computing anything
                raise UnsupportedModelError(
                    f"output {output!r} of type {known[output].dtype} has no KServe v2 datatype"
                )
        return wanted

    async def ModelStreamInfer(
        self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        """Answers in the order they finish, each with its request's id; an error answers
        one request (``error_message``) and the stream goes on."""
        answers = self.service.stream(context, lambda: self._stream(requests, context))
        async with contextlib.aclosing(answers):  # its tasks and holds end with the call
            async for answer in answers:
                yield answer

    async def _stream(
        self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext
    ) -> AsyncGenerator[bytes, None]:
        answers = answer_queue()
        tasks: set[asyncio.Task[None]] = set()

        async def run(data: bytes, hold: Hold) -> None:
            call = self.service.metrics.call(PROTOCOL)
            which = kpb.ModelInferResponse()  # which request failed, when it parsed
            try:
                parts = fastwire.parse(data, MODEL_INFER_REQUEST)
                del data
                which.model_name, which.id = parts.message.model_name, parts.message.id
                response = await self._infer(parts, context, call, hold, stream=True)
            except asyncio.CancelledError:  # the stream went away
                call.done(grpc.StatusCode.CANCELLED.name)
                hold.release()
                raise
            except Exception as exc:
                hold.release()
                call.done(status_and_message(exc)[0].name)
                await answers.put((_stream_error(exc, which), None))
                return
            call.done(grpc.StatusCode.OK.name)
            try:
                await answers.put((b"".join(fastwire.bulk_field(STREAM_RESPONSE, response)), hold))
            except BaseException:
                hold.release()
                raise

        async def read() -> None:
            share = self.service.share()
            async for data in requests:
                try:  # waits while this stream holds its share: it is read no further
                    hold = await share.reserve(len(data), "the request")
                except OverloadedError as exc:
                    await answers.put((_stream_error(exc, kpb.ModelInferResponse()), None))
                    continue
                await spawn(tasks, run(data, hold), hold.release)

        async with contextlib.aclosing(stream_answers(read, answers, tasks)) as sent:
            async for answer in sent:
                yield answer


def _stream_error(exc: Exception, which: Any) -> bytes:
    """A ModelStreamInferResponse answering one request with its error."""
    code, message = status_and_message(exc)
    answer = kpb.ModelStreamInferResponse(
        error_message=f"{code.name}: {message}", infer_response=which
    )
    return bytes(answer.SerializeToString())


ORT_TYPES = {"float": "float32", "double": "float64"}  # ONNX Runtime's element names


def _version() -> str:
    try:
        return importlib.metadata.version("splitinfer")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _datatype(port: Port) -> str:
    return DTYPES.get(port.dtype, "BYTES")


# field numbers of ModelInferRequest, InferInputTensor, ModelInferResponse and
# ModelStreamInferResponse that are read or written by hand
RAW_INPUT_CONTENTS, INPUTS, CONTENTS_FIELD = 7, 5, 5
RAW_OUTPUT_CONTENTS, STREAM_RESPONSE = 6, 2
# InferTensorContents: each typed field's number and its elements' wire type
TYPED_FIELDS = {
    "bool_contents": (1, 0),
    "int_contents": (2, 0),
    "int64_contents": (3, 0),
    "uint_contents": (4, 0),
    "uint64_contents": (5, 0),
    "fp32_contents": (6, 5),
    "fp64_contents": (7, 1),
}
_CONTENTS = fastwire.Layout(
    kpb.InferTensorContents, bulk=frozenset(n for n, _ in TYPED_FIELDS.values())
)
_INPUT = fastwire.Layout(kpb.ModelInferRequest.InferInputTensor, nested={CONTENTS_FIELD: _CONTENTS})
MODEL_INFER_REQUEST = fastwire.Layout(
    kpb.ModelInferRequest, bulk=frozenset({RAW_INPUT_CONTENTS}), nested={INPUTS: _INPUT}
)
VARINT_CHUNK = 1 << 20  # bytes of packed varints decoded per numpy pass


def _tensors(parts: fastwire.Parts) -> tuple[list[Encoded], list[int]]:
    """The request's inputs as raw Encoded tensors, and the indices of those sent as
    typed contents (their payloads are empty until ``_converted``). Raw payloads are
    views of the request; nothing is converted or copied here."""
    raw = parts.bulk.get(RAW_INPUT_CONTENTS, [])
    inputs = parts.nested.get(INPUTS, [])
    if raw and len(raw) != len(inputs):
        raise InvalidInputError(
            f"raw_input_contents has {len(raw)} entries for {len(inputs)} inputs"
        )
    tensors, typed = [], []
    for index, entry in enumerate(inputs):
        tensor = entry.message
        dtype = DATATYPES.get(tensor.datatype)
        if dtype is None:
            known = ", ".join(DATATYPES)
            raise InvalidInputError(
                f"input {shown(tensor.name)}: datatype {shown(tensor.datatype)} is not "
                f"supported ({known})"
            )
        shape = tuple(int(d) for d in tensor.shape)
        if any(d < 0 for d in shape):
            raise InvalidInputError(f"input {shown(tensor.name)}: a negative dimension")
        payload: bytes | memoryview = b""
        if raw:
            if CONTENTS_FIELD in entry.nested:
                raise InvalidInputError(
                    f"input {shown(tensor.name)} has contents as well as raw_input_contents"
                )
            wire_type, payload = raw[index]
            if wire_type != 2:
                raise InvalidInputError("raw_input_contents holds bytes")
        else:
            typed.append(index)
        tensors.append(Encoded(Codec.RAW, dtype, shape, payload, name=tensor.name))
    return tensors, typed


def _nbytes(tensor: Encoded) -> int:
    return math.prod(tensor.shape) * np.dtype(tensor.dtype).itemsize


def _converted(parts: fastwire.Parts, tensors: list[Encoded], typed: list[int]) -> list[Encoded]:
    """``tensors`` with the typed contents of the inputs ``typed`` as raw payloads."""
    inputs = parts.nested[INPUTS]
    tensors = list(tensors)
    for index in typed:
        entry, tensor = inputs[index], tensors[index]
        contents = entry.nested.get(CONTENTS_FIELD, [fastwire.Parts(None)])[-1]
        values = _typed_values(contents, entry.message.datatype, tensor)
        tensors[index] = Encoded(Codec.RAW, tensor.dtype, tensor.shape, values, name=tensor.name)
    return tensors


def _typed_values(contents: fastwire.Parts, datatype: str, tensor: Encoded) -> memoryview:
    """One input's typed contents as the bytes of its tensor. Packed and unpacked
    elements alike are read by numpy, a megabyte at a time (never one Python object
    per value), and checked: the count against the shape, each value against the
    dtype's range."""
    name = shown(tensor.name)
    field = CONTENTS.get(datatype)
    if field is None:
        raise InvalidInputError(f"input {name}: {datatype} travels in raw_input_contents only")
    number, element = TYPED_FIELDS[field]
    others = sorted(set(contents.bulk) - {number})
    if others:
        raise InvalidInputError(
            f"input {name} of datatype {datatype} has its values in {field}, but the "
            f"request also fills contents field {others[0]}"
        )
    pieces = contents.bulk.get(number, [])
    if any(wire_type not in (2, element) for wire_type, _ in pieces):
        raise InvalidInputError(f"input {name}: {field} holds values of another wire type")
    data = pieces[0][1] if len(pieces) == 1 else b"".join(view for _, view in pieces)
    count = math.prod(tensor.shape)
    dtype = np.dtype(tensor.dtype)
    if element == 0:
        values = _varints(data, count, name, field)
        if dtype.kind == "b":
            array = values != 0
        else:
            signed = values.view(np.int64) if dtype.kind == "i" else values
            low, high = np.iinfo(dtype).min, np.iinfo(dtype).max
            if count and (signed.min() < low or signed.max() > high):
                raise InvalidInputError(f"input {name}: a value is out of range for {dtype}")
            array = signed.astype(dtype)
    else:
        size = 4 if element == 5 else 8
        if len(data) != count * size:
            raise InvalidInputError(
                f"input {name}: {len(data) // size} values in contents for "
                f"{count} elements of shape {list(tensor.shape)}"
            )
        array = np.frombuffer(data, dtype="<f4" if size == 4 else "<f8").astype(dtype, copy=False)
    return memoryview(np.ascontiguousarray(array).reshape(-1).view(np.uint8))  # type: ignore[arg-type]


def _varints(data: bytes | memoryview, count: int, name: str, field: str) -> np.ndarray:
    """``count`` protobuf varints (packed) as uint64, decoded with numpy."""
    raw = np.frombuffer(data, dtype=np.uint8)
    out = np.empty(count, dtype=np.uint64)
    filled = pos = 0
    while pos < len(raw):
        block = raw[pos : pos + VARINT_CHUNK]
        ends = np.flatnonzero(block < 0x80)
        if not len(ends) or filled + len(ends) > count:
            what = "more values than" if len(ends) else "a truncated or overlong value for"
            raise InvalidInputError(
                f"input {name}: {field} holds {what} {count} elements of its shape"
            )
        starts = np.empty_like(ends)
        starts[0] = 0
        starts[1:] = ends[:-1] + 1
        lengths = ends - starts + 1
        longest = int(lengths.max())
        if longest > 10:
            raise InvalidInputError(f"input {name}: {field} holds a varint over 10 bytes")
        values = np.zeros(len(ends), dtype=np.uint64)
        for k in range(longest):
            at = np.flatnonzero(lengths > k)
            bits = (block[starts[at] + k] & 0x7F).astype(np.uint64)
            values[at] |= bits << np.uint64(7 * k)
        out[filled : filled + len(ends)] = values
        filled += len(ends)
        pos += int(ends[-1]) + 1
    if filled != count:
        raise InvalidInputError(
            f"input {name}: {filled} values in {field} for {count} elements of its shape"
        )
    return out


def _unimplemented(method: str) -> Callable[..., Any]:
    async def unimplemented(request: Any, context: grpc.aio.ServicerContext) -> Any:
        context.set_code(grpc.StatusCode.UNIMPLEMENTED)
        context.set_details(f"{SERVICE_NAME}/{method} is not implemented here")

    return unimplemented


def register_service(server: grpc.aio.Server, servicer: KServeServicer) -> None:
    """Every method of the service, registered like splitinfer.v1's (requests as bytes,
    read with bounded work; grpc's fast path); those splitinfer does not implement
    answer UNIMPLEMENTED. ModelInfer and ModelStreamInfer answer bytes too."""
    descriptor = kpb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}
    for method in descriptor.methods:
        response = getattr(kpb, method.output_type.name)
        behaviour = getattr(servicer, method.name, None) or _unimplemented(method.name)
        writes_bytes = method.name in ("ModelInfer", "ModelStreamInfer")
        options = {
            "request_deserializer": same,
            "response_serializer": same if writes_bytes else response.SerializeToString,
        }
        make = (
            grpc.stream_stream_rpc_method_handler
            if method.client_streaming
            else grpc.unary_unary_rpc_method_handler
        )
        handlers[method.name] = make(behaviour, **options)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    server.add_registered_method_handlers(SERVICE_NAME, handlers)
