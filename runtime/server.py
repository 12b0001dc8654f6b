"""The cloud server: gRPC (grpc.aio) on top of runtime.tails.

``create_server(address, host)`` returns the started-to-be server and the port
it bound; ``serve(...)`` runs one until SIGTERM or SIGINT and then shuts down
gracefully. The servicer is thin: each RPC converts messages, asks the engine,
converts back. Errors map to status codes in one place (runtime.status);
anything unexpected is INTERNAL with the traceback logged, never sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hmac
import logging
import math
import signal
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from runtime import fastwire
from runtime.codec import CodecSpec, Encoded
from runtime.engine import SessionOptions
from runtime.errors import (
    DeadlineError,
    InvalidInputError,
    OverloadedError,
    SplitInferError,
    UnauthenticatedError,
)
from runtime.protocol import model_info, tensor_from_proto, tensor_to_proto
from runtime.status import status_of
from runtime.tails import HostLimits, TailHost
from runtime.wire import splitinfer_pb2 as pb
from runtime.wire import splitinfer_pb2_grpc as pb_grpc

log = logging.getLogger("splitinfer.server")

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["SplitInference"].full_name
MAX_PENDING_STREAM_REQUESTS = 64
# A tail that recently took less than this runs on the event loop itself: the hop
# to a worker thread costs more. Longer ones run in a thread, leaving the loop free.
INLINE_MS = 1.0


@dataclass(frozen=True, kw_only=True)
class Security:
    """TLS (``cert`` and ``key``, PEM bytes), mutual TLS (``client_ca`` too) and a
    bearer token; all optional."""

    cert: bytes | None = None
    key: bytes | None = None
    client_ca: bytes | None = None
    token: str | None = None


class Admission:
    """Bounds the work: ``max_concurrent`` tails at once, ``max_queued`` waiting;
    beyond that a request is refused at once rather than queued without end."""

    def __init__(self, limits: HostLimits) -> None:
        self.limits = limits
        self.slots = asyncio.Semaphore(limits.max_concurrent)
        self.admitted = 0

    @contextlib.asynccontextmanager
    async def slot(self, context: grpc.aio.ServicerContext) -> AsyncIterator[float]:
        """Wait for a worker; yields the time waited (ms)."""
        if self.admitted >= self.limits.max_concurrent + self.limits.max_queued:
            raise OverloadedError(
                f"the server is at capacity ({self.limits.max_concurrent} running, "
                f"{self.limits.max_queued} queued): retry later"
            )
        self.admitted += 1
        start = time.perf_counter()
        try:
            async with self.slots:
                _check_deadline(context)  # it may have passed while queued
                yield (time.perf_counter() - start) * 1000
        finally:
            self.admitted -= 1


def _check_deadline(context: grpc.aio.ServicerContext) -> None:
    remaining = context.time_remaining()
    if remaining is not None and remaining <= 0:
        raise DeadlineError("the call's deadline passed before the tail could run")


class SplitInferenceServicer(pb_grpc.SplitInferenceServicer):
    """splitinfer.v1.SplitInference over a TailHost."""

    def __init__(self, host: TailHost, admission: Admission, *, token: str | None = None) -> None:
        self.host = host
        self.admission = admission
        self.cost_ms: dict[tuple[str, str], float] = {}  # recent time per (model, cut)
        self.token = None if token is None else b"Bearer " + token.encode()

    def _admit(self, request: Any, context: grpc.aio.ServicerContext) -> None:
        """The checks every RPC makes first: the bearer token, then that the bytes parsed."""
        if self.token is not None:
            metadata = dict(context.invocation_metadata() or ())
            value = metadata.get("authorization", "")
            given = value.encode() if isinstance(value, str) else bytes(value)
            if not hmac.compare_digest(given, self.token):  # constant time
                raise UnauthenticatedError("missing or wrong bearer token")
        if isinstance(request, _Malformed):
            raise InvalidInputError(request.message)

    async def Infer(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        # bytes in, bytes out: runtime.fastwire reads and writes payloads without copies
        async def infer() -> bytes:
            self._admit(None, context)
            header, tensors = fastwire.read(request, pb.InferRequest)
            response, outputs = await self._infer(header, tensors, context)
            return fastwire.write(response, outputs)

        return await _answer(context, infer())

    async def _infer(
        self, request: pb.InferRequest, tensors: list[Encoded], context: grpc.aio.ServicerContext
    ) -> tuple[pb.InferResponse, list[Encoded]]:
        """Run one request: the response's small fields, and the encoded outputs."""
        _check_deadline(context)
        response_codec = CodecSpec.parse(request.response_codec or "raw")
        self.host.check(request.model, request.cut, tensors)  # refuse before queueing
        async with self.admission.slot(context) as queued_ms:
            work = functools.partial(
                self.host.run, request.model, request.cut, tensors, response_codec
            )
            key = (request.model, request.cut)
            if self.cost_ms.get(key, math.inf) < INLINE_MS:
                outputs, timing = work()  # cheaper than the hop to a worker thread
            else:
                running = asyncio.ensure_future(asyncio.to_thread(work))
                try:
                    outputs, timing = await asyncio.shield(running)
                except asyncio.CancelledError:
                    # the caller gave up, but the tail runs on: keep its slot until it ends
                    await asyncio.wait({running})
                    raise
            spent = timing.decode_ms + timing.compute_ms + timing.encode_ms
            self.cost_ms[key] = 0.8 * self.cost_ms.get(key, spent) + 0.2 * spent
        response = pb.InferResponse(
            model=request.model,
            cut=request.cut,
            request_id=request.request_id,
            timing=pb.ServerTiming(
                queue_ms=queued_ms,
                decode_ms=timing.decode_ms,
                compute_ms=timing.compute_ms,
                encode_ms=timing.encode_ms,
            ),
        )
        return response, outputs

    async def InferStream(
        self, requests: AsyncIterator[pb.StreamRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.StreamResponse]:
        await _answer(context, _async(self._admit, None, context))
        answers: asyncio.Queue[pb.StreamResponse | None] = asyncio.Queue()
        tasks: set[asyncio.Task[None]] = set()
        pending: dict[str, _Assembly] = {}

        async def run(request: pb.InferRequest, payloads: list[bytes]) -> None:
            try:
                tensors = [
                    tensor_from_proto(t, p) for t, p in zip(request.tensors, payloads, strict=True)
                ]
                response, outputs = await self._infer(request, tensors, context)
                for output in outputs:
                    tensor_to_proto(output, response.outputs.add())
            except Exception as exc:
                await answers.put(_stream_error(request.request_id, exc))
                return
            for message in _chunked(response, self.host.limits.max_message_bytes // 2):
                await answers.put(message)

        async def read() -> None:
            try:
                async for item in requests:
                    try:
                        self._admit(item, context)
                        done = _assemble(item, pending, self.host.limits)
                    except SplitInferError as exc:
                        await answers.put(_stream_error(_request_id(item), exc))
                        continue
                    if done is not None:
                        task = asyncio.create_task(run(*done))
                        tasks.add(task)
                        task.add_done_callback(tasks.discard)
                for request_id in list(pending):
                    await answers.put(
                        _stream_error(request_id, InvalidInputError("the stream ended mid-request"))
                    )
                if tasks:
                    await asyncio.gather(*tasks)
            finally:
                await answers.put(None)

        reader = asyncio.create_task(read())
        try:
            while (answer := await answers.get()) is not None:
                yield answer
        finally:
            reader.cancel()
            for task in tasks:
                task.cancel()

    async def Describe(
        self, request: pb.DescribeRequest, context: grpc.aio.ServicerContext
    ) -> pb.DescribeResponse:
        async def describe() -> pb.DescribeResponse:
            self._admit(request, context)
            names = [request.model] if request.model else sorted(self.host.models)
            models = [model_info(self.host.model(n), self.host.limits) for n in names]
            return pb.DescribeResponse(models=models)

        return await _answer(context, describe())

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

        return await _answer(context, probe())


async def _answer(context: grpc.aio.ServicerContext, work: Awaitable[Any]) -> Any:
    """Run ``work``; turn a splitinfer error into its status, anything else into INTERNAL."""
    try:
        return await work
    except SplitInferError as exc:
        code, message = status_of(exc), exc.message
    except Exception:
        log.exception("internal error")  # the traceback stays in the log
        code, message = grpc.StatusCode.INTERNAL, "internal error (logged on the server)"
    await context.abort(code, message)


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


async def _async(call: Callable[..., None], *args: Any) -> None:
    call(*args)


def _stream_error(request_id: str, exc: BaseException) -> pb.StreamResponse:
    if isinstance(exc, SplitInferError):
        code, message = status_of(exc), exc.message
    else:
        log.exception("internal error", exc_info=exc)
        code, message = grpc.StatusCode.INTERNAL, "internal error (logged on the server)"
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


@dataclass(frozen=True)
class _Malformed:
    """What request bytes that do not parse become, so that the RPC can refuse them."""

    message: str


def _same(data: bytes) -> bytes:
    return data


def _lenient(message_class: Any) -> Callable[[bytes], Any]:
    def parse(data: bytes) -> Any:
        try:
            return message_class.FromString(data)
        except Exception as exc:
            text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            return _Malformed(f"the request is not a valid {message_class.__name__}: {text}")

    return parse


def register_service(server: grpc.aio.Server, servicer: SplitInferenceServicer) -> None:
    """The service's method handlers, registered by hand so that bytes which do not
    parse reach the servicer (and become INVALID_ARGUMENT) instead of failing in
    grpc with UNKNOWN. (An aio interceptor could do it for every service, but puts
    every call on grpc's slow generic path: about 3 ms per MiB here.)"""
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {
        "Infer": grpc.unary_unary_rpc_method_handler(
            servicer.Infer, request_deserializer=_same, response_serializer=_same
        ),
        "InferStream": grpc.stream_stream_rpc_method_handler(
            servicer.InferStream,
            request_deserializer=_lenient(pb.StreamRequest),
            response_serializer=pb.StreamResponse.SerializeToString,
        ),
        "Describe": grpc.unary_unary_rpc_method_handler(
            servicer.Describe,
            request_deserializer=_lenient(pb.DescribeRequest),
            response_serializer=pb.DescribeResponse.SerializeToString,
        ),
        "Probe": grpc.unary_unary_rpc_method_handler(
            servicer.Probe,
            request_deserializer=_lenient(pb.ProbeRequest),
            response_serializer=pb.ProbeResponse.SerializeToString,
        ),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    # registered methods take grpc's fast path (a generic handler alone costs ~3 ms/MiB)
    server.add_registered_method_handlers(SERVICE_NAME, handlers)


async def create_server(
    address: str,
    host: TailHost,
    *,
    security: Security = Security(),
) -> tuple[grpc.aio.Server, int]:
    """A gRPC server for ``host`` bound to ``address`` ("127.0.0.1:0" takes a free
    port); returns it, not started, and the port it got."""
    limits = host.limits
    options = [
        ("grpc.max_receive_message_length", limits.max_message_bytes),
        ("grpc.max_send_message_length", limits.max_message_bytes),
    ]
    server = grpc.aio.server(options=options)
    servicer = SplitInferenceServicer(host, Admission(limits), token=security.token)
    register_service(server, servicer)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
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
        self, host: TailHost, *, address: str = "127.0.0.1:0", security: Security | None = None
    ) -> None:
        self.host = host
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server, self.port = self._call(
            create_server(address, host, security=security or Security())
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
    grace_s: float = 5.0,
) -> None:
    """Serve until SIGTERM or SIGINT; the first stdout line says where."""
    tails = TailHost(directories, limits=limits or HostLimits(), session_options=session_options)
    server, bound = await create_server(
        f"{host_address}:{port}", tails, security=security or Security()
    )
    await server.start()
    print(f"listening on {host_address}:{bound}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    print("shutting down", file=sys.stderr, flush=True)
    await server.stop(grace_s)
