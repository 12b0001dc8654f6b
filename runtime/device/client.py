"""A synchronous client of the splitinfer.v1 service, for devices.

Failed calls raise the splitinfer error of their status (runtime.status), with
the grpc.RpcError as the cause.
"""

from __future__ import annotations

import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, replace
from typing import Any, Protocol

import grpc
import numpy as np

from runtime import fastwire
from runtime.codec import Encoded, decode
from runtime.errors import NotFoundError, RemoteError
from runtime.protocol import tensor_from_proto, tensor_to_proto
from runtime.status import error_for, error_from_rpc
from runtime.units import check_target
from runtime.wire import splitinfer_pb2 as pb
from runtime.wire import splitinfer_pb2_grpc as pb_grpc

DEFAULT_MAX_MESSAGE_BYTES = 256 << 20
DEFAULT_CHUNK_BYTES = 1 << 20
# what a server takes in one message by default (runtime.cloud.tails.HostLimits); a larger
# request goes in chunks on InferStream
SERVER_MESSAGE_BYTES = 4 << 20


@dataclass(frozen=True, kw_only=True)
class ClientTLS:
    """PEM bytes: the CA that signed the server, and for mutual TLS the client's pair."""

    root_certificates: bytes | None = None
    certificate: bytes | None = None
    key: bytes | None = None
    server_name: str | None = None  # when the certificate's name is not the target host


@dataclass(frozen=True)
class Reply:
    """A tail's answer: decoded outputs, the server's own times, and the round trip."""

    outputs: dict[str, np.ndarray]
    server: pb.ServerTiming
    round_trip_ms: float
    decode_ms: float
    server_known: bool = True  # False: the server did not report its time


