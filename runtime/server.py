"""The cloud server: gRPC (grpc.aio) on top of runtime.tails.

``create_server(address, host)`` returns the started-to-be server and the port
it bound; ``serve(...)`` runs one until SIGTERM or SIGINT and then shuts down
gracefully. The servicer is thin: each RPC converts messages, asks the engine,
converts back. Errors map to status codes in one place (runtime.status);
anything unexpected is INTERNAL with the traceback logged, never sent.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import signal
import sys
import threading
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2
from grpc_reflection.v1alpha import reflection, reflection_pb2

from runtime import fastwire
from runtime.batching import BatchOptions
from runtime.codec import CodecSpec, Encoded
from runtime.engine import SessionOptions
from runtime.errors import (
    InvalidInputError,
    OverloadedError,
    SplitInferError,
)
from runtime.metrics import Call, Metrics
from runtime.protocol import model_info, tensor_from_proto, tensor_to_proto
from runtime.service import (
    MAX_PENDING_STREAM_REQUESTS,
    Malformed,
    TailService,
    answer_queue,
    checked,
    lenient,
    respond,
    same,
    spawn,
    status_and_message,
    stream_answers,
)
from runtime.tails import HostLimits, TailHost
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
    """splitinfer.v1.SplitInference over a TailHost."""

    def __init__(self, service: TailService) -> None:
        self.service = service
        self.host = service.host

    def _admit(self, request: Any, context: grpc.aio.ServicerContext) -> None:
        """The checks every RPC makes first: the bearer token, then that the bytes parsed."""
        self.service.authorize(context)
        if isinstance(request, Malformed):
            raise InvalidInputError(request.message)

    async def Infer(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        # bytes in, bytes out: runtime.fastwire reads and writes payloads without copies
        call = self.service.metrics.call(PROTOCOL)

        async def infer() -> bytes:
            self._admit(None, context)
            header, tensors = fastwire.read(request, pb.InferRequest)
            call.bytes_in = sum(len(t.payload) for t in tensors)
            response, outputs = await self._infer(header, tensors, context, call)
            call.bytes_out = sum(len(o.payload) for o in outputs)
            return fastwire.write(response, outputs)

        return await respond(context, infer(), call)

    async def _infer(
        self,
        request: pb.InferRequest,
        tensors: list[Encoded],
        context: grpc.aio.ServicerContext,
        call: Call,
    ) -> tuple[pb.InferResponse, list[Encoded]]:
        """Run one request: the response's small fields, and the encoded outputs."""
        codec = tensors[0].codec.value if tensors else "raw"
        call.label(request.model, request.cut, codec)
        response_codec = CodecSpec.parse(request.response_codec or "raw")
        answer = await self.service.infer(
            request.model, request.cut, tensors, response_codec, context
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
        self, requests: AsyncIterator[pb.StreamRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.StreamResponse]:
        await respond(context, checked(self._admit, None, context))
        answers = answer_queue()
        tasks: set[asyncio.Task[None]] = set()
        pending: dict[str, _Assembly] = {}

        async def run(request: pb.InferRequest, payloads: list[bytes]) -> None:
            call = self.service.metrics.call(PROTOCOL)
            call.bytes_in = sum(len(p) for p in payloads)
            try:
                tensors = [
                    tensor_from_proto(t, p) for t, p in zip(request.tensors, payloads, strict=True)
                ]
                response, outputs = await self._infer(request, tensors, context, call)
                for output in outputs:
                    tensor_to_proto(output, response.outputs.add())
                call.bytes_out = sum(len(o.payload) for o in response.outputs)
            except asyncio.CancelledError:  # the stream went away
                call.done(grpc.StatusCode.CANCELLED.name)
                raise
            except Exception as exc:
                error = _stream_error(request.request_id, exc)
                call.done(_CODE_NAMES.get(error.error.code, "UNKNOWN"))
                await answers.put(error)
                return
            call.done("OK")
            for message in _chunked(response, self.host.limits.max_message_bytes // 2):
                await answers.put(message)

        async def read() -> None:
            async for item in requests:
                try:
                    self._admit(item, context)
                    done = _assemble(item, pending, self.host.limits)
                except SplitInferError as exc:
                    await answers.put(_stream_error(_request_id(item), exc))
                    continue
                if done is not None:
                    await spawn(tasks, run(*done))
            for request_id in list(pending):
                await answers.put(
                    _stream_error(request_id, InvalidInputError("the stream ended mid-request"))
                )

        async for answer in stream_answers(read, answers, tasks):
            yield answer

    async def Describe(
        self, request: pb.DescribeRequest, context: grpc.aio.ServicerContext
    ) -> pb.DescribeResponse:
        async def describe() -> pb.DescribeResponse:
            self._admit(request, context)
            names = [request.model] if request.model else sorted(self.host.models)
            models = [model_info(self.host.model(n), self.host.limits) for n in names]
            return pb.DescribeResponse(models=models)

        return await respond(context, describe())

    async def Probe(
        self, request: pb.ProbeRequest, context: grpc.aio.ServicerContext
    ) -> pb.ProbeResponse:
        async def probe() -> pb.ProbeResponse:
            self._admit(request, context)
            start = time.perf_counter()
            limit = self.host.limits.max_probe_bytes
            if request.response_size > limit:
                raise InvalidInputError(
                    f"probe response_size {request.response_size} is over the limit of "
                    f"{limit} bytes"
                )
            payload = bytes(request.response_size)
            return pb.ProbeResponse(
                payload=payload,
                received=len(request.payload),
                server_ms=(time.perf_counter() - start) * 1000,
            )

        return await respond(context, probe())


def _chunked(response: pb.InferResponse, chunk_bytes: int) -> list[pb.StreamResponse]:
    """A response as stream messages, outputs beyond ``chunk_bytes`` sent in chunks."""
    rest: list[tuple[int, bytes]] = []
    for index, output in enumerate(response.outputs):
        if len(output.payload) > chunk_bytes:
            rest.append((index, output.payload[chunk_bytes:]))
            output.payload_size = len(output.payload)
            output.payload = output.payload[:chunk_bytes]
    messages = [pb.StreamResponse(response=response)]
    for index, data in rest:
        for offset in range(0, len(data), chunk_bytes):
            chunk = pb.Chunk(
                request_id=response.request_id,
                tensor=index,
                data=data[offset : offset + chunk_bytes],
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
    """A stream request whose tensors are still arriving."""

    request: pb.InferRequest
    payloads: list[bytearray]
    sizes: list[int]

    def complete(self) -> bool:
        return all(len(p) == s for p, s in zip(self.payloads, self.sizes, strict=True))


def _request_id(item: pb.StreamRequest) -> str:
    kind = item.WhichOneof("item")
    if kind == "request":
        return item.request.request_id
    if kind == "chunk":
        return item.chunk.request_id
    return ""


def _assemble(
    item: pb.StreamRequest, pending: dict[str, _Assembly], limits: HostLimits
) -> tuple[pb.InferRequest, list[bytes]] | None:
    """Add one stream message; returns a request once all its bytes have arrived."""
    kind = item.WhichOneof("item")
    if kind == "request":
        request = item.request
        if not request.request_id:
            raise InvalidInputError("a stream request needs a request_id")
        if request.request_id in pending:
            raise InvalidInputError(f"request_id {request.request_id!r} is already in flight")
        if len(pending) >= MAX_PENDING_STREAM_REQUESTS:
            raise OverloadedError(
                f"more than {MAX_PENDING_STREAM_REQUESTS} incomplete requests on this stream"
            )
        sizes = []
        for tensor in request.tensors:
            size = tensor.payload_size or len(tensor.payload)
            if size > limits.max_tensor_bytes or len(tensor.payload) > size:
                raise InvalidInputError(
                    f"tensor {tensor.name!r}: payload_size {tensor.payload_size} is inconsistent "
                    f"or over the limit of {limits.max_tensor_bytes} bytes"
                )
            sizes.append(size)
        assembly = _Assembly(request, [bytearray(t.payload) for t in request.tensors], sizes)
        pending[request.request_id] = assembly
    elif kind == "chunk":
        chunk = item.chunk
        assembly = pending.get(chunk.request_id)  # type: ignore[assignment]
        if assembly is None:
            raise InvalidInputError(f"chunk for unknown request_id {chunk.request_id!r}")
        if chunk.tensor >= len(assembly.payloads):
            del pending[chunk.request_id]
            raise InvalidInputError(
                f"chunk for tensor {chunk.tensor}, but the request has {len(assembly.payloads)}"
            )
        buffer = assembly.payloads[chunk.tensor]
        if len(buffer) + len(chunk.data) > assembly.sizes[chunk.tensor]:
            del pending[chunk.request_id]
            raise InvalidInputError(
                f"chunks for tensor {chunk.tensor} exceed its payload_size "
                f"{assembly.sizes[chunk.tensor]}"
            )
        buffer.extend(chunk.data)
    else:
        raise InvalidInputError("an empty stream message")
    request_id = _request_id(item)
    if pending[request_id].complete():
        done = pending.pop(request_id)
        return done.request, [bytes(p) for p in done.payloads]
    return None


def register_service(server: grpc.aio.Server, servicer: SplitInferenceServicer) -> None:
    """The service's method handlers, registered by hand so that bytes which do not
    parse reach the servicer (and become INVALID_ARGUMENT) instead of failing in
    grpc with UNKNOWN. (An aio interceptor could do it for every service, but puts
    every call on grpc's slow generic path: about 3 ms per MiB here.)"""
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {
        "Infer": grpc.unary_unary_rpc_method_handler(
            servicer.Infer, request_deserializer=same, response_serializer=same
        ),
        "InferStream": grpc.stream_stream_rpc_method_handler(
            servicer.InferStream,
            request_deserializer=lenient(pb.StreamRequest),
            response_serializer=pb.StreamResponse.SerializeToString,
        ),
        "Describe": grpc.unary_unary_rpc_method_handler(
            servicer.Describe,
            request_deserializer=lenient(pb.DescribeRequest),
            response_serializer=pb.DescribeResponse.SerializeToString,
        ),
        "Probe": grpc.unary_unary_rpc_method_handler(
            servicer.Probe,
            request_deserializer=lenient(pb.ProbeRequest),
            response_serializer=pb.ProbeResponse.SerializeToString,
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


def _lenient_handler(
    method: Any, behaviour: Any, request: Any, response: Any
) -> grpc.RpcMethodHandler[Any, Any]:
    """A handler for ``behaviour`` (a servicer's coroutine or async generator) that
    parses requests leniently and refuses the ones that do not parse."""
    options = {
        "request_deserializer": lenient(request),
        "response_serializer": response.SerializeToString,
    }

    async def refused(request: Any, context: grpc.aio.ServicerContext) -> None:
        if isinstance(request, Malformed):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message)

    if method.client_streaming:

        async def parsed(requests: AsyncIterator[Any], context: Any) -> AsyncIterator[Any]:
            async for request in requests:
                await refused(request, context)
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
            await refused(request, context)
            async for answer in behaviour(request, context):
                yield answer

        return grpc.unary_stream_rpc_method_handler(generating, **options)

    async def answering(request: Any, context: Any) -> Any:  # or writing, as Watch does
        await refused(request, context)
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
) -> tuple[grpc.aio.Server, int]:
    """A gRPC server for ``host`` bound to ``address`` ("127.0.0.1:0" takes a free
    port); returns it, not started, and the port it got. ``protocols``: "splitinfer"
    (splitinfer.v1) and "kserve" (KServe v2, inference.GRPCInferenceService)."""
    from runtime import kserve

    unknown = set(protocols) - set(PROTOCOLS)
    if unknown or not protocols:
        raise ValueError(f"protocols must be among {', '.join(PROTOCOLS)}; got {sorted(unknown)}")
    limits = host.limits
    options = [
        ("grpc.max_receive_message_length", limits.max_message_bytes),
        ("grpc.max_send_message_length", limits.max_message_bytes),
    ]
    server = grpc.aio.server(options=options)
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
        port = server.add_secure_port(address, credentials)
    else:
        port = server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"cannot listen on {address}")
    return server, port


class BackgroundServer:
    """A server on its own event loop thread, for programs that are not asyncio
    (the demo, tests): started on construction, ``stop()`` when done."""

    def __init__(
        self,
        host: TailHost,
        *,
        address: str = "127.0.0.1:0",
        security: Security | None = None,
        batching: BatchOptions = BatchOptions(),
        metrics: Metrics | None = None,
        protocols: Sequence[str] = PROTOCOLS,
    ) -> None:
        self.host = host
        self.metrics = metrics or Metrics()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server, self.port = self._call(
            create_server(
                address,
                host,
                security=security or Security(),
                batching=batching,
                metrics=self.metrics,
                protocols=protocols,
            )
        )
        self._call(self.server.start())
        self.target = f"{address.rsplit(':', 1)[0]}:{self.port}"

    def _call(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout=30)

    def stop(self) -> None:
        if not self.thread.is_alive():
            return
        self._call(self.server.stop(0))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


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
    metrics_port: int | None = None,
    grace_s: float = 5.0,
) -> None:
    """Serve until SIGTERM or SIGINT; the first stdout line says where (the second, with
    ``metrics_port``, where the metrics are)."""
    tails = TailHost(directories, limits=limits or HostLimits(), session_options=session_options)
    metrics = Metrics()
    server, bound = await create_server(
        f"{host_address}:{port}",
        tails,
        security=security or Security(),
        batching=batching,
        metrics=metrics,
        protocols=protocols,
    )
    http = None
    if metrics_port is not None:  # before serving: a port taken stops here
        http, http_port = metrics.serve(host_address.strip("[]"), metrics_port)
    await server.start()
    print(f"listening on {host_address}:{bound}", flush=True)
    if http is not None:
        print(f"metrics on http://{host_address}:{http_port}/metrics", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    print("shutting down", file=sys.stderr, flush=True)
    await server.stop(grace_s)
    if http is not None:
        http.shutdown()
