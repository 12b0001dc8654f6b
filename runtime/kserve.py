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
import importlib.metadata
import math
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import onnx
from tritonclient.grpc import model_config_pb2 as mc
from tritonclient.grpc import service_pb2 as kpb

from runtime.batching import BatchOptions
from runtime.codec import Codec, Encoded
from runtime.errors import (
    InvalidInputError,
    NotFoundError,
    UnsupportedModelError,
)
from runtime.kserve_client import DATATYPES, DTYPES, model_name
from runtime.metrics import Call
from runtime.service import (
    Malformed,
    TailService,
    answer_queue,
    checked,
    lenient,
    respond,
    spawn,
    status_and_message,
    stream_answers,
)

SERVICE_NAME = "inference.GRPCInferenceService"
PROTOCOL = "kserve"  # the metrics' protocol label
VERSION = "1"
PLATFORM = "onnxruntime_onnx"

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
    batched: bool,
    batching: BatchOptions = BatchOptions(),
) -> mc.ModelConfig:
    """The Triton model configuration of one ONNX tail: inputs, outputs, dtypes and
    dims; ``batched`` (a dynamic batch dimension, and batching on): ``max_batch_size``
    and dynamic batching, dims without the batch."""
    batched = batched and batching.enabled
    config = mc.ModelConfig(
        name=name,
        platform=PLATFORM,
        backend="onnxruntime",
        max_batch_size=batching.max_batch if batched else 0,
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
            entry.dims.extend(port.dims[1:] if batched else port.dims)
    if batched:
        config.dynamic_batching.max_queue_delay_microseconds = int(batching.max_delay_ms * 1000)
    return config


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
        self, request: Any, context: grpc.aio.ServicerContext, *, token: bool = True
    ) -> None:
        if token:
            self.service.authorize(context)
        if isinstance(request, Malformed):
            raise InvalidInputError(request.message)

    # ---- health and metadata

    async def ServerLive(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        async def live() -> kpb.ServerLiveResponse:
            self._check(request, context, token=False)
            return kpb.ServerLiveResponse(live=True)

        return await respond(context, live())

    async def ServerReady(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        async def ready() -> kpb.ServerReadyResponse:
            self._check(request, context, token=False)
            return kpb.ServerReadyResponse(ready=True)

        return await respond(context, ready())

    async def ModelReady(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        async def ready() -> kpb.ModelReadyResponse:
            self._check(request, context)
            known = request.name in self.tails and request.version in ("", VERSION)
            return kpb.ModelReadyResponse(ready=known)

        return await respond(context, ready())

    async def ServerMetadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        async def metadata() -> kpb.ServerMetadataResponse:
            self._check(request, context)
            return kpb.ServerMetadataResponse(name="splitinfer", version=_version())

        return await respond(context, metadata())

    async def ModelMetadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        async def metadata() -> kpb.ModelMetadataResponse:
            self._check(request, context)
            self._tail(request.name, request.version)
            inputs, outputs = self._signature(request.name)
            tensor = kpb.ModelMetadataResponse.TensorMetadata
            return kpb.ModelMetadataResponse(
                name=request.name,
                versions=[VERSION],
                platform=PLATFORM,
                inputs=[tensor(name=p.name, datatype=_datatype(p), shape=p.dims) for p in inputs],
                outputs=[tensor(name=p.name, datatype=_datatype(p), shape=p.dims) for p in outputs],
            )

        return await respond(context, metadata())

    async def ModelConfig(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        async def config() -> kpb.ModelConfigResponse:
            self._check(request, context)
            tail = self._tail(request.name, request.version)
            inputs, outputs = self._signature(request.name)
            # what this server does: an exact one never batches
            batched = not self.host.exact and self.host.batch_axis_symbol(tail.model, tail.cut)
            made = triton_config(
                request.name,
                inputs,
                outputs,
                batched=bool(batched),
                batching=self.service.batching,
            )
            return kpb.ModelConfigResponse(config=made)

        return await respond(context, config())

    async def RepositoryIndex(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        async def index() -> kpb.RepositoryIndexResponse:
            self._check(request, context)
            entry = kpb.RepositoryIndexResponse.ModelIndex
            return kpb.RepositoryIndexResponse(
                models=[entry(name=n, version=VERSION, state="READY") for n in sorted(self.tails)]
            )

        return await respond(context, index())

    # ---- inference

    async def ModelInfer(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        call = self.service.metrics.call(PROTOCOL)

        async def infer() -> kpb.ModelInferResponse:
            self._check(request, context)
            return await self._infer(request, context, call)

        return await respond(context, infer(), call)

    async def _infer(
        self, request: Any, context: grpc.aio.ServicerContext, call: Call
    ) -> kpb.ModelInferResponse:
        tail = self._tail(request.model_name, request.model_version)
        call.label(tail.model, tail.cut, Codec.RAW.value)
        tensors = _tensors(request)
        call.bytes_in = sum(len(t.payload) for t in tensors)
        _, outputs = self._signature(request.model_name)
        wanted = [o.name for o in request.outputs] or [o.name for o in outputs]
        known = {o.name: o for o in outputs}
        if len(set(wanted)) != len(wanted):
            raise InvalidInputError(f"an output is requested twice: {wanted}")
        for name in wanted:
            if name not in known:
                raise InvalidInputError(
                    f"model {request.model_name!r} has no output {name!r}; "
                    f"it has {', '.join(sorted(known))}"
                )
            if known[name].dtype not in DTYPES:  # before computing anything
                raise UnsupportedModelError(
                    f"output {name!r} of type {known[name].dtype} has no KServe v2 datatype"
                )
        answer = await self.service.infer(tail.model, tail.cut, tensors, None, context)
        by_name = {o.name: o for o in answer.outputs}
        response = kpb.ModelInferResponse(
            model_name=request.model_name, model_version=VERSION, id=request.id
        )
        server_ms = answer.queue_ms + answer.decode_ms + answer.compute_ms + answer.encode_ms
        response.parameters["server_ms"].double_param = server_ms
        for name in wanted:
            output = by_name[name]
            response.outputs.add(name=name, datatype=DTYPES[output.dtype], shape=output.shape)
            response.raw_output_contents.append(bytes(output.payload))
        call.bytes_out = sum(len(b) for b in response.raw_output_contents)
        return response

    async def ModelStreamInfer(
        self, requests: AsyncIterator[Any], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[kpb.ModelStreamInferResponse]:
        """Answers in the order they finish, each with its request's id; an error answers
        one request (``error_message``) and the stream goes on."""
        await respond(context, checked(self.service.authorize, context))
        answers = answer_queue()
        tasks: set[asyncio.Task[None]] = set()

        async def run(request: Any) -> None:
            call = self.service.metrics.call(PROTOCOL)
            try:
                if isinstance(request, Malformed):
                    raise InvalidInputError(request.message)
                response = await self._infer(request, context, call)
            except asyncio.CancelledError:  # the stream went away
                call.done(grpc.StatusCode.CANCELLED.name)
                raise
            except Exception as exc:
                code, message = status_and_message(exc)
                call.done(code.name)
                text = f"{code.name}: {message}"
                which = kpb.ModelInferResponse()  # which request failed, when it parsed
                if not isinstance(request, Malformed):
                    which.model_name, which.id = request.model_name, request.id
                await answers.put(
                    kpb.ModelStreamInferResponse(error_message=text, infer_response=which)
                )
                return
            call.done(grpc.StatusCode.OK.name)
            await answers.put(kpb.ModelStreamInferResponse(infer_response=response))

        async def read() -> None:
            async for request in requests:
                await spawn(tasks, run(request))

        async for answer in stream_answers(read, answers, tasks):
            yield answer


ORT_TYPES = {"float": "float32", "double": "float64"}  # ONNX Runtime's element names


def _version() -> str:
    try:
        return importlib.metadata.version("splitinfer")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _datatype(port: Port) -> str:
    return DTYPES.get(port.dtype, "BYTES")


def _tensors(request: Any) -> list[Encoded]:
    """The request's inputs as raw Encoded tensors (their sizes are checked later,
    against the cut and the limits, before anything is decoded)."""
    raw = list(request.raw_input_contents)
    if raw and len(raw) != len(request.inputs):
        raise InvalidInputError(
            f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} inputs"
        )
    tensors = []
    for index, tensor in enumerate(request.inputs):
        dtype = DATATYPES.get(tensor.datatype)
        if dtype is None:
            known = ", ".join(DATATYPES)
            raise InvalidInputError(
                f"input {tensor.name!r}: datatype {tensor.datatype!r} is not supported ({known})"
            )
        shape = tuple(int(d) for d in tensor.shape)
        if any(d < 0 for d in shape):
            raise InvalidInputError(f"input {tensor.name!r}: negative dimension in {list(shape)}")
        if raw:
            if tensor.HasField("contents"):
                raise InvalidInputError(
                    f"input {tensor.name!r} has contents as well as raw_input_contents"
                )
            payload: bytes | memoryview = raw[index]
        else:
            payload = _from_contents(tensor, dtype, shape)
        tensors.append(Encoded(Codec.RAW, dtype, shape, payload, name=tensor.name))
    return tensors


def _from_contents(tensor: Any, dtype: str, shape: Sequence[int]) -> bytes:
    field = CONTENTS.get(tensor.datatype)
    if field is None:
        raise InvalidInputError(
            f"input {tensor.name!r}: {tensor.datatype} travels in raw_input_contents only"
        )
    values = getattr(tensor.contents, field)
    count = math.prod(shape)
    if len(values) != count:
        raise InvalidInputError(
            f"input {tensor.name!r}: {len(values)} values in contents for shape {list(shape)}"
        )
    kind = np.dtype(dtype)
    if kind.kind in "iu" and len(values):  # numpy before 2 wraps out-of-range values
        low, high = np.iinfo(kind).min, np.iinfo(kind).max
        if min(values) < low or max(values) > high:
            raise InvalidInputError(f"input {tensor.name!r}: a value is out of range for {dtype}")
    return np.asarray(values, dtype=kind).tobytes()


def _unimplemented(method: str) -> Callable[..., Any]:
    async def refuse(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(
            grpc.StatusCode.UNIMPLEMENTED, f"{SERVICE_NAME}/{method} is not implemented here"
        )

    return refuse


def register_service(server: grpc.aio.Server, servicer: KServeServicer) -> None:
    """Every method of the service, registered like splitinfer.v1's (lenient parsing,
    grpc's fast path); those splitinfer does not implement answer UNIMPLEMENTED."""
    descriptor = kpb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}
    for method in descriptor.methods:
        request = getattr(kpb, method.input_type.name)
        response = getattr(kpb, method.output_type.name)
        behaviour = getattr(servicer, method.name, None) or _unimplemented(method.name)
        if method.client_streaming:
            handlers[method.name] = grpc.stream_stream_rpc_method_handler(
                behaviour,
                request_deserializer=lenient(request),
                response_serializer=response.SerializeToString,
            )
        else:
            handlers[method.name] = grpc.unary_unary_rpc_method_handler(
                behaviour,
                request_deserializer=lenient(request),
                response_serializer=response.SerializeToString,
            )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    server.add_registered_method_handlers(SERVICE_NAME, handlers)