class SplitClient:
    """A channel to one server. Use as a context manager, or call close()."""

    def __init__(
        self,
        target: str,
        *,
        token: str | None = None,
        tls: ClientTLS | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    ) -> None:
        check_target(target)
        options: list[tuple[str, int | str]] = [
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            # reconnect quickly once a link or server is back (grpc's default waits 1 s+)
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.min_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 1000),
            # a connection of its own: grpc would share one among channels to the same
            # target, and another client's bulk transfer would hold this one's calls up
            # (and its link measurements would measure that client's queue)
            ("grpc.use_local_subchannel_pool", 1),
        ]
        if tls is not None:
            if tls.server_name:
                options.append(("grpc.ssl_target_name_override", tls.server_name))
            credentials = grpc.ssl_channel_credentials(
                tls.root_certificates, tls.key, tls.certificate
            )
            self.channel = grpc.secure_channel(target, credentials, options=options)
        else:
            self.channel = grpc.insecure_channel(target, options=options)
        self.stub = pb_grpc.SplitInferenceStub(self.channel)
        # Infer goes as bytes: runtime.fastwire writes and reads the payloads in place
        self._infer = self.channel.unary_unary(  # type: ignore[call-arg]
            "/splitinfer.v1.SplitInference/Infer",
            request_serializer=_same,
            response_deserializer=_same,
            _registered_method=True,  # grpc's fast path, as the generated stubs use
        )
        self.metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self.target = target
        self.max_request_bytes = SERVER_MESSAGE_BYTES  # the server's, when Describe says

    def __enter__(self) -> SplitClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.channel.close()

    def wait_ready(self, timeout: float) -> None:
        """Block until the channel is connected; UnavailableError after ``timeout`` s."""
        try:
            grpc.channel_ready_future(self.channel).result(timeout=timeout)
        except grpc.FutureTimeoutError:
            raise error_for(grpc.StatusCode.UNAVAILABLE, f"{self.target} not ready") from None

    def infer(
        self,
        model: str,
        cut: str,
        tensors: Sequence[Encoded],
        *,
        response_codec: str = "raw",
        timeout: float | None = None,
        request_id: str = "",
    ) -> Reply:
        """Run ``cut``'s tail on ``tensors``; raises a splitinfer error on failure."""
        pending = self.start_infer(
            model,
            cut,
            tensors,
            response_codec=response_codec,
            timeout=timeout,
            request_id=request_id,
        )
        return pending.result()

    def start_infer(
        self,
        model: str,
        cut: str,
        tensors: Sequence[Encoded],
        *,
        response_codec: str = "raw",
        timeout: float | None = None,
        request_id: str = "",
    ) -> Pending:
        """Send an Infer call and return at once; ``Pending.result()`` waits for it. A
        request larger than the server takes in one message (``max_request_bytes``)
        goes on an InferStream of its own, in chunks."""
        header = pb.InferRequest(
            model=model, cut=cut, request_id=request_id, response_codec=response_codec
        )
        request = fastwire.write(header, tensors)
        if len(request) <= self.max_request_bytes:
            start = time.perf_counter()  # the round trip: from the call leaving
            future = self._infer.future(request, timeout=timeout, metadata=self.metadata)
            return Pending(future, start=start)
        del request
        stream = _Streamed(self, model, cut, tensors, response_codec, timeout)
        return Pending(
            stream, lambda reply, round_trip_ms: replace(reply, round_trip_ms=round_trip_ms)
        )

    def infer_stream(
        self,
        requests: Iterable[tuple[str, str, Sequence[Encoded]]],
        *,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
        timeout: float | None = None,
        response_codec: str = "raw",
    ) -> Iterator[Reply | Exception]:
        """Send many (model, cut, tensors) requests over one stream, payloads in chunks
        of ``chunk_bytes``; yields a Reply or the error of each, as they complete."""
        call = self._stream_call(requests, chunk_bytes, timeout, response_codec)
        return self.replies(call)

    def _stream_call(
        self,
        requests: Iterable[tuple[str, str, Sequence[Encoded]]],
        chunk_bytes: int,
        timeout: float | None,
        response_codec: str,
    ) -> Any:
        def messages() -> Iterator[pb.StreamRequest]:
            for model, cut, tensors in requests:
                yield from stream_messages(
                    model, cut, tensors, uuid.uuid4().hex, chunk_bytes, response_codec
                )

        return self.stub.InferStream(messages(), timeout=timeout, metadata=self.metadata)

    def replies(self, call: Any) -> Iterator[Reply | Exception]:
        """The Replies (or errors) of an InferStream call, each once all of it arrived."""
        start = time.perf_counter()
        try:
            for _, answer in stream_answers(call):
                if isinstance(answer, Exception):
                    yield answer
                else:
                    yield _reply(answer, (time.perf_counter() - start) * 1000)
        except grpc.RpcError as exc:
            raise error_from_rpc(exc) from exc

    def served_cuts(self, model: str, *, timeout: float | None = None) -> tuple[set[str], int]:
        """The cuts of ``model`` the server runs tails of (none when it does not host
        the model), and the largest request it takes in one message."""
        try:
            (info,) = self.describe(model, timeout=timeout).models
        except NotFoundError:
            return set(), 0
        return {c.id for c in info.cuts if c.served}, int(info.max_message_bytes)

    def model_sha256(self, model: str, cut: str, *, timeout: float | None = None) -> str | None:
        """The sha256 of the model whose tails the server holds (None: it does not say)."""
        try:
            (info,) = self.describe(model, timeout=timeout).models
        except NotFoundError:
            return None
        return info.sha256 or None

    def describe(self, model: str = "", *, timeout: float | None = None) -> pb.DescribeResponse:
        try:
            return self.stub.Describe(
                pb.DescribeRequest(model=model), timeout=timeout, metadata=self.metadata
            )
        except grpc.RpcError as exc:
            raise error_from_rpc(exc) from exc

    def probe(
        self, send_bytes: int = 0, receive_bytes: int = 0, *, timeout: float | None = None
    ) -> tuple[float, float]:
        """(round trip ms, server ms) for a call carrying these many bytes each way."""
        request = pb.ProbeRequest(payload=bytes(send_bytes), response_size=receive_bytes)
        start = time.perf_counter()
        try:
            response = self.stub.Probe(request, timeout=timeout, metadata=self.metadata)
        except grpc.RpcError as exc:
            raise error_from_rpc(exc) from exc
        return (time.perf_counter() - start) * 1000, response.server_ms


