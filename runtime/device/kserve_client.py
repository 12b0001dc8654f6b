"""A device's client for a server that speaks only KServe v2 (Triton, KServe, or
splitinfer with ``--protocols kserve``): the same calls as SplitClient, so that
EdgeRuntime can split against it.

Tensors travel raw (KServe v2 has no codec of ours); a tail is the model named
``<model>__<cut>``. KServe has no echo call, so a probe carrying a payload is
refused: the throughput is learned from real calls alone.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import grpc
import numpy as np
from tritonclient.grpc import service_pb2 as kpb
from tritonclient.grpc import service_pb2_grpc as kpb_grpc

from runtime.codec import Codec, Encoded
from runtime.device.client import Pending, Reply, SplitClient
from runtime.errors import CodecError, InvalidInputError, RemoteError
from runtime.kserve_types import DATATYPES, DTYPES, SEPARATOR, SHA256_PARAMETER, model_name
from runtime.status import error_from_rpc
from runtime.wire import splitinfer_pb2 as pb


class KServeClient(SplitClient):
    """A channel to a KServe v2 server; raw tensors only."""

    codecs = ("raw",)  # what this link can carry
    probes_payload = False  # no echo call: throughput comes from real calls

    def __init__(self, target: str, **options: Any) -> None:
        super().__init__(target, **options)
        self.kstub = kpb_grpc.GRPCInferenceServiceStub(self.channel)

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
        if response_codec != "raw":
            raise CodecError(f"KServe v2 answers raw tensors only, not {response_codec}")
        request = kpb.ModelInferRequest(model_name=model_name(model, cut), id=request_id)
        for tensor in tensors:
            if tensor.codec != Codec.RAW:
                raise CodecError(f"KServe v2 carries raw tensors only, not {tensor.codec.value}")
            if tensor.dtype not in DTYPES:
                raise InvalidInputError(f"{tensor.name!r}: {tensor.dtype} has no KServe type")
            request.inputs.add(name=tensor.name, datatype=DTYPES[tensor.dtype], shape=tensor.shape)
            request.raw_input_contents.append(bytes(tensor.payload))
        start = time.perf_counter()
        future = self.kstub.ModelInfer.future(request, timeout=timeout, metadata=self.metadata)
        return Pending(future, _parse, start=start)

    def infer(self, model: str, cut: str, tensors: Sequence[Encoded], **options: Any) -> Reply:
        """As start_infer, waiting for the answer."""
        return self.start_infer(model, cut, tensors, **options).result()

    def served_cuts(self, model: str, *, timeout: float | None = None) -> tuple[set[str], int]:
        """The cuts of ``model`` whose tails the server has READY (its RepositoryIndex);
        KServe does not say how large a request may be (0)."""
        try:
            index = self.kstub.RepositoryIndex(
                kpb.RepositoryIndexRequest(), timeout=timeout, metadata=self.metadata
            )
        except grpc.RpcError as exc:
            raise error_from_rpc(exc) from exc
        prefix = model + SEPARATOR
        return {
            entry.name.removeprefix(prefix)
            for entry in index.models
            if entry.name.startswith(prefix) and entry.state in ("READY", "")
        }, 0

    def model_sha256(self, model: str, cut: str, *, timeout: float | None = None) -> str | None:
        """The sha256 of the model a tail was cut from, from its config's parameters
        (None: the server does not say, as a Triton given tails without it)."""
        try:
            answer = self.kstub.ModelConfig(
                kpb.ModelConfigRequest(name=model_name(model, cut)),
                timeout=timeout,
                metadata=self.metadata,
            )
        except grpc.RpcError as exc:
            raise error_from_rpc(exc) from exc
        parameter = answer.config.parameters.get(SHA256_PARAMETER)
        return parameter.string_value if parameter is not None and parameter.string_value else None

    def probe(
        self, send_bytes: int = 0, receive_bytes: int = 0, *, timeout: float | None = None
    ) -> tuple[float, float]:
        """(round trip ms, 0) of a ServerLive call; payloads cannot be probed."""
        if send_bytes or receive_bytes:
            raise InvalidInputError("a KServe v2 server has no call to probe throughput")
        start = time.perf_counter()
        try:
            self.kstub.ServerLive(kpb.ServerLiveRequest(), timeout=timeout, metadata=self.metadata)
        except grpc.RpcError as exc:
            raise error_from_rpc(exc) from exc
        return (time.perf_counter() - start) * 1000, 0.0


def _parse(response: Any, round_trip_ms: float) -> Reply:
    begin = time.perf_counter()
    raw = list(response.raw_output_contents)
    if len(raw) != len(response.outputs):
        raise RemoteError("the KServe answer's raw_output_contents do not match its outputs")
    outputs = {}
    for tensor, data in zip(response.outputs, raw, strict=True):
        dtype = DATATYPES.get(tensor.datatype)
        if dtype is None:
            raise RemoteError(f"output {tensor.name!r} has datatype {tensor.datatype}")
        shape = tuple(int(d) for d in tensor.shape)
        try:
            outputs[tensor.name] = np.frombuffer(data, dtype=dtype).reshape(shape)
        except ValueError:
            raise RemoteError(f"output {tensor.name!r}: {len(data)} bytes for {shape}") from None
    known = "server_ms" in response.parameters  # Triton does not say; splitinfer does
    server_ms = response.parameters["server_ms"].double_param if known else 0.0
    timing = pb.ServerTiming(compute_ms=server_ms)
    decode_ms = (time.perf_counter() - begin) * 1000
    return Reply(outputs, timing, round_trip_ms, decode_ms, server_known=known)
