"""The cloud server: gRPC (grpc.aio) on top of runtime.cloud.tails.

``create_server(address, host)`` returns the started-to-be server and the port
it bound; ``serve(...)`` runs one until SIGTERM or SIGINT and then shuts down
gracefully. The servicer is thin: each RPC converts messages, asks the engine,
converts back. Errors map to status codes in one place (runtime.status);
anything unexpected is INTERNAL with the traceback logged, never sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import inspect
import logging
import signal
import socket
import sys
import threading
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2
from grpc_reflection.v1alpha import reflection, reflection_pb2

from runtime import fastwire
from runtime.cloud.batching import BatchOptions
from runtime.cloud.budget import Hold, Share, Trimmer, keep_trimmed, limit_arenas
from runtime.cloud.metrics import Call, Metrics
from runtime.cloud.service import (
    INLINE_BYTES,
    MAX_PENDING_STREAM_REQUESTS,
    SENT_COPIES,
    TailService,
    answer_queue,
    decoded_bytes,
    refuse,
    respond,
    same,
    spawn,
    status_and_message,
    stream_answers,
    tensor_bytes,
)
from runtime.cloud.tails import HostLimits, ServedModel, TailHost
from runtime.codec import Codec, CodecSpec, DeltaDecoder, Encoded, encode
from runtime.engine import SessionOptions
from runtime.errors import (
    InvalidInputError,
    OverloadedError,
    shown,
)
from runtime.protocol import spec_to_proto, tensor_from_proto, tensor_to_proto
from runtime.wire import splitinfer_pb2 as pb
from runtime.wire import splitinfer_pb2_grpc as pb_grpc

log = logging.getLogger("splitinfer.server")

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["SplitInference"].full_name
PROTOCOL = "splitinfer"  # the metrics' protocol label
PROTOCOLS = (PROTOCOL, "kserve")  # what a server speaks by default
_CODE_NAMES = {code.value[0]: code.name for code in grpc.StatusCode}


@dataclass(frozen=True, kw_only=True)
class Security:
    """TLS (``cert`` and ``key``, PEM bytes), mutual TLS (``client_ca`` too) and a
    bearer token; all optional."""

    cert: bytes | None = None
    key: bytes | None = None
    client_ca: bytes | None = None
    token: str | None = None


class SplitInferenceServicer(pb_grpc.SplitInferenceServicer):
    """splitinfer.v1.SplitInference over a TailService. Every method takes the request's
    bytes and reads them with runtime.fastwire (bounded work, payloads not copied)."""

    def __init__(self, service: TailService) -> None:
        self.service = service
        self.host = service.host

    async def Infer(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes | None:
        # bytes in, bytes out: runtime.fastwire reads and writes payloads without copies
        call = self.service.metrics.call(PROTOCOL)
        return await respond(context, self._infer_call(request, context, call), call)

    async def _infer_call(
        self, request: bytes, context: grpc.aio.ServicerContext, call: Call
    ) -> bytes:
        self.service.authorize(context)
        hold = self.service.begin(context, len(request), "the request")
        header, tensors = fastwire.read(request)
        call.bytes_in = sum(len(t.payload) for t in tensors)
        response, outputs = await self._infer(header, tensors, context, call, hold)
        call.bytes_out = size = sum(len(o.payload) for o in outputs)
        data = await self.service.offload(lambda: fastwire.write(response, outputs), size)
        hold.grow(SENT_COPIES * len(data), "the answer")
        return data

    async def _infer(
        self,
        request: pb.InferRequest,
        tensors: list[Encoded],
        context: grpc.aio.ServicerContext,
        call: Call,
        hold: Hold,
        *,
        stream: bool = False,
    ) -> tuple[pb.InferResponse, list[Encoded]]:
        """Run one request: the response's small fields, and the encoded outputs."""
        codec = tensors[0].codec.value if tensors else "raw"
        call.label(request.model, request.cut, codec)
        response_codec = CodecSpec.parse(request.response_codec or "raw")
        answer = await self.service.infer(
            request.model,
            request.cut,
            tensors,
            response_codec,
            context,
            hold,
            stream=stream,
            call=call,
        )
        response = pb.InferResponse(
            model=request.model,
            cut=request.cut,
            request_id=request.request_id,
            timing=pb.ServerTiming(
                queue_ms=answer.queue_ms,
                decode_ms=answer.decode_ms,
                compute_ms=answer.compute_ms,
                encode_ms=answer.encode_ms,
            ),
        )
        return response, answer.outputs

    async def InferStream(
        self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.StreamResponse]:
        answers = self.service.stream(context, lambda: self._stream(requests, context))
        async with contextlib.aclosing(answers):  # its tasks and holds end with the call
            async for answer in answers:
                yield answer

    async def _stream(
        self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext
    ) -> AsyncGenerator[pb.StreamResponse, None]:
        answers = answer_queue()
        tasks: set[asyncio.Task[None]] = set()
        incoming = _Incoming()
        share = self.service.share()
        deltas = _Deltas(self.service, self.host.limits.max_tensor_bytes)

        async def run(done: _Assembly) -> None:
            call = self.service.metrics.call(PROTOCOL)
            request, hold = done.request, done.hold
            handed = False
            try:
                call.bytes_in = sum(done.sizes)
                tensors = done.take()
                response, outputs = await self._infer(
                    request, tensors, context, call, hold, stream=True
                )
                call.bytes_out = size = sum(len(o.payload) for o in outputs)
                hold.grow(SENT_COPIES * size, "the answer")
                messages = await self.service.offload(
                    lambda: _chunked(response, outputs, self.host.limits.max_message_bytes // 2),
                    size,
                    stream=True,
                )
            except asyncio.CancelledError:  # the stream went away
                call.done(grpc.StatusCode.CANCELLED.name)
                hold.release()
                raise
            except Exception as exc:
                hold.release()
                error = _stream_error(request.request_id, exc)
                call.done(_CODE_NAMES.get(error.error.code, "UNKNOWN"))
                await answers.put((error, None))
                return
            call.done("OK")
            try:
                for message in messages[:-1]:
                    await answers.put((message, None))
                await answers.put((messages[-1], hold))  # released once the last is sent
                handed = True
            finally:
                if not handed:
                    hold.release()

        async def read() -> None:
            async for data in requests:
                try:
                    done = await self._assemble(data, incoming, share)
                except _Refused as refused:  # this request is answered; the stream goes on
                    await answers.put((_stream_error(refused.request_id, refused.error), None))
                    continue
                if done is not None and deltas.needed(done.request):
                    try:  # here, in the order the frames came: each needs the one before
                        done.tensors = await deltas.decode(done)
                    except Exception as exc:
                        done.hold.release()
                        await answers.put((_stream_error(done.request.request_id, exc), None))
                        continue
                if done is not None:
                    await spawn(tasks, run(done), done.hold.release)
            for request_id in list(incoming.pending):
                incoming.drop(request_id)
                ended = InvalidInputError("the stream ended mid-request")
                await answers.put((_stream_error(request_id, ended), None))

        try:
            async with contextlib.aclosing(stream_answers(read, answers, tasks)) as sent:
                async for answer in sent:
                    yield answer
        finally:
            incoming.close()
            deltas.close()

    async def _assemble(self, data: bytes, incoming: _Incoming, share: Share) -> _Assembly | None:
        """Add one stream message; returns a request once all its bytes have arrived.
        A request's header is checked in full (model, cut, names, dtypes, shapes, sizes)
        and its bytes reserved in the stream's share of the memory budget before any
        chunk is kept. _Refused
        for a message that does not parse or a request refused (answered once: the
        chunks that follow a refused header are dropped)."""
        request_id = ""
        try:
            parts = fastwire.parse(data, fastwire.STREAM_REQUEST)
            kinds = [k for k in (1, 2) if k in parts.nested]
            if len(kinds) != 1 or len(parts.nested[kinds[0]]) != 1:
                raise InvalidInputError("a stream message holds exactly one request or one chunk")
            if kinds[0] == 2:
                chunk_parts = parts.nested[2][0]
                request_id = chunk_parts.message.request_id
                return incoming.add(
                    request_id,
                    chunk_parts.message.tensor,
                    chunk_parts.payload(fastwire.CHUNK_DATA_FIELD),
                )
            request_parts = parts.nested[1][0]
            request = request_parts.message
            request_id = request.request_id
            tensors = fastwire.tensors_of(request_parts)
            request.tensors.extend(t.message for t in request_parts.nested.get(4, []))
            incoming.check_new(request_id)
            sizes = self._declared_sizes(request, tensors)
            # waits while this stream holds its share of the memory: it is read no further
            hold = await share.reserve(sum(sizes), "a stream request's tensors")
            assembly = _Assembly(request, [bytearray() for _ in tensors], sizes, hold)
            for index, tensor in enumerate(tensors):  # sizes checked: each fits
                assembly.add(index, tensor.payload)
            return incoming.start(assembly)
        except Exception as exc:
            if request_id:
                incoming.refuse(request_id)
            raise _Refused(request_id, exc) from None

    def _declared_sizes(self, request: pb.InferRequest, tensors: list[Encoded]) -> list[int]:
        """Each tensor's payload size as its header declares it, after checking the
        request against the cut as if it had arrived whole."""
        self.service.check(request.model, request.cut, tensors)
        limit = self.host.limits.max_tensor_bytes
        sizes = []
        for message, tensor in zip(request.tensors, tensors, strict=True):
            size = message.payload_size or len(tensor.payload)
            if size > limit or len(tensor.payload) > size:
                raise InvalidInputError(
                    f"tensor {shown(tensor.name)}: payload_size {message.payload_size} is "
                    f"inconsistent or over the limit of {limit} bytes"
                )
            expected = tensor_bytes([tensor])
            if tensor.codec is Codec.RAW and size != expected:
                raise InvalidInputError(
                    f"tensor {shown(tensor.name)}: a raw payload of {size} bytes, but its "
                    f"shape and dtype need {expected}"
                )
            sizes.append(size)
        return sizes

    async def Describe(self, request: bytes, context: grpc.aio.ServicerContext) -> Any:
        async def describe() -> pb.DescribeResponse:
            self.service.authorize(context)
            wanted = fastwire.parse(request, _DESCRIBE_REQUEST).message
            names = [wanted.model] if wanted.model else sorted(self.host.models)
            models = [model_info(self.host.model(n), self.host.limits) for n in names]
            return pb.DescribeResponse(models=models)

        return await respond(context, describe())

    async def Probe(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes | None:
        async def probe() -> bytes:
            self.service.authorize(context)
            start = time.perf_counter()
            parts = fastwire.parse(request, fastwire.PROBE_REQUEST)
            size = parts.message.response_size
            limit = self.host.limits.max_probe_bytes
            received = len(parts.payload(1))
            if size > limit or received > limit:
                raise InvalidInputError(
                    f"a probe sending {received} bytes and asking for {size} is over the "
                    f"limit of {limit} bytes each way"
                )
            hold = self.service.begin(context, len(request), "the probe")
            hold.grow(SENT_COPIES * size, "the probe's answer")
            del parts
            small = pb.ProbeResponse(
                received=received, server_ms=(time.perf_counter() - start) * 1000
            )
            return b"".join([small.SerializeToString(), *fastwire.bulk_field(1, bytes(size))])

        return await respond(context, probe())


_DESCRIBE_REQUEST = fastwire.Layout(pb.DescribeRequest)
MAX_REFUSED_IDS = 1024  # per stream: ids whose late chunks are dropped quietly


class _Deltas:
    """A stream's delta-codec references (runtime.codec.DeltaDecoder), one per (model,
    cut, tensor), held in the server's memory budget for as long as the stream lasts.
    Frames are decoded in the order they arrived, each against the one before."""

    def __init__(self, service: TailService, max_bytes: int) -> None:
        self.service = service
        self.decoder = DeltaDecoder(max_bytes=max_bytes)
        self.hold = service.budget.hold()

    @staticmethod
    def needed(request: pb.InferRequest) -> bool:
        return any(t.codec.startswith("delta+") for t in request.tensors)

    async def decode(self, done: _Assembly) -> list[Encoded]:
        """The request's tensors, delta frames decoded (as raw tensors); a frame whose
        reference is missing or whose memory does not fit is refused, and its slot
        forgotten: the sender's next key frame starts it again."""
        request = done.request
        tensors = done.take()
        slots = [f"{request.model}/{request.cut}/{t.name}" for t in tensors]

        def work() -> list[Encoded]:
            return [
                encode(self.decoder.decode(t, slot=slot), name=t.name) if t.codec.delta else t
                for t, slot in zip(tensors, slots, strict=True)
            ]

        before = self.decoder.nbytes
        size = decoded_bytes(tensors)
        decoded = await self.service.offload(work, size, stream=True)
        grown = self.decoder.nbytes - before
        try:
            if grown > 0:
                self.hold.grow(grown, "the stream's delta references")
            elif grown < 0:
                self.hold.shrink(-grown)
        except Exception:
            for slot in slots:
                self.decoder.reset(slot)
            self.hold.shrink(before - self.decoder.nbytes)
            raise
        return decoded

    def close(self) -> None:
        self.decoder.reset()
        self.hold.release()


class _Refused(Exception):
    """One stream message refused, with the request it belonged to (when known)."""

    def __init__(self, request_id: str, error: Exception) -> None:
        super().__init__(str(error))
        self.request_id = request_id
        self.error = error


class _Incoming:
    """A stream's requests whose tensors are still arriving, each with its memory hold,
    and the ids of requests refused lately: the chunks that follow a refused header
    are dropped, so that each request gets one answer."""

    def __init__(self) -> None:
        self.pending: dict[str, _Assembly] = {}
        self.refused: dict[str, None] = {}  # insertion-ordered: the oldest goes first

    def check_new(self, request_id: str) -> None:
        if not request_id:
            raise InvalidInputError("a stream request needs a request_id")
        if request_id in self.pending:
            raise InvalidInputError(f"request_id {shown(request_id)} is already in flight")
        if len(self.pending) >= MAX_PENDING_STREAM_REQUESTS:
            raise OverloadedError(
                f"more than {MAX_PENDING_STREAM_REQUESTS} incomplete requests on this stream"
            )

    def start(self, assembly: _Assembly) -> _Assembly | None:
        """A checked header, its first bytes added: the request, when that was all."""
        request_id = assembly.request.request_id
        self.refused.pop(request_id, None)
        self.pending[request_id] = assembly
        return self._ready(request_id)

    def add(self, request_id: str, tensor: int, data: bytes | memoryview) -> _Assembly | None:
        """One chunk: the request, once it is complete."""
        assembly = self.pending.get(request_id)
        if assembly is None:
            if request_id in self.refused:
                return None  # its header was refused and answered already
            raise InvalidInputError(f"chunk for unknown request_id {shown(request_id)}")
        problem = assembly.add(tensor, data)
        if problem is not None:
            raise InvalidInputError(problem)
        return self._ready(request_id)

    def _ready(self, request_id: str) -> _Assembly | None:
        if self.pending[request_id].complete():
            return self.pending.pop(request_id)
        return None

    def refuse(self, request_id: str) -> None:
        self.drop(request_id)
        self.refused[request_id] = None
        while len(self.refused) > MAX_REFUSED_IDS:
            del self.refused[next(iter(self.refused))]

    def drop(self, request_id: str) -> None:
        assembly = self.pending.pop(request_id, None)
        if assembly is not None:
            assembly.hold.release()

    def close(self) -> None:
        for request_id in list(self.pending):
            self.drop(request_id)


def _chunked(
    response: pb.InferResponse, outputs: Sequence[Encoded], chunk_bytes: int
) -> list[pb.StreamResponse]:
    """A response as stream messages, outputs beyond ``chunk_bytes`` sent in chunks."""
    rest: list[tuple[int, memoryview]] = []
    for index, output in enumerate(outputs):
        payload = memoryview(output.payload).cast("B")
        message = tensor_to_proto(output, response.outputs.add(), payload=False)
        message.payload = bytes(payload[:chunk_bytes])
        if len(payload) > chunk_bytes:
            rest.append((index, payload[chunk_bytes:]))
            message.payload_size = len(payload)
    messages = [pb.StreamResponse(response=response)]
    for index, data in rest:
        for offset in range(0, len(data), chunk_bytes):
            chunk = pb.Chunk(
                request_id=response.request_id,
                tensor=index,
                data=bytes(data[offset : offset + chunk_bytes]),
            )
            messages.append(pb.StreamResponse(chunk=chunk))
    return messages


def _stream_error(request_id: str, exc: BaseException) -> pb.StreamResponse:
    code, message = status_and_message(exc)
    return pb.StreamResponse(
        error=pb.StreamError(request_id=request_id, code=code.value[0], message=message)
    )


@dataclass
class _Assembly:
    """A stream request whose tensors are still arriving, and its memory hold."""

    request: pb.InferRequest
    payloads: list[bytearray]
    sizes: list[int]
    hold: Hold
    tensors: list[Encoded] = field(default_factory=list)  # decoded before it ran (delta)

    def add(self, tensor: int, data: bytes | memoryview) -> str | None:
        """Append one chunk of tensor ``tensor``; what is wrong with it, or None."""
        if tensor >= len(self.payloads):
            return f"chunk for tensor {tensor}, but the request has {len(self.payloads)}"
        buffer = self.payloads[tensor]
        if len(buffer) + len(data) > self.sizes[tensor]:
            return f"chunks for tensor {tensor} exceed its payload_size {self.sizes[tensor]}"
        buffer.extend(data)
        return None

    def complete(self) -> bool:
        return all(len(p) == s for p, s in zip(self.payloads, self.sizes, strict=True))

    def take(self) -> list[Encoded]:
        """The request's tensors (decoded ones, when delta frames were), once: the
        assembly lets go of them."""
        tensors = self.tensors or [
            tensor_from_proto(t, memoryview(p))
            for t, p in zip(self.request.tensors, self.payloads, strict=True)
        ]
        del self.payloads[:]
        self.tensors = []
        return tensors


def register_service(server: grpc.aio.Server, servicer: SplitInferenceServicer) -> None:
    """The service's method handlers, registered by hand: every request reaches its
    method as bytes, which runtime.fastwire reads with bounded work (grpc would parse
    it with protobuf on the event loop, at any size, and answer bytes that do not
    parse with UNKNOWN). Infer and Probe answer bytes too. (An aio interceptor could
    do it for every service, but puts every call on grpc's slow generic path: about
    3 ms per MiB here.)"""
    serialize = pb.StreamResponse.SerializeToString
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {
        "Infer": grpc.unary_unary_rpc_method_handler(
            servicer.Infer, request_deserializer=same, response_serializer=same
        ),
        "InferStream": grpc.stream_stream_rpc_method_handler(
            servicer.InferStream, request_deserializer=same, response_serializer=serialize
        ),
        "Describe": grpc.unary_unary_rpc_method_handler(
            servicer.Describe,
            request_deserializer=same,
            response_serializer=pb.DescribeResponse.SerializeToString,
        ),
        "Probe": grpc.unary_unary_rpc_method_handler(
            servicer.Probe, request_deserializer=same, response_serializer=same
        ),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    # registered methods take grpc's fast path (a generic handler alone costs ~3 ms/MiB)
    server.add_registered_method_handlers(SERVICE_NAME, handlers)


def register_standard_services(
    server: grpc.aio.Server,
    health_servicer: health.aio.HealthServicer,
    reflecting: reflection.aio.ReflectionServicer,
) -> None:
    """grpc's health and reflection services, registered like ours: a request that
    does not parse is refused with INVALID_ARGUMENT (grpc would answer UNKNOWN)."""
    for module, name, servicer in (
        (health_pb2, "Health", health_servicer),
        (reflection_pb2, "ServerReflection", reflecting),
    ):
        service = module.DESCRIPTOR.services_by_name[name]
        handlers = {
            method.name: _lenient_handler(
                method,
                getattr(servicer, method.name),
                getattr(module, method.input_type.name),
                getattr(module, method.output_type.name),
            )
            for method in service.methods
        }
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(service.full_name, handlers),)
        )


@dataclass(frozen=True)
class Malformed:
    """What request bytes that do not parse become, so that the RPC can refuse them."""

    message: str


def lenient(message_class: Any, limit: int = INLINE_BYTES) -> Callable[[bytes], Any]:
    """A deserializer that never raises: bytes that do not parse, or more of them than
    any request of ``message_class`` needs (parsed on the event loop), are Malformed."""

    def parse(data: bytes) -> Any:
        name = message_class.__name__
        if len(data) > limit:
            return Malformed(f"the request is {len(data)} bytes; a {name} takes at most {limit}")
        try:
            return message_class.FromString(data)
        except Exception as exc:
            text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            return Malformed(f"the request is not a valid {name}: {text}")

    return parse


def _lenient_handler(
    method: Any, behaviour: Any, request: Any, response: Any
) -> grpc.RpcMethodHandler[Any, Any]:
    """A handler for ``behaviour`` (a servicer's coroutine or async generator) that
    parses requests leniently and refuses the ones that do not parse."""
    options = {
        "request_deserializer": lenient(request),
        "response_serializer": response.SerializeToString,
    }

    def refused(request: Any, context: grpc.aio.ServicerContext) -> bool:
        if isinstance(request, Malformed):
            refuse(context, InvalidInputError(request.message))
            return True
        return False

    if method.client_streaming:

        async def parsed(requests: AsyncIterator[Any], context: Any) -> AsyncIterator[Any]:
            async for request in requests:
                if refused(request, context):
                    return  # the servicer sees the end of its requests; the status stays
                yield request

        async def streaming(requests: AsyncIterator[Any], context: Any) -> AsyncIterator[Any]:
            async for answer in behaviour(parsed(requests, context), context):
                yield answer

        async def collecting(requests: AsyncIterator[Any], context: Any) -> Any:
            return await behaviour(parsed(requests, context), context)

        if method.server_streaming:
            return grpc.stream_stream_rpc_method_handler(streaming, **options)
        return grpc.stream_unary_rpc_method_handler(collecting, **options)
    if inspect.isasyncgenfunction(behaviour):

        async def generating(request: Any, context: Any) -> AsyncIterator[Any]:
            if refused(request, context):
                return
            async for answer in behaviour(request, context):
                yield answer

        return grpc.unary_stream_rpc_method_handler(generating, **options)

    async def answering(request: Any, context: Any) -> Any:  # or writing, as Watch does
        if refused(request, context):
            return None
        return await behaviour(request, context)

    make = (
        grpc.unary_stream_rpc_method_handler
        if method.server_streaming
        else grpc.unary_unary_rpc_method_handler
    )
    return make(answering, **options)


async def create_server(
    address: str,
    host: TailHost,
    *,
    security: Security = Security(),
    batching: BatchOptions = BatchOptions(),
    metrics: Metrics | None = None,
    protocols: Sequence[str] = PROTOCOLS,
    service: TailService | None = None,
) -> tuple[grpc.aio.Server, int]:
    """A gRPC server for ``host`` bound to ``address`` ("127.0.0.1:0" takes a free
    port); returns it, not started, and the port it got. ``protocols``: "splitinfer"
    (splitinfer.v1) and "kserve" (KServe v2, inference.GRPCInferenceService).
    ``service``: the TailService to serve (one made for ``host`` by default), to share
    it with the REST endpoint (runtime.cloud.rest)."""
    from runtime.cloud import kserve

    unknown = set(protocols) - set(PROTOCOLS)
    if unknown or not protocols:
        raise ValueError(f"protocols must be among {', '.join(PROTOCOLS)}; got {sorted(unknown)}")
    server = grpc.aio.server(options=transport_options(host.limits))
    if service is None:
        service = TailService(host, token=security.token, batching=batching, metrics=metrics)
    names = []
    if PROTOCOL in protocols:
        register_service(server, SplitInferenceServicer(service))
        names.append(SERVICE_NAME)
    if "kserve" in protocols:
        kserve.register_service(server, kserve.KServeServicer(service))
        names.append(kserve.SERVICE_NAME)
    health_servicer = health.aio.HealthServicer()
    for name in ("", *names):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    reflecting = reflection.aio.ReflectionServicer(
        (*names, health.SERVICE_NAME, reflection.SERVICE_NAME)
    )
    register_standard_services(server, health_servicer, reflecting)
    if security.cert is not None or security.key is not None:
        if security.cert is None or security.key is None:
            raise ValueError("TLS needs both a certificate and a key")
        credentials = grpc.ssl_server_credentials(
            [(security.key, security.cert)],
            root_certificates=security.client_ca,
            require_client_auth=security.client_ca is not None,
        )
        add = lambda: server.add_secure_port(address, credentials)  # noqa: E731
    else:
        add = lambda: server.add_insecure_port(address)  # noqa: E731
    check_address(address)
    try:
        port = add()
    except RuntimeError:  # grpc's "Failed to bind": the check above saw the usual causes
        port = 0
    if port == 0:
        raise OSError(f"cannot listen on {address}")
    return server, port


def transport_options(limits: HostLimits) -> list[tuple[str, int]]:
    """gRPC's settings for a server that faces clients it does not trust."""
    return [
        ("grpc.max_receive_message_length", limits.max_message_bytes),
        ("grpc.max_send_message_length", max(limits.max_answer_bytes, limits.max_message_bytes)),
        # a port is this server's alone: with SO_REUSEPORT (grpc's default) a second
        # server on it would start and take part of this one's connections
        ("grpc.so_reuseport", 0),
        # calls at once on one connection; grpc's overload protection (on by default)
        # counts a reset stream until it is freed, so that a client opening and resetting
        # streams (HTTP/2 rapid reset) is refused new ones instead of piling them up
        ("grpc.max_concurrent_streams", limits.max_calls_per_connection),
        # what gRPC buffers of a call's incoming bytes before the handler reads them: a
        # fixed window, not one grown to the link's bandwidth-delay product (up to
        # megabytes per stream, which streams that send and never read would pile up)
        ("grpc.http2.bdp_probe", 0),
        ("grpc.http2.lookahead_bytes", limits.stream_window_bytes),
        # keepalive pings: a client may ping once a minute with no call open, more often
        # only during calls; two pings too many end the connection (ENHANCE_YOUR_CALM)
        ("grpc.http2.min_recv_ping_interval_without_data_ms", 60_000),
        ("grpc.http2.max_ping_strikes", 2),
        ("grpc.keepalive_permit_without_calls", 1),
    ]


def check_address(address: str) -> None:
    """OSError, saying why, when ``address`` (HOST:PORT) cannot be listened on: a port
    out of range, a name that does not resolve, an address that is not this
    machine's, or a port in use. grpc would only log a line of its own and fail."""
    host, sep, port_text = address.rpartition(":")
    if not sep or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise OSError(f"cannot listen on {address}: the port must be a number from 0 to 65535")
    port = int(port_text)
    host = host.strip("[]")
    try:
        found = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise OSError(f"cannot listen on {address}: {host!r} does not resolve ({exc})") from None
    family, kind, protocol, _, where = found[0]
    with socket.socket(family, kind, protocol) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(where)
        except OSError as exc:
            why = {
                errno.EADDRINUSE: "the port is in use (another server listens on it)",
                errno.EADDRNOTAVAIL: "the address is not one of this machine's",
                errno.EACCES: "permission denied (a port below 1024 needs privileges)",
            }.get(exc.errno or 0, exc.strerror or str(exc))
            raise OSError(f"cannot listen on {address}: {why}") from None


def model_info(served: ServedModel, limits: HostLimits) -> pb.ModelInfo:
    """What Describe says of one hosted model: its tensors, cuts, codecs and limits."""
    manifest = served.manifest
    return pb.ModelInfo(
        name=manifest.model,
        sha256=manifest.sha256,
        inputs=[spec_to_proto(s) for s in manifest.inputs],
        outputs=[spec_to_proto(s) for s in manifest.outputs],
        cuts=[
            pb.CutInfo(
                id=cut.id,
                tensors=[spec_to_proto(t) for t in cut.tensors],
                outputs=list(cut.tail_outputs),
                device_outputs=list(cut.head_outputs),
                served=cut.id in served.sessions,
            )
            for cut in manifest.cuts
        ],
        codecs=[c.value for c in Codec],
        max_message_bytes=limits.max_message_bytes,
    )


@dataclass
class Started:
    """A gRPC server, not started yet, and the REST endpoint beside it when asked for."""

    server: grpc.aio.Server
    port: int
    service: TailService
    http: Any = None  # aiohttp's AppRunner
    http_port: int | None = None

    async def stop(self, grace_s: float | None) -> None:
        await self.server.stop(grace_s)
        if self.http is not None:
            await self.http.cleanup()


async def start_servers(
    address: str,
    host: TailHost,
    *,
    security: Security,
    batching: BatchOptions,
    metrics: Metrics,
    protocols: Sequence[str],
    http_port: int | None = None,
) -> Started:
    """The gRPC server on ``address`` and, with ``http_port`` (0: a free port), KServe
    v2 REST on the same host, serving one TailService; REST listens at once, gRPC
    once ``server.start()`` is awaited."""
    from runtime.cloud import kserve, rest

    service = TailService(host, token=security.token, batching=batching, metrics=metrics)
    server, port = await create_server(
        address,
        host,
        security=security,
        batching=batching,
        metrics=metrics,
        protocols=protocols,
        service=service,
    )
    started = Started(server, port, service)
    if http_port is not None:
        host_name = address.rsplit(":", 1)[0].strip("[]")
        check_address(f"{address.rsplit(':', 1)[0]}:{http_port}")
        started.http, started.http_port = await rest.start(
            kserve.KServeServicer(service), host_name, http_port
        )
    return started


class BackgroundServer:
    """A server on its own event loop thread, for programs that are not asyncio
    (the demo, tests): started on construction, ``stop()`` when done. With ``http``,
    KServe v2 REST too, at ``http_target``."""

    def __init__(
        self,
        host: TailHost,
        *,
        address: str = "127.0.0.1:0",
        security: Security | None = None,
        batching: BatchOptions = BatchOptions(),
        metrics: Metrics | None = None,
        protocols: Sequence[str] = PROTOCOLS,
        http: bool = False,
    ) -> None:
        self.host = host
        self.metrics = metrics or Metrics()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.started: Started = self._call(
            start_servers(
                address,
                host,
                security=security or Security(),
                batching=batching,
                metrics=self.metrics,
                protocols=protocols,
                http_port=0 if http else None,
            )
        )
        self.server, self.port = self.started.server, self.started.port
        self._call(self.server.start())
        name = address.rsplit(":", 1)[0]
        self.target = f"{name}:{self.port}"
        self.http_target = None if not http else f"{name}:{self.started.http_port}"

    def _call(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout=30)

    def stop(self) -> None:
        if not self.thread.is_alive():
            return
        self._call(self.started.stop(0))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


@dataclass(frozen=True, kw_only=True)
class MetricsOptions:
    """Where the Prometheus metrics listen: their own host (loopback by default, apart
    from the gRPC address), and whether they are served without the bearer token."""

    host: str = "127.0.0.1"
    port: int = 0
    open: bool = False


async def serve(
    directories: Sequence[Path],
    host_address: str,
    port: int,
    *,
    limits: HostLimits | None = None,
    security: Security | None = None,
    session_options: SessionOptions | None = None,
    batching: BatchOptions = BatchOptions(),
    protocols: Sequence[str] = PROTOCOLS,
    metrics: MetricsOptions | None = None,
    grace_s: float = 5.0,
    http_port: int | None = None,
) -> None:
    """Serve until SIGTERM or SIGINT; the first stdout line says where, the next ones
    where KServe v2 REST (``http_port``) and the metrics (``metrics``) are. On a
    signal, calls already running have ``grace_s`` seconds to finish; then the tails
    still running are stopped."""
    limit_arenas()  # before the worker threads take heaps of their own
    security = security or Security()
    tails = TailHost(directories, limits=limits or HostLimits(), session_options=session_options)
    counters = Metrics()
    started = await start_servers(
        f"{host_address}:{port}",
        tails,
        security=security,
        batching=batching,
        metrics=counters,
        protocols=protocols,
        http_port=http_port,
    )
    server, bound = started.server, started.port
    http = None
    if metrics is not None:  # before serving: a port taken stops here
        token = None if metrics.open else security.token
        check_address(f"{metrics.host}:{metrics.port}")
        http, http_port = counters.serve(metrics.host.strip("[]"), metrics.port, token=token)
    await server.start()
    print(f"listening on {host_address}:{bound}", flush=True)
    if started.http_port is not None:
        print(f"http on http://{host_address}:{started.http_port}", flush=True)
    if http is not None and metrics is not None:
        print(f"metrics on http://{metrics.host}:{http_port}/metrics", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    trimming = asyncio.create_task(keep_trimmed(Trimmer()))
    await stop.wait()
    trimming.cancel()
    print("shutting down", file=sys.stderr, flush=True)
    # a tail still running when the grace ends is stopped (ONNX Runtime's terminate
    # flag), so that its worker thread does not hold the process up
    loop.call_later(grace_s, tails.terminate)
    await started.stop(grace_s)
    tails.terminate()
    if http is not None:
        http.shutdown()