class FrameStream:
    """One InferStream kept open for a pipeline of requests (a camera's frames): each
    ``send`` returns at once with a Future of its Reply; the server works on several
    at once and answers each by its request id. When the stream fails (reset, server
    gone, ``close``), every request still waiting fails with that error and the
    stream is ``broken``: open a new one."""

    def __init__(
        self,
        client: SplitClient,
        *,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
        response_codec: str = "raw",
    ) -> None:
        self.client = client
        self.chunk_bytes = min(chunk_bytes, client.max_request_bytes // 2)
        self.response_codec = response_codec
        self._outgoing: queue.SimpleQueue[pb.StreamRequest | None] = queue.SimpleQueue()
        self._waiting: dict[str, tuple[Future[Reply], float]] = {}
        self._lock = threading.Lock()
        self.broken: Exception | None = None
        self._call = client.stub.InferStream(self._messages(), metadata=client.metadata)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def send(self, model: str, cut: str, tensors: Sequence[Encoded]) -> Future[Reply]:
        """Queue one request; its Future holds the Reply or the splitinfer error."""
        future: Future[Reply] = Future()
        request_id = uuid.uuid4().hex
        with self._lock:
            if self.broken is not None:
                future.set_exception(self.broken)
                return future
            self._waiting[request_id] = (future, time.perf_counter())
        for message in stream_messages(
            model, cut, tensors, request_id, self.chunk_bytes, self.response_codec
        ):
            self._outgoing.put(message)
        return future

    def waiting(self) -> int:
        with self._lock:
            return len(self._waiting)

    def close(self, why: Exception | None = None) -> None:
        """End the stream: the requests still waiting fail (with ``why``)."""
        self._outgoing.put(None)
        self._fail(why or RemoteError("the stream was closed", "CANCELLED"))
        self._call.cancel()

    def _messages(self) -> Iterator[pb.StreamRequest]:
        while (message := self._outgoing.get()) is not None:
            yield message

    def _read(self) -> None:
        try:
            for request_id, answer in stream_answers(self._call):
                if isinstance(answer, Exception):
                    self._settle(request_id, error=answer)
                else:
                    self._settle(request_id, response=answer)
            self._fail(RemoteError("the server ended the stream", "UNAVAILABLE"))
        except grpc.RpcError as exc:
            self._fail(error_from_rpc(exc))
        except Exception as exc:  # an answer that does not decode: the stream is unusable
            self._fail(RemoteError(f"unreadable answer on the stream: {exc}", "INTERNAL"))

    def _settle(
        self,
        request_id: str,
        *,
        response: pb.InferResponse | None = None,
        error: Exception | None = None,
    ) -> None:
        with self._lock:
            entry = self._waiting.pop(request_id, None)
        if entry is None:
            return
        future, start = entry
        if error is not None:
            future.set_exception(error)
            return
        assert response is not None
        try:
            future.set_result(_reply(response, (time.perf_counter() - start) * 1000))
        except Exception as exc:
            future.set_exception(exc)

    def _fail(self, error: Exception) -> None:
        with self._lock:
            if self.broken is None:
                self.broken = error
            waiting, self._waiting = self._waiting, {}
        for future, _ in waiting.values():
            future.set_exception(error)


class CallFuture(Protocol):
    """What Pending waits on: a unary call's grpc future, or a _Streamed request."""

    def result(self, timeout: float | None = None) -> Any: ...

    def done(self) -> bool: ...

    def cancel(self) -> bool: ...


class _Streamed:
    """One request sent on an InferStream of its own, with the interface of a unary
    call's future (``result``, ``done``, ``cancel``) for Pending."""

    def __init__(
        self,
        client: SplitClient,
        model: str,
        cut: str,
        tensors: Sequence[Encoded],
        response_codec: str,
        timeout: float | None,
    ) -> None:
        chunk = min(DEFAULT_CHUNK_BYTES, client.max_request_bytes // 2)  # room for the rest
        self._call = client._stream_call([(model, cut, tensors)], chunk, timeout, response_codec)
        self._replies = client.replies(self._call)
        self._done = threading.Event()
        self._answer: Reply | Exception | None = None
        threading.Thread(target=self._collect, daemon=True).start()

    def _collect(self) -> None:
        try:
            self._answer = next(self._replies, None) or RemoteError(
                "the stream ended without an answer", "UNKNOWN"
            )
        except Exception as exc:  # a splitinfer error of the call itself
            self._answer = exc
        self._done.set()

    def done(self) -> bool:
        return self._done.is_set()

    def cancel(self) -> bool:
        return bool(self._call.cancel())

    def result(self, timeout: float | None = None) -> Reply:
        if not self._done.wait(timeout):
            raise grpc.FutureTimeoutError()
        if isinstance(self._answer, Exception):
            raise self._answer
        assert self._answer is not None
        return self._answer


class Pending:
    """An Infer call in flight."""

    def __init__(
        self,
        future: CallFuture,
        parse: Callable[[Any, float], Reply] | None = None,
        *,
        start: float | None = None,
    ) -> None:
        self.future = future
        self.parse = parse or _parse_reply  # (response, round trip ms) -> Reply
        self.start = time.perf_counter() if start is None else start  # when the call left

    def done(self) -> bool:
        return self.future.done()

    def cancel(self) -> None:
        self.future.cancel()

    def result(self, timeout: float | None = None) -> Reply:
        """The reply; TimeoutError if it has not come within ``timeout`` seconds (the call
        goes on), a splitinfer error if the call failed."""
        try:
            data = self.future.result(timeout=timeout)
        except grpc.FutureTimeoutError:
            raise TimeoutError("no reply yet") from None
        except grpc.RpcError as exc:
            raise error_from_rpc(exc) from exc
        except grpc.FutureCancelledError:
            raise error_for(grpc.StatusCode.CANCELLED, "the call was cancelled") from None
        return self.parse(data, (time.perf_counter() - self.start) * 1000)


def _parse_reply(data: bytes, round_trip_ms: float) -> Reply:
    begin = time.perf_counter()
    response, outputs = fastwire.read(data, fastwire.INFER_RESPONSE)
    decoded = {t.name: decode(t) for t in outputs}
    return Reply(decoded, response.timing, round_trip_ms, (time.perf_counter() - begin) * 1000)


def stream_answers(call: Any) -> Iterator[tuple[str, pb.InferResponse | Exception]]:
    """An InferStream call's answers as (request id, the whole InferResponse or the
    splitinfer error of a failed request), each once all of its chunks arrived; chunks
    of an unknown request are skipped. A grpc.RpcError of the call itself is raised."""
    partial: dict[str, tuple[pb.InferResponse, list[bytearray]]] = {}
    for item in call:
        kind = item.WhichOneof("item")
        if kind == "error":
            yield item.error.request_id, error_for(_status(item.error.code), item.error.message)
            continue
        if kind == "response":
            response = item.response
            request_id = response.request_id
            partial[request_id] = (response, [bytearray(o.payload) for o in response.outputs])
        else:
            request_id = item.chunk.request_id
            if request_id not in partial:
                continue
            partial[request_id][1][item.chunk.tensor].extend(item.chunk.data)
        response, buffers = partial[request_id]
        sizes = [o.payload_size or len(o.payload) for o in response.outputs]
        if all(len(b) == s for b, s in zip(buffers, sizes, strict=True)):
            del partial[request_id]
            for output, buffer in zip(response.outputs, buffers, strict=True):
                output.payload = bytes(buffer)
                output.payload_size = 0
            yield request_id, response


def stream_messages(
    model: str,
    cut: str,
    tensors: Sequence[Encoded],
    request_id: str,
    chunk_bytes: int,
    response_codec: str = "raw",
) -> Iterator[pb.StreamRequest]:
    """One request as stream messages: a header with each payload's first chunk, then
    the rest of each payload in chunks."""
    header = pb.InferRequest(
        model=model, cut=cut, request_id=request_id, response_codec=response_codec
    )
    for encoded in tensors:
        message = tensor_to_proto(encoded, header.tensors.add(), payload=False)
        message.payload = bytes(encoded.payload[:chunk_bytes])
        message.payload_size = len(encoded.payload)
    yield pb.StreamRequest(request=header)
    for index, encoded in enumerate(tensors):
        for offset in range(chunk_bytes, len(encoded.payload), chunk_bytes):
            data = bytes(encoded.payload[offset : offset + chunk_bytes])
            yield pb.StreamRequest(chunk=pb.Chunk(request_id=request_id, tensor=index, data=data))


def _same(data: bytes) -> bytes:
    return data


def _status(value: int) -> grpc.StatusCode:
    return next((c for c in grpc.StatusCode if c.value[0] == value), grpc.StatusCode.UNKNOWN)


def _reply(response: pb.InferResponse, round_trip_ms: float) -> Reply:
    start = time.perf_counter()
    outputs = {t.name: decode(tensor_from_proto(t)) for t in response.outputs}
    return Reply(outputs, response.timing, round_trip_ms, (time.perf_counter() - start) * 1000)
